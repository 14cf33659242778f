"""How one source row becomes a problem: a validated ValidRow (or a ValueError saying why the row
is rejected), given the field mapping of fields.py; and the ids problems get.

Every row is checked before it is read (`check_row`): each field is text that can be stored
(UTF-8 bytes decoded, no lone surrogates) and at most `max_field_bytes` long; the problem text,
solution and answer hold no chat special-token string; an answer is a finite value (no inf/nan)
short enough to grade. Those rules are texts.py's, the one validation every text that reaches
the model or the database goes through. A violation is a ValueError that names the field, so
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
from dataclasses import dataclass

from .answers import MAX_ANSWER_CHARS, extract_answer, last_boxed, normalize_answer_field, option_letter
from .fields import Mapping, fields_of, used_fields
from .texts import FIELD_ENV, MAX_FIELD_BYTES, chat_token, checked_text, utf8_size


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
_BIG_FLOAT = 2.0**53  # beyond this, an integer-valued float's digits are rounding, not data
# A worked solution that states no final answer, completed with its row's (issue 25 item 8):
# OlympiadBench's proofs end in prose ("Hence $x=2$ or $x=3$."), which no grader reads, so their
# golden answers never verified and were never injected. At ingest there is no recipe, hence no
# golden_template: the completion states the answer in the boxed form every prompt preset asks
# for, and is verified like any other golden answer. Its provenance names the construction.
FINAL_ANSWER_FORM = "{solution}\n\nThe final answer is $\\boxed{{{answer}}}$."
COMPLETED = "solution + final answer"


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
            size += utf8_size(v, f"field {name!r}")
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str):
                    size += utf8_size(k, f"field {name!r}")
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
    """The row with every field usable as text: binary (Parquet) decoded as UTF-8, then each text
    as texts.checked_text takes it (no lone surrogate in any key or string, none over
    `max_field_bytes` UTF-8 bytes; a list or object counts the strings inside). Chat tokens are
    looked for in the fields that reach the model only (validate_row). Returns the row (a copy
    when bytes were decoded); ValueError naming the field otherwise."""
    out = row
    for key, value in row.items():
        name = key if isinstance(key, str) else str(key)
        if isinstance(key, str) and not key.isascii():
            utf8_size(key, f"field {name!r}")
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = _as_text(value, name)
            out = dict(out) if out is row else out
            out[key] = value
        if isinstance(value, str):
            checked_text(value, f"field {name!r}", max_bytes=max_field_bytes, to_model=False)
        elif isinstance(value, (list, tuple, dict)):
            size, has_bytes = _nested_size(value, name)
            if has_bytes:
                out = dict(out) if out is row else out
                out[key] = _decoded(value, name)
            if size > max_field_bytes:
                raise ValueError(f"field {name!r} is {size:,} bytes, over the {max_field_bytes:,}-byte limit for "
                                 f"one field ({FIELD_ENV})")
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
class ValidRow:
    """One source row as the problem it is: its text's id (ingest may give it another: a variant
    or a repeat), text, answer, where it was read, and its worked solution if any."""

    id: str
    text: str
    answer: str
    where: str
    source_id: str | None
    metadata: dict
    solution: str | None = None
    final: str | None = None  # the solution's own final answer, checked against `answer`
    listed: bool = False  # the solution was the first non-empty item of a list (OlympiadBench)
    # the solution completed with the row's answer (FINAL_ANSWER_FORM) when it states none, and
    # that completion's final answer as read back
    completed: str | None = None
    completed_final: str | None = None


def validate_rows(rows: list[dict], where: list[str], m: Mapping, max_field_bytes: int = MAX_FIELD_BYTES
                  ) -> tuple[list[ValidRow], list[tuple[str, str]]]:
    """Apply a mapping to every row; invalid rows come back as (where, reason)."""
    records, rejects = [], []
    used = used_fields(m)
    for row, w in zip(rows, where):
        try:
            records.append(validate_row(row, w, m, used, max_field_bytes))
        except ValueError as e:
            rejects.append((w, str(e)))
    return records, rejects


def validate_row(row: dict, where: str, m: Mapping, used: set[str], max_field_bytes: int = MAX_FIELD_BYTES
                 ) -> ValidRow:
    """One row as a ValidRow (`used`: used_fields(m)); ValueError naming the field when it is invalid."""
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
            checked_text(solution, f"field {m.solution!r}", max_bytes=max_field_bytes)
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
    completed = completed_final = None
    if solution is not None and final is None and m.answer:
        completed = FINAL_ANSWER_FORM.format(solution=solution, answer=answer)
        try:  # the same rules as the solution itself: the answer adds a few bytes
            checked_text(completed, f"field {m.solution!r}", max_bytes=max_field_bytes)
            completed_final = _final_answer(completed, option_mode)
        except ValueError:
            completed = None
    sid = row.get(m.id) if m.id else None
    return ValidRow(problem_id(text), text, answer, where, None if sid is None else str(sid),
                    _metadata(row, used, text), solution, final, listed and solution is not None, completed,
                    completed_final)


def completion_provenance(m: Mapping) -> dict:
    """What a completed golden answer records of how it was built (its params_json)."""
    return {"construction": COMPLETED, "form": FINAL_ANSWER_FORM, "answer_field": m.answer}


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

