"""Benchmark evaluation: k samples per problem, graded, every sample stored, then summarised.

- Metrics are pure functions over per-problem samples (tested against hand computations):
  mean@k with its standard error over problems, unbiased pass@k (Chen et al. 2021, "Evaluating
  Large Language Models Trained on Code", eq. 1), maj@k counted two ways (answers grouped by
  math-verify equivalence, and by exact normalised string as Qwen2.5-Math's evaluation groups
  them), mean completion length, truncation rate and the share of samples that stated no answer.
- `evaluate_problems` is shared by `gcpo eval` and the trainer's held-out evaluation. It writes
  one transaction per generation batch, so an interrupted evaluation keeps what it finished and
  the same call (same model label, set and parameters) resumes it without redoing those problems.
  Every sample is stored with its rendered prompt (the preset is in prompts.py).
- `BENCHMARKS` names the known benchmarks, their hub ids and fields.
- `compare` puts several evaluations side by side with their differences from the first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import paths, store
from .answers import clean_str, extract_answer
from .errors import GcpoError
from .grader import Grader
from .prompts import PRESETS, Prompt
from .prompts import from_recipe as prompt_from_recipe
from .prompts import resolve as resolve_prompt

METRICS = ("mean_at_k", "stderr", "pass_at_k", "maj_at_k", "maj_at_k_exact", "completion_tokens_mean",
           "truncation_rate", "unextracted_rate")
# What each majority vote groups by; printed under the table and given in --json.
MAJ_LABELS = {
    "maj_at_k": "majority vote, answers grouped by math-verify equivalence (1/2 and 0.5 vote together)",
    "maj_at_k_exact": "majority vote, answers grouped by exact normalised string, as Qwen2.5-Math's "
                      "evaluation counts maj@k (1/2 and 0.5 are different answers)",
}
GOLDEN = "golden"  # the "model" that answers with each problem's own golden answers


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
            votes["w:" + clean_str(ans)] += 1
    if not votes:
        return False
    return votes.most_common(1)[0][0] is True  # most_common keeps first-seen order on ties


def maj_at_k_exact(answers: list[str | None], verdicts: list[bool]) -> bool:
    """maj@k as Qwen2.5-Math's evaluation counts it (evaluation/rm_maj_eval.py, `group_pred`
    without `use_symbol`): answers vote by their text after a light normalisation (\\text{}
    unwrapped; \\!, \\, and $ dropped; whitespace removed; a trailing period cut; lower case),
    so 1/2 and 0.5 are two answers. The majority is correct if its answer was graded correct
    (a truncated sample is graded wrong). Unlike Qwen's script, where an empty prediction is a
    group of its own, samples without an answer do not vote (as in `maj_at_k`, so the two differ
    in the grouping only). Ties go to the answer stated first."""
    votes: Counter = Counter()
    correct: set[str] = set()
    for ans, ok in zip(answers, verdicts):
        if ans is None or not ans.strip():
            continue
        key = clean_str(ans)
        votes[key] += 1
        if ok:
            correct.add(key)
    if not votes:
        return False
    return votes.most_common(1)[0][0] in correct


@dataclass
class Sample:
    extracted_answer: str | None
    correct: bool
    completion_tokens: int | None = None
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
    tokens = [x.completion_tokens for x in flat if x.completion_tokens is not None]
    out.update(
        mean_at_k=mean,
        stderr=se,
        pass_at_k=sum(pass_at_k(len(s), sum(x.correct for x in s), min(k, len(s))) for s in samples) / len(samples),
        maj_at_k=sum(maj_at_k([x.extracted_answer for x in s], [x.correct for x in s]) for s in samples) / len(samples),
        maj_at_k_exact=sum(maj_at_k_exact([x.extracted_answer for x in s], [x.correct for x in s])
                           for s in samples) / len(samples),
        completion_tokens_mean=sum(tokens) / len(tokens) if tokens else None,
        truncation_rate=sum(x.truncated for x in flat) / len(flat),
        unextracted_rate=sum(x.extracted_answer is None for x in flat) / len(flat),
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


def stored_samples(db, evaluation_id: str, problem_ids: list[str] | None = None) -> list[list[Sample]]:
    """The samples an evaluation stored, grouped by problem (in `problem_ids` order if given)."""
    by: dict[str, list[Sample]] = {}
    for r in store.evaluation_results(db, evaluation_id):
        by.setdefault(r["problem_id"], []).append(Sample(r["extracted_answer"], bool(r["correct"]),
                                                         r["completion_tokens"], bool(r["truncated"])))
    order = problem_ids if problem_ids is not None else list(by)
    return [by[p] for p in order if p in by]


def _finish(db, evaluation_id: str, problems: list[dict], k: int, extra: dict) -> dict:
    metrics = summarize(stored_samples(db, evaluation_id, [p["id"] for p in problems]), k)
    metrics.update(extra)
    store.finish_evaluation(db, evaluation_id, metrics)
    return metrics


def _progress(enabled: bool, description: str, total: int, completed: int):
    if not enabled:
        return nullcontext(None)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.table import Column
    from rich.text import Text

    from .render import SafeConsole

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
                    TimeRemainingColumn(), console=SafeConsole(stderr=True), expand=True)
    prog.add_task(description, total=total, completed=completed, resumed_from=completed)
    return prog


def _advance(prog, n: int) -> None:
    if prog is not None:
        prog.advance(prog.task_ids[0], n)


def _grader(stack: ExitStack, grader: Grader | None) -> Grader:
    if grader is not None:
        return grader
    return stack.enter_context(Grader())


def _store(db, evaluation_id: str, grader: Grader, items: list[tuple], prompts: dict | None = None) -> None:
    """Grade samples (problem, sample_index, completion, extracted, tokens, truncated[, prompt])
    and write them, each with its rendered prompt (its own, else `prompts[problem id]`), in one
    transaction: a problem's samples are stored all together or not at all. Graded by
    `Grader.verdicts`, as training rewards are: a truncated sample is incorrect."""
    prompts = prompts or {}
    verdicts = grader.verdicts([(it[0]["text"], it[0]["answer"], it[3], bool(it[5])) for it in items])
    store.write_results(db, evaluation_id, [
        dict(problem_id=p["id"], sample_index=j, completion=text, extracted_answer=ext, correct=int(ok),
             completion_tokens=tokens, truncated=int(trunc), prompt=own[0] if own else prompts.get(p["id"]))
        for (p, j, text, ext, tokens, trunc, *own), ok in zip(items, verdicts)])


def evaluate_problems(db, engine, tok, problems: list[dict], *, label: str, set_name: str, k: int = 1,
                      temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512,
                      seed: int = 0, prompt: Prompt | None = None, template: str | None = None,
                      run_id: str | None = None, run_step: int | None = None, batch_size: int = 32,
                      progress: bool = True, grader: Grader | None = None) -> dict:
    """Sample k completions for each problem ({id, text, answer}) with `engine` (engines.py; a
    plain model samples through the hf engine), grade and store them, and return the
    evaluation's metrics with "evaluation_id", "model", "set_name" and timing. `prompt` is the
    preset (default boxed); `template` alone is boxed with that user turn.

    Resumes the unfinished evaluation with the same label, set, run and parameters. Sample j of
    a problem draws from its own stream (seed, problem, j), so a resumed evaluation samples what
    an uninterrupted one would, in any batch; the global torch RNG is left as it was (a fork)."""
    import torch

    from .engines import as_engine

    engine = as_engine(engine, tok)

    if k < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("k, max_new_tokens and batch_size must be at least 1")
    if prompt is not None and template is not None:
        raise ValueError("give prompt or template, not both")
    prompt = prompt or resolve_prompt(template=template)
    # Rendered before the evaluation is opened: a prompt the tokenizer cannot render (a chat
    # preset without a chat template) leaves nothing behind.
    prompts = {p["id"]: prompt.render(tok, p["text"]) for p in problems}
    params = _params(problems, k=k, temperature=temperature, top_p=top_p,
                     max_new_tokens=max_new_tokens, seed=seed, **prompt.params())
    if engine.name != "hf":  # another sampler: another evaluation (hf's params are those of gcpo 0.3)
        params["engine"] = engine.name
    ev_id, done = store.open_evaluation(db, model=label, set_name=set_name, params=params, run_id=run_id,
                                        run_step=run_step)
    todo = [p for p in problems if p["id"] not in done]
    # Length bucketing across the whole set, one generation batch per chunk: padding stays
    # small and each chunk's results are written (and survive an interruption) together.
    lengths = {p["id"]: len(tok(prompts[p["id"]], add_special_tokens=False).input_ids) for p in todo}
    todo.sort(key=lambda p: lengths[p["id"]])
    per_batch = max(1, batch_size // k)
    t0, tokens = time.perf_counter(), 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with ExitStack() as stack:
            grader = _grader(stack, grader)
            stack.enter_context(torch.random.fork_rng(devices=devices))
            torch.manual_seed(seed)
            prog = stack.enter_context(_progress(progress, f"{label} · {set_name}", len(problems), len(done)))
            for start in range(0, len(todo), per_batch):
                chunk = todo[start : start + per_batch]
                comps = engine.generate([prompts[p["id"]] for p in chunk], n=k, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, batch_size=per_batch * k,
                                        seeds=[f"{seed}:{p['id']}" for p in chunk])
                items = [(p, j, c.text, extract_answer(c.text), c.tokens, c.truncated)
                         for p, cs in zip(chunk, comps) for j, c in enumerate(cs)]
                tokens += sum(it[4] for it in items)
                _store(db, ev_id, grader, items, prompts)
                _advance(prog, len(chunk))
    except BaseException:
        store.mark_evaluation_interrupted(db, ev_id)
        raise
    seconds = time.perf_counter() - t0
    metrics = _finish(db, ev_id, problems, k, {})
    return dict(evaluation_id=ev_id, model=label, set_name=set_name, run_id=run_id, run_step=run_step,
                prompt=prompt.name, **metrics, resumed=len(done), seconds=round(seconds, 3),
                problems_per_s=len(todo) / seconds if todo and seconds else None,
                tokens_per_s=tokens / seconds if tokens and seconds else None)


def evaluate_golden(db, problems: list[dict], *, set_name: str, progress: bool = True,
                    grader: Grader | None = None) -> dict:
    """Grade each problem's own golden answers as if a model had written them: a check of the
    extractor and grader on a benchmark's formats. Problems without one are counted, not graded."""
    # A completion is graded on what extract_answer finds; the ingest's own reading (MathQA's
    # trailing "answer : d") stands in where it finds nothing.
    golden = {pid: [(g["text"], extract_answer(g["text"]) or g["final_answer"]) for g in gs]
              for pid, gs in store.golden_answers(db, [p["id"] for p in problems]).items()}
    have = [p for p in problems if p["id"] in golden]
    params = _params(have, golden=True)
    ev_id, done = store.open_evaluation(db, model=GOLDEN, set_name=set_name, params=params, run_id=None,
                                        run_step=None)
    t0 = time.perf_counter()
    todo = [p for p in have if p["id"] not in done]
    try:
        with ExitStack() as stack:
            grader = _grader(stack, grader)
            prog = stack.enter_context(_progress(progress, f"{GOLDEN} · {set_name}", len(have), len(done)))
            for start in range(0, len(todo), 64):
                chunk = todo[start : start + 64]
                _store(db, ev_id, grader, [(p, j, text, ext, None, False) for p in chunk
                                           for j, (text, ext) in enumerate(golden[p["id"]])])
                _advance(prog, len(chunk))
    except BaseException:
        store.mark_evaluation_interrupted(db, ev_id)
        raise
    seconds = time.perf_counter() - t0
    metrics = _finish(db, ev_id, have, 1, {"no_golden": len(problems) - len(have)})
    return dict(evaluation_id=ev_id, model=GOLDEN, set_name=set_name, run_id=None, run_step=None,
                **metrics, resumed=len(done), seconds=round(seconds, 3),
                problems_per_s=len(todo) / seconds if todo and seconds else None, tokens_per_s=None)


