"""Benchmark evaluation: k samples per problem, graded, every sample stored, then summarised.

- Metrics are pure functions over per-problem samples (tested against hand computations):
  mean@k with its standard error over problems, unbiased pass@k (Chen et al. 2021, "Evaluating
  Large Language Models Trained on Code", eq. 1), maj@k, mean completion length, truncation rate
  and the share of samples that stated no final answer.
- `evaluate_problems` is shared by `gcpo eval` and the trainer's held-out evaluation. It writes
  one transaction per generation batch, so an interrupted evaluation keeps what it finished and
  the same call (same model label, set and parameters) resumes it without redoing those problems.
- `BENCHMARKS` names the known benchmarks, their hub ids and fields, and the file in
  ../shared/data that holds each offline.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .answers import Grader, _clean_str, extract_answer, grading_target
from .db import dumps, new_id
from .errors import GcpoError
from .rollout import DEFAULT_TEMPLATE

METRICS = ("mean_at_k", "stderr", "pass_at_k", "maj_at_k", "mean_tokens", "truncation_rate",
           "unextracted_rate")


# ------------------------------------------------------------------------------------- metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), computed as a
    product so that large n does not overflow (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample std / sqrt(n)); the error is None for fewer than 2."""
    if not values:
        return 0.0, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def maj_at_k(answers: list[str | None], verdicts: list[bool]) -> bool:
    """Is the most frequent stated answer correct? Correct answers all equal the gold answer, so
    they form one group whatever their spelling (1/2, 0.5); wrong ones group by normalised text.
    Samples without an answer do not vote; ties go to the answer stated first."""
    votes: Counter = Counter()
    for ans, ok in zip(answers, verdicts):
        if ok:
            votes[True] += 1
        elif ans is not None and ans.strip():
            votes["w:" + _clean_str(ans)] += 1
    if not votes:
        return False
    return votes.most_common(1)[0][0] is True  # most_common keeps first-seen order on ties


@dataclass
class Sample:
    extracted: str | None
    correct: bool
    tokens: int | None = None
    truncated: bool = False


def summarize(samples: list[list[Sample]], k: int) -> dict:
    """Metrics over problems, each a list of its samples. pass@k and maj@k use all samples of a
    problem (k of them in a normal evaluation; a problem with fewer samples uses as many as it
    has). The standard error is over problems: each problem's mean accuracy is one observation."""
    samples = [s for s in samples if s]
    flat = [x for s in samples for x in s]
    out: dict = {"n_problems": len(samples), "n_samples": len(flat), "k": k}
    if not samples:  # nothing graded (a golden check of a set without golden answers)
        return out | {key: None for key in METRICS}
    mean, se = mean_and_stderr([sum(x.correct for x in s) / len(s) for s in samples])
    tokens = [x.tokens for x in flat if x.tokens is not None]
    out.update(
        mean_at_k=mean,
        stderr=se,
        pass_at_k=sum(pass_at_k(len(s), sum(x.correct for x in s), min(k, len(s))) for s in samples) / len(samples),
        maj_at_k=sum(maj_at_k([x.extracted for x in s], [x.correct for x in s]) for s in samples) / len(samples),
        mean_tokens=sum(tokens) / len(tokens) if tokens else None,
        truncation_rate=sum(x.truncated for x in flat) / len(flat),
        unextracted_rate=sum(x.extracted is None for x in flat) / len(flat),
    )
    return out


def average(per_set: list[dict]) -> dict:
    """Unweighted mean over benchmarks (each counts once, as papers report; sets with nothing
    graded are left out); the standard error combines the sets' errors as independent."""
    per_set = [m for m in per_set if m["n_problems"]]
    if not per_set:
        return {}
    out: dict = {"n_problems": sum(m["n_problems"] for m in per_set),
                 "n_samples": sum(m["n_samples"] for m in per_set), "k": per_set[0]["k"]}
    for key in METRICS:
        vals = [m[key] for m in per_set if m.get(key) is not None]
        if key == "stderr":
            out[key] = (math.sqrt(sum(v * v for v in vals)) / len(per_set)
                        if len(vals) == len(per_set) else None)
        else:
            out[key] = sum(vals) / len(vals) if vals else None
    return out


