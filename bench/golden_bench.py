"""Golden-answer generation rate (issue 15): the embedded teacher (smollm2-135m) generating golden
answers for 64 synthetic problems with k=4, as `gcpo golden generate` runs it (same code path:
golden.generate_golden, graded by the training grader, stored in a database). Prints one JSON
object: problems/s, samples/s, the teacher's success rate, coverage before and after, load time.

    .venv/bin/python bench/golden_bench.py                      # 64 problems, k=4, levels 1-3
    .venv/bin/python bench/golden_bench.py --problems 16 --k 2  # a quick look

Everything is written to a throw-away database; the model cache is the usual GCPO_HOME one (the
embedded model is materialised there once, outside the timing). The synthetic set is made with
--levels; its own worked solutions are dataset golden answers, so coverage "teacher" is the
figure that moves. Model loading and the grader worker's start are outside the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--levels", default="1-3", help="synthetic:arithmetic levels")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--prompt", default="boxed")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from gcpo_cli import golden as gold
    from gcpo_cli.grader import Grader
    from gcpo_cli.ingest import ensure_synthetic_set
    from gcpo_cli.precision import cpu_name
    from gcpo_cli.prompts import resolve
    from gcpo_cli.store import open_db

    t = time.perf_counter()
    teacher = gold.teacher(args.teacher, None)
    load_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="gcpo-golden-bench-") as tmp, Grader() as grader:
        db = open_db(Path(tmp) / "bench.db")
        name = ensure_synthetic_set(db, "bench", count=args.problems, seed=0, levels=args.levels, grader=grader)
        grader.grade([("1", "1"), ("1/2", "0.5")])  # start the worker outside the timing
        t = time.perf_counter()
        out = gold.generate_golden(db, name, teacher, k=args.k, temperature=args.temperature,
                                   max_new_tokens=args.max_new_tokens, seed=0, prompt=resolve(args.prompt),
                                   batch_size=args.batch_size, progress=sys.stderr.isatty(), grader=grader)
        seconds = time.perf_counter() - t
        db.close()
    print(json.dumps(dict(
        bench="golden_generate", teacher=args.teacher, problems=out["problems"], k=args.k, levels=args.levels,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, batch_size=args.batch_size,
        prompt=args.prompt, seconds=round(seconds, 2), problems_per_s=round(out["problems"] / seconds, 4),
        samples_per_s=round(out["samples"] / seconds, 3), teacher_success_rate=out["success_rate"],
        problems_solved=out["problems_solved"], candidates=out["candidates"],
        correct_per_problem=out["correct_per_problem"], coverage_before=out["coverage_before"],
        coverage_after=out["coverage_after"], load_s=round(load_s, 2),
        machine=f"{cpu_name()}, {os.cpu_count()} CPUs",
        torch=torch.__version__, threads=torch.get_num_threads()), indent=2))


if __name__ == "__main__":  # required: the Grader's worker is spawned and re-imports this file
    main()
