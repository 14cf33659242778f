"""One resumable job over a list of problems: every evaluation (generated, golden answers, imported
samples) and every golden-answer generation runs through `run`.

The skeleton, once: open the job, or resume the unfinished one with the same parameters (its
finished problems are skipped); work through the rest in chunks, each computed (sampled, graded)
and then written in one transaction, so an interruption keeps whole chunks and nothing half of
one; mark the job interrupted when anything stops it; finish it and summarise.

While a job runs, its process holds the job's lock: a file beside the database, locked with
flock, which the OS releases however the process ends. A job marked running whose lock is free
died (kill -9, power loss), as a run does (checkpoints.lock); `status` says so, and the same
command resumes it. A second process on a live job is refused, so no problem is stored twice.

Ctrl-C and SIGTERM, under `StopSignals` (what a command installs; a scheduler or `kill` sends
SIGTERM): the first one abandons the chunk being computed (nothing of it is written yet) or lets
the chunk being written finish, marks the job interrupted and raises `Interrupted`, whose message
says where it stopped; a second one stops at once. Training stops the same way (StopFlag, below).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GcpoError
from .grader import Grader
from .records import Problem
from .store.evaluations import database_file

# ------------------------------------------------------------------------------------ stopping


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a job. A KeyboardInterrupt, so that no `except Exception` on
    the way swallows it; `message` is the one line to print, `exit_code` 128 + the signal."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.message = f"interrupted by {self.signal_name}; finished work is kept and the same command resumes the rest"
        super().__init__(self.message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Installs the Ctrl-C/SIGTERM handler for a command's jobs (the module docstring). Outside
    the main thread (tests) signal handling stays as it was."""

    def __init__(self):
        self.signum: int | None = None
        self.abandonable = False  # inside `computing`: nothing of the chunk is written yet
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handler(self, signum, frame) -> None:
        second = self.signum is not None
        self.signum = self.signum or signum
        if second or self.abandonable:
            raise Interrupted(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextmanager
    def computing(self) -> Iterator[None]:
        """A chunk's computation, which a first signal abandons at once."""
        self.check()
        self.abandonable = True
        try:
            yield
        finally:
            self.abandonable = False


class Abandon(Exception):
    """Ctrl-C during a step: drop the step, nothing of it is written."""


@dataclass
class StopFlag:
    """First Ctrl-C (or SIGTERM, as a scheduler or `kill` sends): finish or abandon the current
    step cleanly, save, mark the run interrupted. Second: stop at once. `abandon=False` (several
    ranks): the step is always finished, never abandoned on one rank alone."""

    requested: bool = False
    abandon: bool = True
    _previous: dict = field(default_factory=dict)

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests): signal handling stays default
                pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def check(self):
        if self.requested and self.abandon:
            raise Abandon


# --------------------------------------------------------------------------------------- locks


def _lock_file(db, job_id: str) -> Path | None:
    """`<database>-locks/<job id>.lock`, beside the database's -wal and -shm files, so every
    process that opens the database finds it; None for an in-memory database."""
    name = database_file(db)
    return Path(f"{name}-locks") / f"{job_id}.lock" if name else None


