"""Final-answer extraction and grading with math-verify.

math-verify's own time-outs use signal.alarm, which only works on a process's main thread, and
a pathological expression can make sympy run for minutes (or hang inside one C call that no
alarm interrupts). So `Grader` runs math-verify in a worker process (where it *is* the main
thread, so its alarms work), streams verdicts back one item at a time and gives each item its
own outer deadline; a worker that overruns is killed and replaced and that item is graded wrong.
A verdict always comes back, within about `seconds_per_item` for a bad item.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import re
import threading
from dataclasses import dataclass, field

# Huge outputs are cut before parsing: sympy on a 50k-character string is the classic hang.
MAX_ANSWER_CHARS = 1000
OPTION_LETTERS = "abcde"
# No real final answer nests brackets this deep; latex2sympy recurses on them until the alarm.
MAX_NESTING = 40

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"####[ \t]*([^\n]*\S)")
# The last "answer is" / "final answer:" / "answer =" intro; the answer runs to the end of its
# sentence (a full stop followed by space or the end, not the one inside 3.5) or line.
_ANSWER_INTRO = re.compile(r"\banswer\s*(?:is\b|:|=)\s*:?", re.I)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_OPTION = re.compile(r"^\(?\s*([a-eA-E])\s*\)?(?:\s*[).:]|\s*$)")
_BOLD = re.compile(r"^\\(?:textbf|mathbf|bf)\s*\{")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each "{" -> position of its "}", in one pass (unbalanced ones are absent)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty \\boxed{...} (or \\fbox{...}), with nested braces; None if
    absent. An empty \\boxed{} is the prompt's own instruction echoed back, not an answer.

    Linear time: braces are matched once for the whole text, so thousands of unclosed
    \\boxed{ (a degenerate completion) cost no more than one."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    match = _matching_braces(text) if "{" in text else {}
    for start in reversed(starts):
        if start < len(text) and text[start] == "{":
            end = match.get(start)
            if end is not None and text[start + 1 : end].strip():
                return text[start + 1 : end].strip()
            continue  # unbalanced or empty: try an earlier one
        m = re.match(r"([^\s$]+)", text[start:start + 200])  # \boxed 5
        if m:
            return m.group(1)
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution or completion states: the last \\boxed{}, then the last
    `#### x` line, then the last "the answer is x". None when it states none (no last-number
    guessing: a model must say it)."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return _unwrap(boxed)
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    intro = None
    for intro in _ANSWER_INTRO.finditer(text):
        pass
    if intro is not None:
        tail = text[intro.end():].lstrip()
        end = _SENTENCE_END.search(tail)
        ans = (tail[: end.start()] if end else tail).strip()
        ans = ans.strip("$").strip()
        if ans.startswith("\\(") and ans.endswith("\\)"):
            ans = ans[2:-2].strip()
        if _BOXED.search(ans):  # "the answer is $\\boxed{}$": only an empty box, no answer
            return None
        return _unwrap(ans.rstrip(".,;")) or None
    return None


def _unwrap(ans: str) -> str:
    """\\textbf{(113) } -> 113: AoPS solutions bold their answer, often in parentheses."""
    ans = ans.strip()
    m = _BOLD.match(ans)
    if m and _matching_braces(ans).get(m.end() - 1) == len(ans) - 1:
        inner = ans[m.end() : -1].strip()
        num = re.fullmatch(r"\(?\s*(-?[\d.,]+)\s*\)?", inner)
        return num.group(1) if num else inner
    return ans


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


_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_MIXED = re.compile(r"(-?)(\d+)\s+(\d+)\s*/\s*(\d+)")  # 2 1/2 (GSM8K-style mixed number)
_NUMBER_WORDS = re.compile(r"(-?[\d.,]+)\s*(?:[A-Za-z]+\.?\s*){1,3}")  # 18 dollars, 5 cm


def _as_number(s: str) -> float | None:
    """A plain decimal number ("1,080", "$18", "27.0", ".5") as a float; None for anything else."""
    t = s.strip().replace("\\!", "").replace("\\$", "").lstrip("$").rstrip(".").strip()
    if not _NUMBER.fullmatch(t):
        return None
    return float(t.replace(",", ""))


def _nesting(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")}]":
            depth = max(0, depth - 1)
    return deepest


def _candidates(gold: str, predicted: str) -> list[str]:
    """Readings of the predicted answer to try, fixing forms math-verify misreads: "2 1/2" is a
    mixed number (5/2, never 2 * 1/2 = 1), and a number followed by plain-word units ("18
    dollars") is that number when the gold is a number."""
    m = _MIXED.fullmatch(predicted)
    if m:
        sign, whole, num, den = m.groups()
        return [f"{sign}\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"]
    out = [predicted]
    m = _NUMBER_WORDS.fullmatch(predicted)
    if m and not re.search(r"[A-Za-z]", re.sub(r"\\(?:text|mbox|mathrm)\{[^}]*\}|\\[a-zA-Z]+", "", gold)):
        out.append(m.group(1).rstrip(".,"))
    return out


def verify_answer(gold: str, predicted: str | None, timeouts: bool = True, timeout_s: int = 5) -> bool:
    """True if `predicted` (an extracted final answer) means the same as `gold`.

    Runs math-verify in the calling thread; `timeouts=True` uses its signal-based limits of
    `timeout_s` seconds and so must run on a main thread (the Grader's worker does). Never raises."""
    if predicted is None or gold is None:
        return False
    gold, predicted = str(gold).strip(), str(predicted).strip()[:MAX_ANSWER_CHARS]
    local = _local_verdict(gold, predicted)
    if local is not None:
        return local
    if _nesting(predicted) > MAX_NESTING:
        return False
    from math_verify import parse, verify

    t = max(1, int(timeout_s)) if timeouts else None
    try:
        g = parse(_wrap(gold), parsing_timeout=t)
        if not g:
            return False
        for cand in _candidates(gold, predicted):
            p = parse(_wrap(cand), parsing_timeout=t)
            if p and verify(g, p, timeout_seconds=t):
                return True
        return False
    except Exception:  # math-verify raises on some inputs despite raise_on_error=False
        return False


def _local_verdict(gold: str | None, predicted: str | None) -> bool | None:
    """Verdicts that need no sympy (no answer, option letters, identical text, two plain
    numbers that are clearly equal or clearly not); else None."""
    if gold is None or predicted is None:
        return False
    gold, predicted = str(gold).strip(), str(predicted).strip()
    if not predicted:
        return False
    if _is_option_gold(gold):
        return option_letter(predicted) == gold.lower()
    if _clean_str(gold) == _clean_str(predicted):
        return True
    g, p = _as_number(gold), _as_number(predicted)
    if g is not None and p is not None:
        if math.isclose(g, p, rel_tol=1e-9, abs_tol=1e-12):
            return True
        if not math.isclose(g, p, rel_tol=1e-4, abs_tol=1e-6):
            return False  # in between: math-verify's own rounding decides
    return None


_TRAILING_LETTER = re.compile(r"(?:^|[\s(=:-])\(?\s*([a-eA-E])\s*\)?\s*\.?$")
_NAMED_OPTION = re.compile(r"\b(?:option|choice)\s*['(]?\s*([a-eA-E])\b")
_LEADING_LETTER = re.compile(r"^\(?([a-eA-E])\s*\)?\s*(?:[=(]|is\b)")
_OPTION_ITEM = re.compile(r"\b([a-e])\s*\)\s*(.*?)\s*(?=,\s*[a-e]\s*\)|$)", re.S)


def option_for_value(problem: str, predicted: str | None) -> str | None:
    """The letter of the one option whose value a completion states ("12" -> "a" for MathQA's
    "Options: a ) 12 , b ) 16 ..."); None when there are no options or no single match."""
    if not predicted or "Options:" not in problem:
        return None
    want_text, want_num = _clean_str(predicted), _as_number(predicted)
    hits = set()
    for letter, value in _OPTION_ITEM.findall(problem.rsplit("Options:", 1)[1]):
        nums = re.findall(r"-?\d+(?:\.\d+)?", value.replace(",", ""))
        if _clean_str(value) == want_text or (
            want_num is not None and len(nums) == 1 and math.isclose(float(nums[0]), want_num)
        ):
            hits.add(letter)
    return hits.pop() if len(hits) == 1 else None


def grading_target(problem: str, gold: str, extracted: str | None) -> str | None:
    """What to grade against `gold`: the extracted answer, or for a multiple-choice problem the
    letter it names ("60 = c", "1050 ( e )", "option d is correct", "e ( 15 / 2 minutes )") or,
    when it states an option's value instead, that option's letter."""
    if not extracted or not _is_option_gold(gold) or option_letter(extracted) is not None:
        return extracted
    for pattern in (_TRAILING_LETTER, _NAMED_OPTION, _LEADING_LETTER):
        found = pattern.findall(extracted[-200:] if pattern is not _LEADING_LETTER else extracted[:40])
        if found:
            return found[-1].lower()
    return option_for_value(problem, extracted) or extracted


# ------------------------------------------------------------------------------------ the grader


def _worker_main(conn, timeout_s: int, memory_mb: int) -> None:
    """The grading process: verdicts for (gold, predicted) batches, one message per item."""
    try:
        import resource

        limit = memory_mb * 2**20
        # A pathological answer (10^{10^{10}}) makes sympy allocate without bound: fail it with
        # MemoryError here rather than swap the machine.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    logging.disable(logging.WARNING)  # math-verify logs every time-out it hits
    import math_verify  # noqa: F401  (the import is most of the start-up time)

    conn.send("ready")
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        for gold, predicted in batch:
            conn.send(verify_answer(gold, predicted, timeouts=True, timeout_s=timeout_s))


@dataclass
class Grader:
    """Grades (gold, predicted) pairs in a worker process with a deadline per item.

    Safe to call from any thread (calls are serialised). Use as a context manager or close()."""

    seconds_per_item: float = 15.0  # outer deadline for one item: covers hangs no alarm stops
    timeout_s: int = 5  # math-verify's own parse/verify alarms inside the worker
    memory_mb: int = 4096  # address-space cap of the worker
    start_timeout: float = 120.0  # spawn + importing sympy, on a busy machine
    _proc: object = field(default=None, init=False, repr=False)
    _conn: object = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    restarts: int = field(default=0, init=False)  # workers killed for overrunning (or dying)

    def grade(self, pairs: list[tuple[str, str | None]]) -> list[bool]:
        pairs = list(pairs)
        # Cheap cases (no answer, option letters, same text, plain numbers) never reach the worker.
        verdicts = [_local_verdict(g, p) for g, p in pairs]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            remote = [(str(pairs[i][0]).strip(), str(pairs[i][1]).strip()[:MAX_ANSWER_CHARS]) for i in todo]
            with self._lock:
                results = self._grade_remote(remote)
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
        proc = ctx.Process(target=_worker_main, args=(child, self.timeout_s, self.memory_mb),
                           daemon=True, name="gcpo-grader")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        try:
            if parent.poll(self.start_timeout) and parent.recv() == "ready":
                return parent
        except (EOFError, OSError):
            pass
        self._kill()
        raise RuntimeError("the grading worker process did not start")

    def _grade_remote(self, pairs: list[tuple[str, str]]) -> list[bool]:
        out: list[bool] = []
        failed_starts = 0
        while len(out) < len(pairs):
            try:
                conn = self._start()
                rest = pairs[len(out):]
                conn.send(rest)
            except (RuntimeError, OSError):
                failed_starts += 1
                if failed_starts >= 2:
                    raise
                continue
            for _ in rest:
                verdict = self._receive(conn)
                if verdict is None:
                    # Overran its deadline, or the worker died on it: that item is wrong, the
                    # rest go to a fresh worker.
                    self._kill()
                    self.restarts += 1
                    out.append(False)
                    break
                out.append(verdict)
        return out

    def _receive(self, conn) -> bool | None:
        try:
            if conn.poll(self.seconds_per_item):
                return bool(conn.recv())
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
