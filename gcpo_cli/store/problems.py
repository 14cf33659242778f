"""Problem sets, problems, golden answers and ingests: reads and writes."""

from __future__ import annotations

from sqlite_utils import Database

from ..recipe import GOLDEN_ORIGINS
from ..records import Problem
from ..texts import check_set_name
from .db import rows_in
from .golden import ANY, active_golden, coverage
from .resolve import resolve_set

_SETS_SQL = """
SELECT s.name, s.created_at, COUNT(sp.problem_id) AS problems,
  COALESCE(SUM(g.problem_id IS NOT NULL), 0) AS with_golden,
  COALESCE(SUM(g.verified), 0) AS verified
FROM problem_sets s
LEFT JOIN set_problems sp ON sp.set_id = s.id
LEFT JOIN (SELECT problem_id, MAX(verified) AS verified FROM golden_answers GROUP BY problem_id) g
  ON g.problem_id = sp.problem_id
GROUP BY s.id ORDER BY s.name
"""
GOLDEN_STATUS = {None: "none", 0: "unverified", 1: "verified"}


def set_problems(db: Database, set_ref: str, limit: int | None = None,
                 golden_origin: str | None = None) -> tuple[str, list[Problem]]:
    """(the set's name, its problems in ingest order, the first `limit`), each with its id in
    the set's file; with `golden_origin` (any, dataset or teacher) each also carries the verified
    golden answer of that origin training injects, or None."""
    s = resolve_set(db, set_ref)
    sql = ("SELECT p.id, p.text, p.answer, sp.source_id FROM set_problems sp JOIN problems p ON p.id = sp.problem_id"
           " WHERE sp.set_id = ? ORDER BY sp.position" + (" LIMIT ?" if limit is not None else ""))
    golden = verified_golden(db, s["name"], golden_origin) if golden_origin else {}
    return s["name"], [Problem(golden=golden.get(r["id"]), **r)
                       for r in db.query(sql, [s["id"]] + ([limit] if limit is not None else []))]


def has_problems(db: Database, set_name: str) -> bool:
    return db.execute("SELECT 1 FROM problem_sets s JOIN set_problems sp ON sp.set_id = s.id"
                      " WHERE s.name = ? LIMIT 1", [set_name]).fetchone() is not None


def verified_golden(db: Database, set_name: str, origin: str = ANY) -> dict[str, str]:
    """problem id -> the text of the golden answer training injects, for the set's problems: the
    active verified one of the origin the recipe's golden_origin names (dataset: from ingest, its
    first verified one; teacher: made or imported by `gcpo golden`; any: the dataset's, else the
    teacher's). An unverified one is never used: it could teach a wrong answer."""
    return {pid: g["text"] for pid, g in active_golden(db, set_name, origin).items()}


def golden_answers(db: Database, problem_ids: list[str]) -> dict[str, list[dict]]:
    """problem id -> its golden answers {text, final_answer}, in id order. A worked solution that
    ingest completed with its row's final answer (`derived_from`) is left out: the completed one
    stands for it, as it does in training, and the original, which states no answer, would grade
    as a wrong one (issue 25 item 8)."""
    out: dict[str, list[dict]] = {}
    for r in rows_in(db, "SELECT problem_id, text, final_answer FROM golden_answers g WHERE problem_id IN ({ids})"
                         " AND NOT EXISTS (SELECT 1 FROM golden_answers d WHERE d.derived_from = g.id)"
                         " ORDER BY problem_id, id", problem_ids):
        out.setdefault(r.pop("problem_id"), []).append(r)
    return out


def problem_texts(db: Database, ids) -> dict[str, str]:
    return {r["id"]: r["text"] for r in rows_in(db, "SELECT id, text FROM problems WHERE id IN ({ids})", set(ids))}


def stored_answers(db: Database, ids) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in rows_in(db, "SELECT id, answer FROM problems WHERE id IN ({ids})", set(ids))}


def list_sets(db: Database) -> list[dict]:
    """Every set with its size, golden-answer coverage, verified share and sources; "coverage":
    its problems with a verified golden answer from the dataset, from a teacher, and from either
    (the numbers `gcpo golden report` gives)."""
    rows = []
    by_origin = coverage(db)
    for name, created, n, golden, verified in db.execute(_SETS_SQL).fetchall():
        c = by_origin.get(name, {})
        rows.append({"name": name, "problems": n, "with_golden": golden, "verified": verified,
                     "golden_coverage": round(golden / n, 4) if n else 0.0,
                     "verified_share": round(verified / golden, 4) if golden else 0.0,
                     "coverage": {k: c.get(k, 0) for k in GOLDEN_ORIGINS},
                     "sources": set_sources(db, name), "created_at": created})
    return rows


def list_problems(db: Database, set_ref: str, search: str | None, limit: int) -> list[dict]:
    """A set's problems (by position, or by full-text rank with `search`), with golden status."""
    set_id = resolve_set(db, set_ref)["id"]
    sql = ("SELECT p.id, sp.position, sp.source_id, p.text, p.answer, p.metadata_json,"
           " (SELECT MAX(g.verified) FROM golden_answers g WHERE g.problem_id = p.id) AS golden"
           " FROM set_problems sp JOIN problems p ON p.id = sp.problem_id")
    if search is not None:
        sql += (" JOIN problems_fts f ON f.rowid = p.rowid WHERE sp.set_id = ? AND problems_fts MATCH ?"
                " ORDER BY f.rank LIMIT ?")
        args = [set_id, db.quote_fts(search), limit]
    else:
        sql += " WHERE sp.set_id = ? ORDER BY sp.position LIMIT ?"
        args = [set_id, limit]
    return [dict(r, golden=GOLDEN_STATUS[r["golden"]]) for r in db.query(sql, args)]


def set_sources(db: Database, set_name: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT i.source FROM ingests i JOIN problem_sets s ON s.id = i.set_id"
                                     " WHERE s.name = ? ORDER BY i.id", [set_name])]


def prior_ingest(db: Database, set_name: str, fingerprint: str) -> dict | None:
    """The first ingest of this exact source into this set, if there was one."""
    return next(db.query("SELECT i.added, i.present, i.rejected FROM ingests i JOIN problem_sets s ON s.id = i.set_id"
                         " WHERE s.name = ? AND i.fingerprint = ? ORDER BY i.id LIMIT 1", [set_name, fingerprint]),
                None)


def require_set_name(name: str | None) -> str:
    """The name of a set to create or add to, as texts.check_set_name allows (issue 27 item 9)."""
    return check_set_name(name)
