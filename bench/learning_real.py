"""Learning on real problems (issue 22): base, GCPO, GRPO and DAPO (also DAPO at GCPO's rollout
budget) over several seeds, each trained by the same recipe and evaluated on the same problems.

    python bench/learning_real.py --recipe smollm2-gsm8k --seeds 0,1,2 --sets gsm8k,svamp,mawps \
        --limit 500 --out bench/learning_real.json [-o key=value ...]

Every training and evaluation goes through the `gcpo` command, as a user runs it, against one
database (GCPO_HOME). Results land in --out after every run, and a run already there is skipped,
so an interrupted benchmark resumes. The report (printed, and --table FILE as markdown) gives per
set: mean accuracy +- standard error across seeds, the gain over base, and GCPO against GRPO as a
paired sign-flip permutation test on per-problem accuracy (each problem's mean over seeds), with
its two-sided p-value; and per algorithm, the per-step share of all-wrong groups and the golden
injections, so a reader sees why each learns or not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gcpo(*args: str) -> dict:
    """Run the CLI with --json and return its JSON (a failure stops the benchmark)."""
    cmd = [sys.executable, "-m", "gcpo_cli", *args, "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    data = json.loads(out.stdout[out.stdout.index("{"):])
    data["_wall_s"] = round(time.perf_counter() - t, 1)
    return data


def evaluate(target: list[str], sets: list[str], limits: dict[str, int], max_new_tokens: int) -> dict:
    """{set: {problem_id: correct 0/1}, "_metrics": {set: metrics}} for a model or a run."""
    out: dict = {"_metrics": {}, "_wall_s": 0.0}
    results = []
    for limit in sorted(set(limits.values())):  # one `gcpo eval` per distinct limit
        chosen = [s for s in sets if limits[s] == limit]
        res = gcpo("eval", *target, *[x for s in chosen for x in ("--set", s)], "--limit", str(limit),
                   "--max-new-tokens", str(max_new_tokens), "--batch-size", "64")
        out["_wall_s"] += res["_wall_s"]
        results += res["results"][0]["sets"]
    for s in results:
        out["_metrics"][s["set_name"]] = {k: s.get(k) for k in ("mean_at_k", "stderr", "n_problems",
                                                                  "truncation_rate", "unextracted_rate",
                                                                  "completion_tokens_mean")}
        exported = subprocess.run([sys.executable, "-m", "gcpo_cli", "eval", "--evaluation", s["evaluation_id"],
                                   "--export", "/dev/stdout"], capture_output=True, text=True, cwd=ROOT).stdout
        out[s["set_name"]] = {json.loads(line)["problem_id"]: int(json.loads(line)["correct"])
                              for line in exported.splitlines() if line.startswith("{")}
    return out


def steps_of(run_id: str) -> list[dict]:
    return gcpo("inspect", "--run", run_id)["steps"]


def mean_se(xs: list[float]) -> tuple[float, float | None]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def paired_p(a: dict[str, list[int]], b: dict[str, list[int]], n: int = 20000, seed: int = 0) -> tuple[float, float]:
    """(mean per-problem difference a - b, two-sided p-value) by a sign-flip permutation test over
    problems, each problem's score its accuracy averaged over seeds."""
    d = [sum(a[p]) / len(a[p]) - sum(b[p]) / len(b[p]) for p in a if p in b]
    obs = abs(sum(d))
    rng = random.Random(seed)
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= obs - 1e-12 for _ in range(n))
    return sum(d) / len(d), (hits + 1) / (n + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="smollm2-gsm8k")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--algorithms", default="gcpo,grpo,dapo,dapo-equal")
    ap.add_argument("--sets", default="gsm8k,svamp,mawps")
    ap.add_argument("--limit", type=int, default=500, help="problems per set (the first N)")
    ap.add_argument("--limits", default=None, help="per set, e.g. gsm8k=100,svamp=100,mawps=500 (else --limit)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", default="bench/learning_real.json")
    ap.add_argument("--table", default=None)
    ap.add_argument("-o", dest="overrides", action="append", default=[])
    a = ap.parse_args()
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    sets, seeds = a.sets.split(","), [int(s) for s in a.seeds.split(",")]
    limits = {s: a.limit for s in sets}
    limits.update({k: int(v) for k, v in (x.split("=") for x in (a.limits.split(",") if a.limits else []))})

    def save():
        out.write_text(json.dumps(results, indent=1))

    if "base" not in results:
        print("evaluating the base model", flush=True)
        results["base"] = evaluate(["--model", "smollm2-135m"], sets, limits, a.max_new_tokens)
        save()
    for seed in seeds:  # seed-major: every algorithm of a seed before the next seed's, so a cut-short
        for algorithm in a.algorithms.split(","):  # benchmark still has paired runs
            key = f"{algorithm}/{seed}"
            if key in results:
                continue
            overrides = [*a.overrides, f"seed={seed}", "eval.benchmarks=[]"]
            if algorithm == "dapo-equal":  # DAPO with GCPO's rollouts: fewer steps
                gcpo_rollouts = results[f"gcpo/{seed}"]["rollouts"]
                per_step = results[f"dapo/{seed}"]["rollouts"] / results[f"dapo/{seed}"]["steps"]
                overrides += ["algorithm=dapo", f"steps={max(1, round(gcpo_rollouts / per_step))}"]
            else:
                overrides += [f"algorithm={algorithm}"]
            print(f"training {key}", flush=True)
            run = gcpo("train", "--recipe", a.recipe, *[x for o in overrides for x in ("-o", o)])
            steps = steps_of(run["run_id"])
            rollouts = sum(s.get("groups", 0) for s in steps)  # groups sampled; x G below
            print(f"evaluating {key} (run {run['run_id']})", flush=True)
            ev = evaluate(["--run", run["run_id"]], sets, limits, a.max_new_tokens)
            results[key] = dict(run_id=run["run_id"], train_wall_s=run["_wall_s"], steps=len(steps),
                                rollouts=rollouts, eval=ev,
                                all_wrong_frac=[s.get("all_wrong_frac") for s in steps],
                                golden_injections=[s.get("golden_injections") for s in steps],
                                reward_mean=[s.get("reward_mean") for s in steps])
            save()
    report(results, sets, seeds, a.table)


