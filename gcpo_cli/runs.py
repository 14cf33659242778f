"""A training run's state outside the model: its database rows, checkpoints and LR schedule.

Checkpoints are written beside their final name and renamed into place, so a crash never
leaves half of one; `discard_after` is what lets a resume drop the steps a crash lost.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from . import paths
from .db import dumps, new_id
from .errors import GcpoError
from .migrations import STEP_METRICS
from .recipe import Recipe, to_dict


class TrainError(GcpoError, ValueError):
    """A user-fixable problem with a training request (unknown set, nothing to resume...)."""


def create_run(db, recipe: Recipe, data_set: str) -> str:
    run_id = new_id()
    now = paths.utcnow()
    db["runs"].insert(dict(
        id=run_id, recipe=recipe.name, recipe_json=dumps(to_dict(recipe)), model=recipe.model.name,
        algorithm=recipe.algorithm, data_set=data_set, seed=recipe.seed, status="running",
        steps_planned=recipe.steps, last_step=0, checkpoint_step=0, out_dir=str(paths.run_dir(run_id)),
        error=None, created_at=now, updated_at=now))
    return run_id


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step}"


def save_checkpoint(db, run_id: str, out_dir: str, step: int, model, optimizer, scheduler) -> Path:
    """Adapter + optimiser state, written beside and renamed into place: never half a checkpoint.
    Only the newest checkpoint keeps its optimiser state (the only one a resume needs)."""
    import torch

    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
               tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    # Point the run at the new checkpoint before pruning the old one's optimiser state: a crash
    # between the two must leave the database naming a complete checkpoint.
    db["runs"].update(run_id, dict(checkpoint_step=step, updated_at=paths.utcnow()))
    for other in final.parent.glob("step-*"):
        if other != final and (other / "trainer_state.pt").exists():
            (other / "trainer_state.pt").unlink()
    return final


def discard_after(db, run_id: str, step: int) -> int:
    """Delete what was recorded after the checkpoint a resume restarts from (lost work)."""
    with db.atomic():
        n = db.execute("SELECT COUNT(*) FROM steps WHERE run_id = ? AND step > ?", [run_id, step]).fetchone()[0]
        db.execute("DELETE FROM rollouts WHERE run_id = ? AND step > ?", [run_id, step])
        db.execute("DELETE FROM steps WHERE run_id = ? AND step > ?", [run_id, step])
        db["runs"].update(run_id, dict(last_step=step, updated_at=paths.utcnow()))
    return n


def record_step(db, run_id: str, step: int, seqs: list, metrics: dict) -> None:
    """Every rollout (train.Seq) of a step and the step's metrics, all or nothing."""
    rows = [dict(run_id=run_id, step=step, problem_id=s.problem_id, sample_index=s.sample_index,
                 completion=s.text, extracted_answer=s.extracted, reward=s.reward, correct=int(s.correct),
                 tokens=len(s.completion_ids), truncated=int(s.truncated), is_golden=int(s.is_golden),
                 advantage=s.adv, seq_ratio=s.seq_ratio) for s in seqs]
    step_row = {k: metrics.get(k) for k in STEP_METRICS}
    step_row.update(run_id=run_id, step=step, metrics_json=dumps(metrics), created_at=paths.utcnow())
    with db.atomic():  # all of a step or none of it
        db["rollouts"].insert_all(rows, batch_size=500)
        db["steps"].insert(step_row)
        db["runs"].update(run_id, dict(last_step=step, updated_at=paths.utcnow()))


def make_scheduler(optimizer, recipe: Recipe):
    import torch

    def factor(i: int) -> float:
        if recipe.warmup_steps and i < recipe.warmup_steps:
            return (i + 1) / recipe.warmup_steps
        t = (i - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        if recipe.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if recipe.lr_schedule == "linear":
            return max(0.0, 1 - t)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_run(db, prefix: str) -> dict:
    rows = list(db.query("SELECT * FROM runs WHERE id LIKE ? ORDER BY id", [prefix + "%"]))
    if not rows:
        raise TrainError(f"no run with id '{prefix}' (see gcpo runs)")
    if len(rows) > 1 and not any(r["id"] == prefix for r in rows):
        raise TrainError(f"run id '{prefix}' is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
    return next((r for r in rows if r["id"] == prefix), rows[0])
