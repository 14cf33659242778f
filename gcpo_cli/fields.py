"""Which field of a row holds the problem, the worked solution, the answer and the id: the
mapping (`detect_mapping`); rows.py turns each row into a validated problem with it.

Known layouts (see ../shared/data/SOURCES.md): `problem`/`question`/`prompt` for the text, SVAMP's
`Body` + `Question`, MathQA's `options` + option-letter `correct`; the answer in `answer`,
`ground_truth`, `target`..., after GSM8K's `####`, or only as the last \\boxed{} of a MATH
`solution`. Weaker guesses (a column named `input`, `target`, `label`...) are flagged as unsure so
that the CLI can ask on a terminal.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from .errors import GcpoError

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


def used_fields(m: Mapping) -> set[str]:
    """The fields a mapping reads; the others become metadata."""
    return set(fields_of(m.problem)) | {f for f in (m.answer, m.solution, m.id, m.options) if f}

