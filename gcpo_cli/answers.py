"""Final-answer extraction and grading with math-verify.

math-verify's own time-outs use signal.alarm, which only works on a process's main thread, and
a pathological expression can make sympy run for minutes. So `Grader` runs math-verify in a
worker process (where it *is* the main thread, so its alarms work) and waits on each batch with
an outer deadline; a worker that overruns is killed and replaced and the item is graded wrong.
A verdict always comes back.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing as mp
import re
from dataclasses import dataclass

# Huge outputs are cut before parsing: sympy on a 50k-character string is the classic hang.
MAX_ANSWER_CHARS = 1000
OPTION_LETTERS = "abcde"

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.S)
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:)\s*[:\s]*(.+?)(?:\.\s*$|\.\s+|\n|$)", re.I
)
_OPTION = re.compile(r"^\(?\s*([a-eA-E])\s*\)?(?:\s*[).:]|\s*$)")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces; None if absent."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        if start < len(text) and text[start] == "{":
            depth = 0
            for i in range(start, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[start + 1 : i].strip()
            continue  # unbalanced: try an earlier one
        m = re.match(r"([^\s$]+)", text[start:])  # \boxed 5
        if m:
            return m.group(1)
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution or completion states: last \\boxed{}, then `#### x`, then
    "the answer is x". None when it states none (no last-number guessing: a model must say it)."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = _HASHES.search(text)
    if m:
        return m.group(1).strip()
    found = _ANSWER_IS.findall(text)
    if found:
        ans = found[-1].strip().strip("$").strip()
        return ans or None
    return None


def normalize_answer_field(value) -> str | None:
    """A dataset's answer cell as text: 27.0 -> "27", ["5"] -> "5", None/"" -> None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [normalize_answer_field(v) for v in value]
        items = [i for i in items if i]
        if not items:
            return None
        return items[0] if len(items) == 1 else ", ".join(items)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text or None


def option_letter(text: str | None) -> str | None:
    """"(b)", "b )", "B", "option b" -> "b"; else None."""
    if not text:
        return None
    t = text.strip().lower()
    t = re.sub(r"^(?:option|choice|\\text\{)\s*", "", t).rstrip("}").strip()
    m = _OPTION.match(t)
    return m.group(1).lower() if m else None


def _is_option_gold(gold: str) -> bool:
    return len(gold.strip()) == 1 and gold.strip().lower() in OPTION_LETTERS


def _wrap(expr: str) -> str:
    expr = expr.strip()
    if expr.startswith("$") or expr.startswith("\\("):
        return expr
    return f"${expr}$"


def _clean_str(s: str) -> str:
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("$", "")
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def verify_answer(gold: str, predicted: str | None, timeouts: bool = True) -> bool:
    """True if `predicted` (an extracted final answer) means the same as `gold`.

    Runs math-verify in the calling thread; `timeouts=True` uses its signal-based limits and so
    must run on a main thread (the Grader's worker does). Never raises."""
    if predicted is None or gold is None:
        return False
    gold, predicted = str(gold).strip(), str(predicted).strip()[:MAX_ANSWER_CHARS]
    if _is_option_gold(gold):
        return option_letter(predicted) == gold.lower()
    if _clean_str(gold) == _clean_str(predicted):
        return True
    from math_verify import parse, verify

    t = 5 if timeouts else None
    try:
        g = parse(_wrap(gold), parsing_timeout=t)
        p = parse(_wrap(predicted), parsing_timeout=t)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=t))
    except Exception:  # math-verify raises on some inputs despite raise_on_error=False
        return False


def _grade_batch(pairs: list[tuple[str, str | None]]) -> list[bool]:
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return [verify_answer(g, p, timeouts=True) for g, p in pairs]


@dataclass
class Grader:
    """Grades (gold, predicted) pairs in a worker process with a deadline per item.

    Safe to call from any thread. Use as a context manager or call close()."""

    seconds_per_item: float = 10.0
    _pool: cf.ProcessPoolExecutor | None = None

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process that holds torch's thread pools is unsafe.
            self._pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
        return self._pool

    def _restart(self) -> None:
        if self._pool is not None:
            for p in list(getattr(self._pool, "_processes", {}).values()):
                p.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def grade(self, pairs: list[tuple[str, str | None]]) -> list[bool]:
        out: list[bool] = []
        i = 0
        while i < len(pairs):
            # Cheap cases (no answer, exact text match) never reach the worker.
            chunk = pairs[i : i + 64]
            verdicts = [_local_verdict(g, p) for g, p in chunk]
            todo = [j for j, v in enumerate(verdicts) if v is None]
            if todo:
                results = self._grade_remote([chunk[j] for j in todo])
                for j, r in zip(todo, results):
                    verdicts[j] = r
            out.extend(verdicts)
            i += 64
        return out

    def _grade_remote(self, pairs: list[tuple[str, str | None]]) -> list[bool]:
        try:
            fut = self._executor().submit(_grade_batch, pairs)
            return fut.result(timeout=5 + self.seconds_per_item * len(pairs))
        except Exception:
            # Time-out or a dead worker: grade one by one so one bad item costs only itself.
            self._restart()
            if len(pairs) == 1:
                return [False]
            return [self._grade_remote([p])[0] for p in pairs]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _local_verdict(gold: str | None, predicted: str | None) -> bool | None:
    """Verdicts that need no sympy (no answer, option letters, identical text); else None."""
    if gold is None or predicted is None:
        return False
    gold, predicted = str(gold).strip(), str(predicted).strip()
    if _is_option_gold(gold):
        return option_letter(predicted) == gold.lower()
    if _clean_str(gold) == _clean_str(predicted):
        return True
    return None
