"""Golden answers as `gcpo golden` makes, imports and chooses them (issue 15): generations and the
problems they tried, candidates with their provenance, which candidate of a problem is active,
coverage per origin, and the rollouts in which training injected each one."""

from __future__ import annotations

from sqlite_utils import Database

from ..errors import GcpoError
from ..recipe import GOLDEN_ORIGINS
from .db import IN_CHUNK, dumps, loads, new_id, rows_in, utcnow, write
from .resolve import MAX_CANDIDATES, clip, fit, glob_prefix, resolve_problem, resolve_set

ANY = "any"  # the recipe's golden_origin that takes either: the dataset's, else the teacher's
STORED_ORIGINS = tuple(o for o in GOLDEN_ORIGINS if o != ANY)  # a stored answer's origin column

# The active teacher candidate of a problem (gcpo_cli/golden.py says why this rule): its shortest
# verified one, by characters; ties go to the earliest.
_ACTIVATE = """
UPDATE golden_answers SET active = (id IS (
  SELECT g.id FROM golden_answers g WHERE g.problem_id = golden_answers.problem_id AND g.origin = 'teacher'
   AND g.verified = 1 ORDER BY length(g.text), g.created_at, g.id LIMIT 1))
WHERE origin = 'teacher' AND problem_id IN ({ids})"""
_INSERT = ("INSERT OR IGNORE INTO golden_answers (id, problem_id, text, final_answer, source_file, verified,"
           " created_at, origin, active, model, params_json, completion_tokens, generation_id) VALUES (:id,"
           " :problem_id, :text, :final_answer, :source_file, :verified, :created_at, 'teacher', 0, :model,"
           " :params_json, :completion_tokens, :generation_id)")
_COLUMNS = ("g.id, g.problem_id, sp.source_id, sp.position, g.origin, g.source_file, g.model, g.params_json,"
            " g.verified, g.active, g.completion_tokens, g.final_answer, g.text, g.generation_id, g.derived_from,"
            " g.created_at")


# ------------------------------------------------------------------------------------- writing

def open_generation(db: Database, *, set_name: str, teacher: str, params: dict) -> tuple[str, set[str]]:
    """(id, problems it already tried): the newest unfinished generation with the same set,
    teacher and settings, else a new one."""
    pj, now = dumps(params), utcnow()
    with write(db):
        row = db.execute("SELECT id FROM golden_generations WHERE set_name = ? AND teacher = ? AND params_json = ?"
                         " AND status != 'completed' ORDER BY created_at DESC LIMIT 1",
                         [set_name, teacher, pj]).fetchone()
        if row is None:
            generation_id = new_id()
            db.conn.execute("INSERT INTO golden_generations (id, set_name, teacher, params_json, metrics_json, status,"
                            " created_at, updated_at) VALUES (?, ?, ?, ?, NULL, 'running', ?, ?)",
                            [generation_id, set_name, teacher, pj, now, now])
            return generation_id, set()
        generation_id = row[0]
        db.conn.execute("UPDATE golden_generations SET status = 'running', updated_at = ? WHERE id = ?",
                        [now, generation_id])
    return generation_id, {r[0] for r in db.execute(
        "SELECT problem_id FROM golden_attempts WHERE generation_id = ?", [generation_id])}


def _activate(db: Database, problem_ids) -> None:
    ids = sorted(set(problem_ids))
    for at in range(0, len(ids), IN_CHUNK):
        chunk = ids[at:at + IN_CHUNK]
        db.conn.execute(_ACTIVATE.format(ids=",".join("?" * len(chunk))), chunk)


def write_attempts(db: Database, generation_id: str, attempts: list[dict], candidates: list[dict]) -> int:
    """One batch of a generation, all or nothing: the problems tried ({problem_id, samples,
    correct}) and their verified candidates ({id, problem_id, text, final_answer, source_file,
    model, params_json, completion_tokens}); then the active candidate of those problems. Returns how
    many candidates were new (a text a problem already has is not stored twice)."""
    now = utcnow()
    with write(db):
        db.conn.executemany("INSERT OR IGNORE INTO golden_attempts (generation_id, problem_id, samples, correct,"
                            " created_at) VALUES (?, ?, ?, ?, ?)",
                            [(generation_id, a["problem_id"], a["samples"], a["correct"], now) for a in attempts])
        added = db.conn.executemany(_INSERT, [dict(c, verified=1, created_at=now, generation_id=generation_id)
                                              for c in candidates]).rowcount
        _activate(db, [c["problem_id"] for c in candidates])
        db.conn.execute("UPDATE golden_generations SET updated_at = ? WHERE id = ?", [now, generation_id])
    return max(added, 0)