# ---------------------------------------------------------------------------------- evaluations


def _params(problems: list[dict], **kw) -> dict:
    ids = "\n".join(p["id"] for p in problems)
    return dict(kw, problems=len(problems), problems_sha=hashlib.sha256(ids.encode()).hexdigest()[:16])


def _open_evaluation(db, evaluation_id, label, set_name, params, run_id, run_step) -> tuple[str, set[str]]:
    """(id, problems already finished): the given id, else the newest unfinished evaluation with
    the same model, set, run and parameters, else a new one."""
    pj, now = dumps(params), paths.utcnow()
    if evaluation_id is None:
        row = db.execute(
            "SELECT id FROM evaluations WHERE model = ? AND set_name = ? AND params_json = ?"
            " AND run_id IS ? AND run_step IS ? AND status != 'done' ORDER BY created_at DESC LIMIT 1",
            [label, set_name, pj, run_id, run_step]).fetchone()
        evaluation_id = row[0] if row else None
    if evaluation_id is None or not db.execute("SELECT 1 FROM evaluations WHERE id = ?", [evaluation_id]).fetchone():
        evaluation_id = evaluation_id or new_id()
        with db.atomic():
            db["evaluations"].insert(dict(id=evaluation_id, model=label, run_id=run_id, run_step=run_step,
                                          set_name=set_name, params_json=pj, metrics_json=None,
                                          status="running", created_at=now, updated_at=now))
        return evaluation_id, set()
    with db.atomic():
        db["evaluations"].update(evaluation_id, dict(status="running", updated_at=now))
    done = {r[0] for r in db.execute(
        "SELECT DISTINCT problem_id FROM eval_results WHERE evaluation_id = ?", [evaluation_id])}
    return evaluation_id, done


def _write_results(db, evaluation_id: str, rows: list[tuple]) -> None:
    now = paths.utcnow()
    with db.atomic():
        db.conn.executemany(
            "INSERT INTO eval_results (evaluation_id, problem_id, sample_index, completion,"
            " extracted_answer, correct, tokens, truncated, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            [(evaluation_id, *r, now) for r in rows])
        db.conn.execute("UPDATE evaluations SET updated_at = ? WHERE id = ?", [now, evaluation_id])


def stored_samples(db, evaluation_id: str, problem_ids: list[str] | None = None) -> list[list[Sample]]:
    """The samples an evaluation stored, grouped by problem (in `problem_ids` order if given)."""
    by: dict[str, list[Sample]] = {}
    for pid, ext, ok, tok, trunc in db.execute(
            "SELECT problem_id, extracted_answer, correct, tokens, truncated FROM eval_results"
            " WHERE evaluation_id = ? ORDER BY problem_id, sample_index", [evaluation_id]):
        by.setdefault(pid, []).append(Sample(ext, bool(ok), tok, bool(trunc)))
    order = problem_ids if problem_ids is not None else list(by)
    return [by[p] for p in order if p in by]


def _finish(db, evaluation_id: str, problems: list[dict], k: int, extra: dict) -> dict:
    metrics = summarize(stored_samples(db, evaluation_id, [p["id"] for p in problems]), k)
    metrics.update(extra)
    with db.atomic():
        db["evaluations"].update(evaluation_id, dict(status="done", metrics_json=dumps(metrics),
                                                     updated_at=paths.utcnow()))
    return metrics


def _mark_interrupted(db, evaluation_id: str) -> None:
    try:
        with db.atomic():
            db["evaluations"].update(evaluation_id, dict(status="interrupted", updated_at=paths.utcnow()))
    except Exception:  # the database may be what failed; the original error matters more
        pass


def _progress(enabled: bool, description: str, total: int, completed: int):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.table import Column
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):  # this session's problems over its time (a resume starts at N)
            done = task.completed - task.fields.get("resumed_from", 0)
            rate = done / task.elapsed if task.elapsed and done else None
            return Text(f"{rate:.2f} problems/s" if rate else "– problems/s", style="cyan", no_wrap=True)

    # stderr: --json output on stdout stays clean. The label is the column that gives way, so
    # the line fits an 80-column terminal.
    prog = Progress(TextColumn("{task.description}", markup=False, table_column=Column(ratio=1, no_wrap=True,
                                                                                     overflow="ellipsis")),
                    BarColumn(bar_width=12), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), expand=True)
    prog.add_task(description, total=total, completed=completed, resumed_from=completed)
    return prog