def hold(db, job_id: str, what: str):
    """Lock the job for as long as the returned file stays open (None: an in-memory database);
    GcpoError when a live process holds it."""
    path = _lock_file(db, job_id)
    if path is None:
        return None
    try:
        path.parent.mkdir(exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise GcpoError(f"cannot create the lock file {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise GcpoError(f"{what} {job_id} is running right now ({holder}); wait for it, or stop it (Ctrl-C or "
                        "kill) and run the command again") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    f.flush()
    return f


def release(db, job_id: str, lock) -> None:
    """Drop the lock file (a finished or interrupted job no longer needs it), then the lock: a
    process that opened the file before it went away waits for the lock and fails, as it should."""
    if lock is None:
        return
    path = _lock_file(db, job_id)
    if path is not None:
        path.unlink(missing_ok=True)
    lock.close()


def is_live(db, job_id: str) -> bool:
    """Whether a process holds the job's lock now. An in-memory database's jobs are this
    process's own: live."""
    path = _lock_file(db, job_id)
    if path is None:
        return True
    try:
        f = open(path)
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def status(db, job_id: str, recorded: str) -> str:
    """A job's status as the user should see it: "died" for one marked running that no live
    process holds."""
    return "died" if recorded == "running" and not is_live(db, job_id) else recorded


# -------------------------------------------------------------------------------------- progress


def progress_bar(enabled: bool, description: str, total: int, completed: int):
    """A rich progress bar on stderr (so --json output on stdout stays clean); a null context
    when not enabled."""
    if not enabled:
        return nullcontext(None)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.table import Column
    from rich.text import Text

    from .render import SafeConsole

    class Rate(ProgressColumn):
        def render(self, task):  # this session's problems over its time (a resume starts at N)
            done = task.completed - task.fields.get("resumed_from", 0)
            rate = done / task.elapsed if task.elapsed and done else None
            return Text(f"{rate:.2f} problems/s" if rate else "– problems/s", style="cyan", no_wrap=True)

    # The label is the column that gives way, so the line fits an 80-column terminal.
    prog = Progress(TextColumn("{task.description}", markup=False, table_column=Column(ratio=1, no_wrap=True,
                                                                                     overflow="ellipsis")),
                    BarColumn(bar_width=12), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=SafeConsole(stderr=True), expand=True)
    prog.add_task(description, total=total, completed=completed, resumed_from=completed)
    return prog


# ---------------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Ledger:
    """Where one kind of job is recorded: the store's functions for it, bound to its parameters."""

    what: str  # "evaluation", "golden generation": how messages name it
    open: Callable[[], tuple[str, set[str]]]  # (job id, problems already finished): resumed or new
    write: Callable[[str, Any], None]  # (job id, one computed chunk) in one transaction
    interrupted: Callable[[str], None]  # mark the job interrupted
    finish: Callable[[str, int], dict]  # (job id, problems resumed): mark it completed; its summary


@dataclass
class Outcome:
    id: str
    summary: dict  # what the ledger's finish returned
    resumed: int  # problems an earlier, interrupted process had finished
    done: int  # problems this process finished
    seconds: float


def run(db, ledger: Ledger, problems: list[Problem], compute: Callable[[list[Problem], Grader], Any], *,
        chunk_size: int, label: str, grader: Grader | None = None, progress: bool = True,
        stop: StopSignals | None = None, contexts: tuple = (), order: Callable[[Problem], Any] | None = None) -> Outcome:
    """Run a job over `problems` ({id, ...}): `compute(chunk, grader)` for each chunk of at most
    `chunk_size` unfinished problems (in the order `order` sorts them by, else as given), each
    result written by `ledger.write`. `grader` is used if given, else one is started for the
    job; `contexts` are entered around the work (a seeded RNG). `label` names the job in the
    progress bar and in an interruption's message."""
    stop = stop or StopSignals()  # not entered: no handler installed, `computing` only checks
    stop.check()  # stopped before anything was opened: nothing to mark
    job_id, done = ledger.open()
    lock = hold(db, job_id, ledger.what)
    todo = [p for p in problems if p.id not in done]
    if order is not None:
        todo.sort(key=order)
    total, finished, t0 = len(todo) + len(done), 0, time.perf_counter()
    try:
        with ExitStack() as stack:
            grader = grader if grader is not None else stack.enter_context(Grader())
            for context in contexts:
                stack.enter_context(context)
            bar = stack.enter_context(progress_bar(progress, label, total, len(done)))
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start:start + chunk_size]
                with stop.computing():
                    result = compute(chunk, grader)
                ledger.write(job_id, result)
                finished += len(chunk)
                if bar is not None:
                    bar.advance(bar.task_ids[0], len(chunk))
                stop.check()
    except BaseException as e:
        try:
            ledger.interrupted(job_id)
        except Exception:  # the database may be what failed; the original error matters more
            pass
        release(db, job_id, lock)
        if isinstance(e, Interrupted):
            e.message = (f"{ledger.what} {job_id} ({label}) interrupted by {e.signal_name} after "
                         f"{len(done) + finished} of {total} problems; the same command resumes it")
        raise
    seconds = time.perf_counter() - t0
    try:
        summary = ledger.finish(job_id, len(done))
    finally:
        release(db, job_id, lock)
    return Outcome(job_id, summary, len(done), finished, seconds)
