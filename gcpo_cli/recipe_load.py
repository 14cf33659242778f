"""Finding, reading, overriding and validating recipes (the knobs themselves are recipe.py).

Resolution order: dataclass defaults < the algorithm's preset < the recipe file < `-o key=value`
< typed flags (`--set`, `--model`, `--steps`, `--save-every`, passed as values, never re-read as
YAML). A key is a section key (`optimizer.lr`), a flat key of gcpo 0.4 (`lr`, recipe.FLAT_KEYS) or
the name TRL's GRPOConfig gives the same knob (`learning_rate`, TRL_KEYS); unknown keys and wrong
types are errors that name the key (with the nearest known key). The resolved recipe is printed
and stored with the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import GcpoError
from .recipe import ALGORITHM_PRESETS, FLAT_KEYS, SECTIONS, Recipe


class RecipeError(GcpoError, ValueError):
    """A bad recipe key, type or value; the message names the key."""


# TRL's GRPOConfig names for the same knobs (trl 0.2x-1.x), read as aliases: key -> (gcpo key,
# {TRL value: gcpo value} or None where the values are the same).
TRL_KEYS: dict[str, tuple[str, dict | None]] = {
    "num_generations": ("generation.samples_per_problem", None),
    "max_completion_length": ("generation.max_new_tokens", None),
    "learning_rate": ("optimizer.lr", None),
    "lr_scheduler_type": ("optimizer.lr_schedule", None),
    "max_steps": ("steps", None),
    "save_steps": ("save_every", None),
    "epsilon": ("loss.eps_low", None),  # and eps_high, unless epsilon_high is given (TRL's rule)
    "epsilon_high": ("loss.eps_high", None),
    "num_iterations": ("loss.ppo_epochs", None),
    "steps_per_generation": ("loss.mini_batches", None),
    "importance_sampling_level": ("loss.ratio_level", None),
    "loss_type": ("loss.loss_agg", {"grpo": "token_mean", "dapo": "token_sum", "bnpo": "token_sum"}),
    "scale_rewards": ("loss.scale_rewards", {True: "group", False: "none", "group": "group", "none": "none"}),
    "vllm_importance_sampling_cap": ("loss.tis_cap", None),
    "use_vllm": ("generation.engine", {True: "vllm", False: "hf"}),
    "gradient_checkpointing": ("model.gradient_checkpointing", None),
}
# TRL knobs with no counterpart here, each answered in one line.
TRL_ANSWERS: dict[str, str] = {
    "beta": "GCPO has no KL term and no reference model (the paper drops it), so 'beta' has no counterpart; "
            "leave it out (0 is accepted)",
    "top_k": "gcpo samples with temperature and top_p only; 'top_k' is not supported",
    "min_p": "gcpo samples with temperature and top_p only; 'min_p' is not supported",
    "repetition_penalty": "'repetition_penalty' is not supported: it would change the policy being trained",
    "max_prompt_length": "gcpo never truncates prompts; 'max_prompt_length' has no counterpart",
    "mask_truncated_completions": "a truncated completion always scores 0 in gcpo; 'mask_truncated_completions' "
                                  "has no counterpart",
}


# ------------------------------------------------------------------------------------- keys

def known_keys() -> list[str]:
    """Every key a recipe may use: section keys, top-level keys, flat and TRL aliases."""
    keys = [f.name for f in fields(Recipe) if f.name not in SECTIONS]
    keys += [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]
    return keys + list(FLAT_KEYS) + list(TRL_KEYS)


def unknown_key(key: str) -> RecipeError:
    near = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else " (see gcpo_cli/recipe.py for every key)"
    return RecipeError(f"unknown recipe key '{key}'{hint}")


def canonical(key: str, value: Any = None) -> list[tuple[str, Any]]:
    """A key as given -> the dotted gcpo key(s) and value(s) it sets."""
    if key in TRL_ANSWERS:
        if key == "beta" and value in (0, 0.0, None):
            return []
        raise RecipeError(TRL_ANSWERS[key])
    if key == "log_completions" and isinstance(value, bool):  # TRL's is a flag: true = every step
        return [(key, int(value))]
    if key in TRL_KEYS:
        target, values = TRL_KEYS[key]
        if values is not None:
            if value not in values:
                raise RecipeError(f"recipe key '{key}' (TRL's): {value!r} has no gcpo counterpart "
                                  f"(accepted: {', '.join(map(str, values))})")
            value = values[value]
        if key == "epsilon":
            return [(target, value), ("loss.eps_high?", value)]  # "?": only where eps_high is not given
        return [(target, value)]
    key = FLAT_KEYS.get(key, key)
    _field_type(key)
    return [(key, value)]


def _field_type(dotted: str):
    """The declared type of a dotted recipe key such as "lora.r"; RecipeError for an unknown key."""
    cls, parts = Recipe, dotted.split(".")
    if len(parts) > 2:
        raise unknown_key(dotted)
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints or (i == 0 and len(parts) == 1 and part in SECTIONS):
            raise unknown_key(dotted)
        if i < len(parts) - 1:
            if part not in SECTIONS:
                raise unknown_key(dotted)
            cls = SECTIONS[part]
    return hints[parts[-1]]


def _put(data: dict, dotted: str, value: Any, given: dict[str, str], as_given: str) -> None:
    """Set `dotted` in the nested mapping; a knob given twice under two names is an error."""
    optional = dotted.endswith("?")  # a default another key sets (TRL's epsilon_high = epsilon)
    dotted = dotted.rstrip("?")
    *sections, last = dotted.split(".")
    cur = data
    for p in sections:
        cur = cur.setdefault(p, {})
    if optional:
        cur.setdefault(last, value)
        return
    if dotted in given and given[dotted] != as_given:
        raise RecipeError(f"recipe keys '{given[dotted]}' and '{as_given}' set the same knob ({dotted})")
    given[dotted] = as_given
    cur[last] = value


def normalise(data: dict) -> dict:
    """A recipe mapping in any accepted spelling -> the sectioned mapping of recipe.Recipe."""
    if not isinstance(data, dict):
        raise RecipeError("recipe: expected a mapping of keys")
    out: dict = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        if key in SECTIONS and (isinstance(value, dict) or value is None):
            for sub, v in (value or {}).items():
                if not isinstance(sub, str) or sub not in {f.name for f in fields(SECTIONS[key])}:
                    raise unknown_key(f"{key}.{sub}")
                _put(out, f"{key}.{sub}", v, given, f"{key}.{sub}")
            continue
        if not isinstance(key, str):
            raise RecipeError(f"recipe key {key!r}: keys are text")
        for dotted, v in canonical(key, value):
            _put(out, dotted, v, given, key)
    return out


# ------------------------------------------------------------------------------------- types

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
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key in SECTIONS and cls is Recipe:
            kwargs[key] = _build(SECTIONS[key], value or {}, f"{key}.")
        else:
            kwargs[key] = _check(f"{prefix}{key}", value, hints[key])
    return cls(**kwargs)


# ---------------------------------------------------------------------------------- validity

def _finite_floats(obj, prefix: str = "") -> None:
    """NaN or infinity in any number of the recipe is an error naming the key."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _finite_floats(value, f"{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"recipe key '{prefix}{f.name}': must be a finite number, got {value}")