# ------------------------------------------------------------------------------ sets, benchmarks


@dataclass(frozen=True)
class Benchmark:
    hub_id: str | None  # hf:ORG/NAME source for `gcpo ingest`
    split: str | None = None
    subset: str | None = None
    problem: str | None = None  # field, or a template such as "{Body} {Question}"; None: detect
    answer: str | None = None  # None: detect (or the last \boxed{} of `solution`)
    solution: str | None = None


# Hub copies as the Qwen2.5-Math / simpleRL evaluation suites load them; fields per dataset card.
BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train", None, "problem", "answer", "solution"),
    "aime25": Benchmark("math-ai/aime25", "test", None, "problem", "answer"),
    "amc23": Benchmark("math-ai/amc23", "test", None, "question", "answer"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", None, "problem", "answer", "solution"),
    "gsm8k": Benchmark("openai/gsm8k", "test", "main", "question", "answer"),
    "minerva_math": Benchmark("math-ai/minervamath", "test", None, "question", "answer"),
    "olympiadbench": Benchmark("math-ai/olympiadbench", "test", None, "question", "final_answer", "solution"),
    "svamp": Benchmark("ChilleD/SVAMP", "test", None, "{Body} {Question}", "Answer"),
    "mawps": Benchmark("MU-NLPC/Calc-mawps", "test", None, "question", "result_float"),
    "mathqa": Benchmark("allenai/math_qa", "test", None, "Problem", "correct", "Rationale"),
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


def ingest_hint(name: str) -> str:
    """How to put a benchmark into the database from a file, as one command."""
    b = BENCHMARKS[name]
    return (f"gcpo ingest FILE --set {name}, with FILE a JSONL/CSV/Parquet copy of the hub dataset "
            f"{b.hub_id} (split {b.split})")


def resolve_benchmark(db, name: str, grader: Grader | None = None) -> str:
    """The set name holding benchmark `name`: already ingested, built in (synthetic), or ingested
    from the hub now; offline (or when the hub fails) an error that says how to ingest it."""
    from .ingest import ensure_synthetic_set, ingest_source

    if name not in BENCHMARKS:
        raise GcpoError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)} (use --set SET for any ingested set)")
    if name == "synthetic":
        return ensure_synthetic_set(db, "synthetic", grader=grader, **SYNTHETIC)
    if store.has_problems(db, name):
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


