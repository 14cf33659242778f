"""How rows become problems: detect which field holds the problem, the worked solution, the answer
and the id, then turn each row into a validated Record (or a reason it is rejected).

Known layouts (see ../shared/data/SOURCES.md): `problem`/`question`/`prompt` for the text, SVAMP's
`Body` + `Question`, MathQA's `options` + option-letter `correct`; the answer in `answer`,
`ground_truth`, `target`..., after GSM8K's `####`, or only as the last \\boxed{} of a MATH
`solution`. Weaker guesses (a column named `input`, `target`, `label`...) are flagged as unsure so
that the CLI can ask on a terminal.

Every row is checked before it is read (`check_row`): each field is text that can be stored
(UTF-8 bytes decoded, no lone surrogates) and at most `max_field_bytes` long; the problem text,
solution and answer hold no chat special-token string (`chat_token`); an answer is a finite
value (no inf/nan) short enough to grade. A violation is a ValueError that names the field, so
the caller can name the line.

Time: every regular expression run on field text here is linear in its length (no two
quantifiers can share a run of blanks), and the two helpers of answers.py that backtrack
quadratically over blanks (`####` followed by blanks, an option letter followed by blanks) are
given text where that cannot happen (`_extract`, `_letter`), so a 1 MB field parses in
milliseconds.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from dataclasses import dataclass, field

from .errors import GcpoError
from .answers import MAX_ANSWER_CHARS, extract_answer, last_boxed, normalize_answer_field, option_letter

PROBLEM_NAMES = ("problem", "question", "prompt", "query", "input", "instruction", "text")
STRONG_PROBLEM = {"problem", "question", "prompt"}
ANSWER_NAMES = ("answer", "final_answer", "ground_truth", "gold_answer", "expected_answer",
                "correct_answer", "answers", "correct", "target", "label", "output")
WEAK_ANSWER = {"correct", "target", "label", "output"}
SOLUTION_NAMES = ("solution", "rationale", "reasoning", "explanation", "worked_solution",
                  "reference_solution", "cot", "chain_of_thought", "steps")
ID_NAMES = ("id", "unique_id", "problem_id", "uid", "qid", "idx", "index")
OPTION_NAMES = ("options", "choices")
SAMPLE = 200  # rows looked at for detection; cheap, and enough to see a column's habits
MAX_FIELD_BYTES = 2**20  # default cap of one field, in UTF-8 bytes (ingest: GCPO_MAX_FIELD_BYTES)


def problem_id(text: str) -> str:
    """16 hex chars of sha256 over the whitespace-normalised problem text."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


def variant_id(text: str, answer: str) -> str:
    """The id of a problem whose text another problem already has, with another answer (issue 13:
    exercise sets repeat a question whose figure or context differs, and each row is a problem).

    Why a second id instead of hashing (text, answer) for every problem: the first problem with a
    given text keeps `problem_id(text)`, so every database made before keeps its ids and the runs,
    rollouts and evaluations that point at them; and a problem two data sets share (MATH train and
    its rllm copy spell some answers differently) is still stored once. Only a row whose answer
    differs (ingest.py decides, with math-verify) gets this id; it hashes the answer's exact text
    (whitespace-normalised), so an exact repeat of such a row is the same problem.

    The hashed string starts with a newline, which a whitespace-normalised text never does, so a
    variant id can never be a `problem_id` of some other text."""
    key = "\n" + " ".join(text.split()) + "\n" + " ".join(answer.split())
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def repeat_id(problem: str, n: int) -> str:
    """The id of the n-th repeat (n >= 1), within one source, of a row that is problem `problem`
    (the same text with the same answer): benchmarks count such rows, so each is a problem and a
    set holds as many problems as its file has rows (issue 13: MAWPS repeats 86 of its 2,065).
    The same source ingested again, into any set, gives its n-th repeat the same id."""
    return hashlib.sha256(f"\nrepeat {n}\n{problem}".encode()).hexdigest()[:16]


