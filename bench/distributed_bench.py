"""Data-parallel cost on the CPU reference step (bench/train_step.py's: SmolLM2-135M fp32, LoRA r16,
4 problems x 8 samples, 48 new tokens, the TRL two-digit sums): one process against two gloo
processes launched by torchrun, each configuration in a fresh process.

On this 2-core machine two processes will not be faster (they split the same two cores); what
this measures is the price of going distributed: seconds per step, and the communication per
step (`comm_s` in the step's metrics: rank 0's time inside collectives, a straggling rank's lead
included), plus a bare all-reduce of a buffer of the LoRA's size, timed after a barrier.

It also prints the bytes all-reduced per step for the 1.5b-qlora recipe's LoRA, computed without
downloading anything, so that a reader can estimate the NCCL time on real hardware:
bytes/step = LoRA parameters x 4 (fp32 gradients) x mini_batches x ppo_epochs (one all-reduce
per optimiser update). A ring all-reduce moves 2 (N-1)/N of that per GPU.

    python bench/distributed_bench.py --steps 4 [--configs 1x2,1x1,2x1] [-o key=value ...]

Configurations are PROCESSESxTHREADS: 1x2 is one process on both cores (the usual run), 1x1 one
process on one thread, 2x1 two processes (torchrun, gloo) of one thread each.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# DeepSeek-R1-Distill-Qwen-1.5B (the 1.5b-qlora recipe's model) is Qwen2.5-Math-1.5B's architecture;
# its config.json (huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/blob/main/config.json):
QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2)


def lora_params(cfg: dict, r: int) -> int:
    """LoRA parameters on every linear layer of a Qwen2/Llama decoder (peft's "all-linear": q, k,
    v, o, gate, up, down; not the LM head): r x (in + out) per adapted layer."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])  # head_dim 128 -> 256
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
    return cfg["num_hidden_layers"] * sum(r * (a + b) for a, b in shapes)


def recipe_1_5b() -> dict:
    from gcpo_cli import recipe_load as recipes

    r = recipes.load("1.5b-qlora")
    n = lora_params(QWEN_1_5B, r.lora.r)
    updates = r.loss.mini_batches * r.loss.ppo_epochs
    return dict(model=r.model.name, lora_r=r.lora.r, lora_params=n, allreduces_per_step=updates,
                bytes_per_allreduce=n * 4, bytes_per_step=n * 4 * updates,
                ring_bytes_per_gpu_per_step_at_8=round(n * 4 * updates * 2 * 7 / 8))


def worker(args) -> None:
    """One configuration: runs in every rank (under torchrun) or alone; rank 0 prints the result."""
    import torch

    from gcpo_cli import distributed
    from gcpo_cli import recipe_load as recipes
    from gcpo_cli import train as training
    from gcpo_cli.ingest import ingest_rows
    from gcpo_cli.store import open_db
    from train_step import trl_rows

    dist = distributed.from_env()
    db = None
    if dist.writer:
        db = open_db(Path(args.db))
        ingest_rows(db, trl_rows(4 * args.steps + 64), "trl-addition", source="bench:trl-addition")
    r = recipes.load("smollm2-cpu", ["set_name=trl-addition", f"steps={args.steps}", "save_every=0", "lr=1e-5",
                                     "eval.holdout=0", "curriculum=uniform", f"threads={args.threads}", *args.override])
    steps = []

    class Timer(training.NullDisplay):
        t = time.perf_counter()

        def start(self, ctx, total, done):
            Timer.t = time.perf_counter()

        def step(self, step, m):
            now = time.perf_counter()
            steps.append(dict(step=step, s=round(now - Timer.t, 3), gen_s=round(m["gen_s"], 3),
                              update_s=round(m["update_s"], 3), comm_s=round(m.get("comm_s", 0.0), 4)))
            Timer.t = now

    summary = training.train(db, r if dist.writer else None, display=Timer(), dist=dist)
    allreduce = {}
    if dist.active:  # a bare all-reduce of the LoRA's gradient size, after a barrier (no straggler)
        n = lora_params(_config(r.model.name), r.lora.r)
        buf = torch.zeros(n)
        torch.distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(args.reps):
            torch.distributed.all_reduce(buf)
        allreduce = dict(floats=n, bytes=n * 4, s_each=round((time.perf_counter() - t0) / args.reps, 5))
    if dist.writer:
        rest = steps[1:] or steps
        print(json.dumps(dict(
            processes=dist.world, threads=args.threads, run_id=summary["run_id"],
            median_step_s_excl_first=statistics.median(s["s"] for s in rest),
            median_comm_s_excl_first=statistics.median(s["comm_s"] for s in rest),
            grad_bytes_per_step=dist.comm_bytes // max(1, len(steps)), bare_allreduce=allreduce, steps=steps)))
    dist.close()


def _config(name: str) -> dict:
    """The model's transformers config (no weights loaded): SmolLM2-135M is a Llama decoder."""
    from transformers import AutoConfig

    from gcpo_cli.model import resolve_model

    return AutoConfig.from_pretrained(resolve_model(name)).to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--configs", default="1x2,1x1,2x1")
    ap.add_argument("--reps", type=int, default=20, help="bare all-reduces timed per configuration")
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # the embedded model is materialised once into GCPO_HOME/cache and reused by every configuration
        env = {**os.environ, "GCPO_HOME": os.environ.get("GCPO_HOME") or tmp}
        for config in args.configs.split(","):
            procs, threads = (int(x) for x in config.split("x"))
            me = [str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps), "--threads", str(threads),
                  "--reps", str(args.reps), "--db", str(Path(tmp) / f"bench-{config}.db"),
                  *[a for o in args.override for a in ("-o", o)]]
            cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *me]
                   if procs > 1 else [sys.executable, *me])
            out = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{config} failed:\n{out.stderr[-3000:]}")
            results.append(dict(config=config, **json.loads(out.stdout.strip().splitlines()[-1])))
    print(json.dumps(dict(configs=results, recipe_1_5b_qlora=recipe_1_5b())))


if __name__ == "__main__":
    main()