def _validate(r: Recipe) -> None:
    g, o, loss, gold = r.generation, r.optimizer, r.loss, r.golden
    _finite_floats(r)
    if not 0 <= r.seed < 2**32:
        raise RecipeError(f"recipe key 'seed': must be in [0, 2^32), got {r.seed}")
    if r.threads < 0:
        raise RecipeError(f"recipe key 'threads': must be >= 0 (0 = all cores), got {r.threads}")
    if o.weight_decay < 0 or o.max_grad_norm <= 0:
        raise RecipeError("recipe keys 'optimizer.weight_decay' must be >= 0 and 'optimizer.max_grad_norm' > 0, "
                          f"got {o.weight_decay} and {o.max_grad_norm}")
    if not 0 <= r.lora.dropout < 1:
        raise RecipeError(f"recipe key 'lora.dropout': must be in [0, 1), got {r.lora.dropout}")
    if r.lora.dropout > 0 and loss.mini_batches * loss.ppo_epochs > 1:
        # pi_old and every later log-prob would see different dropout masks: the PPO ratio is
        # then noise, and GSPO's 3e-4 clip fires on it (issue 25)
        raise RecipeError(f"recipe key 'lora.dropout' is {r.lora.dropout} with {loss.mini_batches} mini-batch(es) x "
                          f"{loss.ppo_epochs} epoch(s): dropout makes the importance ratio noise; use lora.dropout 0 "
                          "with several updates a step, or one update (mini_batches 1, ppo_epochs 1)")
    positive = {"generation.problems_per_step": g.problems_per_step, "generation.samples_per_problem":
                g.samples_per_problem, "generation.max_new_tokens": g.max_new_tokens, "steps": r.steps,
                "optimizer.micro_batch": o.micro_batch, "loss.mini_batches": loss.mini_batches,
                "loss.ppo_epochs": loss.ppo_epochs, "synthetic_count": r.synthetic_count,
                "frontier_hopeless_after": r.frontier_hopeless_after}
    for key, value in positive.items():
        if value < 1:
            raise RecipeError(f"recipe key '{key}': must be at least 1, got {value}")
    if g.samples_per_problem < 2:
        raise RecipeError("recipe key 'generation.samples_per_problem': a group needs at least 2 samples")
    if o.micro_batch_tokens < 0:
        raise RecipeError(f"recipe key 'optimizer.micro_batch_tokens': must be >= 0 (0 = no limit), "
                          f"got {o.micro_batch_tokens}")
    if r.save_every < 0 or o.warmup_steps < 0 or loss.max_resample_rounds < 0 or r.frontier_window < 1:
        raise RecipeError("recipe keys 'save_every', 'optimizer.warmup_steps', 'loss.max_resample_rounds' must be "
                          ">= 0 and 'frontier_window' >= 1")
    if not (g.temperature >= 0):
        raise RecipeError(f"recipe key 'generation.temperature': must be >= 0, got {g.temperature}")
    if not (0 < g.top_p <= 1):
        raise RecipeError(f"recipe key 'generation.top_p': must be in (0, 1], got {g.top_p}")
    if o.lr <= 0:
        raise RecipeError(f"recipe key 'optimizer.lr': must be > 0, got {o.lr}")
    for key in ("eps_low", "eps_high"):
        v = getattr(loss, key)
        if v is not None and not (0 <= v < 1):
            raise RecipeError(f"recipe key 'loss.{key}': must be in [0, 1), got {v}")
    if r.lora.r < 1 or r.lora.alpha <= 0:
        raise RecipeError("recipe key 'lora.r' must be >= 1 and 'lora.alpha' > 0")
    if loss.ratio_level != "token" and loss.loss_agg == "token_sum":
        raise RecipeError("recipe key 'loss.loss_agg': token_sum needs loss.ratio_level token "
                          "(a sequence-level ratio has one term per sequence)")
    if loss.tis_cap is not None and loss.tis_cap != 0 and loss.tis_cap < 1:
        raise RecipeError(f"recipe key 'loss.tis_cap': must be >= 1 (a cap C on pi_old / pi_sampler) or 0 (off), "
                          f"got {loss.tis_cap}")
    if r.log_completions < 0:
        raise RecipeError(f"recipe key 'log_completions': must be >= 0 (0 = never), got {r.log_completions}")
    if r.eval.limit < 0 or r.eval.holdout < 0:
        raise RecipeError("recipe keys 'eval.limit' and 'eval.holdout' must be >= 0")
    if r.vllm.max_model_len < 0 or r.vllm.kv_cache_gib < 1 or not 0 < r.vllm.gpu_memory_utilization < 1:
        raise RecipeError("recipe keys 'vllm.max_model_len' must be >= 0, 'vllm.kv_cache_gib' >= 1 and "
                          "'vllm.gpu_memory_utilization' in (0, 1)")
    if g.rollout_server is not None and not g.rollout_server.startswith(("http://", "https://")):
        raise RecipeError(f"recipe key 'generation.rollout_server': expected an http(s) URL, got {g.rollout_server!r}")
    if g.engine == "vllm" or g.rollout_server:
        from .engines import check_lora_for_vllm

        targets = r.lora.target_modules
        try:
            check_lora_for_vllm(r.lora.r, targets if targets == "all-linear" else targets.split(","))
        except GcpoError as e:
            raise RecipeError(str(e)) from None
    if "{solution}" not in gold.template and "{reasoning}" not in gold.template:
        raise RecipeError("recipe key 'golden.template': must contain {solution} or {reasoning}")
    try:
        gold.template.format(solution="x", reasoning="x", answer="1")
    except (KeyError, IndexError, ValueError) as e:
        raise RecipeError(f"recipe key 'golden.template': {e!s} (write literal braces as {{{{ }}}})") from None
    from .prompts import PRESETS, template_error

    if g.prompt not in PRESETS:
        near = difflib.get_close_matches(g.prompt, PRESETS, n=1)
        raise RecipeError(f"recipe key 'generation.prompt': {g.prompt!r} is not one of {', '.join(PRESETS)}"
                          + (f"; did you mean '{near[0]}'?" if near else ""))
    why = template_error(g.prompt_template) if g.prompt_template is not None else None
    if why:
        raise RecipeError(f"recipe key 'generation.prompt_template': {why}")
    if g.system_prompt is not None and not PRESETS[g.prompt].chat:
        raise RecipeError(f"recipe key 'generation.system_prompt': the '{g.prompt}' prompt has no chat template, "
                          "so no system turn")
    from .synthetic import parse_levels

    try:
        parse_levels(r.synthetic_levels)
    except ValueError as e:
        raise RecipeError(f"recipe key 'synthetic_levels': {e}") from None


