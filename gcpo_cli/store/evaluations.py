"""Evaluations and their per-sample results: one transaction per batch, so an interrupted
evaluation keeps what it finished and resumes where it stopped. Each sample references its
rendered prompt, stored once per distinct text."""

from __future__ import annotations

import hashlib

from sqlite_utils import Database

from ..errors import GcpoError
from .db import dumps, loads, new_id, utcnow, write
from .resolve import LATEST, MAX_CANDIDATES, clip, fit, glob_prefix


def open_evaluation(db: Database, *, model: str, set_name: str, params: dict, run_id: str | None,
                    run_step: int | None) -> tuple[str, set[str]]:
    """(id, problems already finished): the newest unfinished evaluation with the same model,
    set, run and parameters, else a new one."""
    pj, now = dumps(params), utcnow()
    with write(db):
        row = db.execute(
            "SELECT id FROM evaluations WHERE model = ? AND set_name = ? AND params_json = ?"
            " AND run_id IS ? AND run_step IS ? AND status != 'completed' ORDER BY created_at DESC LIMIT 1",
            [model, set_name, pj, run_id, run_step]).fetchone()
        if row is None:
            evaluation_id = new_id()
            db["evaluations"].insert(dict(id=evaluation_id, model=model, run_id=run_id, run_step=run_step,
                                          set_name=set_name, params_json=pj, metrics_json=None,
                                          status="running", created_at=now, updated_at=now))
            return evaluation_id, set()
        evaluation_id = row[0]
        db["evaluations"].update(evaluation_id, dict(status="running", updated_at=now))
    done = {r[0] for r in db.execute("SELECT DISTINCT problem_id FROM eval_results WHERE evaluation_id = ?",
                                     [evaluation_id])}
    return evaluation_id, done