@dataclass
class Mapping:
    """How rows become problems. `problem` is a field name or a template like "{Body} {Question}";
    `answer` None means the final answer stated in `solution`."""

    problem: str
    answer: str | None
    answer_kind: str = "value"  # value | hashes (GSM8K "#### x") | boxed | option (a letter)
    solution: str | None = None
    id: str | None = None
    options: str | None = None  # appended to the problem text (multiple choice)
    unsure: list[str] = field(default_factory=list)  # why detection is unsure; empty: sure

    def describe(self) -> dict:
        answer = self.answer or f"final answer of {self.solution!r}"
        if self.answer and self.answer_kind == "hashes":
            answer = f"{self.answer!r} after '####'"
        elif self.answer and self.answer_kind == "boxed":
            answer = f"last \\boxed{{}} of {self.answer!r}"
        return {"problem": self.problem + (f" + {self.options!r} (options)" if self.options else ""),
                "answer": answer, "solution": self.solution, "id": self.id, "unsure": self.unsure}


def fields_of(problem: str) -> list[str]:
    """Field names a --problem value uses: itself, or the {fields} of a template."""
    if "{" not in problem:
        return [problem]
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(problem) if f is not None]
    except ValueError as e:
        raise ValueError(f"--problem template {problem!r} is malformed ({e})")
    if not names or any(not n or "." in n or "[" in n for n in names):
        raise ValueError(f"--problem template {problem!r} needs named fields like {{Body}} {{Question}}")
    return names


def _text(row: dict, name: str) -> str:
    if name not in row:
        raise ValueError(f"field {name!r} is missing")
    v = row[name]
    if v is None:
        raise ValueError(f"field {name!r} is null")
    if isinstance(v, (dict, list, tuple)):
        raise ValueError(f"field {name!r} holds a {type(v).__name__}, not text")
    if isinstance(v, float):
        v = number_text(v, name)
    v = str(v).strip()
    if not v:
        raise ValueError(f"field {name!r} is empty")
    return v


def problem_text(problem: str, row: dict) -> str:
    """The problem text of one row; ValueError naming the field when it is missing or empty."""
    if "{" not in problem:
        return _text(row, problem)
    values = {f: _text(row, f) for f in fields_of(problem)}
    return problem.format_map(values).strip()