# ------------------------------------------------------------------------------ what to evaluate


@dataclass
class Target:
    """One model to evaluate: a model name, or a training run's checkpoint (base + adapter)."""

    label: str
    model: str
    adapter: str | None = None
    run_id: str | None = None
    run_step: int | None = None
    prompt: Prompt | None = None  # the run's own prompt (its recipe's preset); None: the default
    quant: str = "none"  # the base the run trained on: "nf4" is evaluated as nf4 + adapter
    dtype: str = "float32"  # its compute dtype


def run_target(db, ref: str, step: int | None) -> Target:
    """A run's checkpoint (the newest unless `step`), with the run's own prompt."""
    from . import checkpoints

    run = store.resolve_run(db, ref)
    step = checkpoints.pick(run, step)
    recipe = store.loads(run["recipe_json"])
    recipe = recipe if isinstance(recipe, dict) else {}
    model = recipe.get("model") or {}
    try:
        prompt = prompt_from_recipe(recipe)
    except GcpoError as e:
        raise GcpoError(f"run {run['id']}: its recipe's prompt: {e}") from None
    return Target(f"run:{run['id']}@{step}", run["model"], str(checkpoints.adapter(checkpoints.run_folder(run), step)),
                  run["id"], step, prompt, model.get("quant", "none"), model.get("dtype", "float32"))