def resolve(r: Recipe) -> Recipe:
    """Fill the algorithm's choices into the knobs left at None, then check the whole recipe."""
    sections: dict[str, dict] = {}
    for dotted, value in ALGORITHM_PRESETS[r.algorithm].items():
        section, key = dotted.split(".")
        if getattr(getattr(r, section), key) is None:
            if key == "overlong_buffer" and value == -1:
                value = max(1, r.generation.max_new_tokens // 4)
            sections.setdefault(section, {})[key] = value
    if r.generation.rollout_server:
        sections.setdefault("generation", {})["engine"] = "vllm"  # the server is a vLLM
    updates: dict[str, Any] = {s: replace(getattr(r, s), **kv) for s, kv in sections.items()}
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


# ----------------------------------------------------------------------------- reading files

def _is_text(typ) -> bool:
    return typ is str or (get_origin(typ) in (Union, types.UnionType) and str in get_args(typ))


def parse_override(text: str) -> tuple[str, Any]:
    """"lora.r=8" -> ("lora.r", 8). A text key keeps its value as typed ("007" stays "007");
    others read it as a YAML scalar (numbers, true/false, null)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key=value (e.g. -o optimizer.lr=2e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    typ = None if key in TRL_KEYS or key in TRL_ANSWERS else _field_type(FLAT_KEYS.get(key, key))
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
            near = difflib.get_close_matches(name_or_path, recipes, n=1)
            raise RecipeError(
                f"unknown recipe '{name_or_path}'" + (f"; did you mean '{near[0]}'?" if near else "")
                + f" (available: {', '.join(recipes) or 'none'}; or give a path to a .yaml file)")
        name, text = name_or_path, recipes[name_or_path].read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {name_or_path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {name_or_path}: expected a mapping of keys")
    data.setdefault("name", name)
    return data


def from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), values: dict | None = None) -> Recipe:
    """A resolved Recipe from a recipe mapping (any accepted spelling), `-o key=value` overrides,
    then typed `values` ({"set_name": "007"}: taken as they are). Later layers win."""
    merged = normalise(data)
    for layer in ([parse_override(t) for t in overrides], list((values or {}).items())):
        for key, value in layer:
            for dotted, v in canonical(key, value):
                section, _, last = dotted.rstrip("?").rpartition(".")
                if dotted.endswith("?") and last in merged.get(section, {}):
                    continue
                (merged.setdefault(section, {}) if section else merged)[last] = v
    return resolve(_build(Recipe, merged))


def load(name_or_path: str, overrides: list[str] | tuple[str, ...] = (), values: dict | None = None) -> Recipe:
    return from_dict(load_dict(name_or_path), overrides, values)


def to_dict(r: Recipe) -> dict:
    return dataclasses.asdict(r)


def defaults_diff(r: Recipe) -> dict:
    """The keys of a resolved recipe that differ from a recipe with no keys set (same algorithm),
    as {dotted key: value}: what `gcpo train` prints at start."""
    base = to_dict(resolve(replace(Recipe(), algorithm=r.algorithm)))
    out = {}
    for key, value in to_dict(r).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if base[key].get(k) != v})
        elif base.get(key) != value:
            out[key] = value
    return out
