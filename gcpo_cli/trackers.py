"""Experiment trackers (`--report-to`, recipe key `report_to`): every step's metrics and the
held-out evaluations mirrored into TensorBoard, Trackio or Weights & Biases, with the resolved
recipe as the run's config.

The database stays the source of truth: a tracker gets a copy of what was just committed, after
the commit, so a tracker that fails (no network, a full disk) costs one warning line and its
own mirror, never the run. Each tracker is an optional extra (`pip install 'gcpo-cli[wandb]'`);
a missing one is one clear line before anything is loaded. Only the process that writes the
database reports (rank 0 under torchrun).

    tensorboard  event files in the run's folder (OUT_DIR/tensorboard): tensorboard --logdir OUT_DIR
    trackio      the local Trackio store (project "gcpo", run named by the run id): trackio show
    wandb        project $WANDB_PROJECT or "gcpo", run id = gcpo's run id; WANDB_MODE=offline works

Tags: train/<metric> per step (the `steps` table's names), and the same under TRL's names where
they differ (TRL_NAMES: train/reward, train/completions/mean_length, train/clip_ratio/low_mean,
...), so a dashboard built for TRL reads a gcpo run; eval/<metric> for the held-out evaluation
and eval/<set>/<metric> for each of eval.benchmarks, at step 0 (before) and the last step
(after). With `log_completions: N`, every N steps a table of the step's completions (problem,
completion, reward, advantage, golden or not), as TRL's log_completions. A resumed run continues the same
tracker run; TensorBoard drops what it had logged after the checkpoint (purge_step), as the
database does.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

from .errors import GcpoError

TRACKERS = ("tensorboard", "trackio", "wandb")
PROJECT = "gcpo"
# The held-out summary's bookkeeping fields, not measurements.
NOT_METRICS = {"run_step", "resumed", "evaluation_id"}
# gcpo's step metric -> the name TRL's GRPOTrainer logs the same quantity under (trl 0.2x-1.x)
TRL_NAMES = {
    "reward_mean": "reward", "completion_tokens_mean": "completions/mean_length",
    "truncation_rate": "completions/clipped_ratio", "clip_frac": "clip_ratio/region_mean",
    "clip_low_frac": "clip_ratio/low_mean", "clip_high_frac": "clip_ratio/high_mean", "lr": "learning_rate",
}
COMPLETION_COLUMNS = ("step", "problem", "completion", "reward", "advantage", "golden")


def check(names) -> None:
    """One clear line when a tracker's package is not installed (before any model loads)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise GcpoError(f"--report-to {name} needs the {name} package: pip install 'gcpo-cli[{name}]'")


def numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of `values` as {prefix/key: value} ({key: value} without a prefix);
    None, text and NaN are left out."""
    return {f"{prefix}/{k}" if prefix else k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k not in NOT_METRICS}


class Trackers:
    """The run's trackers; every call is a no-op without any."""

    def __init__(self, names, *, run_id: str, config: dict, out_dir: str, start_step: int = 0, warn=print):
        self.warn = warn
        self.live: dict[str, object] = {}
        for name in names:
            self._guard(name, lambda n=name: self.live.__setitem__(
                n, OPEN[n](run_id=run_id, config=config, out_dir=out_dir, start_step=start_step)))

    def _guard(self, name: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # the database has the numbers; the mirror stops, the run goes on
            self.live.pop(name, None)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            self.warn(f"warning: {name} tracking stopped ({first}); the database still records every step")

    def log(self, step: int, metrics: dict) -> None:
        values = numbers(metrics, "train")  # "train/<metric>"; TRL's names for those it has, too
        values.update({f"train/{TRL_NAMES[m]}": v for m, v in numbers(metrics).items() if m in TRL_NAMES})
        self._log(step, values)

    def log_completions(self, step: int, rows: list[tuple]) -> None:
        """A table of a step's completions, one row per COMPLETION_COLUMNS."""
        for name, tracker in list(self.live.items()):
            self._guard(name, lambda t=tracker: t.table(step, rows))

    def log_eval(self, step: int, summary: dict | None, set_name: str | None = None) -> None:
        """An evaluation's metrics: the held-out set's as eval/..., a benchmark's as eval/SET/..."""
        if summary:
            self._log(step, numbers(summary, f"eval/{set_name}" if set_name else "eval"))

    def _log(self, step: int, values: dict) -> None:
        for name, tracker in list(self.live.items()):
            self._guard(name, lambda t=tracker: t.log(step, values))

    def close(self) -> None:
        for name, tracker in list(self.live.items()):
            self._guard(name, tracker.close)
        self.live.clear()


class TensorBoard:
    def __init__(self, *, run_id: str, config: dict, out_dir: str, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run re-does the steps after its checkpoint; their old events go
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("recipe", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
            self.writer.add_text("run_id", run_id, 0)

    def log(self, step: int, values: dict) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # `tensorboard --logdir` shows a step as soon as the database has it

    def table(self, step: int, rows: list[tuple]) -> None:
        def cell(v):
            return str(v).replace("|", "\\|").replace("\n", "<br>")

        lines = ["| " + " | ".join(COMPLETION_COLUMNS) + " |", "|" + "---|" * len(COMPLETION_COLUMNS)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text("completions", "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Trackio:
    def __init__(self, *, run_id: str, config: dict, out_dir: str, start_step: int):
        import trackio

        self.trackio = trackio
        trackio.init(project=PROJECT, name=run_id, config=config, resume="allow")

    def log(self, step: int, values: dict) -> None:
        self.trackio.log(values, step=step)

    def table(self, step: int, rows: list[tuple]) -> None:
        table = self.trackio.Table(columns=list(COMPLETION_COLUMNS), data=[list(r) for r in rows],
                                   allow_mixed_types=True)
        self.trackio.log({"completions": table}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class Wandb:
    def __init__(self, *, run_id: str, config: dict, out_dir: str, start_step: int):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, id=run_id, name=run_id,
                              config=config, resume="allow", dir=out_dir)

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def table(self, step: int, rows: list[tuple]) -> None:
        import wandb

        self.run.log({"completions": wandb.Table(columns=list(COMPLETION_COLUMNS), data=[list(r) for r in rows])},
                     step=step)

    def close(self) -> None:
        self.run.finish()


OPEN = {"tensorboard": TensorBoard, "trackio": Trackio, "wandb": Wandb}
