"""CPU reference configuration for one GCPO training step, the peer of ../shared/bench's TRL run.

SmolLM2-135M-Instruct (embedded GGUF, fp32), LoRA r16 alpha 32 on all linear layers, 4 problems
x 8 samples, 48 new tokens, temperature 1.0, lr 1e-5, two-digit sums drawn exactly as the TRL
benchmark draws them (random.Random(0), A and B = randint(10, 99)).

Prints one JSON line: median seconds per step (first step excluded), completion tokens per
second (generation and end to end), peak RSS in MiB (of the training, measured before the
generation-alone part), per-step timings, the run's machine and resolved precision, and the `hf`
engine's generation alone for the same 4 x 8 prompts at each of --gen-lengths new tokens (the
policy as at step 0, sampled as the step samples), so generation and update costs show apart.

    python bench/train_step.py --steps 5 [--algorithm gcpo|grpo|dapo] [--gen-lengths 48,256] [-o key=value ...]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcpo_cli import recipe_load as recipes  # noqa: E402
from gcpo_cli import train as training  # noqa: E402
from gcpo_cli.store import open_db  # noqa: E402
from gcpo_cli.ingest import ingest_rows  # noqa: E402


def trl_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append(dict(id=f"trl-{i}", problem=f"What is {a} + {b}?", answer=str(a + b),
                         solution=f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."))
    return rows


class Timer(training.NullDisplay):
    def __init__(self):
        self.t = time.perf_counter()
        self.steps = []

    def start(self, ctx, total, done):
        self.t = time.perf_counter()

    def step(self, step, m):
        now = time.perf_counter()
        self.steps.append(dict(step=step, s=now - self.t, gen_s=m["gen_s"], update_s=m["update_s"],
                               score_s=m["score_s"], tokens=round(m["completion_tokens_mean"] * 32),
                               reward=m["reward_mean"], sequences_in_loss=m["sequences_in_loss"],
                               sampler_logp_abs_diff=m.get("sampler_logp_abs_diff"), sampler_kl=m.get("sampler_kl")))
        self.t = now


def generation_alone(r, rows: list[dict], lengths: list[int]) -> dict:
    """The step's sampling (4 prompts x 8 samples, the recipe's temperature and sampler dtype),
    timed alone at each length: seconds, completion tokens (EOS ends rows early) and tokens/s."""
    import torch

    from gcpo_cli.model import MergedSampler, load_base
    from gcpo_cli.prompts import from_recipe
    from gcpo_cli.records import Sampling
    from gcpo_cli.rollout import generate

    model, tok, _ = load_base(r.model)
    sampler = MergedSampler(model, r.model.sampler_dtype, r.model.attention).model if r.model.quant == "none" else model
    prompts = [from_recipe(r).render(tok, row["problem"]) for row in rows]
    generate(sampler, tok, prompts, Sampling(n=r.generation.samples_per_problem, max_new_tokens=4))  # warm-up
    out = {}
    for length in lengths:
        torch.manual_seed(0)
        t = time.perf_counter()
        comps = generate(sampler, tok, prompts, Sampling(n=r.generation.samples_per_problem, max_new_tokens=length,
                                                         temperature=r.generation.temperature, top_p=r.generation.top_p),
                         seeds=[f"{r.seed}:1:{row['id']}" for row in rows])  # one stream per sample, as train.roll_out
        s = time.perf_counter() - t
        tokens = sum(c.tokens for cs in comps for c in cs)
        out[str(length)] = dict(s=round(s, 2), tokens=tokens, tok_per_s=round(tokens / s, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--algorithm", default="gcpo")
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--gen-lengths", default="48,256", help="comma-separated; empty: skip")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ.setdefault("GCPO_HOME", tmp)
        db = open_db(Path(tmp) / "bench.db")
        ingest_rows(db, trl_rows(4 * args.steps + 64), "trl-addition", source="bench:trl-addition")
        r = recipes.load("smollm2-cpu", [
            "set_name=trl-addition", f"algorithm={args.algorithm}", f"steps={args.steps}", "save_every=0",
            "lr=1e-5", "eval.holdout=0", "curriculum=uniform", *args.override])
        timer = Timer()
        t0 = time.perf_counter()
        summary = training.train(db, r, display=timer)
        total = time.perf_counter() - t0
        environment = json.loads(db["runs"].get(summary["run_id"])["environment_json"])
        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        lengths = [int(x) for x in args.gen_lengths.split(",") if x]
        alone = generation_alone(r, trl_rows(4), lengths) if lengths else {}
    rest = timer.steps[1:] or timer.steps
    tokens = sum(s["tokens"] for s in rest)
    result = dict(
        algorithm=args.algorithm,
        median_step_s_excl_first=round(statistics.median(s["s"] for s in rest), 2),
        gen_completion_tok_per_s_excl_first=round(tokens / sum(s["gen_s"] for s in rest), 1),
        end_to_end_completion_tok_per_s_excl_first=round(tokens / sum(s["s"] for s in rest), 1),
        peak_rss_mib=peak,
        total_s_including_load=round(total, 1),
        generation_alone=alone,
        environment=environment,
        steps=[{k: (round(v, 5 if k.startswith("sampler") else 2) if isinstance(v, float) else v) for k, v in s.items()}
               for s in timer.steps],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
