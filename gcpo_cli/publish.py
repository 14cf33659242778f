"""Publishing a run: its model card (README.md), a portable export folder, and the push to the
Hugging Face Hub.

The card is written from the database alone: the resolved recipe the run stored, a summary of
its training curve (steps), its held-out accuracy before and after, every finished evaluation
of the run, and how to load what was exported. It is a huggingface_hub ModelCard: its metadata
(ModelCardData) names the base, the hub datasets the run trained on and, as `model-index`, the
exported checkpoint's own evaluation results. An export names nothing of this machine: the base
is its hub id where there is one, else its folder's name (a relative path), and every file is
readable by others (safetensors writes 0600). The push is huggingface_hub's own code path
(HfApi.create_repo, create_branch, upload_folder), so what huggingface_hub reads is honoured as
it documents it: the endpoint from HF_ENDPOINT, the token from HF_TOKEN or `hf auth login`. The
token is never printed, and a failed push leaves the exported folder where it was written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from . import __version__, checkpoints
from .errors import GcpoError
from .render import sparkline
from .store import loads, set_sources
from .store.evaluations import for_run as run_evaluations
from .store.runs import run_status, step_curve

# Models gcpo knows by a short name: their hub id, license and the dtype they ship in, for the
# card's metadata and a merged export's default dtype. The embedded model is
# SmolLM2-135M-Instruct, materialised from its Q4_1 GGUF as an fp32 copy (see model.py).
KNOWN_BASES = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", "bfloat16")}
DTYPES = ("float32", "bfloat16", "float16")
TAGS = ("gcpo", "grpo", "reinforcement-learning", "math")
PAPER = "https://arxiv.org/abs/2510.07790"


class PushError(Exception):
    """The push failed (auth, network, the Hub refused): one line, without the token."""


# ----------------------------------------------------------------------------- before exporting
def check_push(repo_id: str) -> None:
    """Everything a push needs that can be checked before exporting (which may take minutes):
    a well-formed repo id, network allowed, a token. GcpoError otherwise."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise GcpoError(f"'{repo_id}' is not a hub repo id: give ORG/NAME (letters, digits, '-', '_', '.')") from None
    if repo_id.count("/") != 1:
        raise GcpoError(f"'{repo_id}' is not a hub repo id: give ORG/NAME (your user name or an organisation)")
    if constants.is_offline_mode():
        raise GcpoError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: pushing needs the network; unset it")
    if not get_token():
        raise GcpoError("pushing needs a Hugging Face token with write access: set HF_TOKEN, "
                        "or run `hf auth login`")


def default_folder(run: dict, step: int, merged: bool) -> Path:
    """Where a push keeps its export when no --out is given: inside the run's folder, rebuilt
    by each push (so a failed one can be retried, and nothing lands in the working folder)."""
    return checkpoints.run_folder(run) / "exports" / f"step-{step}-{'merged' if merged else 'adapter'}"


def hub_base(model: str) -> str | None:
    """The base model's hub id, when it has one (None for a local folder, a GGUF file, tiny)."""
    if model in KNOWN_BASES:
        return KNOWN_BASES[model][0]
    if (model.endswith(".gguf") or model.startswith((".", "/", "~")) or model.count("/") != 1
            or Path(model).expanduser().exists()):
        return None
    return model


def portable_base(model: str) -> str:
    """How an export names its base: the hub id where there is one, else the base folder's (or
    GGUF file's, or gcpo's own `tiny`) name, a path relative to where the export is loaded;
    never an absolute path of this machine or of gcpo's cache."""
    return hub_base(model) or Path(model).expanduser().name or model


