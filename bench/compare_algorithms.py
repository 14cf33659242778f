"""GCPO against GRPO and DAPO on the same seeds: the smollm2-cpu recipe (embedded SmolLM2-135M,
400 synthetic two-digit sums, 32 held out) once per algorithm, greedy held-out accuracy before
and after, wall time. Prints a table and one JSON line.

    python bench/compare_algorithms.py [--algorithms gcpo grpo dapo] [-o key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcpo_cli import recipe as recipes  # noqa: E402
from gcpo_cli import train as training  # noqa: E402
from gcpo_cli.store import open_db  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", nargs="+", default=["gcpo", "grpo", "dapo"])
    ap.add_argument("--db", default=None, help="database (default: $GCPO_HOME/gcpo.db)")
    ap.add_argument("-o", "--override", action="append", default=[])
    args = ap.parse_args()
    db = open_db(args.db)
    results = []
    for algo in args.algorithms:
        r = recipes.load("smollm2-cpu", [f"algorithm={algo}", *args.override])
        t0 = time.perf_counter()
        s = training.train(db, r)
        wall = time.perf_counter() - t0
        steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [s["run_id"]]))
        results.append(dict(
            algorithm=algo, run_id=s["run_id"], before=s["before"]["mean_at_k"], after=s["after"]["mean_at_k"],
            wall_s=round(wall, 1), reward_per_step=[round(x["reward_mean"], 3) for x in steps],
            steps_with_zero_grad=sum(1 for x in steps if not x["grad_norm"]),
            golden_injections=sum(int(x["golden_injections"]) for x in steps),
        ))
        print(f"{algo}: held-out {results[-1]['before']:.1%} -> {results[-1]['after']:.1%} in {wall:.0f}s",
              file=sys.stderr, flush=True)
    print("| algorithm | held-out before | after | gain (pts) | wall s | steps with zero gradient | GA injections |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for x in results:
        print(f"| {x['algorithm']} | {x['before']:.1%} | {x['after']:.1%} | {100 * (x['after'] - x['before']):+.1f} "
              f"| {x['wall_s']:.0f} | {x['steps_with_zero_grad']} | {x['golden_injections']} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
