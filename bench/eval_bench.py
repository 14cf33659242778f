"""Evaluation benchmark: grading throughput, generation throughput, and the embedded model's
baseline mean@k on gsm8k, math500 and the synthetic set.

    .venv/bin/python bench/eval_bench.py                  # grading + generation (about a minute)
    .venv/bin/python bench/eval_bench.py --baseline       # + mean@4 baselines (about 10 minutes on 2 cores)

Grading mix: for each problem of aime24, math500, gsm8k and minerva_math (../shared/data), its own
answer against the final answer of its worked solution (correct, in the dataset's own spelling)
and against another problem's answer from the same benchmark (wrong, same format), in random
order. Pairs that need no sympy (same text, plain numbers) are settled in the calling process;
the rest go to math-verify in the Grader's worker, so both rates are printed.

Everything is written to a throw-away database; the model cache is the usual GCPO_HOME one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = next((p for p in ([Path(os.environ["GCPO_SHARED_DATA"])] if os.environ.get("GCPO_SHARED_DATA") else [])
             + [REPO.parent / "shared" / "data", REPO / "shared" / "data"] if p.exists()), None)


def _rows(rel: str) -> list[dict]:
    with open(DATA / rel) as f:
        return [json.loads(line) for line in f if line.strip()]


def grading_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    from gcpo_cli.answers import extract_answer

    rng = random.Random(seed)
    by_set = {
        "aime24": [(str(r["answer"]), extract_answer(r["solution"])) for r in _rows("aime24/test.jsonl")],
        "math500": [(r["answer"], extract_answer(r["solution"])) for r in _rows("math500/test.jsonl")],
        "gsm8k": [(r["answer"].split("####")[-1].strip(), extract_answer(r["answer"]))
                  for r in _rows("gsm8k/test.jsonl")],
        "minerva_math": [(extract_answer(r["solution"]),) * 2 for r in _rows("minerva_math/test.jsonl")],
    }
    pairs = []
    for items in by_set.values():
        golds = [g for g, _ in items]
        for gold, own in items:
            pairs.append((gold, own))
            other = rng.choice(golds)
            while other == gold and len(set(golds)) > 1:
                other = rng.choice(golds)
            pairs.append((gold, other))
    rng.shuffle(pairs)
    return pairs[:n]


def bench_grading(n: int) -> dict:
    from gcpo_cli.answers import local_verdict
    from gcpo_cli.grader import Grader

    pairs = grading_pairs(n)
    remote = sum(local_verdict(g, p) is None for g, p in pairs)
    with Grader() as g:
        t = time.perf_counter()
        g.grade(pairs[:8])  # start the worker (spawn + importing sympy) outside the timing
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        verdicts = g.grade(pairs)
        total_s = time.perf_counter() - t
        worker = [p for p in pairs if local_verdict(*p) is None]
        t = time.perf_counter()
        g.grade(worker)
        worker_s = time.perf_counter() - t
    return dict(pairs=len(pairs), accepted=sum(verdicts), via_math_verify=remote,
                verifications_per_s=len(pairs) / total_s,
                math_verify_per_s=len(worker) / worker_s if worker else None, worker_start_s=start_s)


def bench_generation(model, tok, prompts: int, max_new_tokens: int, batch: int) -> dict:
    import torch

    from gcpo_cli.records import Sampling
    from gcpo_cli.rollout import DEFAULT_TEMPLATE, generate, render_prompt

    texts = [render_prompt(tok, r["question"], DEFAULT_TEMPLATE) for r in _rows("gsm8k/test.jsonl")[:prompts]]
    torch.manual_seed(0)
    generate(model, tok, texts[:2], Sampling(n=1, max_new_tokens=4, temperature=1.0))  # warm-up
    t = time.perf_counter()
    comps = generate(model, tok, texts, Sampling(n=1, max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch))
    s = time.perf_counter() - t
    tokens = sum(c.tokens for cs in comps for c in cs)
    return dict(prompts=len(texts), batch=batch, max_new_tokens=max_new_tokens, tokens=tokens, seconds=s,
                tokens_per_s=tokens / s, truncated=sum(c.truncated for cs in comps for c in cs))


def bench_baseline(db, model, tok, label: str, limit: int, k: int, max_new_tokens: int, temperature: float,
                   batch: int) -> list[dict]:
    from gcpo_cli.evaluation import evaluate_problems
    from gcpo_cli.store import set_problems
    from gcpo_cli.ingest import ensure_synthetic_set, ingest_source

    ingest_source(db, str(DATA / "gsm8k" / "test.jsonl"), "gsm8k")
    ingest_source(db, str(DATA / "math500" / "test.jsonl"), "math500")
    ensure_synthetic_set(db, "synthetic", count=200, seed=0, levels="1-5")
    out = []
    for name in ("gsm8k", "math500", "synthetic"):
        _, problems = set_problems(db, name, limit)
        out.append(evaluate_problems(db, model, tok, problems, label=label, set_name=name, k=k,
                                     temperature=temperature, max_new_tokens=max_new_tokens, seed=0,
                                     batch_size=batch, progress=sys.stderr.isatty()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--grading-pairs", type=int, default=1000)
    ap.add_argument("--gen-prompts", type=int, default=32)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--baseline", action="store_true", help="also measure mean@k on gsm8k, math500, synthetic")
    ap.add_argument("--limit", type=int, default=32, help="problems per baseline set")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()
    if DATA is None:
        sys.exit("../shared/data not found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    g = bench_grading(args.grading_pairs)
    print(f"grading: {g['pairs']} pairs ({g['accepted']} accepted, {g['via_math_verify']} needed math-verify): "
          f"{g['verifications_per_s']:.0f} verifications/s overall, {g['math_verify_per_s']:.1f}/s through "
          f"math-verify; worker start {g['worker_start_s']:.1f} s")

    from gcpo_cli.store import open_db
    from gcpo_cli.model import load_for_inference

    t = time.perf_counter()
    model, tok = load_for_inference(args.model)
    print(f"model {args.model} loaded in {time.perf_counter() - t:.1f} s")
    gen = bench_generation(model, tok, args.gen_prompts, args.gen_tokens, args.batch)
    print(f"generation: {gen['prompts']} gsm8k prompts, batch {gen['batch']}, T=1.0, max {gen['max_new_tokens']} "
          f"new tokens: {gen['tokens']} tokens in {gen['seconds']:.1f} s = {gen['tokens_per_s']:.1f} tokens/s "
          f"({gen['truncated']} truncated)")

    if args.baseline:
        with tempfile.TemporaryDirectory(prefix="gcpo-eval-bench-") as tmp:
            db = open_db(Path(tmp) / "bench.db")
            t = time.perf_counter()
            res = bench_baseline(db, model, tok, args.model, args.limit, args.k, args.max_tokens,
                                 args.temperature, args.batch)
            print(f"baseline: {args.model}, first {args.limit} problems per set, k={args.k}, "
                  f"T={args.temperature}, top-p 1.0, max {args.max_tokens} new tokens, seed 0 "
                  f"({time.perf_counter() - t:.0f} s)")
            print("| set | problems | mean@k ± se | pass@k | maj@k | mean tokens | truncated | no answer | problems/s |")
            print("|---|---|---|---|---|---|---|---|---|")
            for m in res:
                print(f"| {m['set_name']} | {m['n_problems']} | {m['mean_at_k']:.1%} ± {m['stderr'] or 0:.1%} | "
                      f"{m['pass_at_k']:.1%} | {m['maj_at_k']:.1%} | {m['completion_tokens_mean']:.0f} | "
                      f"{m['truncation_rate']:.0%} | {m['unextracted_rate']:.0%} | {m['problems_per_s']:.3f} |")
            db.close()


if __name__ == "__main__":  # required: the Grader's worker is spawned and re-imports this file
    main()