def base_dtype(model: str) -> str:
    """The dtype the base ships in (a merged export's default): its config's `dtype` (fp32 when
    it names none), or the hub original's for the models gcpo materialises itself."""
    if model in KNOWN_BASES:
        return KNOWN_BASES[model][2]
    from transformers import AutoConfig

    from .model import resolve_model

    dtype = getattr(AutoConfig.from_pretrained(resolve_model(model)), "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in DTYPES else "float32"


def hub_dataset(source: str) -> dict | None:
    """{id, config, split} of an ingest source that came from the Hub (`hf:ORG/NAME[/SUBSET][:SPLIT]`,
    as readers.py records it), else None."""
    if not source.startswith("hf:"):
        return None
    path, _, split = source[3:].partition(":")
    parts = path.split("/")
    repo, config = ("/".join(parts[:2]), "/".join(parts[2:]) or None) if len(parts) > 1 else (path, None)
    return {"id": repo, "config": config, "split": split or None}


def _set_dataset(db, set_name: str) -> dict | None:
    """The hub dataset a set was ingested from, when it came from exactly one."""
    found = {tuple(d.values()): d for d in map(hub_dataset, set_sources(db, set_name)) if d}
    return next(iter(found.values())) if len(found) == 1 else None


# ----------------------------------------------------------------------------- the card's data
def card_data(db, run: dict, step: int, merged: bool) -> dict:
    """What the card says, as plain data (also what `export --json` reports of it)."""
    recipe = loads(run["recipe_json"]) or {}
    holdout = ((recipe.get("eval") or {}).get("holdout")) or 0
    evals = []
    for e in run_evaluations(db, run["id"]):
        if e["status"] != "completed":  # an unfinished evaluation has no metrics to report
            continue
        m, p = e["metrics"], e["params"]
        held_out = bool(holdout) and e["set_name"] == run["set_name"] and p.get("problems") == holdout
        evals.append(dict(set_name=e["set_name"], dataset=_set_dataset(db, e["set_name"]), run_step=e["run_step"],
                          held_out=held_out,
                          n=m.get("n_problems"), k=m.get("k"), temperature=p.get("temperature"),
                          mean_at_k=m.get("mean_at_k"), stderr=m.get("stderr"), pass_at_k=m.get("pass_at_k"),
                          maj_at_k=m.get("maj_at_k"), completion_tokens_mean=m.get("completion_tokens_mean"),
                          truncation_rate=m.get("truncation_rate"), date=(e["created_at"] or "")[:10]))
    held = [e for e in evals if e["held_out"]]
    before = next((e for e in held if e["run_step"] == 0), None)
    after = max((e for e in held if (e["run_step"] or 0) > 0), key=lambda e: e["run_step"], default=None)
    trained_on = _set_dataset(db, run["set_name"]) if run["set_name"] else None
    return dict(run_id=run["id"], model=run["model"], base=hub_base(run["model"]),
                base_name=portable_base(run["model"]), algorithm=run["algorithm"],
                set_name=run["set_name"], datasets=[trained_on["id"]] if trained_on else [],
                status=run_status(run), last_step=run["last_step"],
                steps_planned=run["steps_planned"], step=step, merged=merged, recipe=recipe,
                curve=_curve(step_curve(db, run["id"])),
                held_out={"before": before, "after": after} if before or after else None,
                evaluations=evals)


def _curve(steps: list[dict]) -> dict:
    rewards = [(s["step"], s["reward_mean"]) for s in steps if s["reward_mean"] is not None]
    wrong = [s["all_wrong_frac"] for s in steps if s["all_wrong_frac"] is not None]
    best = max(rewards, key=lambda r: r[1], default=(None, None))
    return dict(steps=len(steps), reward_first=rewards[0][1] if rewards else None,
                reward_last=rewards[-1][1] if rewards else None, reward_best=best[1], reward_best_step=best[0],
                golden_injections=int(sum(s["golden_injections"] or 0 for s in steps)),
                steps_with_golden=sum(1 for s in steps if s["golden_injections"]),
                all_wrong_first=wrong[0] if wrong else None, all_wrong_last=wrong[-1] if wrong else None,
                reward_per_step=[r for _, r in rewards])


# ----------------------------------------------------------------------------- the card's text
def render_card(data: dict, *, title: str, load_from: str, base_from: str | None = None,
                license_id: str | None = None) -> str:
    """The README.md: a huggingface_hub ModelCard whose metadata (YAML front matter) names the
    base, the hub datasets trained on and the exported checkpoint's own results (`model-index`),
    then the run in prose and tables. `load_from` is what the snippet loads (the repo id, or the
    folder's name); `base_from` the base for an adapter (default: its hub id, else its folder's name)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = data["base"]
    results = _eval_results(data)
    meta = ModelCardData(
        base_model=base, base_model_relation=("finetune" if data["merged"] else "adapter") if base else None,
        library_name="transformers" if data["merged"] else "peft",
        license=license_id or KNOWN_BASES.get(data["model"], (None, None, None))[1],
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys([*TAGS, data["algorithm"], *([] if data["merged"] else ["lora"])])),
        datasets=data["datasets"] or None, model_name=title if results else None, eval_results=results or None)
    what = "A model" if data["merged"] else "A LoRA adapter"
    on = f"[{base}](https://huggingface.co/{base})" if base else f"`{_cell(data['base_name'])}`"
    recipe, renamed = _portable_recipe(data["recipe"])
    parts = [
        f"# {title}",
        f"{what} {'fine-tuned from' if data['merged'] else 'for'} {on}, trained with reinforcement learning "
        f"({data['algorithm'].upper()}) on math problems with gcpo {__version__}. GCPO ([When Contrast Fails, "
        f"Go Gold]({PAPER})) injects a golden answer into a group whose sampled answers are all wrong."
        + (" The LoRA adapter is merged into the base weights." if data["merged"] else ""),
        _summary(data), _curve_md(data), _held_out_md(data), _evaluations_md(data),
        _usage_md(data, load_from, base_from or base or data["base_name"]),
        "## Recipe\n\nThe resolved recipe, as stored with the run (saved as a .yaml file, `gcpo train "
        "--recipe FILE` trains with it again"
        + ("; `model.name` is the base folder's name, where the run named its path on the machine that "
           "trained it" if renamed else "") + "):\n\n```yaml\n"
        + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True) + "```",
    ]
    body = "\n\n".join(p for p in parts if p) + "\n"
    return str(ModelCard("---\n" + meta.to_yaml() + "\n---\n\n" + body))


def _eval_results(d: dict) -> list:
    """model-index entries: the exported checkpoint's finished evaluations (never the base's,
    before training), mean@k as accuracy, and pass@k and maj@k where k > 1."""
    from huggingface_hub import EvalResult

    out = []
    for e in d["evaluations"]:
        if e["run_step"] != d["step"] or e["mean_at_k"] is None:
            continue
        ds = e["dataset"] or {}
        where = dict(task_type="text-generation", dataset_type=ds.get("id") or e["set_name"],
                     dataset_name=e["set_name"], dataset_config=ds.get("config"), dataset_split=ds.get("split"))
        metrics = [("accuracy", f"mean@{e['k']}", e["mean_at_k"])]
        if (e["k"] or 1) > 1:
            metrics += [("pass@k", f"pass@{e['k']}", e["pass_at_k"]), ("maj@k", f"maj@{e['k']}", e["maj_at_k"])]
        out += [EvalResult(**where, metric_type=kind, metric_name=name, metric_value=round(value, 4))
                for kind, name, value in metrics if value is not None]
    return out


def _portable_recipe(recipe: dict) -> tuple[dict, bool]:
    """The stored recipe with a base given as a path of the training machine named by its
    folder's name (hub ids and gcpo's own names stay); and whether it was renamed."""
    name = (recipe.get("model") or {}).get("name")
    if not name or hub_base(name) or not (name.endswith(".gguf") or "/" in name or name.startswith("~")):
        return recipe, False
    return {**recipe, "model": {**recipe["model"], "name": portable_base(name)}}, True


def _summary(d: dict) -> str:
    rows = [("run", f"`{d['run_id']}` ({d['status']})"), ("algorithm", d["algorithm"]),
            ("problem set", f"`{_cell(d['set_name'])}`"), ("steps", f"{d['last_step']} of {d['steps_planned']}"),
            ("exported checkpoint", f"step {d['step']}" + (" (merged)" if d["merged"] else " (LoRA adapter)")),
            ("base model", f"`{_cell(d['base_name'])}`")]
    return "## Training run\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _curve_md(d: dict) -> str:
    c = d["curve"]
    if not c["steps"]:
        return "## Training curve\n\nNo training step was recorded."
    best = f"{_num(c['reward_best'])} (step {c['reward_best_step']})" if c["reward_best"] is not None else "–"
    rows = [("steps recorded", str(c["steps"])),
            ("reward mean, first step", _num(c["reward_first"])),
            ("reward mean, last step", _num(c["reward_last"])),
            ("reward mean, best step", best),
            ("golden answers injected", f"{c['golden_injections']} (in {c['steps_with_golden']} steps)"),
            ("all-wrong groups, first → last step", f"{_pct(c['all_wrong_first'])} → {_pct(c['all_wrong_last'])}"),
            ("reward per step", f"`{sparkline(c['reward_per_step'], 40, lo=0.0, hi=1.0)}`")]
    return ("## Training curve\n\nReward is the share of sampled answers graded correct (golden answers "
            "not counted).\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))


def _held_out_md(d: dict) -> str:
    h = d["held_out"]
    if not h:
        return ""
    rows = [f"| {label} | {e['run_step']} | {e['n']} | {_pct(e['mean_at_k'])} |"
            for label, e in (("before", h["before"]), ("after", h["after"])) if e]
    if h["before"] and h["after"] and None not in (h["before"]["mean_at_k"], h["after"]["mean_at_k"]):
        rows.append(f"| gain | | | {(h['after']['mean_at_k'] - h['before']['mean_at_k']) * 100:+.1f} pts |")
    return ("## Held-out accuracy\n\nProblems of the training set held out from training "
            "(`eval.holdout`), graded before and after.\n\n| when | step | n | mean@k |\n|---|---:|---:|---:|\n"
            + "\n".join(rows))


def _evaluations_md(d: dict) -> str:
    if not d["evaluations"]:
        return "## Evaluations\n\nNo evaluation of this run is recorded yet (`gcpo eval --run RUN`)."
    head = ("| set | step | n | k | temp | mean@k | ± se | pass@k | maj@k | tokens | truncated | date |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = [f"| {_cell(e['set_name'])}{' (held out)' if e['held_out'] else ''} | {e['run_step']} | {e['n']} | "
            f"{e['k']} | {_num(e['temperature'], 1)} | {_pct(e['mean_at_k'])} | {_pct(e['stderr'])} | "
            f"{_pct(e['pass_at_k'])} | {_pct(e['maj_at_k'])} | {_num(e['completion_tokens_mean'], 0)} | "
            f"{_pct(e['truncation_rate'])} | {e['date']} |" for e in d["evaluations"]]
    return ("## Evaluations\n\nEvery finished evaluation of this run recorded by gcpo (step: the checkpoint "
            "evaluated; mean@k: accuracy averaged over k samples per problem; maj@k by math-verify "
            "equivalence).\n\n" + head + "\n" + "\n".join(rows))


def _usage_md(d: dict, load_from: str, base: str | None) -> str:
    from .prompts import DEFAULT, PRESETS, from_recipe

    try:
        prompt = from_recipe(d["recipe"])
    except GcpoError:  # a stored recipe gcpo no longer reads: the default preset
        prompt = PRESETS[DEFAULT]
    user = prompt.template.format(problem="What is 12 * 7?")
    if prompt.chat:
        turns = ([f"    {{\"role\": \"system\", \"content\": {json.dumps(prompt.system)}}},\n"]
                 if prompt.system is not None else [])
        turns.append(f"    {{\"role\": \"user\", \"content\": {json.dumps(user)}}},\n")
        text = ("messages = [\n" + "".join(turns) + "]\n"
                "text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)\n"
                + (f"text += {json.dumps(prompt.opening)}  # the answer opens with it, as in training\n"
                   if prompt.opening else ""))
    else:
        text = f"text = {json.dumps(user)}  # no chat template\n"
    gen = (text + "inputs = tokenizer(text, return_tensors=\"pt\", add_special_tokens=False)\n"
           f"out = model.generate(**inputs, max_new_tokens={int((d['recipe'].get('generation') or {}).get('max_new_tokens') or 512)}, "
           "do_sample=False)\n"
           "print(tokenizer.decode(out[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n")
    if d["merged"]:
        code = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"model = AutoModelForCausalLM.from_pretrained({json.dumps(load_from)})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(load_from)})\n")
        note = ""
    else:
        base_line = f"base_id = {json.dumps(base)}" + ("" if d["base"] else "  # the base's folder: no hub id (see below)")
        code = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"{base_line}\n"
                "base = AutoModelForCausalLM.from_pretrained(base_id)\n"
                f"model = PeftModel.from_pretrained(base, {json.dumps(load_from)})\n"
                "tokenizer = AutoTokenizer.from_pretrained(base_id)\n")
        note = ("" if d["base"] else f"\n\nThe base model was `{_cell(d['base_name'])}`, which has no hub id: "
                "base_id is its folder's name; point it at a copy of the same weights.")
        if d["model"] in KNOWN_BASES:
            note = ("\n\ngcpo trained this adapter on its embedded copy of the base (the Q4_1 GGUF, dequantised), "
                    "so on the original weights it behaves close to, not exactly as, the policy that trained; "
                    "`gcpo export --merge` gives the exact model.")
    own = " with the recipe's own template" if (d["recipe"].get("generation") or {}).get("prompt_template") else ""
    return (f"## How to use\n\nThe prompt is rendered as training rendered it (the `{_cell(prompt.name)}` "
            f"prompt{own}).\n\n```python\n" + code + "\n" + gen + "```" + note)


def _cell(text) -> str:
    """User text in a Markdown table cell: no line breaks, no column separators."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def _num(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def write_card(folder: Path, text: str, base: str) -> Path:
    """The card as README.md (replacing the template PEFT writes); an adapter names its base in
    adapter_config.json by `base` (portable_base: the hub id, or a folder's name), never by the
    path it trained from. Then every file is made readable as the umask allows (share())."""
    card = folder / "README.md"
    card.write_text(text, encoding="utf-8")
    config = folder / "adapter_config.json"
    if config.exists():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        if cfg.get("base_model_name_or_path") != base:
            cfg["base_model_name_or_path"] = base
            config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    share(folder)
    return card


