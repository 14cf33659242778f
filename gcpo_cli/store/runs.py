"""Training runs: their rows, steps and rollouts, written so that a crash never leaves part of a
step, and read back for `gcpo runs`, the curriculum and resuming."""

from __future__ import annotations

import sys
from array import array

from sqlite_utils import Database

from ..checkpoints import is_live
from ..records import Rollout, row
from .db import dumps, new_id, utcnow, write

# Columns of `steps` that are not a metric: the rest of the table's columns are metrics with a
# column of their own (migrations m001, m003, m004), read from the schema, so a metric gains a
# column by its migration alone; every metric is also in the step's metrics_json.
STEP_KEYS = ("id", "run_id", "step", "metrics_json", "created_at")


def step_columns(db: Database) -> tuple[str, ...]:
    """The metrics that have a column of their own in `steps`, in schema order."""
    return tuple(c for c in db["steps"].columns_dict if c not in STEP_KEYS)


def pack_logprobs(values: list[float] | None) -> bytes | None:
    """A completion's per-token log-probs as stored (rollouts.sampler_logprobs, m008)."""
    if values is None:
        return None
    packed = array("f", values)
    if sys.byteorder == "big":  # stored little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def unpack_logprobs(blob: bytes | None) -> list[float] | None:
    if blob is None:
        return None
    out = array("f")
    out.frombytes(blob)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tolist()


def create_run(db: Database, *, recipe: dict, set_name: str, out_dir: str, run_id: str | None = None) -> str:
    run_id = run_id or new_id()
    now = utcnow()
    with write(db):
        db["runs"].insert(dict(
            id=run_id, recipe=recipe["name"], recipe_json=dumps(recipe), model=recipe["model"]["name"],
            algorithm=recipe["algorithm"], set_name=set_name, seed=recipe["seed"], status="running",
            steps_planned=recipe["steps"], last_step=0, checkpoint_step=0, out_dir=out_dir, error=None,
            created_at=now, updated_at=now))
    return run_id


def restart_run(db: Database, run_id: str, *, checkpoint_step: int, recipe: dict) -> int:
    """Mark a run running again from its checkpoint, dropping what was recorded after it (work
    a crash lost); returns how many steps were dropped."""
    with write(db):
        dropped = db.execute("SELECT COUNT(*) FROM steps WHERE run_id = ? AND step > ?",
                             [run_id, checkpoint_step]).fetchone()[0]
        db.execute("DELETE FROM rollouts WHERE run_id = ? AND step > ?", [run_id, checkpoint_step])
        db.execute("DELETE FROM steps WHERE run_id = ? AND step > ?", [run_id, checkpoint_step])
        db["runs"].update(run_id, dict(last_step=checkpoint_step, status="running", error=None,
                                       steps_planned=recipe["steps"], recipe_json=dumps(recipe),
                                       updated_at=utcnow()))
    return dropped


def record_step(db: Database, run_id: str, step: int, rollouts: list[Rollout], metrics: dict) -> None:
    """Every rollout of a step (records.Rollout: its recorded fields are the columns) and the
    step's metrics ({name: value}), all or nothing."""
    rows = [dict(row(x), sampler_logprobs=pack_logprobs(x.sampler_logprobs), run_id=run_id, step=step)
            for x in rollouts]
    step_row = {k: metrics.get(k) for k in step_columns(db)}
    step_row.update(run_id=run_id, step=step, metrics_json=dumps(metrics), created_at=utcnow())
    with write(db):
        db["rollouts"].insert_all(rows, batch_size=500)
        db["steps"].insert(step_row)
        db["runs"].update(run_id, dict(last_step=step, updated_at=utcnow()))


def set_checkpoint(db: Database, run_id: str, step: int) -> None:
    with write(db):
        db["runs"].update(run_id, dict(checkpoint_step=step, updated_at=utcnow()))


def set_environment(db: Database, run_id: str, environment: dict) -> None:
    """Where the run (re)started: machine, versions, resolved precision (the newest start wins)."""
    with write(db):
        db["runs"].update(run_id, dict(environment_json=dumps(environment), updated_at=utcnow()))


def set_status(db: Database, run_id: str, status: str, error: str | None = None) -> None:
    """running -> completed | interrupted | failed (with the error that ended it). What a user is
    shown is run_status's reading of it."""
    fields = dict(status=status, updated_at=utcnow())
    if error is not None:
        fields["error"] = error[:500]
    with write(db):
        db["runs"].update(run_id, fields)


def run_status(run: dict) -> str | None:
    """A run's status as every view shows it: "died" for one recorded running whose lock no
    process holds (killed with -9, power lost: checkpoints.lock); else the recorded status.
    The recorded one stays what the trainer reasons with (resume, the run's lock)."""
    status = run.get("status")
    return "died" if status == "running" and not is_live(run.get("out_dir")) else status


def get_run(db: Database, run_id: str) -> dict:
    return db["runs"].get(run_id)


def rewards(db: Database, run_id: str) -> list[float]:
    return [r[0] for r in db.execute("SELECT reward_mean FROM steps WHERE run_id = ? ORDER BY step", [run_id])]


def list_runs(db: Database, limit: int = 20) -> list[dict]:
    """The newest runs, each with its reward per step (recipe_json left out) and its status as
    run_status reads it."""
    runs = list(db.query("SELECT id, recipe, model, algorithm, set_name, seed, status, steps_planned, last_step,"
                         " checkpoint_step, out_dir, error, created_at, updated_at FROM runs"
                         " ORDER BY created_at DESC, id DESC LIMIT ?", [limit]))
    for r in runs:
        r["reward_mean_per_step"] = rewards(db, r["id"])
        r["status"] = run_status(r)
    return runs


def pass_rates(db: Database, run_id: str, window: int) -> dict[str, tuple[int, int, int]]:
    """problem_id -> (correct, attempts, injections): correct among its last `window` sampled
    (non-golden) rollouts in the run, and how often a golden answer was injected for it."""
    rows = db.execute(
        """
        SELECT problem_id, SUM(correct), COUNT(*) FROM (
          SELECT problem_id, correct,
                 ROW_NUMBER() OVER (PARTITION BY problem_id ORDER BY step DESC, sample_index) AS rn
          FROM rollouts WHERE run_id = ? AND is_golden = 0
        ) WHERE rn <= ? GROUP BY problem_id
        """,
        [run_id, window],
    ).fetchall()
    injected = dict(db.execute("SELECT problem_id, COUNT(*) FROM rollouts WHERE run_id = ? AND is_golden = 1"
                               " GROUP BY problem_id", [run_id]).fetchall())
    return {pid: (int(c), int(n), int(injected.get(pid, 0))) for pid, c, n in rows}


def step_curve(db: Database, run_id: str) -> list[dict]:
    """The run's training curve, step by step: the figures a model card summarises."""
    return list(db.query("SELECT step, reward_mean, golden_injections, all_wrong_frac FROM steps"
                         " WHERE run_id = ? ORDER BY step", [run_id]))
