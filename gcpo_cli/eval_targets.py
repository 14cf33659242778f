"""What `gcpo eval` evaluates and how results are compared: benchmarks, targets, comparisons.

- `BENCHMARKS` names the known benchmarks, their hub ids and fields; `resolve_benchmark` finds
  one in the database, builds it (synthetic) or ingests it from the hub.
- A `Target` is one model to evaluate: a model name, or a training run's checkpoint with the
  run's own prompt and generation length. `evaluate_target` runs it on every set
  (evaluation.evaluate_problems; golden answers through evaluation.evaluate_golden).
- `compare` puts several targets side by side: the first minus each other one, every metric,
  paired over the same problems (eval_metrics.paired_delta).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import paths, store
from .errors import GcpoError
from .eval_metrics import average, average_delta, paired_delta
from .evaluation import GOLDEN, evaluate_golden, evaluate_problems, samples_by_problem
from .grader import Grader
from .prompts import PRESETS, Prompt
from .prompts import from_recipe as prompt_from_recipe
from .records import Problem
from .resumable import StopSignals

DEFAULT_MAX_NEW_TOKENS = 512  # a model's evaluation; a run's is its recipe's (run_target)


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


def hub_reachable(timeout: float = 3.0) -> bool:
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
    if not hub_reachable():
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
    max_new_tokens: int | None = None  # the run's own completion limit; None: a model's (the default)


def _recipe_value(recipe: dict, key: str, *sections: str):
    """A stored recipe's value of `key`: in the first of `sections` that has it (a sectioned
    recipe), else at the top (a flat one, as runs before the sections stored it)."""
    for section in sections:
        inner = recipe.get(section)
        if isinstance(inner, dict) and inner.get(key) is not None:
            return inner[key]
    return recipe.get(key)


def run_max_new_tokens(recipe: dict) -> int | None:
    """The completion limit a run's held-out evaluation used (train.evaluate_holdout): its
    recipe's eval.max_new_tokens, else (0: none set) its training max_new_tokens."""
    evaluation = recipe.get("eval") if isinstance(recipe.get("eval"), dict) else {}
    for value in (evaluation.get("max_new_tokens"), _recipe_value(recipe, "max_new_tokens", "generation")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def run_target(db, ref: str, step: int | None) -> Target:
    """A run's checkpoint (the newest unless `step`), with the run's own prompt and completion
    limit."""
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
                  run["id"], step, prompt, model.get("quant", "none"), model.get("dtype", "float32"),
                  run_max_new_tokens(recipe))


COMPARE_FORMS = ("give a model (hub id, folder, .gguf file, tiny, smollm2-135m or golden), or a run as RUN or "
                 "RUN@STEP (an id or unique prefix; see gcpo runs)")


def parse_target(db, spec: str, is_model_name) -> Target:
    """A --compare value: a model name (`is_model_name(spec)`), else RUN[@STEP] (an id prefix
    will do). An error names the value and the forms accepted."""
    if is_model_name(spec):
        return Target(spec, spec)
    ref, at, step = spec.partition("@")
    if not ref.strip() or (at and not step.isdigit()):
        raise GcpoError(f"--compare {spec!r} is neither a model nor RUN@STEP with a step number: {COMPARE_FORMS}")
    try:
        run = store.resolve_run(db, ref)
    except GcpoError as e:
        raise GcpoError(f"--compare {spec!r}: {e}; {COMPARE_FORMS}") from None
    return run_target(db, run["id"], int(step) if step else None)


def evaluate_target(db, t: Target, sets: dict[str, list[Problem]], grader: Grader, prompt: Prompt | None, p: dict,
                    progress: bool, stop: StopSignals | None = None) -> list[dict]:
    """Every set's metrics for one target; `p` holds k, temperature, top_p, max_new_tokens,
    seed and batch_size. `prompt` (from the command line) wins over the target's own."""
    import gc

    if t.model == GOLDEN:
        return [evaluate_golden(db, problems, set_name=name, grader=grader, progress=progress, stop=stop)
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
                                  progress=progress, grader=grader, stop=stop)
                for name, problems in sets.items()]
    finally:
        del model, tok
        gc.collect()


def inference_engine(t: Target, p: dict, prompt: Prompt, sets: dict[str, list[Problem]]) -> tuple:
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
    texts = [x.text for problems in sets.values() for x in problems]
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


def compare(db, results: list[dict]) -> list[dict]:
    """Adds to every result after the first (a baseline) "delta" per set and on the average: the
    first minus the baseline, every metric, paired over the problems both evaluated
    (eval_metrics.paired_delta: rates in points, the length in tokens, each with its standard
    error), with "of" and "minus" naming the two."""
    if len(results) < 2:
        return results
    first = results[0]
    mine = [samples_by_problem(db, s["evaluation_id"]) for s in first["sets"]]
    for r in results[1:]:
        deltas = []
        for s, a, own in zip(r["sets"], mine, first["sets"]):
            k = max(own.get("k") or 1, s.get("k") or 1)
            d = paired_delta(a, samples_by_problem(db, s["evaluation_id"]), k)
            s["delta"] = dict(of=first["label"], minus=r["label"], **d)
            deltas.append(d)
        if r["average"] and first["average"]:
            r["average"]["delta"] = dict(of=first["label"], minus=r["label"], **average_delta(deltas))
    return results
