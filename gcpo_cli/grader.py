"""The grading worker process: `Grader` runs `answers.verify_answer` (or a recipe's custom reward,
rewards.py) out of process, with a deadline per item.

math-verify's own time-outs use signal.alarm, which only works on a process's main thread, and
a pathological expression can make sympy run for minutes (or hang inside one C call that no
alarm interrupts). So `Grader` runs math-verify in a worker process (where it *is* the main
thread, so its alarms work), streams verdicts back one item at a time and gives each item its
own outer deadline; a worker that overruns is killed and replaced and that item is graded wrong.
A verdict always comes back, within about `seconds_per_item` for a bad item.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .answers import MAX_ANSWER_CHARS, grading_target, local_verdict, verify_answer
from .errors import GcpoError
from .records import Problem, problem_dict
from .rewards import RewardLoadError, call_reward, load_reward


def _worker_main(conn, timeout_s: int, memory_mb: int, reward: str | None = None) -> None:
    """The grading process: one message per item of each batch, ("verify", [(gold, predicted)])
    -> verdicts, ("reward", [(problem, completion, gold)]) -> (reward, correct, error) of the
    recipe's custom reward function."""
    try:
        import resource

        limit = memory_mb * 2**20
        # A pathological answer (10^{10^{10}}) makes sympy allocate without bound: fail it with
        # MemoryError here rather than swap the machine.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    logging.disable(logging.WARNING)  # math-verify logs every time-out it hits
    # A custom reward's prints (and anything else here) must not reach the command's stdout, which
    # the worker inherits and `--json` keeps for its one document (issue 27): they go to stderr.
    try:
        os.dup2(2, 1)
    except OSError:
        pass
    sys.stdout = sys.stderr
    import math_verify  # noqa: F401  (the import is most of the start-up time)

    fn = None
    if reward:
        try:
            fn = load_reward(reward)
        except RewardLoadError as e:
            conn.send(("error", str(e)))
            return
    conn.send("ready")
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        kind, items = batch
        for item in items:
            if kind == "reward":
                conn.send(call_reward(fn, *item, timeout_s=timeout_s))
            else:
                conn.send(verify_answer(*item, timeouts=True, timeout_s=timeout_s))


class Score(NamedTuple):
    """A completion's reward, whether it is correct (what going gold and the pass rates count)
    and whether a custom reward function failed on it (raised, hung, returned no reward)."""

    reward: float
    correct: bool
    failed: bool = False


