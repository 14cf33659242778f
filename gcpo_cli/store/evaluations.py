"""Evaluations and their per-sample results: one transaction per batch, so an interrupted
evaluation keeps what it finished and resumes where it stopped."""

from __future__ import annotations

from sqlite_utils import Database

from .db import dumps, new_id, utcnow, write


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


def write_results(db: Database, evaluation_id: str, rows: list[dict]) -> None:
    """rows: {problem_id, sample_index, completion, extracted_answer, correct, completion_tokens,
    truncated}; a batch is stored whole or not at all."""
    now = utcnow()
    with write(db):
        db.conn.executemany(
            "INSERT INTO eval_results (evaluation_id, problem_id, sample_index, completion, extracted_answer,"
            " correct, completion_tokens, truncated, created_at) VALUES (:evaluation_id, :problem_id,"
            " :sample_index, :completion, :extracted_answer, :correct, :completion_tokens, :truncated, :created_at)",
            [dict(r, evaluation_id=evaluation_id, created_at=now) for r in rows])
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
