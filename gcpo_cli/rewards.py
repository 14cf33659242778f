"""Custom rewards (issue 13): `reward: module:function` (or `path/to/file.py:function`) in a recipe.

The function is called as fn(problem, completion, gold), the problem a dict {id, text, answer,
golden} (records.problem_dict), and returns a number in [0, 1], or a (reward, correct) pair, or
{"reward": r, "correct": c}; without a flag, "correct" is reward == 1.
It replaces math-verify grading in training, so it runs where math-verify does: in the
`Grader`'s worker process, under the same limits. `call_reward` gives it `timeout_s` seconds
(an alarm, which the worker's main thread can take) and the Grader kills the worker at its outer
deadline if the alarm did not stop it. Whatever goes wrong (a raise, a hang, a value that is not a
number in [0, 1]) scores 0 and comes back marked failed, so a step counts it and never hangs.
A completion cut at the token limit scores 0 without a call, as with the built-in grader: a
policy must not learn to run to the limit (issue 9).
Whatever the function or its module prints goes to stderr, never stdout, which `--json` keeps for
its one JSON document (issue 27): the import runs under `stdout_to_stderr`, and the grading worker
sends its whole stdout there.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import numbers
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

FORMS = "module:function (an importable module, e.g. myrewards:exact) or path/to/file.py:function"


class RewardLoadError(ValueError):
    """The `reward` spec names nothing callable; the message says why (the caller names the key)."""


def split_spec(spec: str) -> tuple[str, str, bool]:
    """"pkg.mod:fn" -> ("pkg.mod", "fn", False); "dir/r.py:fn" -> ("dir/r.py", "fn", True).
    The last colon splits, so a Windows path's drive letter stays in the path."""
    target, sep, name = str(spec).strip().rpartition(":")
    target, name = target.strip(), name.strip()
    if not sep or not target or not name:
        raise RewardLoadError(f"expected {FORMS}, got {spec!r}")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise RewardLoadError(f"{target!r} is not a module name; expected {FORMS}")
    if not name.isidentifier():
        raise RewardLoadError(f"{name!r} is not a function name; expected {FORMS}")
    return target, name, is_file


def absolute_spec(spec: str) -> str:
    """A file-path spec with its path made absolute (a run resumed from another folder still finds
    it); a module spec as it is."""
    target, name, is_file = split_spec(spec)
    return f"{Path(target).expanduser().resolve()}:{name}" if is_file else spec


def load_reward(spec: str) -> Callable:
    """The function `spec` names, imported; RewardLoadError when it cannot be."""
    target, name, is_file = split_spec(spec)
    try:
        with stdout_to_stderr():
            module = _load_file(target) if is_file else _import(target)
    except RewardLoadError:
        raise
    except (Exception, SystemExit) as e:  # the user's module ran and failed
        raise RewardLoadError(f"importing {target} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise RewardLoadError(f"{target} has no {name!r}")
    if not callable(fn):
        raise RewardLoadError(f"{target}:{name} is not callable (it is a {type(fn).__name__})")
    return fn


@contextlib.contextmanager
def stdout_to_stderr():
    """Within it, print() and writes to file descriptor 1 (a C library's banner) go to stderr."""
    sys.stdout.flush()
    saved = None
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptor 1 or 2 here: print() alone is redirected
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            try:
                sys.stdout.flush()
            finally:
                os.dup2(saved, 1)
                os.close(saved)


def _import(module_name: str):
    def absent(e: ModuleNotFoundError) -> bool:  # the module itself (or its package), not one it imports
        return e.name is not None and (module_name == e.name or module_name.startswith(e.name + "."))

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if not absent(e):
            raise
    # `gcpo` is a console script, so the folder it runs in is not on sys.path; a user's
    # myrewards.py beside them imports as `python -m` would import it.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not absent(e):
                raise
    raise RewardLoadError(f"no module named {module_name!r} (not on the Python path or in the current folder)")


def _load_file(target: str):
    path = Path(target).expanduser()
    if not path.is_file():
        raise RewardLoadError(f"no file {target}")
    path = path.resolve()
    name = "gcpo_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardLoadError(f"{target} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _TimedOut(BaseException):
    """Raised by the alarm inside a reward call; a BaseException, so that a reward's own
    `except Exception` does not swallow it."""


def _on_alarm(signum, frame):
    raise _TimedOut


def call_reward(fn: Callable, problem: dict, completion: str, gold: str | None,
                timeout_s: float) -> tuple[float, bool, str | None]:
    """(reward, correct, error): fn's verdict, or (0.0, False, why) when it raised, overran
    `timeout_s` (main thread only: the alarm is SIGALRM) or returned something that is not a
    reward. Never raises (short of a second alarm landing outside the call)."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            value = fn(problem, completion, gold)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return check_value(value)
    except _TimedOut:
        return 0.0, False, f"timed out after {timeout_s:g} s"
    except (Exception, SystemExit) as e:
        return 0.0, False, f"raised {type(e).__name__}: {e}"[:300]
    finally:
        signal.signal(signal.SIGALRM, previous)


def check_value(value) -> tuple[float, bool, str | None]:
    """A reward function's return value as (reward, correct, error)."""
    correct = None
    if isinstance(value, dict):
        if "reward" not in value:
            return 0.0, False, "returned a dict without 'reward'"
        value, correct = value["reward"], value.get("correct")
    elif isinstance(value, (tuple, list)):
        if len(value) != 2:
            return 0.0, False, f"returned a sequence of {len(value)} items, not (reward, correct)"
        value, correct = value
    if not isinstance(value, numbers.Real) or isinstance(value, str):
        return 0.0, False, f"returned {type(value).__name__}, not a number"
    reward = float(value)
    if not (0.0 <= reward <= 1.0):  # NaN fails this too
        return 0.0, False, f"returned {reward!r}, outside [0, 1]"
    if correct is None:
        return reward, reward == 1.0, None
    if correct in (True, False) and not isinstance(correct, str):  # bool, 0/1, numpy bools
        return reward, bool(correct), None
    return 0.0, False, f"returned correct={correct!r}, not true or false"

