"""How rows become problems: detect which field holds the problem, the worked solution, the answer
and the id, then turn each row into a validated Record (or a reason it is rejected).

Known layouts (see ../shared/data/SOURCES.md): `problem`/`question`/`prompt` for the text, SVAMP's
`Body` + `Question`, MathQA's `options` + option-letter `correct`; the answer in `answer`,
`ground_truth`, `target`..., after GSM8K's `####`, or only as the last \\boxed{} of a MATH
`solution`. Weaker guesses (a column named `input`, `target`, `label`...) are flagged as unsure so
that the CLI can ask on a terminal.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field

from .errors import GcpoError
from .answers import extract_answer, normalize_answer_field, option_letter

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


def problem_id(text: str) -> str:
    """16 hex chars of sha256 over the whitespace-normalised problem text."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


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
    if isinstance(v, float) and v.is_integer():
        v = int(v)
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
                   answer: str | None = None, id: str | None = None, label: str = "rows") -> Mapping:
    """Find the fields; explicit names (flags) win. Raises GcpoError when a field cannot be found."""
    cols = _columns(rows)
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
_STATED_OPTION = re.compile(
    r"(?:answer|option|choice)s?\s*(?:is|:|-|=|will be|should be)?\s*(?:option\s*|choice\s*)?[:(]?"
    r"\s*([a-e])\s*\)?(?![a-z0-9])|(?<![a-z0-9])([a-e])\s+is\s+(?:the\s+)?(?:correct\s+)?"
    r"(?:answer|option|choice)", re.I)
_TRAILING_OPTION = re.compile(r"(?:^|[\s(:])([a-eA-E])\s*\)?\s*\.?\s*$")
_EMPTY_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")  # two MATH-train solutions end in "\boxed{}"


@dataclass
class Record:
    id: str
    text: str
    answer: str
    where: str
    source_id: str | None
    metadata: dict
    solution: str | None = None
    final: str | None = None  # the solution's own final answer, checked against `answer`


def build_records(rows: list[dict], where: list[str], m: Mapping
                  ) -> tuple[list[Record], list[tuple[str, str]]]:
    """Apply a mapping to every row; invalid rows come back as (where, reason)."""
    records, rejects = [], []
    used = set(fields_of(m.problem)) | {f for f in (m.answer, m.solution, m.id, m.options) if f}
    for row, w in zip(rows, where):
        try:
            records.append(_record(row, w, m, used))
        except ValueError as e:
            rejects.append((w, str(e)))
    return records, rejects


def _record(row: dict, where: str, m: Mapping, used: set[str]) -> Record:
    text = problem_text(m.problem, row)
    if m.options and row.get(m.options) not in (None, "", []):
        text = f"{text}\n\nOptions: {_format_options(row[m.options])}"
    option_mode = m.answer_kind == "option"
    solution = final = None
    if m.solution:
        solution = row.get(m.solution)
        if isinstance(solution, str) and solution.strip():
            solution = solution.strip()
            if len(solution) > 1 and solution[0] == solution[-1] == '"':
                solution = solution[1:-1].strip()  # MathQA keeps each rationale in quotes
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
        answer = final
    sid = row.get(m.id) if m.id else None
    return Record(problem_id(text), text, answer, where, None if sid is None else str(sid),
                  _metadata(row, used, text), solution, final)


def _answer(row: dict, m: Mapping) -> str:
    if m.answer not in row:
        raise ValueError(f"field {m.answer!r} is missing")
    raw = row[m.answer]
    if raw is None:
        raise ValueError(f"field {m.answer!r} is null")
    if isinstance(raw, dict):
        raise ValueError(f"field {m.answer!r} holds an object, not an answer")
    if m.answer_kind == "hashes" and isinstance(raw, str):
        if "####" not in raw:
            raise ValueError(f"field {m.answer!r} has no '#### answer' line")
        got = raw.rsplit("####", 1)[1].strip()
        if not got:
            raise ValueError(f"field {m.answer!r} is empty after '####'")
        return _strip_thousands(got)
    if m.answer_kind == "boxed" and isinstance(raw, str):
        got = extract_answer(raw)
        if not got:
            raise ValueError(f"field {m.answer!r} states no final answer (no \\boxed{{}})")
        return got
    ans = normalize_answer_field(raw)
    if ans is None:
        raise ValueError(f"field {m.answer!r} is empty")
    return (option_letter(ans) or ans) if m.answer_kind == "option" else ans


def _strip_thousands(ans: str) -> str:
    # GSM8K writes "1,080" after ####; its official grader drops the commas, and so do we.
    return ans.replace(",", "") if _THOUSANDS.fullmatch(ans) else ans


def _final_answer(solution: str, option_mode: bool) -> str | None:
    final = extract_answer(solution)
    if final and _EMPTY_BOX.fullmatch(final.strip("$ ")):
        final = None  # "the answer is $\boxed{}$" states nothing
    if option_mode:
        letter = option_letter(final) if final else None
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
