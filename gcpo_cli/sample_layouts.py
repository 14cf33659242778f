"""Sample files as other harnesses write them: which layout a file has, told from its fields (as
ingest tells a data file's fields), and each line read as the problem and completions it holds.

- gcpo: what `gcpo eval --export` writes, one sample a line: `completion`, `problem_id` (gcpo's
  id or the source file's own) or `problem` (its text), and optionally `prompt`,
  `completion_tokens`, `finish_reason` ("length": cut off) and `correct` (the file's verdict).
- lm-eval: lm-evaluation-harness's `--log_samples` file, samples_<task>_<date>.jsonl, one line
  per document and filter: `doc` (the dataset row), `doc_id`, `target`, `arguments` (the prompt
  and generation arguments: {"gen_args_0": {"arg_0": PROMPT, "arg_1": {...}}} since 0.4.3,
  [[PROMPT, {...}]] before), `resps` (per request, its completions: k of them with `repeats: k`),
  `filtered_resps`, `filter`, `metrics` (the names), each metric's value and the hashes. The
  problem is read from `doc` as `gcpo ingest` reads a row (fields.detect_mapping,
  rows.validate_row), so its text (or its id field, MATH-500's unique_id) is what ingesting the
  same dataset stored. A document's lines for its other filters repeat its completions and are
  skipped; the file's verdict on a one-completion document is its first filter's first metric.
  The lines gcpo's --output-path writes in this layout (results_folder.py) add, per completion,
  `correct`, `completion_tokens` and `finish_reason`, which are read too.
- qwen25-math: the output of Qwen2.5-Math's evaluation/math_eval.py, one problem a line: `idx`,
  `question`, `gt_cot`, `gt`, the dataset's own fields kept (`level`, `type`, `answer`...),
  `code` (the n_sampling completions), `pred` (the answers it extracted), `report` and `score`
  (its verdicts, one per completion).

Anything else: `--completion-field` names the completion (a text, or a list of texts: one
problem's samples) and `--problem-field` the problem (its text or id); a dotted name reaches into
an object (`doc.question`). `--problem-field` also overrides where a known layout's problem is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import GcpoError
from .fields import detect_mapping, used_fields
from .rows import validate_row

GCPO, LM_EVAL, QWEN = "gcpo", "lm-eval", "qwen25-math"
DESCRIBED = {GCPO: "gcpo's own layout", LM_EVAL: "an lm-eval --log_samples file",
             QWEN: "a Qwen2.5-Math evaluation output"}


@dataclass
class Stated:
    """One completion as the file states it."""

    completion: str
    completion_tokens: int | None = None
    truncated: bool = False
    correct: bool | None = None  # the file's own verdict, if it has one


@dataclass
class Record:
    """One line's problem (an id, a text, or one value that may be either) and its completions."""

    line: int
    problem_id: str | None
    problem: str | None
    prompt: str | None
    samples: list[Stated] = field(default_factory=list)
    either: bool = False  # problem_id and problem are one value, an id or a text (--problem-field)


def detect(first: dict, completion_field: str | None) -> str:
    """The layout of a file whose first line is `first`: --completion-field means gcpo's with
    that name for the completion; lm-eval has a `doc` object and `resps`; Qwen2.5-Math has
    `idx`, `question` and a list of `code`."""
    if completion_field:
        return GCPO
    if isinstance(first.get("doc"), dict) and "resps" in first:
        return LM_EVAL
    if {"idx", "question", "code"} <= first.keys() and isinstance(first["code"], list):
        return QWEN
    return GCPO


def read(layout: str, lines: list[tuple[int, dict]], name: str, *, completion_field: str | None = None,
         problem_field: str | None = None) -> list[Record]:
    """Every record of the file's lines ((line number, object)); a line that does not fit the
    layout is a GcpoError that names it."""
    if layout == LM_EVAL:
        return _lm_eval(lines, name, problem_field)
    reader = _qwen if layout == QWEN else _gcpo
    return [reader(obj, f"{name} line {n}", n, completion_field, problem_field) for n, obj in lines]


