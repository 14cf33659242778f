"""What keeping an nf4 model's unquantised weights in bf16 saves (issue 9): the KV cache of a
rollout batch and the peak memory of sampling it, with peft's k-bit preparation as it comes (every
unquantised weight upcast to fp32, so the residual stream and KV cache are fp32) against gcpo's
prepare_base (those weights back in the bf16 compute dtype).

Each mode runs in its own process (peak RSS is per process): the embedded SmolLM2-135M as an nf4
base with bf16 compute, LoRA r16, then one prefill + decode of B x G sequences of L new tokens
under bf16 autocast, as the trainer samples a quantised policy. Prints one JSON line per mode.

    python bench/nf4_activation_memory.py [--batch 32] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(mode: str, batch: int, tokens: int) -> dict:
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import DynamicCache

    from gcpo_cli.model import add_lora, autocast_context, load_base, prepare_base
    from gcpo_cli.recipe import LoraConfig, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(name="smollm2-135m", quant="nf4", dtype="bfloat16")
    model, tok, _ = load_base(cfg)
    if mode == "peft":  # as peft leaves it: unquantised weights in fp32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:  # gcpo: back to the bf16 compute dtype
        model = prepare_base(model, cfg)
    model = add_lora(model, LoraConfig())
    model.eval()
    fp32_params = sum(p.numel() * p.element_size() for p in model.parameters() if p.dtype == torch.float32)
    ids = tok(["What is 47 + 38? Put the final answer in \\boxed{}."] * batch, return_tensors="pt").input_ids
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), autocast_context(model, "bfloat16")():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(tokens - 1):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    kv = out.past_key_values
    kv_bytes = sum(t.numel() * t.element_size() for layer in kv.layers for t in (layer.keys, layer.values))
    return dict(mode=mode, batch=batch, new_tokens=tokens, kv_dtype=str(kv.layers[0].keys.dtype),
                kv_cache_mib=round(kv_bytes / 2**20, 1), fp32_weights_mib=round(fp32_params / 2**20, 1),
                peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                peak_rss_growth_while_sampling_mib=round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                          - base) / 1024))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--mode", choices=["peft", "gcpo"])
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.batch, args.tokens)))
        return
    for mode in ("peft", "gcpo"):
        subprocess.run([sys.executable, __file__, "--mode", mode, "--batch", str(args.batch), "--tokens",
                        str(args.tokens)], check=True)


if __name__ == "__main__":
    main()