def parse_target(db, spec: str, is_model_name) -> Target:
    """A --compare value: a model name (`is_model_name(spec)`), else RUN[@STEP] (an id prefix
    will do)."""
    if is_model_name(spec):
        return Target(spec, spec)
    ref, _, step = spec.partition("@")
    run = store.resolve_run(db, ref)
    if step and not step.isdigit():
        raise GcpoError(f"--compare {spec}: the step after '@' must be a number")
    return run_target(db, run["id"], int(step) if step else None)


def evaluate_target(db, t: Target, sets: dict[str, list[dict]], grader: Grader, prompt: Prompt | None, p: dict,
                    progress: bool) -> list[dict]:
    """Every set's metrics for one target; `p` holds k, temperature, top_p, max_new_tokens,
    seed and batch_size. `prompt` (from the command line) wins over the target's own."""
    import gc

    if t.model == GOLDEN:
        return [evaluate_golden(db, problems, set_name=name, grader=grader, progress=progress)
                for name, problems in sets.items()]
    chosen = prompt or t.prompt or PRESETS["boxed"]
    try:
        model, tok = inference_engine(t, p, chosen, sets)
    except GcpoError:
        raise
    except (OSError, ValueError) as e:  # a hub id offline, a folder transformers cannot read
        raise GcpoError(f"cannot load model '{t.model}': {str(e).splitlines()[0][:300]}") from None
    try:
        return [evaluate_problems(db, model, tok, problems, label=t.label, set_name=name, k=p["k"],
                                  temperature=p["temperature"], top_p=p["top_p"], max_new_tokens=p["max_new_tokens"],
                                  seed=p["seed"], prompt=chosen,
                                  run_id=t.run_id, run_step=t.run_step, batch_size=p["batch_size"],
                                  progress=progress, grader=grader)
                for name, problems in sets.items()]
    finally:
        del model, tok
        gc.collect()