@dataclass
class Grader:
    """Grades (gold, predicted) pairs in a worker process with a deadline per item; with
    `reward` ("module:function", a recipe's custom reward), `scores` calls that function there.

    Safe to call from any thread (calls are serialised). Use as a context manager or close()."""

    seconds_per_item: float = 15.0  # outer deadline for one item: covers hangs no alarm stops
    timeout_s: int = 5  # math-verify's own parse/verify alarms (and a reward call's) inside the worker
    memory_mb: int = 4096  # address-space cap of the worker
    start_timeout: float = 120.0  # spawn + importing sympy, on a busy machine
    reward: str | None = None  # a custom reward function (rewards.py); None: math-verify grades
    _proc: object = field(default=None, init=False, repr=False)
    _conn: object = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    restarts: int = field(default=0, init=False)  # workers killed for overrunning (or dying)

    def verdicts(self, items: Iterable[tuple[str | None, str, str | None, bool]]) -> list[bool]:
        """Is each completion correct? The one decision training (reward) and evaluation share.

        `items` are (problem_text, gold_answer, extracted_answer, truncated). A truncated
        completion is wrong whatever it states (it never finished, so whatever answer was
        extracted from it is not one it committed to; a policy must not learn to run to the
        length limit). Otherwise the extracted answer goes through `grading_target` (MathQA's
        option values and "60 = c" become the option letter) and is graded against the gold
        answer by `grade`. A missing extracted answer is wrong."""
        items = list(items)
        return self.grade([(gold, None if truncated else grading_target(problem or "", gold, extracted))
                           for problem, gold, extracted, truncated in items])

    def scores(self, items: Iterable[tuple[Problem, str, str | None, bool]]) -> list[Score]:
        """The training reward of each completion: `items` are (problem, completion, extracted
        answer, truncated).

        Without a custom reward: 1 if `verdicts` says correct, else 0. With one: what
        fn(problem, completion, gold) returns (rewards.py), correct by its flag or reward == 1;
        a call that raises, overruns the time limits or returns no reward in [0, 1] scores 0 and
        is marked failed. A truncated completion scores 0 uncalled, as it does without one."""
        items = list(items)
        if not self.reward:
            verdicts = self.verdicts([(p.text, p.answer, extracted, truncated)
                                      for p, _, extracted, truncated in items])
            return [Score(1.0 if ok else 0.0, ok) for ok in verdicts]
        out = [Score(0.0, False)] * len(items)
        todo = [i for i, (_, _, _, truncated) in enumerate(items) if not truncated]
        if todo:
            # a reward function is handed the problem as a dict (rewards.py), as in 0.4
            calls = [(problem_dict(items[i][0]), items[i][1], items[i][0].answer) for i in todo]
            with self._lock:
                results = self._remote("reward", calls, (0.0, False, "overran its deadline"))
            for i, (reward, correct, error) in zip(todo, results):
                out[i] = Score(reward, correct, error is not None)
        return out

    def grade(self, pairs: list[tuple[str, str | None]]) -> list[bool]:
        """Verdicts of `verify_answer` for (gold, predicted) pairs, in order."""
        pairs = list(pairs)
        # Cheap cases (no answer, option letters, same text, plain numbers) never reach the worker.
        verdicts = [local_verdict(g, p) for g, p in pairs]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            remote = [(str(pairs[i][0]).strip(), str(pairs[i][1]).strip()[:MAX_ANSWER_CHARS]) for i in todo]
            with self._lock:
                results = self._remote("verify", remote, False)
            for i, r in zip(todo, results):
                verdicts[i] = r
        return [bool(v) for v in verdicts]

    def _start(self):
        if self._proc is not None and self._proc.is_alive():
            return self._conn
        self._kill()
        # spawn: forking a process that holds torch's thread pools is unsafe.
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, args=(child, self.timeout_s, self.memory_mb, self.reward),
                           daemon=True, name="gcpo-grader")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        message = None
        try:
            if parent.poll(self.start_timeout):
                message = parent.recv()
        except (EOFError, OSError):
            pass
        if message == "ready":
            return parent
        self._kill()
        if isinstance(message, tuple) and message[0] == "error":  # the reward did not load there
            raise GcpoError(f"recipe key 'reward': {message[1]}")
        raise RuntimeError("the grading worker process did not start")

    def _remote(self, kind: str, items: list[tuple], overrun):
        """One worker reply per item, in order; `overrun` for an item whose worker overran its
        deadline or died on it (the worker is replaced and the rest go to the fresh one)."""
        out: list = []
        failed_starts = 0
        while len(out) < len(items):
            try:
                conn = self._start()
                rest = items[len(out):]
                conn.send((kind, rest))
            except (RuntimeError, OSError):
                failed_starts += 1
                if failed_starts >= 2:
                    raise
                continue
            for _ in rest:
                reply = self._receive(conn)
                if reply is None:
                    self._kill()
                    self.restarts += 1
                    out.append(overrun)
                    break
                out.append(reply)
        return out

    def _receive(self, conn):
        """The worker's next reply (a verdict, or a reward's (reward, correct, error)); None if
        none came within the deadline."""
        try:
            if conn.poll(self.seconds_per_item):
                return conn.recv()
        except (EOFError, OSError):
            pass
        return None

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(None)
                    self._proc.join(5)
                except OSError:
                    pass
            self._kill()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close() must not leave a worker behind
        try:
            self._kill()
        except Exception:
            pass
