"""How long `gcpo inspect` takes on a big history (issue 5).

Builds a database with 1,000,000 rollouts in all, 10,000 of them for one "hot" problem, then
times each view, in process (query, then render to an 80-column console or dump JSON) and end
to end (`gcpo inspect ...` as a subprocess, Python start-up and imports included).

Layout: 2,000 problems in set `bench` (70% with a verified golden answer); two runs, A with 750
steps and B with 500; each step samples the hot problem plus 99 others, G = 8 rollouts each:
1,250 steps x 100 groups x 8 = 1,000,000 rollouts, 1,250 x 8 = 10,000 for the hot problem.
Plus the steps table and two evaluations (2,000 problems x 4 samples each).

    .venv/bin/python bench/inspect_bench.py                 # build in a temp folder, time, delete
    .venv/bin/python bench/inspect_bench.py --db /tmp/b.db  # keep the database (reused if present)

Prints a table of figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from gcpo_cli.store import history as hist
from gcpo_cli import render, store
from gcpo_cli.store import open_db

G = 8
PER_STEP = 100
N_PROBLEMS = 2000
RUNS = (("01benchrunA00000", 750, "gcpo", "2025-01-01T00:00:00Z"),
        ("01benchrunB00000", 500, "grpo", "2025-01-02T00:00:00Z"))
HOT = "hot0000000000000"


def insert(conn, table: str, cols: str, rows) -> None:
    conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({','.join('?' * len(cols.split(',')))})", rows)


def build(path: Path) -> dict:
    t0 = time.perf_counter()
    db = open_db(path)  # the real schema, migrations and indexes included
    conn = db.conn
    conn.execute("PRAGMA synchronous = OFF")  # a throwaway database: speed over durability
    rng = random.Random(0)
    now = "2025-01-01T00:00:00Z"
    pids = [HOT] + [f"p{i:015d}" for i in range(1, N_PROBLEMS)]
    truth = {p: str(100 + i) for i, p in enumerate(pids)}
    skill = {p: rng.uniform(-3.0, 1.5) for p in pids}  # logit of being right at the start
    skill[HOT] = -2.5  # hard at first; the runs teach it
    has_ga = {p: rng.random() < 0.7 for p in pids}
    n = 0
    conn.execute("BEGIN")  # one transaction for the whole build: a commit per row would crawl
    insert(conn, "problems", "id, text, answer, metadata_json, created_at",
           [(p, f"Problem {i}: what is {i} + 100? Show your work.", truth[p], "{}", now)
            for i, p in enumerate(pids)])
    insert(conn, "problem_sets", "id, name, description, created_at",
           [(1, "bench", "inspect benchmark", now)])
    insert(conn, "set_problems", "set_id, problem_id, position, source_id",
           [(1, p, i, f"b-{i}") for i, p in enumerate(pids)])
    insert(conn, "golden_answers", "id, problem_id, text, final_answer, source_file, verified, created_at",
           [(f"ga-{p}", p, f"Worked solution. The answer is \\boxed{{{truth[p]}}}.", truth[p], "bench",
             1, now) for p in pids if has_ga[p]])
    for run_id, steps, algo, created in RUNS:
        insert(conn, "runs", "id, recipe, recipe_json, model, algorithm, set_name, seed, status,"
               " steps_planned, last_step, created_at, updated_at",
               [(run_id, "bench", json.dumps({"algorithm": algo, "group_size": G}), "bench-model", algo,
                 "bench", 0, "finished", steps, steps, created, created)])
        step_rows = []
        for step in range(1, steps + 1):
            rows = []
            groups = [HOT] + rng.sample(pids[1:], PER_STEP - 1)
            learned = 4.0 * step / steps  # the policy gets better over the run
            aw = inj = 0
            for p in groups:
                prob = 1 / (1 + math.exp(-(skill[p] + learned)))
                ok = [rng.random() < prob for _ in range(G)]
                golden = not any(ok) and has_ga[p]
                aw += not any(ok)
                inj += golden
                for i in range(G):
                    is_g = golden and i == G - 1  # the golden answer replaces the last wrong one
                    right = ok[i] or is_g
                    ans = truth[p] if right else str(int(truth[p]) + rng.choice((-10, -1, 1, 1, 2)))
                    rows.append((run_id, step, p, i, f"Adding step by step gives {ans}. "
                                 f"The answer is \\boxed{{{ans}}}.", ans, float(right), int(right),
                                 40 + i, 0, int(is_g), 0.0, 1.0))
            insert(conn, "rollouts", "run_id, step, problem_id, sample_index, completion, extracted_answer,"
                   " reward, correct, completion_tokens, truncated, is_golden, advantage, seq_ratio", rows)
            n += len(rows)
            step_rows.append((run_id, step, sum(r[6] for r in rows) / len(rows), aw / PER_STEP, inj,
                              40.0 + step / 100, 300.0 + rng.random() * 50, now))
        insert(conn, "steps", "run_id, step, reward_mean, all_wrong_frac, golden_injections, completion_tokens_mean,"
               " tokens_per_s, created_at", step_rows)
    for k, (run_id, steps, _, _) in enumerate(RUNS):
        eid = f"01benchevl{k}00000"
        insert(conn, "evaluations", "id, model, run_id, run_step, set_name, params_json, metrics_json,"
               " status, created_at, updated_at",
               [(eid, "bench-model", run_id, steps, "bench", "{}", "{}", "finished", now, now)])
        insert(conn, "eval_results", "evaluation_id, problem_id, sample_index, completion,"
               " extracted_answer, correct, completion_tokens, truncated, created_at",
               [(eid, p, i, "eval", truth[p], int(rng.random() < 0.5), 30, 0, now)
                for p in pids for i in range(4)])
    conn.execute("COMMIT")
    db.close()
    return {"rollouts": n, "build_s": round(time.perf_counter() - t0, 2),
            "db_mib": round(path.stat().st_size / 2**20, 1)}


def views(db) -> dict:
    run_a = RUNS[0][0]
    return {
        "problem": (lambda: hist.problem_history(db, store.resolve_problem(db, HOT)), render.render_problem),
        "run": (lambda: hist.run_history(db, store.resolve_run(db, run_a[:11])["id"]), render.render_run),
        "set": (lambda: hist.set_history(db, "bench"), render.render_set),
    }


def time_views(path: Path, repeat: int) -> dict:
    out = {}
    for name in ("problem", "run", "set"):
        for mode in ("render", "json"):
            times = []
            for _ in range(repeat):
                db = open_db(path)  # a fresh connection each time: nothing cached in SQLite
                query, draw = views(db)[name]
                t0 = time.perf_counter()
                data = query()
                if mode == "render":
                    draw(Console(file=io.StringIO(), width=80, no_color=True), data)
                else:
                    json.dumps(data, default=str)
                times.append(time.perf_counter() - t0)
                db.close()
            out[f"{name}_{mode}"] = {"first_s": round(times[0], 4),
                                     "median_s": round(statistics.median(times), 4)}
    return out


def time_cli(path: Path) -> dict:
    gcpo = Path(sys.executable).with_name("gcpo")
    cmds = {"problem": ["--problem", HOT[:6]], "run": ["--run", RUNS[0][0][:11]], "set": ["--set", "bench"]}
    out = {}
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    for name, args in cmds.items():
        for mode, extra in (("render", []), ("json", ["--json"])):
            t0 = time.perf_counter()
            subprocess.run([str(gcpo), "inspect", "--db", str(path), *args, *extra], check=True,
                           stdout=subprocess.DEVNULL, env=env)
            out[f"{name}_{mode}"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    subprocess.run([str(gcpo), "--version"], check=True, stdout=subprocess.DEVNULL, env=env)
    out["gcpo_version_startup"] = round(time.perf_counter() - t0, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, help="keep the database here (reused when it exists)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = None
    if args.db:
        path = args.db
    else:
        tmp = tempfile.TemporaryDirectory(prefix="inspect-bench-")
        path = Path(tmp.name) / "bench.db"
    built = build(path) if not path.exists() else {"rollouts": None, "build_s": None, "db_mib": None}
    db = open_db(path)
    count = "SELECT count(*) FROM rollouts WHERE {} = ?"
    counts = {"rollouts": db["rollouts"].count,
              "hot_rollouts": db.execute(count.format("problem_id"), [HOT]).fetchone()[0],
              "run_a_rollouts": db.execute(count.format("run_id"), [RUNS[0][0]]).fetchone()[0]}
    db.close()
    inproc = time_views(path, args.repeat)
    cli = time_cli(path)
    print(f"database: {counts['rollouts']:,} rollouts ({counts['hot_rollouts']:,} for the hot problem, "
          f"{counts['run_a_rollouts']:,} in run A), built in {built['build_s']} s, {built['db_mib']} MiB")
    print(f"{'view':<18}{'first (s)':>11}{'median (s)':>12}{'CLI end to end (s)':>20}")
    for k, v in inproc.items():
        print(f"{k:<18}{v['first_s']:>11.3f}{v['median_s']:>12.3f}{cli[k]:>20.3f}")
    print(f"gcpo --version (start-up alone): {cli['gcpo_version_startup']:.3f} s")
    print(json.dumps({"bench": "inspect", **counts, **built, "in_process": inproc, "cli_s": cli}))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
