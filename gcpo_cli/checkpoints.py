"""A run's folder on disk: the one place that knows its layout.

    OUT_DIR/checkpoints/step-N/adapter/             PEFT adapter (every checkpoint)
    OUT_DIR/checkpoints/step-N/trainer_state.pt     optimiser + LR schedule (newest only)
    OUT_DIR/run.lock                                held (flock) by the process training the run

A checkpoint is written beside its final name and renamed into place, so a crash never leaves
half of one; the database names a checkpoint only once it is complete. A run's folder must lie
inside GCPO_HOME: a database (perhaps someone else's) that points a run elsewhere is refused
rather than followed. The lock is an OS file lock, so a process that dies for any reason (kill -9,
power loss) releases it; it holds between processes of one host (the database's host, as SQLite
with WAL requires).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from . import paths
from .errors import GcpoError

ROOT = "checkpoints"
PREFIX = "step-"


def run_folder(run: dict) -> Path:
    """The run's folder, checked to lie inside GCPO_HOME (symlinks resolved)."""
    home = paths.home().resolve()
    folder = Path(run["out_dir"] or "").resolve()
    if not run["out_dir"] or not folder.is_relative_to(home):
        raise GcpoError(f"run {run['id']} keeps its files in {run['out_dir']}, outside GCPO_HOME ({home}); "
                        "refusing to load from there (set GCPO_HOME to the home that holds it)")
    return folder


def lock(out_dir: str | Path, run_id: str):
    """Hold the run's lock for as long as the returned file stays open; GcpoError if another
    live process holds it (its pid and host are in the message)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / "run.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise GcpoError(f"run {run_id} is being trained right now ({holder}); wait for it, or stop it "
                        "(Ctrl-C or kill) and resume") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    f.flush()
    return f


def is_live(out_dir: str | Path | None) -> bool:
    """Whether a process holds the run's lock now (a run marked running whose lock is free died)."""
    file = Path(out_dir or "") / "run.lock"
    if not out_dir or not file.exists():
        return False
    with open(file) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / ROOT / f"{PREFIX}{step}"


def adapter(out_dir: str | Path, step: int) -> Path:
    return path(out_dir, step) / "adapter"


def steps(out_dir: str | Path | None) -> list[int]:
    """The steps that have a complete adapter, in order."""
    if not out_dir:
        return []
    found = []
    for p in (Path(out_dir) / ROOT).glob(f"{PREFIX}*"):
        n = p.name[len(PREFIX):]
        if n.isdigit() and (p / "adapter").is_dir():
            found.append(int(n))
    return sorted(found)


def pick(run: dict, step: int | None) -> int:
    """The checkpoint step to use for `run` (the newest when `step` is None), or a clear error."""
    have = steps(run_folder(run))
    if not have:
        raise GcpoError(f"run {run['id']} has no checkpoint in {run_folder(run) / ROOT}")
    if step is None:
        return have[-1]
    if step not in have:
        raise GcpoError(f"run {run['id']} has no checkpoint at step {step}; steps: {', '.join(map(str, have))}")
    return step


def save(out_dir: str | Path, step: int, model, optimizer, scheduler) -> Path:
    """Adapter + optimiser state, written beside and renamed into place. Only the newest
    checkpoint keeps its optimiser state (the only one a resume needs): call `prune` once the
    database names the new one."""
    import torch

    final = path(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
               tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def prune(out_dir: str | Path, keep: int) -> None:
    """Drop the optimiser state of every checkpoint but `keep`."""
    for other in (Path(out_dir) / ROOT).glob(f"{PREFIX}*"):
        if other.name != f"{PREFIX}{keep}" and (other / "trainer_state.pt").exists():
            (other / "trainer_state.pt").unlink()


def load_trainer_state(out_dir: str | Path, step: int) -> dict:
    """The optimiser and schedule state saved with checkpoint `step`. weights_only=True: a
    trainer_state.pt is tensors and plain values, and unpickling anything else could run code."""
    import pickle

    import torch

    file = path(out_dir, step) / "trainer_state.pt"
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise GcpoError(f"{file} is missing: checkpoint {step} cannot be resumed") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise GcpoError(f"{file} is not a trainer state gcpo wrote (refused to load it: "
                        f"{str(e).splitlines()[0][:160]})") from None
