"""The update alone at a given completion length: seconds and peak RSS (issue 23).

Builds one step's worth of rollouts (B problems x G samples, every completion exactly --length
tokens of text the embedded model wrote itself, advantages +-1 so every sequence is in the loss)
and runs `learner.update` on them as the trainer does (the recipe's autocast, micro-batch and
attention). Each length runs in its own process, so that `ru_maxrss` is that length's peak.

    python bench/update_memory.py --lengths 128,256,512 [--recipe smollm2-cpu] [-o key=value ...]

Prints one JSON line per length: update seconds (median of --repeat, after one warm-up), the
RSS before the update and the process's peak, both in MiB, and the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one(length: int, recipe: str, overrides: list[str], repeat: int) -> dict:
    import random

    import torch

    from gcpo_cli import learner
    from gcpo_cli import recipe_load as recipes
    from gcpo_cli import train as training
    from gcpo_cli.ingest import ingest_rows
    from gcpo_cli.precision import cpu_name
    from gcpo_cli.records import Rollout
    from gcpo_cli.store import open_db

    home = Path(tempfile.mkdtemp())
    db = open_db(home / "gcpo.db")
    rows = [dict(id=f"p{i}", problem=f"What is {10 + i} + {20 + i}?", answer=str(30 + 2 * i)) for i in range(8)]
    ingest_rows(db, rows, "bench")
    r = recipes.load(recipe, [*overrides, "set_name=bench", "eval.holdout=0"])
    ctx = training.setup(db, r, None, None, None, training.NullDisplay())
    B, G = r.generation.problems_per_step, r.generation.samples_per_problem
    rng = random.Random(0)
    vocab = [i for i in range(ctx.tok.vocab_size) if i not in {ctx.tok.eos_token_id, ctx.tok.pad_token_id}]

    def step_rollouts():
        out = []
        for b, p in enumerate(ctx.pool[:B]):
            prompt = training.prompt(ctx, p["id"])[1]
            for j in range(G):
                ids = [rng.choice(vocab) for _ in range(length)]
                out.append(Rollout(problem_id=p["id"], sample_index=j, completion="", extracted_answer=None,
                                   truncated=True, reward=float(j % 2), correct=bool(j % 2),
                                   advantage=1.0 if j % 2 else -1.0, prompt_ids=prompt, completion_ids=ids))
        return [(b, out[b * G:(b + 1) * G]) for b in range(B)]

    before = rss_mib()
    times = []
    for i in range(repeat + 1):
        kept = step_rollouts()
        t = time.perf_counter()
        stats = learner.update(ctx.policy, kept, r)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t)
    return dict(length=length, B=B, G=G, micro_batch=r.optimizer.micro_batch, update_s=round(statistics.median(times), 2),
                rss_before_mib=round(before), peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                loss=stats.loss, threads=torch.get_num_threads(), cpu=cpu_name(), torch=torch.__version__,
                overrides=overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="128,256,512")
    ap.add_argument("--recipe", default="smollm2-cpu")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("-o", dest="overrides", action="append", default=[])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.recipe, a.overrides, a.repeat)), flush=True)
        return
    for length in [int(x) for x in a.lengths.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(length), "--recipe", a.recipe, "--repeat", str(a.repeat)]
        cmd += [x for o in a.overrides for x in ("-o", o)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        print(out.stdout.strip() or json.dumps(dict(length=length, error=out.stderr.strip().splitlines()[-1:])),
              flush=True)


if __name__ == "__main__":
    main()