def write_imported(db: Database, candidates: list[dict]) -> int:
    """Imported candidates ({id, problem_id, text, final_answer, source_file, verified, model,
    params_json}) in one transaction, then the active candidate of their problems; returns how
    many were new."""
    now = utcnow()
    with write(db):
        added = db.conn.executemany(_INSERT, [dict(c, created_at=now, completion_tokens=None, generation_id=None)
                                              for c in candidates]).rowcount
        _activate(db, [c["problem_id"] for c in candidates])
    return max(added, 0)


def finish_generation(db: Database, generation_id: str, metrics: dict) -> None:
    with write(db):
        db.conn.execute("UPDATE golden_generations SET status = 'completed', metrics_json = ?, updated_at = ?"
                        " WHERE id = ?", [dumps(metrics), utcnow(), generation_id])


def mark_generation_interrupted(db: Database, generation_id: str) -> None:
    with write(db):
        db.conn.execute("UPDATE golden_generations SET status = 'interrupted', updated_at = ? WHERE id = ?",
                        [utcnow(), generation_id])


# ------------------------------------------------------------------------------------- reading

def generation_attempts(db: Database, generation_id: str) -> list[dict]:
    """{problem_id, samples, correct} of every problem the generation tried."""
    return list(db.query("SELECT problem_id, samples, correct FROM golden_attempts WHERE generation_id = ?"
                         " ORDER BY id", [generation_id]))


def generation_candidates(db: Database, generation_id: str) -> int:
    return db.execute("SELECT COUNT(*) FROM golden_answers WHERE generation_id = ?", [generation_id]).fetchone()[0]