def value_at(obj: dict, path: str):
    """`obj[path]`, else the dotted path's value inside nested objects (None where missing)."""
    if path in obj:
        return obj[path]
    value = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def typed(obj: dict, key: str, kinds: tuple, what: str, where: str):
    """`obj[key]` if it is one of `kinds` (None when absent); else a GcpoError naming it."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise GcpoError(f"{where}: '{key}' must be {what}, got {json.dumps(value)[:40]}")
    return value


def _texts(value) -> list[str] | None:
    """A completion field's texts: one text, or a non-empty list of texts; None otherwise."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def _problem(obj: dict, where: str, problem_field: str, line: int, prompt: str | None) -> Record:
    value = value_at(obj, problem_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise GcpoError(f"{where}: --problem-field {problem_field!r} holds no problem text or id")
    return Record(line, str(value), value if isinstance(value, str) else None, prompt, either=isinstance(value, str))


def _gcpo(obj: dict, where: str, line: int, completion_field: str | None, problem_field: str | None) -> Record:
    key = completion_field or "completion"
    texts = _texts(value_at(obj, key))
    if texts is None:
        fields = ", ".join(list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        hint = "" if completion_field else (f" (fields: {fields}); for another layout name its fields: "
                                            "--completion-field FIELD --problem-field FIELD")
        raise GcpoError(f"{where}: no {key!r} text{hint}")
    prompt = typed(obj, "prompt", (str,), "text", where)
    if problem_field:
        record = _problem(obj, where, problem_field, line, prompt)
    else:
        pid = obj.get("problem_id")
        record = Record(line, str(pid) if isinstance(pid, (str, int)) and not isinstance(pid, bool) else None,
                        obj.get("problem") if isinstance(obj.get("problem"), str) else None, prompt)
    if len(texts) == 1 and isinstance(value_at(obj, key), str):  # one sample: its own fields apply
        tokens = typed(obj, "completion_tokens", (int,), "a whole number", where)
        finish = typed(obj, "finish_reason", (str,), '"stop" or "length"', where)
        correct = typed(obj, "correct", (bool, int), "true or false", where)
        record.samples = [Stated(texts[0], tokens, finish == "length", None if correct is None else bool(correct))]
    else:
        record.samples = [Stated(t) for t in texts]
    return record


def _qwen(obj: dict, where: str, line: int, completion_field: str | None, problem_field: str | None) -> Record:
    code = _texts(obj.get("code"))
    if code is None or not isinstance(obj.get("code"), list):
        raise GcpoError(f"{where}: 'code' must be the list of completions (a Qwen2.5-Math evaluation output)")
    score = obj.get("score")
    verdicts = (score if isinstance(score, list) and len(score) == len(code) and all(isinstance(s, bool) for s in score)
                else [None] * len(code))
    if problem_field:
        record = _problem(obj, where, problem_field, line, None)
    elif isinstance(obj.get("question"), str):
        record = Record(line, None, obj["question"], None)
    else:
        raise GcpoError(f"{where}: no 'question' text")
    record.samples = [Stated(c, correct=v) for c, v in zip(code, verdicts)]
    return record


def _lm_eval_prompt(arguments) -> str | None:
    """The prompt of an lm-eval sample's first request: {"gen_args_0": {"arg_0": ...}} (0.4.3 on)
    or [[prompt, kwargs]] (before)."""
    if isinstance(arguments, dict):
        first = arguments.get("gen_args_0")
        prompt = first.get("arg_0") if isinstance(first, dict) else None
    elif isinstance(arguments, list) and arguments and isinstance(arguments[0], list) and arguments[0]:
        prompt = arguments[0][0]
    else:
        prompt = None
    return prompt if isinstance(prompt, str) else None


def _lm_eval_verdict(obj: dict, n_completions: int) -> bool | None:
    """The first metric's value on a one-completion document, when it is 0 or 1 (exact_match)."""
    metrics = obj.get("metrics")
    if n_completions != 1 or not isinstance(metrics, list) or not metrics or not isinstance(metrics[0], str):
        return None
    value = obj.get(metrics[0])
    if isinstance(value, bool):
        return value
    return bool(value) if isinstance(value, (int, float)) and value in (0, 1) else None


def _each(values, kind: type, n: int) -> list | None:
    """`values` if it is a list of n values of `kind` (or null), else None."""
    if not isinstance(values, list) or len(values) != n:
        return None
    ok = all(v is None or isinstance(v, kind) and (kind is bool or not isinstance(v, bool)) for v in values)
    return values if ok else None


def _lm_eval(lines: list[tuple[int, dict]], name: str, problem_field: str | None) -> list[Record]:
    firsts, seen = [], set()
    for n, obj in lines:
        if not isinstance(obj.get("doc"), dict) or not isinstance(obj.get("resps"), list):
            raise GcpoError(f"{name} line {n}: not an lm-eval sample (no 'doc' object or 'resps' list)")
        key = obj.get("doc_id", f"line {n}")
        key = json.dumps(key) if isinstance(key, (dict, list)) else key
        if key not in seen:  # later lines of a document: its other filters, the same completions
            seen.add(key)
            firsts.append((n, obj))
    mapping = None
    if not problem_field:
        try:
            mapping = detect_mapping([obj["doc"] for _, obj in firsts], label=f"{name}: 'doc'")
        except GcpoError as e:
            raise GcpoError(f"{e}; or name the problem's field: --problem-field doc.FIELD") from None
    records = []
    for n, obj in firsts:
        where = f"{name} line {n}"
        texts = [t for request in obj["resps"] for t in (_texts(request) or [None])]
        if not texts or any(t is None for t in texts):
            raise GcpoError(f"{where}: 'resps' holds no generated texts (--import reads generate_until tasks)")
        prompt = _lm_eval_prompt(obj.get("arguments"))
        if mapping is None:
            record = _problem(obj, where, problem_field, n, prompt)
        else:
            try:
                row = validate_row(obj["doc"], where, mapping, used_fields(mapping))
            except ValueError as e:
                raise GcpoError(f"{where}: 'doc': {e}; or name the problem's field: "
                                "--problem-field doc.FIELD") from None
            record = Record(n, row.source_id, row.text, prompt)
        verdict = _lm_eval_verdict(obj, len(texts))
        # gcpo's own --output-path lines also say, per completion, its verdict, length and finish.
        correct = _each(obj.get("correct"), bool, len(texts)) or [verdict] * len(texts)
        tokens = _each(obj.get("completion_tokens"), int, len(texts)) or [None] * len(texts)
        finish = _each(obj.get("finish_reason"), str, len(texts)) or [None] * len(texts)
        record.samples = [Stated(t, n, f == "length", c) for t, n, f, c in zip(texts, tokens, finish, correct)]
        records.append(record)
    return records
