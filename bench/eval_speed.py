"""Evaluation speed against training rollouts, per completion token (issue 13).

The embedded model as `gcpo eval --model smollm2-135m` loads it (bf16 where that is the fast
precision here), the first 32 SVAMP problems under the default prompt, at each --lengths:
- `eval greedy`: `evaluate_problems` (what `gcpo eval` runs: generation, grading, storing),
  k=1, temperature 0, 32 problems;
- `eval sampled`: the same with k=4, temperature 0.7, on 8 problems (32 rows);
- `rollouts`: `rollout.generate` as the trainer samples (4 problems x 8, temperature 1.0).
Prints one JSON line: seconds, completion tokens and tokens/s per (mode, length).

    python bench/eval_speed.py [--lengths 200,512]
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
    ap.add_argument("--lengths", default="200,512")
    args = ap.parse_args()
    import torch

    from gcpo_cli.evaluation import evaluate_problems
    from gcpo_cli.ingest import ingest_rows
    from gcpo_cli.model import load_for_inference
    from gcpo_cli.precision import detect
    from gcpo_cli.prompts import resolve
    from gcpo_cli.records import Sampling
    from gcpo_cli.rollout import generate
    from gcpo_cli import store
    from gcpo_cli.store import open_db

    torch.set_num_threads(os.cpu_count() or 1)
    rows = [json.loads(line) for line in open(REPO.parent / "shared" / "data" / "svamp" / "test.jsonl")][:32]
    out: dict = dict(machine=detect("cpu").describe(), threads=torch.get_num_threads(), results=[])
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "bench.db")
        ingest_rows(db, rows, "svamp32", problem="{Body} {Question}", answer="Answer")
        _, problems = store.set_problems(db, "svamp32")
        model, tok = load_for_inference("smollm2-135m")
        out["dtype"] = str(next(model.parameters()).dtype)
        generate(model, tok, [resolve().render(tok, problems[0].text)], Sampling(n=1, max_new_tokens=4))  # warm-up
        for length in [int(x) for x in args.lengths.split(",")]:
            for mode, subset, k, temp in (("eval greedy", problems, 1, 0.0), ("eval sampled", problems[:8], 4, 0.7)):
                t = time.perf_counter()
                m = evaluate_problems(db, model, tok, subset, label=f"{mode}-{length}", set_name="svamp32", k=k,
                                      temperature=temp, max_new_tokens=length, progress=False)
                s = time.perf_counter() - t
                tokens = round(m["completion_tokens_mean"] * len(subset) * k)
                out["results"].append(dict(mode=mode, length=length, s=round(s, 2), tokens=tokens,
                                           tok_per_s=round(tokens / s, 1)))
            prompts = [resolve().render(tok, p.text) for p in problems[:4]]
            torch.manual_seed(0)
            t = time.perf_counter()
            comps = generate(model, tok, prompts, Sampling(n=8, max_new_tokens=length, temperature=1.0))
            s = time.perf_counter() - t
            tokens = sum(c.tokens for cs in comps for c in cs)
            out["results"].append(dict(mode="rollouts", length=length, s=round(s, 2), tokens=tokens,
                                       tok_per_s=round(tokens / s, 1)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
