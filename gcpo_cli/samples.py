"""Evaluation samples as JSON lines, and stored evaluations shown again.

`gcpo eval --export FILE` writes every graded sample for another harness (lm-evaluation-harness,
lighteval, a script) to re-grade; `gcpo eval --import FILE --set NAME` grades another system's
samples with gcpo's grader and stores them as an evaluation, so two graders can be compared on
the same completions. One line per sample; export writes every field, import needs only a
completion and its problem (`problem_id`, gcpo's id or the source file's own, else `problem`,
its text). Import also reads lm-eval's `--log_samples` files and Qwen2.5-Math's evaluation
outputs as they are, and any JSON lines whose fields are named (sample_layouts.py):

    {"evaluation_id": "01jq...", "model": "tiny", "set": "gsm8k", "problem_id": "3f2a9c...",
     "source_id": "17", "problem": "...", "sample_index": 0, "prompt": "<|im_start|>user\\n...",
     "completion": "... \\\\boxed{18}", "extracted_answer": "18", "gold": "18", "correct": true,
     "completion_tokens": 57, "finish_reason": "stop"}

`finish_reason` is "stop" when the model ended its answer and "length" when it hit the token
limit (the OpenAI and vLLM names); gcpo grades a "length" sample wrong whatever it states. An
imported line's own `correct` is not used for grading: it is compared with gcpo's verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import resumable, store
from . import sample_layouts as layouts
from .answers import extract_answer
from .errors import GcpoError
from .eval_metrics import average, summarize
from .evaluation import Ungraded, problem_params, run_evaluation, stored_samples
from .grader import Grader
from .records import Problem
from .texts import checked_text

IMPORT_CHUNK = 64  # problems graded and stored per transaction


def _line(r: dict) -> dict:
    return {"evaluation_id": r["evaluation_id"], "model": r["model"], "set": r["set_name"],
            "problem_id": r["problem_id"], "source_id": r["source_id"], "problem": r["problem"],
            "sample_index": r["sample_index"], "prompt": r["prompt"], "completion": r["completion"],
            "extracted_answer": r["extracted_answer"], "gold": r["gold"], "correct": bool(r["correct"]),
            "completion_tokens": r["completion_tokens"], "finish_reason": "length" if r["truncated"] else "stop"}


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def check_export_path(path: str | Path) -> None:
    """A GcpoError naming what is wrong unless `export` can write `path`: checked before an
    evaluation runs, so a typo costs nothing. Writing (and removing) the partial file it will
    write is the one test that covers a missing folder, a file in its place, permissions and a
    read-only disk alike."""
    path = Path(path)
    where = f"--export {path}"
    if path.is_dir():
        raise GcpoError(f"{where}: is a folder; give a file name such as samples.jsonl")
    parent = path.parent
    if not parent.exists():
        raise GcpoError(f"{where}: no such folder {parent}; create it first")
    if not parent.is_dir():
        raise GcpoError(f"{where}: {parent} is not a folder")
    tmp = _partial(path)
    try:
        with open(tmp, "a", encoding="utf-8"):
            pass
        tmp.unlink()
    except OSError as e:
        raise GcpoError(f"{where}: cannot write there ({e.strerror or e})") from None


def export(db, evaluation_ids: list[str], path: str | Path) -> int:
    """Writes the stored samples of the evaluations to `path` as JSON lines and returns how many.
    The file is written beside its target and renamed into place: never half-written."""
    path = Path(path)
    check_export_path(path)
    tmp = _partial(path)
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for ev in evaluation_ids:
                for r in store.evaluation_samples(db, ev):
                    f.write(json.dumps(_line(r), ensure_ascii=False) + "\n")
                    n += 1
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GcpoError(f"cannot write {path}: {e.strerror or e}") from None
    return n


def _metrics(db, row: dict) -> dict:
    """A stored evaluation's metrics, recomputed from the samples it kept, so an interrupted one
    shows what it has and one recorded before a metric existed (maj_at_k_exact) gains it."""
    params = row["params"] if isinstance(row["params"], dict) else {}
    recorded = row["metrics"] if isinstance(row["metrics"], dict) else {}
    stored = stored_samples(db, row["id"])
    return recorded | summarize(stored, params.get("k") or max(map(len, stored), default=1))


def stored_result(db, ref: str) -> dict:
    """A stored evaluation (id, prefix or `latest`), shaped as `evaluation.result` shapes a fresh
    one, with its metrics recomputed from its samples."""
    row = store.resolve_evaluation(db, ref)
    params = row["params"] if isinstance(row["params"], dict) else {}
    s = dict(evaluation_id=row["id"], model=row["model"], set_name=row["set_name"], run_id=row["run_id"],
             run_step=row["run_step"], status=resumable.status(db, row["id"], row["status"]), params=params,
             **_metrics(db, row))
    return dict(label=row["model"], model=row["model"], run_id=row["run_id"], run_step=row["run_step"],
                adapter=None, sets=[s], average=average([s]))


def kind(params: dict) -> str:
    """How an evaluation's completions came to be: its prompt preset (generated), "golden" or
    "import"."""
    if params.get("golden"):
        return "golden"
    if params.get("imported"):
        return "import"
    return str(params.get("prompt") or "boxed")  # generated before presets were recorded: boxed


def listed(db, limit: int) -> list[dict]:
    """What `gcpo evals` shows, newest first: each evaluation's id, model (a run's checkpoint as
    run:ID@STEP, with run_id and run_step), set, k, prompt (kind), status as the user should see
    it ("died": marked running, no process holds it), dates, the problems it planned and its
    metrics (an unfinished one's over the problems it finished)."""
    out = []
    for row in store.list_evaluations(db, limit):
        params = row["params"] if isinstance(row["params"], dict) else {}
        status = resumable.status(db, row["id"], row["status"])
        metrics = row["metrics"] if status == "completed" and isinstance(row["metrics"], dict) else _metrics(db, row)
        out.append(dict(id=row["id"], model=row["model"], run_id=row["run_id"], run_step=row["run_step"],
                        set_name=row["set_name"], k=params.get("k") or metrics.get("k"), prompt=kind(params),
                        status=status, created_at=row["created_at"], updated_at=row["updated_at"],
                        problems=params.get("problems"), **{key: v for key, v in metrics.items() if key != "k"}))
    return out


# ------------------------------------------------------------------------------------- import


@dataclass
class Imported:
    problem: Problem
    completion: str
    prompt: str | None
    completion_tokens: int | None
    truncated: bool
    correct: bool | None  # the file's own verdict, if it has one
    line: int


def _norm(text: str) -> str:
    return " ".join(str(text).split())


class ProblemMatcher:
    """A line's problem: gcpo's id, else the source file's own id, else the exact text (then the
    text with whitespace normalised). Several problems with one text need an id."""

    def __init__(self, problems: list[Problem], set_name: str):
        self.set_name = set_name
        self.by_id = {p.id: p for p in problems}
        self.by_source: dict[str, list[Problem]] = {}
        self.by_text: dict[str, list[Problem]] = {}
        for p in problems:
            if p.source_id is not None:
                self.by_source.setdefault(str(p.source_id), []).append(p)
            self.by_text.setdefault(p.text, []).append(p)
            if _norm(p.text) != p.text:
                self.by_text.setdefault(_norm(p.text), []).append(p)

    def __call__(self, obj: dict) -> tuple[Problem | None, str]:
        pid, text = obj.get("problem_id"), obj.get("problem")
        if pid is not None and not isinstance(pid, bool) and isinstance(pid, (str, int)):
            pid = str(pid)
            if pid in self.by_id:
                return self.by_id[pid], ""
            found = self.by_source.get(pid, [])
            if len(found) == 1:
                return found[0], ""
            if len(found) > 1:
                return None, f"problem id {pid!r} names {len(found)} problems of set '{self.set_name}'"
        if isinstance(text, str) and text.strip():
            found = self.by_text.get(text) or self.by_text.get(_norm(text), [])
            if len(found) == 1:
                return found[0], ""
            if len(found) > 1:
                return None, (f"the problem text matches {len(found)} problems of set '{self.set_name}'; "
                              "give its problem_id")
        if pid is None and not isinstance(text, str):
            return None, "no problem_id or problem field"
        what = f"problem id {pid!r}" if pid is not None else "the problem text"
        return None, f"{what} is not in set '{self.set_name}'"


def _json_lines(path: Path, raw: bytes) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line; a line that is no JSON object is an error."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise GcpoError(f"{path}: not UTF-8 text; --import reads JSON lines") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise GcpoError(f"{path.name} line {n}: not a JSON object (--import reads JSON lines, one sample a line)")
        out.append((n, obj))
    return out


def _match(match: ProblemMatcher, record: layouts.Record) -> tuple[Problem | None, str]:
    if not record.either:
        return match({"problem_id": record.problem_id, "problem": record.problem})
    for obj in ({"problem_id": record.problem_id}, {"problem": record.problem}):  # an id, else a text
        found, _ = match(obj)
        if found is not None:
            return found, ""
    value = record.problem if len(record.problem) <= 40 else record.problem[:39] + "…"
    return None, f"{value!r} is neither a problem id nor a problem text of set '{match.set_name}'"


def read_samples(path: Path, raw: bytes, problems: list[Problem], set_name: str, *, completion_field: str | None = None,
                 problem_field: str | None = None) -> tuple[list[Imported], str]:
    """Every sample of an import file, matched to its problem, and the file's layout
    (sample_layouts.py: detected from its fields unless `completion_field` names the completion).
    The first bad line is an error that names it (nothing is stored until the whole file reads)."""
    lines = _json_lines(path, raw)
    if not lines:
        raise GcpoError(f"{path}: no samples (one JSON object a line, each with a completion and its problem)")
    layout = layouts.detect(lines[0][1], completion_field)
    records = layouts.read(layout, lines, path.name, completion_field=completion_field, problem_field=problem_field)
    match, out, unmatched = ProblemMatcher(problems, set_name), [], []
    for record in records:
        where = f"{path.name} line {record.line}"
        problem, why = _match(match, record)
        if problem is None:
            unmatched.append((where, why))
            continue
        try:  # stored, never shown to a model: texts.py's rules but chat tokens (issue 27 item 4)
            if record.prompt is not None:
                checked_text(record.prompt, "'prompt'", to_model=False)
            for x in record.samples:
                checked_text(x.completion, repr(completion_field or "completion"), to_model=False)
        except ValueError as e:
            raise GcpoError(f"{where}: {e}") from None
        out.extend(Imported(problem, x.completion, record.prompt, x.completion_tokens, x.truncated, x.correct,
                            record.line) for x in record.samples)
    if unmatched:
        more = f" (and {len(unmatched) - 1} more lines)" if len(unmatched) > 1 else ""
        raise GcpoError(f"{unmatched[0][0]}: {unmatched[0][1]}{more}")
    return out, layout


def import_samples(db, path: str | Path, set_ref: str, *, grader: Grader | None = None,
                   progress: bool = True, stop: resumable.StopSignals | None = None,
                   completion_field: str | None = None, problem_field: str | None = None) -> dict:
    """Grades the samples of a JSON-lines file (gcpo's, lm-eval's or Qwen2.5-Math's layout, or
    the fields named) with gcpo's grader and stores them as the evaluation "import:FILE NAME" of
    the set; returns its metrics as `evaluate_problems` does, with "layout" and "file_verdicts"
    (how often gcpo agrees with the file's own verdicts, where it has them). Importing the same
    file again after an interruption resumes it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise GcpoError(f"cannot read {path}: {e.strerror or e}") from None
    s = store.resolve_set(db, set_ref)
    problems = store.set_problems(db, s["name"])[1]
    if not problems:
        raise GcpoError(f"set '{s['name']}' has no problems")
    imported, layout = read_samples(path, raw, problems, s["name"], completion_field=completion_field,
                                    problem_field=problem_field)
    by: dict[str, list[Imported]] = {}
    for x in imported:
        by.setdefault(x.problem.id, []).append(x)
    order = [p for p in problems if p.id in by]  # the set's order
    k = max(len(v) for v in by.values())
    label = f"import:{path.name}"
    # gcpo's own layout keeps the parameters imports had before layouts, so those resume.
    read_as = {} if layout == layouts.GCPO and not problem_field and not completion_field else dict(
        layout=layout, completion_field=completion_field, problem_field=problem_field)
    params = problem_params(order, imported=path.name, sha256=hashlib.sha256(raw).hexdigest()[:16], k=k, **read_as)

    def sample(chunk: list[Problem]) -> list[Ungraded]:
        return [Ungraded(p, j, x.completion, extract_answer(x.completion), x.completion_tokens, x.truncated, x.prompt)
                for p in chunk for j, x in enumerate(by[p.id])]

    result = run_evaluation(db, order, sample, label=label, set_name=s["name"], params=params, k=k,
                            chunk_size=IMPORT_CHUNK, grader=grader, progress=progress, stop=stop)
    return dict(result, layout=layout, file_verdicts=_agreement(db, result["evaluation_id"], by, order))


def _agreement(db, evaluation_id: str, by: dict[str, list[Imported]], order: list[Problem]) -> dict | None:
    """The file's own verdicts against gcpo's: {samples, agree, mean_at_k}; the file's mean@k
    only when every sample has a verdict. None when the file has none."""
    ours = {(r["problem_id"], r["sample_index"]): bool(r["correct"]) for r in store.evaluation_samples(db, evaluation_id)}
    pairs = [(x.correct, ours.get((pid, j))) for pid, xs in by.items() for j, x in enumerate(xs) if x.correct is not None]
    if not pairs:
        return None
    complete = all(x.correct is not None for xs in by.values() for x in xs)
    mean = (sum(sum(x.correct for x in by[p.id]) / len(by[p.id]) for p in order) / len(order)
            if complete else None)
    return {"samples": len(pairs), "agree": sum(a == b for a, b in pairs), "mean_at_k": mean}
