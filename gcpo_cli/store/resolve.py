"""What a user types -> the row it names: runs, sets and problems, one way everywhere.

Each accepts the exact id (or name), else a unique prefix; a run (and an evaluation,
evaluations.resolve) also `latest`, the newest; a problem also its source file's own id or words
from its text. Prefixes go through GLOB with its wildcards escaped (LIKE would read `_`
and `%` in what the user typed as wildcards, and is case-insensitive). Errors name the closest
candidates in one line that fits 80 columns after "error: ".
"""

from __future__ import annotations

import re

from sqlite_utils import Database

from ..errors import GcpoError

MAX_CANDIDATES = 20
LATEST = "latest"  # the newest run or evaluation, wherever an id is accepted


def glob_prefix(ref: str) -> str:
    # GLOB (unlike LIKE) is case-sensitive, so SQLite answers a prefix from the primary key.
    return re.sub(r"([*?\[])", r"[\1]", ref) + "*"


def fit(head: str, items: list[str], total: int | None = None) -> str:
    """`head` then as many items as fit one 80-column line after "error: ", then "+N more"."""
    total = len(items) if total is None else total
    shown: list[str] = []
    for i in items:
        rest = total - len(shown) - 1
        line = "error: " + head + ", ".join(shown + [i]) + (f", +{rest} more" if rest else "")
        if len(line) > 80 and shown:
            break
        shown.append(i)
    rest = total - len(shown)
    return head + ", ".join(shown) + (f", +{rest} more" if rest else "")


def clip(ref: str, n: int = 24) -> str:
    return repr(ref if len(ref) <= n else ref[: n - 1] + "…")


def _ambiguous(kind: str, ref: str, ids: list[str]) -> GcpoError:
    count = f"{MAX_CANDIDATES}+" if len(ids) > MAX_CANDIDATES else str(len(ids))
    return GcpoError(fit(f"ambiguous {kind} {clip(ref)}: {count} match: ", ids[:MAX_CANDIDATES]))


def fts_query(text: str) -> str:
    """Every word quoted, so user text like "12 + 35?" is never parsed as FTS syntax."""
    return " ".join('"' + w + '"' for w in re.findall(r"\w+", text))


def _column(db: Database, sql: str, params: list) -> list:
    return [r[0] for r in db.execute(sql, params)]


def resolve_problem(db: Database, ref: str) -> str:
    """Exact id, then a source id from the ingested file, then an id prefix, then full-text: a
    problem whose whole text is `ref` first (pasting a problem's text names it, however many
    others hold its words), else those holding every word of it."""
    ref = ref.strip()
    if not ref:
        raise GcpoError("empty problem id; pass an id, an id prefix or words from its text")
    if db.execute("SELECT 1 FROM problems WHERE id = ?", [ref]).fetchone():
        return ref
    ids = _column(db, "SELECT DISTINCT problem_id FROM set_problems WHERE source_id = ? LIMIT ?",
                  [ref, MAX_CANDIDATES])
    if not ids:
        ids = _column(db, "SELECT id FROM problems WHERE id GLOB ? ORDER BY id LIMIT ?",
                      [glob_prefix(ref), MAX_CANDIDATES + 1])
    fts = ("SELECT problems.id FROM problems_fts JOIN problems ON problems.rowid = problems_fts.rowid"
           " WHERE problems_fts MATCH ?")
    if not ids and fts_query(ref):  # the index narrows to the rows with every word; then the whole text
        ids = _column(db, f"{fts} AND trim(problems.text, char(32, 9, 10, 13)) = ? ORDER BY problems.id LIMIT ?",
                      [fts_query(ref), ref, MAX_CANDIDATES + 1])
    if not ids and fts_query(ref):
        ids = _column(db, f"{fts} ORDER BY rank LIMIT ?", [fts_query(ref), MAX_CANDIDATES + 1])
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise GcpoError(f"unknown problem {clip(ref)}: no id, prefix or text matches")
    raise _ambiguous("problem", ref, ids)


def resolve_run(db: Database, ref: str) -> dict:
    """The run's row, by exact id, `latest` (the newest) or unique prefix."""
    ref = ref.strip()
    row = db["runs"].get(ref) if ref and db.execute("SELECT 1 FROM runs WHERE id = ?", [ref]).fetchone() else None
    if row:
        return row
    if ref == LATEST:
        newest = _column(db, "SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1", [])
        if not newest:
            raise GcpoError("no runs recorded yet, so no latest run (gcpo train --recipe ...)")
        return db["runs"].get(newest[0])
    ids = _column(db, "SELECT id FROM runs WHERE id GLOB ? ORDER BY created_at DESC LIMIT ?",
                  [glob_prefix(ref), MAX_CANDIDATES + 1]) if ref else []
    if len(ids) == 1:
        return db["runs"].get(ids[0])
    if not ids:
        recent = _column(db, "SELECT id FROM runs ORDER BY created_at DESC LIMIT 6", [])
        if not recent:
            raise GcpoError(f"unknown run {clip(ref)}: no runs recorded yet (gcpo train --recipe ...)")
        raise GcpoError(fit(f"unknown run {clip(ref)}; recent: ", recent))
    raise _ambiguous("run", ref, ids)


def resolve_set(db: Database, ref: str) -> dict:
    """{id, name, description} of a problem set, by exact name or unique prefix."""
    ref = ref.strip()
    cols = "SELECT id, name, description FROM problem_sets"
    row = db.execute(f"{cols} WHERE name = ?", [ref]).fetchone()
    if not row and ref:
        rows = db.execute(f"{cols} WHERE name GLOB ? ORDER BY name", [glob_prefix(ref)]).fetchall()
        if len(rows) > 1:
            raise _ambiguous("set", ref, [r[1] for r in rows])
        row = rows[0] if rows else None
    if not row:
        names = _column(db, "SELECT name FROM problem_sets ORDER BY name LIMIT 20", [])
        if not names:
            raise GcpoError(f"unknown set {clip(ref)}: no sets ingested yet (gcpo ingest FILE --set NAME)")
        raise GcpoError(fit(f"unknown set {clip(ref)}; sets: ", names))
    return {"id": row[0], "name": row[1], "description": row[2]}