def _columns(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _share(sample: list[dict], name: str, test) -> float:
    vals = [r.get(name) for r in sample]
    vals = [v for v in vals if v is not None]
    return sum(1 for v in vals if test(v)) / len(vals) if vals else 0.0


def _is_letter(v) -> bool:
    return isinstance(v, str) and v.strip().strip("()").strip().lower() in ("a", "b", "c", "d", "e")


def detect_mapping(rows: list[dict], *, problem: str | None = None, solution: str | None = None,
                   answer: str | None = None, id: str | None = None, label: str = "rows",
                   columns: list[str] | None = None) -> Mapping:
    """Find the fields; explicit names (flags) win. Raises GcpoError when a field cannot be found.
    `rows` may be a sample (its first SAMPLE rows are looked at); `columns`, when given, are the
    field names of every row of the source (a streamed file's rows are not all in memory)."""
    cols = list(columns) if columns is not None else _columns(rows)
    lower: dict[str, str] = {}
    for c in cols:
        lower.setdefault(str(c).lower(), c)
    sample = rows[:SAMPLE]
    unsure: list[str] = []
    problem_given = bool(problem)
    problem = _detect_problem(problem, cols, lower, sample, label, unsure)
    used = set(fields_of(problem))
    answer, kind = _detect_answer(answer, cols, lower, sample, used, label, unsure)
    solution = _detect_solution(solution, answer, kind, cols, lower, used, label)
    if answer is None and solution is None:
        listing = ", ".join(map(str, cols))
        raise GcpoError(f"{label}: no answer field found (looked for {', '.join(ANSWER_NAMES)}); "
                         f"fields: {listing}; pass --answer FIELD")
    if id:
        _check_field(cols, label, "--id", id)
    else:
        id = _first_field(lower, ID_NAMES, exclude=used | {answer, solution})
    # Options go into the text only when the text was detected: a --problem template is obeyed as is.
    options = (_first_field(lower, OPTION_NAMES, exclude=used)
               if kind == "option" and not problem_given else None)
    return Mapping(problem, answer, kind, solution, id, options, unsure)


def _detect_problem(problem: str | None, cols: list[str], lower: dict[str, str], sample: list[dict],
                    label: str, unsure: list[str]) -> str:
    """Returns the problem field or template: --problem checked, else SVAMP's pair, else a guess."""
    if problem:
        try:
            names = fields_of(problem)
        except ValueError as e:
            raise GcpoError(str(e))
        for f in names:
            _check_field(cols, label, "--problem", f)
        return problem
    if "body" in lower and "question" in lower:
        return f"{{{lower['body']}}} {{{lower['question']}}}"  # SVAMP splits the text in two
    return _guess_problem(cols, lower, sample, label, unsure)


def _guess_problem(cols: list[str], lower: dict[str, str], sample: list[dict], label: str,
                   unsure: list[str]) -> str:
    """Returns the first mostly-text field with a problem-like name; adds to `unsure` when weak."""
    texty = [lower[n] for n in PROBLEM_NAMES
             if n in lower and _share(sample, lower[n], lambda v: isinstance(v, str)) >= 0.5]
    if not texty:
        listing = ", ".join(map(str, cols))
        raise GcpoError(f"{label}: no problem field found (looked for {', '.join(PROBLEM_NAMES)}); "
                         f"fields: {listing}; pass --problem FIELD or a template like '{{a}} {{b}}'")
    problem = texty[0]
    if problem.lower() not in STRONG_PROBLEM:
        unsure.append(f"problem text taken from {problem!r}")
    for other in texty[1:]:
        if other.lower() in STRONG_PROBLEM and any(r.get(other) != r.get(problem) for r in sample):
            unsure.append(f"{problem!r} chosen over {other!r} as the problem text")
    return problem


def _detect_answer(answer: str | None, cols: list[str], lower: dict[str, str], sample: list[dict],
                   used: set[str], label: str, unsure: list[str]) -> tuple[str | None, str]:
    """Returns the answer field (None when there is none) and its Mapping.answer_kind."""
    if answer:
        _check_field(cols, label, "--answer", answer)
    else:
        answer = _first_field(lower, ANSWER_NAMES, exclude=used)
        if answer and answer.lower() in WEAK_ANSWER:
            unsure.append(f"answer taken from {answer!r}")
    return answer, _answer_kind(answer, lower, sample, used, unsure)


def _answer_kind(answer: str | None, lower: dict[str, str], sample: list[dict], used: set[str],
                 unsure: list[str]) -> str:
    """Returns how the answer field states its answer: value, hashes, boxed or option."""
    if not answer:
        return "value"
    if _share(sample, answer, lambda v: isinstance(v, str) and "####" in v) >= 0.5:
        return "hashes"
    if _share(sample, answer, lambda v: isinstance(v, str) and "\\boxed" in v and len(v) > 30) >= 0.5:
        return "boxed"
    if _first_field(lower, OPTION_NAMES, exclude=used) and _share(sample, answer, _is_letter) >= 0.9:
        # MathQA: letters beside an options field are a known layout, so a weak name is no doubt.
        unsure[:] = [u for u in unsure if not u.startswith("answer taken")]
        return "option"
    return "value"


def _detect_solution(solution: str | None, answer: str | None, kind: str, cols: list[str],
                     lower: dict[str, str], used: set[str], label: str) -> str | None:
    """Returns the worked-solution field, or None ("none" or "" on the command line mean none)."""
    if solution in ("none", ""):
        return None
    if solution:
        _check_field(cols, label, "--solution", solution)
        return solution
    solution = _first_field(lower, SOLUTION_NAMES, exclude=used | {answer})
    if solution is None and kind in ("hashes", "boxed"):
        return answer  # GSM8K's `answer` is the worked solution itself
    return solution


def _check_field(cols: list[str], label: str, flag: str, name: str) -> None:
    """Returns nothing; raises GcpoError listing the fields when a flag names no field."""
    if name not in cols:
        listing = ", ".join(map(str, cols))
        raise GcpoError(f"{label}: {flag} {name!r} is not a field; fields: {listing}")


def _first_field(lower: dict[str, str], names, exclude=()) -> str | None:
    """Returns the first of `names` present (case-insensitively) and not excluded, else None."""
    return next((lower[n] for n in names if n in lower and lower[n] not in exclude), None)


_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# MathQA rationales state their letter as "answer : d", "option b", "d is the answer" or end in "b )".
# Linear: each optional part brings its own leading \s*, so no two quantifiers can split one run
# of blanks between them (the earlier form, with three \s* in a row, was cubic in such a run:
# 5,000 spaces after "answer" took minutes).
_STATED_OPTION = re.compile(
    r"(?:answer|option|choice)s?(?:\s*(?:is|:|-|=|will be|should be))?(?:\s*(?:option|choice))?"
    r"\s*(?:[:(]\s*)?([a-e])\s*\)?(?![a-z0-9])"
    r"|(?<![a-z0-9])([a-e])\s+is\s+(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)", re.I)
_TRAILING_OPTION = re.compile(r"(?:^|[\s(:])([a-eA-E])\s*(?:\)\s*)?(?:\.\s*)?$")
_EMPTY_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")  # two MATH-train solutions end in "\boxed{}"
# answers.extract_answer's `####[ \t]*([^\n]*\S)` is quadratic in a run of blanks after `####`
# when nothing but whitespace follows on that line (the match fails after trying every split of
# the run). There it fails whatever the run's length, and no other match can end inside it, so
# `_extract` drops such runs first (when no \boxed{} answer, which would be read instead, exists).
_HASH_BLANKS = re.compile(r"####([ \t]{2,})")
_BLANKS_TO_EOL = re.compile(r"[^\S\n]*(?:\n|\Z)")
_NOT_FINITE = re.compile(r"[+-]?(?:inf(?:inity)?|nan)", re.I)
# Chat-template control strings: in a prompt, a tokenizer turns them into real special tokens, so
# a row holding them could end the user's turn and write the assistant's. Known families:
# ChatML / Llama 3 / Phi / Qwen (<|im_end|>, <|eot_id|>, <|start_header_id|>, <|endoftext|>),
# DeepSeek's full-width bars (<｜end▁of▁sentence｜>, <｜Assistant｜>), Llama 2 / Mistral (</s>,
# [INST], [/INST], <<SYS>>, [SYSTEM_PROMPT], [TOOL_CALLS]...), Gemma (<start_of_turn>). A bare
# "<|x|>" (one or two characters between the bars) is left alone: that is mathematics.
_CHAT_TOKEN = re.compile(
    r"<\|[A-Za-z_][A-Za-z0-9_]{2,63}\|>"
    r"|<\uff5c[^\uff5c<>\n]{1,64}\uff5c>"
    r"|</s>|\[/?INST\]|<</?SYS>>|\[/?(?:SYSTEM_PROMPT|TOOL_CALLS|TOOL_RESULTS|AVAILABLE_TOOLS)\]"
    r"|<(?:start|end)_of_turn>")
_BIG_FLOAT = 2.0**53  # beyond this, an integer-valued float's digits are rounding, not data


def chat_token(text: str) -> str | None:
    """The first chat special-token string in `text`, or None."""
    m = _CHAT_TOKEN.search(text)
    return m.group() if m else None


def number_text(v: float, name: str) -> str:
    """A float field as text: 27.0 -> "27", 2.5 -> "2.5"; an integer-valued float beyond 2**53
    keeps the text it was written with ("1e300", from the JSON reader's `literal`; else Python's
    "1e+300"), never a 301-digit expansion. ValueError for inf and nan."""
    if not math.isfinite(v):
        raise ValueError(f"field {name!r} is {v}, not a finite number")
    if not v.is_integer():
        return repr(v)
    if abs(v) < _BIG_FLOAT:
        return str(int(v))
    return getattr(v, "literal", None) or repr(v)


def _utf8_size(s: str, name: str) -> int:
    if s.isascii():
        return len(s)
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"field {name!r} holds a lone surrogate (U+{ord(s[e.start]):04X}), which is not "
                         "valid Unicode text") from None