def inference_engine(t: Target, p: dict, prompt: Prompt, sets: dict[str, list[dict]]) -> tuple:
    """(engine, tokenizer) for a target: `p["engine"]` (auto|hf|vllm, engines.resolve). hf loads
    the model (model.load_for_inference); vllm serves the 16-bit base with the run's adapter as
    a LoRA request (an nf4 run's too), in bf16 where bf16 is fast, as the hf path samples. On a
    CPU an unquantised run's adapter is merged into a copy of the base instead, as the hf path
    merges it: vLLM's CPU LoRA costs 5x the base model (bench/RESULTS.md, issue 11)."""
    import tempfile

    import torch

    from . import engines
    from .model import fast_bf16, load_for_inference, load_tokenizer, resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if engines.resolve(p.get("engine") or "auto", device) == "hf":
        return load_for_inference(t.model, adapter_dir=t.adapter, quant=t.quant, dtype=t.dtype)
    if t.adapter:
        engines.check_adapter_dir(Path(t.adapter))
    source = resolve_model(t.model)
    tok = load_tokenizer(source)
    merged = None
    if t.adapter and t.quant == "none" and device == "cpu":
        merged = tempfile.TemporaryDirectory(dir=paths.cache_dir(), prefix=".merged-")
        model, _ = load_for_inference(t.model, adapter_dir=t.adapter)  # merged, as the hf path evaluates it
        model.save_pretrained(merged.name)
        tok.save_pretrained(merged.name)
        del model
        source = merged.name
    lora_r = None
    if t.adapter and merged is None:
        lora_r = int(json.loads((Path(t.adapter) / "adapter_config.json").read_text())["r"])
    dtype = t.dtype if t.quant != "none" else ("bfloat16" if fast_bf16(device) else "float32")
    kv = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 2)  # CPU: the KV cache's GiB (the recipe default)
    texts = [x["text"] for problems in sets.values() for x in problems]
    try:
        engine = engines.VLLMEngine(source, tok, adapter_root=paths.cache_dir() / "adapters" / "eval", lora_r=lora_r,
                                    dtype=dtype, max_model_len=engines.model_len(tok, prompt, texts,
                                                                                  p["max_new_tokens"]),
                                    kv_cache_gib=kv, enforce_eager=device != "cuda", seed=p["seed"],
                                    keep=merged is None)
    finally:
        if merged is not None:  # vLLM has read it; a merged copy is per evaluation, never kept
            merged.cleanup()
    if lora_r is not None:
        engine.use_adapter(Path(t.adapter), t.run_step or 0)
    return engine, tok


def result(t: Target, per_set: list[dict]) -> dict:
    return dict(label=t.label, model=t.model, run_id=t.run_id, run_step=t.run_step, adapter=t.adapter,
                sets=per_set, average=average(per_set))


def compare(results: list[dict]) -> list[dict]:
    """Adds to every result after the first its difference from the first ("delta")."""
    keys = ("mean_at_k", "pass_at_k", "maj_at_k", "maj_at_k_exact")

    def delta(a: dict, b: dict) -> dict:
        return {key: None if a.get(key) is None or b.get(key) is None else a[key] - b[key] for key in keys}

    for r in results[1:]:
        for s, b in zip(r["sets"], results[0]["sets"]):
            s["delta"] = delta(s, b)
        if r["average"] and results[0]["average"]:
            r["average"]["delta"] = delta(r["average"], results[0]["average"])
    return results