def share(folder: Path) -> None:
    """Files as a plain `cp` would make them (0666 and folders 0777, less the umask): safetensors
    writes its files 0600, so an export copied to a shared disk was unreadable to others."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def clear(folder: Path) -> None:
    """Remove a push folder gcpo made before (default_folder), to rebuild it."""
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- the push
def push(folder: Path, repo_id: str, *, private: bool, revision: str | None, message: str) -> dict:
    """Create the repo (if new), the branch (if given and new), and upload the folder in one
    commit. Returns {url, commit_url, revision}; PushError with one line on any failure."""
    from huggingface_hub import HfApi, get_token

    api = HfApi()
    token = get_token()
    try:
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                 commit_message=message)
    except Exception as e:  # auth, network, the Hub refusing: said in one line, never a traceback
        raise PushError(_why(e, api.endpoint, repo_id, token)) from None
    return {"url": str(url), "commit_url": getattr(info, "commit_url", None), "revision": revision or "main"}


def _why(e: Exception, endpoint: str, repo_id: str, token: str | None) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    response = getattr(e, "response", None)
    code = getattr(response, "status_code", None)
    detail = getattr(e, "server_message", None) or str(e)
    detail = (detail.strip().splitlines() or [type(e).__name__])[0][:200]
    if isinstance(e, OfflineModeIsEnabled):
        why = "offline mode is on (HF_HUB_OFFLINE): unset it to push"
    elif isinstance(e, HfHubHTTPError) and code == 401:
        why = ("the Hub refused the token (401 unauthorized): set HF_TOKEN to a token with write access, "
               "or run `hf auth login`")
    elif isinstance(e, HfHubHTTPError) and code == 403:
        why = f"the token may not write to {repo_id} (403 forbidden): use a write token with access to its namespace"
    elif isinstance(e, HfHubHTTPError) and code is not None:
        why = f"the Hub answered {code}: {detail}"
    elif isinstance(e, HfHubHTTPError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
        why = f"cannot reach {endpoint}: {detail}"
    else:
        why = f"{type(e).__name__}: {detail}"
    return why.replace(token, "***") if token else why