def database_file(db: Database) -> str:
    """The file the database lives in ("" for one in memory): the locks of the jobs that write
    evaluations and golden generations lie beside it (resumable.py)."""
    return next((row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"), "")


def prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_results(db: Database, evaluation_id: str, rows: list[dict]) -> None:
    """rows: {problem_id, sample_index, completion, extracted_answer, correct, completion_tokens,
    truncated, and optionally prompt (its text)}; a batch is stored whole or not at all."""
    now = utcnow()
    texts = {r["prompt"] for r in rows if r.get("prompt") is not None}
    with write(db):
        db.conn.executemany("INSERT OR IGNORE INTO prompts (id, text, created_at) VALUES (?, ?, ?)",
                            [(prompt_id(t), t, now) for t in texts])
        db.conn.executemany(
            "INSERT INTO eval_results (evaluation_id, problem_id, sample_index, completion, extracted_answer,"
            " correct, completion_tokens, truncated, prompt_id, created_at) VALUES (:evaluation_id, :problem_id,"
            " :sample_index, :completion, :extracted_answer, :correct, :completion_tokens, :truncated, :prompt_id,"
            " :created_at)",
            [{**{k: v for k, v in r.items() if k != "prompt"}, "evaluation_id": evaluation_id, "created_at": now,
              "prompt_id": prompt_id(r["prompt"]) if r.get("prompt") is not None else None} for r in rows])
        db.conn.execute("UPDATE evaluations SET updated_at = ? WHERE id = ?", [now, evaluation_id])


def results(db: Database, evaluation_id: str) -> list[dict]:
    """The stored samples {problem_id, extracted_answer, correct, completion_tokens, truncated}."""
    return list(db.query("SELECT problem_id, extracted_answer, correct, completion_tokens, truncated"
                         " FROM eval_results WHERE evaluation_id = ? ORDER BY problem_id, sample_index",
                         [evaluation_id]))


def finish(db: Database, evaluation_id: str, metrics: dict) -> None:
    with write(db):
        db["evaluations"].update(evaluation_id, dict(status="completed", metrics_json=dumps(metrics),
                                                     updated_at=utcnow()))


def mark_interrupted(db: Database, evaluation_id: str) -> None:
    try:
        with write(db):
            db["evaluations"].update(evaluation_id, dict(status="interrupted", updated_at=utcnow()))
    except Exception:  # the database may be what failed; the original error matters more
        pass


def for_run(db: Database, run_id: str) -> list[dict]:
    """A run's evaluations (its held-out checks and each `gcpo eval --run`), by step then age,
    with their parameters and metrics decoded."""
    rows = list(db.query("SELECT id, model, set_name, run_step, status, params_json, metrics_json, created_at"
                         " FROM evaluations WHERE run_id = ? ORDER BY run_step, created_at, id", [run_id]))
    for r in rows:
        r["params"], r["metrics"] = loads(r.pop("params_json")) or {}, loads(r.pop("metrics_json")) or {}
    return rows


def listing(db: Database, limit: int) -> list[dict]:
    """The newest `limit` evaluations, newest first, with their parameters and metrics decoded
    (metrics None until one finishes)."""
    rows = list(db.query("SELECT id, model, run_id, run_step, set_name, status, params_json, metrics_json,"
                         " created_at, updated_at FROM evaluations ORDER BY created_at DESC, id DESC LIMIT ?",
                         [limit]))
    for r in rows:
        r["params"], r["metrics"] = loads(r.pop("params_json")) or {}, loads(r.pop("metrics_json"))
    return rows


def set_size(db: Database, set_name: str) -> int | None:
    """How many problems the set holds now (None: no such set any more)."""
    row = db.execute("SELECT COUNT(sp.problem_id) FROM problem_sets ps LEFT JOIN set_problems sp ON sp.set_id = ps.id"
                     " WHERE ps.name = ? GROUP BY ps.id", [set_name]).fetchone()
    return None if row is None else row[0]


def resolve(db: Database, ref: str) -> dict:
    """An evaluation's row (params and metrics decoded), by exact id, `latest` (the newest) or
    unique prefix."""
    ref = ref.strip()
    ids = [r[0] for r in db.execute("SELECT id FROM evaluations WHERE id = ?", [ref])] if ref else []
    if not ids and ref == LATEST:
        ids = [r[0] for r in db.execute("SELECT id FROM evaluations ORDER BY created_at DESC, id DESC LIMIT 1")]
        if not ids:
            raise GcpoError("no evaluations recorded yet, so no latest evaluation (gcpo eval ...)")
    if not ids and ref:
        ids = [r[0] for r in db.execute("SELECT id FROM evaluations WHERE id GLOB ? ORDER BY created_at DESC"
                                        " LIMIT ?", [glob_prefix(ref), MAX_CANDIDATES + 1])]
    if len(ids) > 1:
        raise GcpoError(fit(f"ambiguous evaluation {clip(ref)}: {len(ids)} match: ", ids[:MAX_CANDIDATES]))
    if not ids:
        recent = [r[0] for r in db.execute("SELECT id FROM evaluations ORDER BY created_at DESC LIMIT 6")]
        if not recent:
            raise GcpoError(f"unknown evaluation {clip(ref)}: no evaluations recorded yet (gcpo eval ...)")
        raise GcpoError(fit(f"unknown evaluation {clip(ref)}; recent: ", recent))
    row = db["evaluations"].get(ids[0])
    return dict(row, params=loads(row["params_json"]) or {}, metrics=loads(row["metrics_json"]))


def samples(db: Database, evaluation_id: str) -> list[dict]:
    """Every stored sample of an evaluation with what an export needs: the problem (its id, the
    source file's own id, text and gold answer), the rendered prompt and the grade."""
    return list(db.query(
        "SELECT e.id AS evaluation_id, e.model, e.set_name, er.problem_id, sp.source_id, p.text AS problem,"
        " p.answer AS gold, er.sample_index, pr.text AS prompt, er.completion, er.extracted_answer, er.correct,"
        " er.completion_tokens, er.truncated"
        " FROM eval_results er JOIN evaluations e ON e.id = er.evaluation_id"
        " JOIN problems p ON p.id = er.problem_id"
        " LEFT JOIN prompts pr ON pr.id = er.prompt_id"
        " LEFT JOIN problem_sets ps ON ps.name = e.set_name"
        " LEFT JOIN set_problems sp ON sp.set_id = ps.id AND sp.problem_id = er.problem_id"
        " WHERE er.evaluation_id = ? ORDER BY sp.position, er.problem_id, er.sample_index", [evaluation_id]))