def _chosen(rows) -> dict[tuple[str, str], dict]:
    """(problem id, origin) -> its active candidate, from rows ordered (active DESC, created_at,
    id): the one flagged active, else (dataset answers, which ingest never flags) the first
    verified one, as training used before golden answers had an origin. Unverified ones never."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["verified"] == 1:
            out.setdefault((r["problem_id"], r["origin"]), r)
    return out


def _set_golden(db: Database, set_name: str, problem_ids: list[str] | None = None) -> list[dict]:
    sql = (f"SELECT {_COLUMNS} FROM golden_answers g JOIN set_problems sp ON sp.problem_id = g.problem_id"
           " JOIN problem_sets s ON s.id = sp.set_id WHERE s.name = ?")
    order = " ORDER BY g.active DESC, g.created_at, g.id"
    if problem_ids is None:
        return list(db.query(sql + order, [set_name]))
    return sorted(rows_in(db, sql + " AND g.problem_id IN ({ids})", problem_ids, [set_name]),
                  key=lambda r: (-r["active"], r["created_at"], r["id"]))


def pick(chosen: dict[tuple[str, str], dict], problem_id: str, origin: str) -> dict | None:
    """The candidate the recipe's golden_origin `origin` injects: that origin's active one; "any":
    the dataset's, else the teacher's (a reference solution first, a teacher's where there is none)."""
    if origin == ANY:
        return next((chosen[problem_id, o] for o in STORED_ORIGINS if (problem_id, o) in chosen), None)
    return chosen.get((problem_id, origin))


def active_golden(db: Database, set_name: str, origin: str = ANY) -> dict[str, dict]:
    """problem id -> the golden answer training injects for it under golden_origin `origin`
    ({id, text, origin, ...}), for the set's problems that have one."""
    if origin not in GOLDEN_ORIGINS:
        raise GcpoError(f"golden origin {origin!r} is not one of {', '.join(GOLDEN_ORIGINS)}")
    chosen = _chosen(_set_golden(db, set_name))
    out = {}
    for pid in dict.fromkeys(p for p, _ in chosen):
        g = pick(chosen, pid, origin)
        if g is not None:
            out[pid] = g
    return out


def candidates(db: Database, set_name: str, problem_ids: list[str] | None = None) -> list[dict]:
    """Every golden answer of the set's problems (or of `problem_ids`) with its provenance, in
    set order, each with "active" as training would choose it within its origin."""
    rows = _set_golden(db, set_name, problem_ids)
    chosen = {g["id"] for g in _chosen(rows).values()}
    out = []
    for r in rows:
        r = dict(r, active=r["id"] in chosen, verified=bool(r["verified"]))
        r["params"] = loads(r.pop("params_json"))
        out.append(r)
    rank = {o: i for i, o in enumerate(STORED_ORIGINS)}
    return sorted(out, key=lambda r: (r["position"], rank.get(r["origin"], len(rank)), not r["active"],
                                      r["created_at"], r["id"]))


def problems_with_verified(db: Database, set_name: str) -> set[str]:
    """The set's problems that have a verified golden answer of any origin."""
    return {r[0] for r in db.execute(
        "SELECT DISTINCT g.problem_id FROM golden_answers g JOIN set_problems sp ON sp.problem_id = g.problem_id"
        " JOIN problem_sets s ON s.id = sp.set_id WHERE s.name = ? AND g.verified = 1", [set_name])}


_COVERAGE = """
SELECT s.name, COUNT(DISTINCT sp.problem_id),
  COUNT(DISTINCT CASE WHEN g.origin = 'dataset' THEN g.problem_id END),
  COUNT(DISTINCT CASE WHEN g.origin = 'teacher' THEN g.problem_id END),
  COUNT(DISTINCT g.problem_id)
FROM problem_sets s JOIN set_problems sp ON sp.set_id = s.id
LEFT JOIN golden_answers g ON g.problem_id = sp.problem_id AND g.verified = 1
{where} GROUP BY s.id"""


def coverage(db: Database, set_name: str | None = None) -> dict[str, dict]:
    """set name -> {problems, dataset, teacher, any}: how many of its problems have a verified
    golden answer of each origin (any: of either); every set, or the one named."""
    where, args = ("WHERE s.name = ?", [set_name]) if set_name is not None else ("", [])
    return {name: dict(problems=n, dataset=d, teacher=t, any=a)
            for name, n, d, t, a in db.execute(_COVERAGE.format(where=where), args)}


def golden_rollouts(db: Database, problem_ids) -> list[dict]:
    """Every injected golden answer of these problems: {problem_id, run_id, step, completion}."""
    return sorted(rows_in(db, "SELECT problem_id, run_id, step, completion FROM rollouts WHERE is_golden = 1"
                              " AND problem_id IN ({ids})", set(problem_ids)),
                  key=lambda r: (r["problem_id"], r["run_id"], r["step"]))


def sampled_groups(db: Database, problem_ids) -> list[dict]:
    """Each (problem, run, step) group of sampled rollouts: {problem_id, run_id, step, k, n}, k
    correct of n (the golden answer not counted)."""
    return sorted(rows_in(db, "SELECT problem_id, run_id, step, COUNT(*) AS n, ifnull(SUM(correct), 0) AS k"
                              " FROM rollouts WHERE ifnull(is_golden, 0) = 0 AND problem_id IN ({ids})"
                              " GROUP BY problem_id, run_id, step", set(problem_ids)),
                  key=lambda r: (r["problem_id"], r["run_id"], r["step"]))


def resolve_golden(db: Database, ref: str, set_name: str | None = None) -> tuple[str, str | None]:
    """What `ref` names: a golden answer by its exact id, else a problem (store.resolve_problem's
    ways), else a golden answer by a unique id prefix; the problem in `set_name` if given.
    Returns (problem id, golden id or None)."""
    ref = ref.strip()
    if not ref:
        raise GcpoError("empty golden answer id; pass a golden answer id or a problem id, prefix or text")
    row = db.execute("SELECT problem_id, id FROM golden_answers WHERE id = ?", [ref]).fetchone()
    if row is None:
        try:
            row = (resolve_problem(db, ref), None)
        except GcpoError as e:
            ids = [r[0] for r in db.execute("SELECT id FROM golden_answers WHERE id GLOB ? ORDER BY id LIMIT ?",
                                            [glob_prefix(ref), MAX_CANDIDATES + 1])]
            if len(ids) > 1:
                raise GcpoError(fit(f"ambiguous golden answer {clip(ref)}: {len(ids)} match: ",
                                    ids[:MAX_CANDIDATES])) from None
            if not ids:
                raise GcpoError(f"{e} (nor a golden answer id)") from None
            row = db.execute("SELECT problem_id, id FROM golden_answers WHERE id = ?", [ids[0]]).fetchone()
    pid, gid = row[0], row[1]
    if set_name is not None:
        set_id = resolve_set(db, set_name)["id"]
        if not db.execute("SELECT 1 FROM set_problems WHERE set_id = ? AND problem_id = ?", [set_id, pid]).fetchone():
            raise GcpoError(f"problem {pid} is not in set '{set_name}'")
    return pid, gid


def problem_sets(db: Database, problem_id: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT s.name FROM set_problems sp JOIN problem_sets s ON s.id = sp.set_id"
                                     " WHERE sp.problem_id = ? ORDER BY s.name", [problem_id])]