def _advance(prog, n: int) -> None:
    if prog is not None:
        prog.advance(prog.task_ids[0], n)


def _grader(stack: ExitStack, grader: Grader | None) -> Grader:
    if grader is not None:
        return grader
    return stack.enter_context(Grader())


def _store(db, evaluation_id: str, grader: Grader, items: list[tuple]) -> None:
    """Grade samples (problem, sample_index, completion, extracted, tokens, truncated) and write
    them in one transaction: a problem's samples are stored all together or not at all."""
    verdicts = grader.grade([(p["answer"], grading_target(p["text"], p["answer"], ext))
                             for p, _, _, ext, _, _ in items])
    _write_results(db, evaluation_id, [(p["id"], j, text, ext, int(ok), tokens, int(trunc))
                                       for (p, j, text, ext, tokens, trunc), ok in zip(items, verdicts)])


def evaluate_problems(db, model, tok, problems: list[dict], *, label: str, set_name: str, k: int = 1,
                      temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512,
                      seed: int = 0, template: str = DEFAULT_TEMPLATE, run_id: str | None = None,
                      run_step: int | None = None, batch_size: int = 32,
                      evaluation_id: str | None = None, progress: bool = True,
                      grader: Grader | None = None) -> dict:
    """Sample k completions for each problem ({id, text, answer}), grade and store them, and
    return the evaluation's metrics with "evaluation_id", "model", "set_name" and timing.

    Resumes the unfinished evaluation with the same label, set, run and parameters (or
    `evaluation_id`). The global torch RNG is seeded with `seed` inside a fork, so the caller's
    RNG stream (the trainer's) is untouched. A resumed evaluation samples its remaining problems
    from a fresh seed: equivalent, not bit-identical to an uninterrupted one (greedy is)."""
    import torch

    from .rollout import generate, render_prompt

    if k < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("k, max_new_tokens and batch_size must be at least 1")
    params = _params(problems, k=k, temperature=temperature, top_p=top_p,
                     max_new_tokens=max_new_tokens, seed=seed, template=template)
    ev_id, done = _open_evaluation(db, evaluation_id, label, set_name, params, run_id, run_step)
    todo = [p for p in problems if p["id"] not in done]
    prompts = {p["id"]: render_prompt(tok, p["text"], template) for p in todo}
    # Length bucketing across the whole set, one generation batch per chunk: padding stays
    # small and each chunk's results are written (and survive an interruption) together.
    lengths = {pid: len(tok(text, add_special_tokens=False).input_ids) for pid, text in prompts.items()}
    todo.sort(key=lambda p: lengths[p["id"]])
    per_batch = max(1, batch_size // k)
    t0, tokens = time.perf_counter(), 0
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with ExitStack() as stack:
            grader = _grader(stack, grader)
            stack.enter_context(torch.random.fork_rng(devices=devices))
            torch.manual_seed(seed)
            prog = stack.enter_context(_progress(progress, f"{label} · {set_name}", len(problems), len(done)))
            for start in range(0, len(todo), per_batch):
                chunk = todo[start : start + per_batch]
                comps = generate(model, tok, [prompts[p["id"]] for p in chunk], n=k,
                                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 batch_size=per_batch * k)
                items = [(p, j, c.text, extract_answer(c.text), c.tokens, c.truncated)
                         for p, cs in zip(chunk, comps) for j, c in enumerate(cs)]
                tokens += sum(it[4] for it in items)
                _store(db, ev_id, grader, items)
                _advance(prog, len(chunk))
    except BaseException:
        _mark_interrupted(db, ev_id)
        raise
    seconds = time.perf_counter() - t0
    metrics = _finish(db, ev_id, problems, k, {})
    return dict(evaluation_id=ev_id, model=label, set_name=set_name, run_id=run_id, run_step=run_step,
                **metrics, resumed=len(done), seconds=round(seconds, 3),
                problems_per_s=len(todo) / seconds if todo and seconds else None,
                tokens_per_s=tokens / seconds if tokens and seconds else None)


def evaluate_golden(db, problems: list[dict], *, set_name: str, progress: bool = True,
                    grader: Grader | None = None) -> dict:
    """Grade each problem's own golden answers as if a model had written them: a check of the
    extractor and grader on a benchmark's formats. Problems without one are counted, not graded."""
    golden: dict[str, list[tuple[str, str | None]]] = {}
    ids = [p["id"] for p in problems]
    for i in range(0, len(ids), 900):  # SQLite's bound-parameter limit
        chunk = ids[i : i + 900]
        for pid, text, final in db.execute(
                f"SELECT problem_id, text, final_answer FROM golden_answers WHERE problem_id IN"
                f" ({','.join('?' * len(chunk))}) ORDER BY problem_id, id", chunk):
            # A completion is graded on what extract_answer finds; the ingest's own reading
            # (MathQA's trailing "answer : d") stands in where it finds nothing.
            golden.setdefault(pid, []).append((text, extract_answer(text) or final))
    have = [p for p in problems if p["id"] in golden]
    params = _params(have, golden=True)
    ev_id, done = _open_evaluation(db, None, "golden", set_name, params, None, None)
    t0 = time.perf_counter()
    todo = [p for p in have if p["id"] not in done]
    try:
        with ExitStack() as stack:
            grader = _grader(stack, grader)
            prog = stack.enter_context(_progress(progress, f"golden · {set_name}", len(have), len(done)))
            for start in range(0, len(todo), 64):
                chunk = todo[start : start + 64]
                _store(db, ev_id, grader, [(p, j, text, ext, None, False) for p in chunk
                                           for j, (text, ext) in enumerate(golden[p["id"]])])
                _advance(prog, len(chunk))
    except BaseException:
        _mark_interrupted(db, ev_id)
        raise
    seconds = time.perf_counter() - t0
    metrics = _finish(db, ev_id, have, 1, {"no_golden": len(problems) - len(have)})
    return dict(evaluation_id=ev_id, model="golden", set_name=set_name, run_id=None, run_step=None,
                **metrics, resumed=len(done), seconds=round(seconds, 3),
                problems_per_s=len(todo) / seconds if todo and seconds else None, tokens_per_s=None)


# ------------------------------------------------------------------------------ sets, benchmarks


def set_problems(db, set_name: str, limit: int | None = None) -> list[dict]:
    """The problems of a set in ingest order ({id, text, answer}); the first `limit` of them."""
    if not db.execute("SELECT 1 FROM problem_sets WHERE name = ?", [set_name]).fetchone():
        known = [r[0] for r in db.execute("SELECT name FROM problem_sets ORDER BY name")]
        raise GcpoError(f"no problem set named '{set_name}'"
                    + (f"; sets: {', '.join(known)}" if known else "; ingest one with: gcpo ingest FILE --name NAME"))
    q = ("SELECT p.id, p.text, p.answer FROM set_problems sp JOIN problem_sets s ON s.id = sp.set_id"
         " JOIN problems p ON p.id = sp.problem_id WHERE s.name = ? ORDER BY sp.position")
    args: list = [set_name]
    if limit is not None:
        q += " LIMIT ?"
        args.append(limit)
    return [dict(id=i, text=t, answer=a) for i, t, a in db.execute(q, args)]


@dataclass(frozen=True)
class Benchmark:
    hub_id: str | None  # hf:ORG/NAME source for `gcpo ingest`
    split: str | None = None
    subset: str | None = None
    problem: str | None = None  # field, or a template such as "{Body} {Question}"; None: detect
    answer: str | None = None  # None: detect (or the last \boxed{} of `solution`)
    solution: str | None = None
    local: str | None = None  # the file under ../shared/data that holds it


# Hub copies as the Qwen2.5-Math / simpleRL evaluation suites load them; fields per dataset card.
BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train", None, "problem", "answer", "solution", "aime24/test.jsonl"),
    "aime25": Benchmark("math-ai/aime25", "test", None, "problem", "answer"),
    "amc23": Benchmark("math-ai/amc23", "test", None, "question", "answer", None, "amc23/test.jsonl"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", None, "problem", "answer", "solution", "math500/test.jsonl"),
    "gsm8k": Benchmark("openai/gsm8k", "test", "main", "question", "answer", None, "gsm8k/test.jsonl"),
    "minerva_math": Benchmark("math-ai/minervamath", "test", None, "question", "answer", None, "minerva_math/test.jsonl"),
    "olympiadbench": Benchmark("math-ai/olympiadbench", "test", None, "question", "final_answer", "solution"),
    "svamp": Benchmark("ChilleD/SVAMP", "test", None, "{Body} {Question}", "Answer", None, "svamp/test.jsonl"),
    "mawps": Benchmark("MU-NLPC/Calc-mawps", "test", None, "question", "result_float", None, "mawps/test.jsonl"),
    "mathqa": Benchmark("allenai/math_qa", "test", None, "Problem", "correct", "Rationale", "mathqa/test.jsonl"),
    "synthetic": Benchmark(None),  # built in: synthetic:arithmetic, levels 1-5
}
SYNTHETIC = dict(count=200, seed=0, levels="1-5")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub: without it, datasets retries for ~25 s before failing.
    Behind a proxy a direct connection proves nothing, so there datasets is left to try."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _local_file(rel: str | None) -> Path | None:
    if not rel:
        return None
    env = os.environ.get("GCPO_SHARED_DATA")  # as the tests use it: the shared data elsewhere
    for base in ([Path(env)] if env else []) + [paths.REPO_ROOT.parent / "shared" / "data",
                                               paths.REPO_ROOT / "shared" / "data"]:
        if (base / rel).exists():
            return base / rel
    return None


def ingest_hint(name: str) -> str:
    """How to put a benchmark into the database from a file, as one command."""
    b = BENCHMARKS[name]
    path = _local_file(b.local)
    if path is not None:
        rel = os.path.relpath(path)  # ../shared/data/... from the checkout, as people type it
        return f"gcpo ingest {rel if not rel.startswith('../../..') else path} --name {name}"
    return (f"gcpo ingest FILE --name {name}, with FILE a JSONL/CSV/Parquet copy of the hub dataset "
            f"{b.hub_id} (split {b.split})")


def resolve_benchmark(db, name: str, grader: Grader | None = None) -> str:
    """The set name holding benchmark `name`: already ingested, built in (synthetic), or ingested
    from the hub now; offline (or when the hub fails) an error that says how to ingest it."""
    from .ingest import ensure_synthetic_set, ingest_source

    if name not in BENCHMARKS:
        raise GcpoError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)} (use --data SET for any ingested set)")
    if name == "synthetic":
        return ensure_synthetic_set(db, "synthetic", grader=grader, **SYNTHETIC)
    if db.execute("SELECT 1 FROM problem_sets s JOIN set_problems sp ON sp.set_id = s.id WHERE s.name = ?"
                  " LIMIT 1", [name]).fetchone():
        return name
    hint = ingest_hint(name)
    if _offline():
        raise GcpoError(f"benchmark '{name}' is not in the database and the hub is offline (HF_HUB_OFFLINE);"
                        f" ingest it from a file: {hint}")
    if not _hub_reachable():
        raise GcpoError(f"benchmark '{name}' is not in the database and the hub cannot be reached;"
                        f" ingest it from a file: {hint}")
    b = BENCHMARKS[name]
    try:
        ingest_source(db, f"hf:{b.hub_id}", name, split=b.split, subset=b.subset, problem=b.problem,
                      answer=b.answer, solution=b.solution, skip_invalid=True, grader=grader)
    except Exception as e:  # no connection, a moved dataset: both end in the same advice
        raise GcpoError(f"benchmark '{name}' is not in the database and could not be fetched from the hub"
                        f" ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); ingest it from a file: {hint}")
    return name
