"""GCPO, its ablations, GRPO and DAPO on the same seeds (issue 9): the smollm2-cpu recipe
(embedded SmolLM2-135M, 400 synthetic two-digit sums, 32 held out, greedy held-out accuracy
before and after) once per variant, on one database.

Fair in two ways: every variant runs the recipe's steps (equal steps), and since DAPO's dynamic
sampling generates up to (1 + max_resample_rounds) x the rollouts of a step, every variant that
generated more rollouts than GCPO is run again with as many steps as fit GCPO's rollout budget
(equal rollouts). Reports rollouts generated, wall time, optimiser updates, clipped fraction.

    python bench/compare_algorithms.py [--variants gcpo gcpo-token gcpo-no-golden grpo dapo]
                                       [-o key=value ...]   (e.g. -o mini_batches=2)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcpo_cli import recipe_load as recipes  # noqa: E402
from gcpo_cli import train as training  # noqa: E402
from gcpo_cli.store import open_db  # noqa: E402

VARIANTS = {
    "gcpo": [],
    "gcpo-token": ["ratio_level=token"],  # the paper's second ingredient removed
    "gcpo-no-golden": ["golden=off"],  # its first
    "grpo": ["algorithm=grpo"],
    "dapo": ["algorithm=dapo"],
}


def run(db, name: str, overrides: list[str], steps: int | None = None) -> dict:
    r = recipes.load("smollm2-cpu", [*VARIANTS[name], *overrides], {"steps": steps} if steps else None)
    t0 = time.perf_counter()
    s = training.train(db, r)
    wall = time.perf_counter() - t0
    rows = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [s["run_id"]]))
    per_step = [json.loads(x["metrics_json"])["groups"] * r.generation.samples_per_problem for x in rows]
    out = dict(variant=name, steps=r.steps, run_id=s["run_id"], before=s["before"]["mean_at_k"],
               after=s["after"]["mean_at_k"], wall_s=round(wall, 1), rollouts=sum(per_step),
               rollouts_per_step=per_step, reward_per_step=[round(x["reward_mean"], 3) for x in rows],
               steps_with_zero_grad=sum(1 for x in rows if not x["grad_norm"]),
               golden_injections=sum(int(x["golden_injections"]) for x in rows),
               optimizer_updates=sum(int(x["optimizer_updates"] or 0) for x in rows),
               clip_frac=sum(x["clip_frac"] or 0 for x in rows) / max(1, len(rows)))
    print(f"{name} ({r.steps} steps): held-out {out['before']:.1%} -> {out['after']:.1%}, {out['rollouts']} rollouts,"
          f" {wall:.0f}s", file=sys.stderr, flush=True)
    return out


def budget_steps(rollouts_per_step: list[int], budget: int) -> int:
    """How many of these steps fit `budget` rollouts (at least one)."""
    total, n = 0, 0
    for k in rollouts_per_step:
        if total + k > budget:
            break
        total, n = total + k, n + 1
    return max(1, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--db", default=None, help="database (default: $GCPO_HOME/gcpo.db)")
    ap.add_argument("-o", "--override", action="append", default=[])
    args = ap.parse_args()
    db = open_db(args.db)
    results = [run(db, v, args.override) for v in args.variants]
    budget = next((x["rollouts"] for x in results if x["variant"] == "gcpo"), None)
    for x in list(results):
        if budget and x["rollouts"] > budget:
            results.append(dict(run(db, x["variant"], args.override, budget_steps(x["rollouts_per_step"], budget)),
                                budget="gcpo's rollouts"))
    print("| variant | steps | rollouts | held-out before | after | gain (pts) | wall s | zero-gradient steps "
          "| golden injections | optimiser updates | clipped |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in results:
        label = x["variant"] + (" (equal rollouts)" if x.get("budget") else "")
        print(f"| {label} | {x['steps']} | {x['rollouts']} | {x['before']:.1%} | {x['after']:.1%} "
              f"| {100 * (x['after'] - x['before']):+.1f} | {x['wall_s']:.0f} | {x['steps_with_zero_grad']} "
              f"| {x['golden_injections']} | {x['optimizer_updates']} | {x['clip_frac']:.1%} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