def report(results: dict, sets: list[str], seeds: list[int], table: str | None) -> None:
    base = results["base"]
    lines = ["| algorithm | " + " | ".join(f"{s} (n={len(base[s])})" for s in sets)
             + " | all-wrong groups (mean over steps) | golden injections / step | steps | train wall s |",
             "|---|" + "---:|" * len(sets) + "---:|---:|---:|---:|"]
    lines.append("| base | " + " | ".join(f"{100 * sum(base[s].values()) / len(base[s]):.1f}%" for s in sets)
                 + " | | | | |")
    per_problem: dict = {}
    algos = sorted({k.split("/")[0] for k in results if "/" in k}, key=["gcpo", "grpo", "dapo", "dapo-equal"].index)
    for algo in algos:
        runs = [results[f"{algo}/{s}"] for s in seeds if f"{algo}/{s}" in results]
        cells = []
        for s in sets:
            accs = [100 * sum(r["eval"][s].values()) / len(r["eval"][s]) for r in runs]
            m, se = mean_se(accs)
            gain = m - 100 * sum(base[s].values()) / len(base[s])
            cells.append(f"{m:.1f} +- {se:.1f} ({gain:+.1f}) [{', '.join(f'{x:.1f}' for x in accs)}]"
                         if se is not None else f"{m:.1f} ({gain:+.1f})")
            per_problem.setdefault(algo, {})[s] = {p: [r["eval"][s][p] for r in runs] for p in base[s]}
        aw = [x for r in runs for x in r["all_wrong_frac"] if x is not None]
        gi = [x for r in runs for x in r["golden_injections"] if x is not None]
        lines.append(f"| {algo} ({len(runs)} seeds) | " + " | ".join(cells)
                     + f" | {100 * sum(aw) / max(1, len(aw)):.0f}% | {sum(gi) / max(1, len(gi)):.2f}"
                     + f" | {runs[0]['steps'] if runs else '-'} | {sum(r['train_wall_s'] for r in runs) / max(1, len(runs)):.0f} |")
    if "gcpo" in per_problem and "grpo" in per_problem:
        lines.append("")
        lines.append("GCPO - GRPO, paired over problems (per-problem accuracy averaged over seeds), sign-flip "
                     "permutation test:")
        for s in sets:
            diff, p = paired_p(per_problem["gcpo"][s], per_problem["grpo"][s])
            lines.append(f"- {s}: {100 * diff:+.1f} points, p = {p:.3f}")
    text = "\n".join(lines)
    print(text)
    if table:
        Path(table).write_text(text + "\n")


if __name__ == "__main__":
    os.environ.setdefault("GCPO_HOME", str(Path.home() / ".local/share/gcpo"))
    main()