def _as_text(b, name: str) -> str:
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"field {name!r} holds binary data that is not UTF-8 text (byte 0x{bytes(b)[e.start]:02x} "
                         f"at offset {e.start})") from None


def _nested_size(value, name: str) -> tuple[int, bool]:
    """UTF-8 size of the strings (and keys) inside a list or dict, checked for surrogates; and
    whether it holds bytes. Iterative: JSON may nest as deep as its parser allows."""
    size, has_bytes, stack = 0, False, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            size += _utf8_size(v, name)
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str):
                    size += _utf8_size(k, name)
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            size += len(_as_text(v, name))
            has_bytes = True
    return size, has_bytes


def _decoded(value, name: str):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _as_text(value, name)
    if isinstance(value, dict):
        return {k: _decoded(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decoded(v, name) for v in value]
    return value


def check_row(row: dict, max_field_bytes: int = MAX_FIELD_BYTES) -> dict:
    """The row with every field usable as text: binary (Parquet) decoded as UTF-8, no lone
    surrogate in any key or string (SQLite cannot store one), no field over `max_field_bytes`
    (UTF-8 bytes; a list or object counts the strings inside). Returns the row (a copy when
    bytes were decoded); ValueError naming the field otherwise."""
    out = row
    for key, value in row.items():
        name = key if isinstance(key, str) else str(key)
        if isinstance(key, str) and not key.isascii():
            _utf8_size(key, name)
        if isinstance(value, str):
            size = _utf8_size(value, name)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            value = _as_text(value, name)
            size = _utf8_size(value, name)
            out = dict(out) if out is row else out
            out[key] = value
        elif isinstance(value, (list, tuple, dict)):
            size, has_bytes = _nested_size(value, name)
            if has_bytes:
                out = dict(out) if out is row else out
                out[key] = _decoded(value, name)
        else:
            continue
        if size > max_field_bytes:
            raise ValueError(f"field {name!r} is {size:,} bytes, over the {max_field_bytes:,}-byte limit for one "
                             "field (GCPO_MAX_FIELD_BYTES)")
    return out


def _extract(text: str) -> str | None:
    """answers.extract_answer, in linear time, with the same result (see _HASH_BLANKS)."""
    if "####" in text:
        runs = [m.span(1) for m in _HASH_BLANKS.finditer(text) if _BLANKS_TO_EOL.match(text, m.end())]
        if runs and last_boxed(text) is None:
            parts, at = [], 0
            for start, end in runs:
                parts.append(text[at:start])
                at = end
            text = "".join(parts) + text[at:]
    return extract_answer(text)


def _letter(text: str | None) -> str | None:
    """answers.option_letter, in linear time: its pattern reads any run of whitespace as one, and
    backtracks quadratically over a long one ("b" + 20,000 spaces + "x": seconds)."""
    return option_letter(" ".join(text.split())) if text else None


@dataclass(slots=True)
class Record:
    id: str
    text: str
    answer: str
    where: str
    source_id: str | None
    metadata: dict
    solution: str | None = None
    final: str | None = None  # the solution's own final answer, checked against `answer`
    listed: bool = False  # the solution was the first non-empty item of a list (OlympiadBench)


def used_fields(m: Mapping) -> set[str]:
    """The fields a mapping reads; the others become metadata."""
    return set(fields_of(m.problem)) | {f for f in (m.answer, m.solution, m.id, m.options) if f}


def build_records(rows: list[dict], where: list[str], m: Mapping, max_field_bytes: int = MAX_FIELD_BYTES
                  ) -> tuple[list[Record], list[tuple[str, str]]]:
    """Apply a mapping to every row; invalid rows come back as (where, reason)."""
    records, rejects = [], []
    used = used_fields(m)
    for row, w in zip(rows, where):
        try:
            records.append(build_record(row, w, m, used, max_field_bytes))
        except ValueError as e:
            rejects.append((w, str(e)))
    return records, rejects


def build_record(row: dict, where: str, m: Mapping, used: set[str], max_field_bytes: int = MAX_FIELD_BYTES
                 ) -> Record:
    """One row as a Record (`used`: used_fields(m)); ValueError naming the field when it is invalid."""
    row = check_row(row, max_field_bytes)
    text = problem_text(m.problem, row)
    if m.options and row.get(m.options) not in (None, "", []):
        text = f"{text}\n\nOptions: {_format_options(row[m.options])}"
    _no_chat_token(text, row, lambda: [*fields_of(m.problem), m.options])
    option_mode = m.answer_kind == "option"
    solution = final = None
    listed = False
    if m.solution:
        solution = row.get(m.solution)
        if isinstance(solution, (list, tuple)):
            # OlympiadBench keeps its worked solutions as a list of strings (most hold one). The
            # first non-empty one is the golden answer; the others are left out (a problem keeps
            # one golden answer per source row, and the first is the dataset's main solution).
            solution = next((s for s in solution if isinstance(s, str) and s.strip()), None)
            listed = solution is not None
        if isinstance(solution, str) and solution.strip():
            solution = solution.strip()
            if len(solution) > 1 and solution[0] == solution[-1] == '"':
                solution = solution[1:-1].strip()  # MathQA keeps each rationale in quotes
            _no_chat_token(solution, row, lambda: [m.solution])
            final = _final_answer(solution, option_mode)
        else:
            solution = None
    if m.answer:
        answer = _answer(row, m)
    elif final is None:
        why = "its \\boxed{} is empty" if solution and _EMPTY_BOX.search(solution) else \
            "no \\boxed{}, '####' or 'the answer is'"
        raise ValueError(f"field {m.solution!r} states no final answer ({why}); pass --answer FIELD")
    else:
        answer = _checked_answer(final, m.solution)
    sid = row.get(m.id) if m.id else None
    return Record(problem_id(text), text, answer, where, None if sid is None else str(sid),
                  _metadata(row, used, text), solution, final, listed and solution is not None)


def _no_chat_token(text: str, row: dict, names) -> None:
    """ValueError naming the field (`names()`: the fields `text` was built from) that holds a chat
    special token, or "the problem text" when a template joined two harmless halves into one."""
    token = chat_token(text)
    if token is None:
        return
    field_names = [n for n in names() if n and isinstance(row.get(n), str) and token in row[n]]
    what = f"field {field_names[0]!r}" if field_names else "the problem text"
    raise ValueError(f"{what} holds the chat special token {token!r}, which would reach the model as a real "
                     "special token (data must not write chat turns); remove it")


def _checked_answer(ans: str, name: str) -> str:
    """An answer as stored: finite, gradable in length, no chat special token."""
    if _NOT_FINITE.fullmatch(ans):
        raise ValueError(f"field {name!r} gives the answer {ans!r}, not a finite number (write an infinite "
                         "answer as \\infty)")
    if len(ans) > MAX_ANSWER_CHARS:
        raise ValueError(f"field {name!r} gives an answer of {len(ans):,} characters; the grader reads at most "
                         f"{MAX_ANSWER_CHARS:,}")
    token = chat_token(ans)
    if token is not None:
        raise ValueError(f"field {name!r} gives an answer holding the chat special token {token!r}; remove it")
    return ans


def _answer(row: dict, m: Mapping) -> str:
    if m.answer not in row:
        raise ValueError(f"field {m.answer!r} is missing")
    raw = row[m.answer]
    if raw is None:
        raise ValueError(f"field {m.answer!r} is null")
    if isinstance(raw, dict):
        raise ValueError(f"field {m.answer!r} holds an object, not an answer")
    if isinstance(raw, float):
        raw = number_text(raw, m.answer)
    elif isinstance(raw, (list, tuple)):
        raw = _listed_answer(raw, m.answer)
    if m.answer_kind == "hashes" and isinstance(raw, str):
        if "####" not in raw:
            raise ValueError(f"field {m.answer!r} has no '#### answer' line")
        got = raw.rsplit("####", 1)[1].strip()
        if not got:
            raise ValueError(f"field {m.answer!r} is empty after '####'")
        return _checked_answer(_strip_thousands(got), m.answer)
    if m.answer_kind == "boxed" and isinstance(raw, str):
        got = _extract(raw)
        if not got:
            raise ValueError(f"field {m.answer!r} states no final answer (no \\boxed{{}})")
        return _checked_answer(got, m.answer)
    ans = normalize_answer_field(raw)
    if ans is None:
        raise ValueError(f"field {m.answer!r} is empty")
    ans = _checked_answer(ans, m.answer)
    return (_letter(ans) or ans) if m.answer_kind == "option" else ans


def _listed_answer(items, name: str) -> str | None:
    """A list-valued answer as one answer (OlympiadBench: `final_answer: ["$3$"]`).

    Each item loses one `$...$` around the whole of it: OlympiadBench writes every item as inline
    LaTeX for display, and "3" is the answer "$3$" means. One item is the answer. Several items
    (OlympiadBench's `is_multiple_answer` rows) are joined with ", " rather than refused: that is
    how such an answer is written in a completion ("\\boxed{1, 2}"), and math-verify reads a
    comma-separated gold as the set of its values, in any order, so a completion must state all
    of them; refusing the row would drop a problem the benchmark counts. None when no item holds
    anything (the caller says the field is empty)."""
    out = []
    for v in items:
        if isinstance(v, (list, tuple, dict)):
            raise ValueError(f"field {name!r} holds a list with a {type(v).__name__} in it, not answers")
        text = normalize_answer_field(number_text(v, name) if isinstance(v, float) else v)
        if text and len(text) > 2 and text[0] == text[-1] == "$" and text.count("$") == 2:
            text = text[1:-1].strip()
        if text:
            out.append(text)
    return ", ".join(out) or None


def _strip_thousands(ans: str) -> str:
    # GSM8K writes "1,080" after ####; its official grader drops the commas, and so do we.
    return ans.replace(",", "") if _THOUSANDS.fullmatch(ans) else ans


def _final_answer(solution: str, option_mode: bool) -> str | None:
    final = _extract(solution)
    if final and _EMPTY_BOX.fullmatch(final.strip("$ ")):
        final = None  # "the answer is $\boxed{}$" states nothing
    if option_mode:
        letter = _letter(final) if final else None
        if letter is None:
            stated = list(_STATED_OPTION.finditer(solution))
            trailing = _TRAILING_OPTION.search(solution[-60:])
            if stated:
                letter = (stated[-1].group(1) or stated[-1].group(2)).lower()
            elif trailing:
                letter = trailing.group(1).lower()
        return letter or final or None
    if not final:
        return None
    return _strip_thousands(final) if "####" in solution else final


def _format_options(options) -> str:
    if isinstance(options, dict):
        return " , ".join(f"{k} ) {v}" for k, v in options.items())
    if isinstance(options, (list, tuple)):
        items = [str(o).strip() for o in options]
        if all(re.match(r"^\(?[a-eA-E]\s*[).:]", i) for i in items):
            return " , ".join(items)
        return " , ".join(f"{string.ascii_lowercase[i % 26]} ) {o}" for i, o in enumerate(items))
    return str(options).strip()


def _squash(s: str) -> str:
    return re.sub(r'[\s\\"]', "", s)


def _metadata(row: dict, used: set[str], text: str) -> dict:
    """Every column the mapping did not use, for curriculum (level, subject, difficulty, year...)."""
    meta, squashed = {}, None
    for k, v in row.items():
        if k in used or v is None or v == "" or v == []:
            continue
        if isinstance(v, str) and len(v) >= len(text) > 20:
            # Copies of the problem (aime24's `question`, deepmath's `messages`) would only
            # double the database; compare without escapes, `messages` is JSON text.
            squashed = squashed or _squash(text)
            if squashed in _squash(v):
                continue
        if k.lower() in ("level", "difficulty") and isinstance(v, str):
            # "Level 5" (MATH), "4.5" (DeepMath): numbers, so a curriculum can sort on them.
            num = re.fullmatch(r"\s*(?:level\s*)?(\d+(?:\.\d+)?)\s*", v, re.I)
            v = (float(num.group(1)) if "." in num.group(1) else int(num.group(1))) if num else v
        meta[k] = v
    return meta
