"""Ingest throughput: every file in ../shared/data into a fresh temporary database.

Usage:  .venv/bin/python bench/ingest_bench.py [DATA_DIR]

Each file goes into its own set through the same code as `gcpo ingest` (read, detect, validate,
grade golden answers with math-verify, one transaction), with skip_invalid=True so that the two
MATH-train files with a few answerless rows count too. One Grader (one math-verify worker) serves
all files, as in a long-lived process. Prints a line per file, then one JSON line with the totals.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from gcpo_cli.grader import Grader
from gcpo_cli.store import open_db
from gcpo_cli.ingest import ingest_source

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA
    files = sorted(data.glob("*/*.jsonl"))
    if not files:
        sys.exit(f"no .jsonl files under {data}")
    per_file = []
    with tempfile.TemporaryDirectory() as tmp, Grader() as grader:
        db = open_db(Path(tmp) / "bench.db")
        t_all = time.perf_counter()
        for f in files:
            name = f"{f.parent.name}-{f.stem}"
            t0 = time.perf_counter()
            r = ingest_source(db, str(f), name, skip_invalid=True, grader=grader)
            dt = time.perf_counter() - t0
            per_file.append({"file": f"{f.parent.name}/{f.name}", "rows": r.rows_read, "added": r.added,
                             "rejected": r.rejected, "golden": f"{r.golden_verified}/{r.golden_total}",
                             "seconds": round(dt, 3), "rows_per_s": round(r.rows_read / dt)})
            print(f"{per_file[-1]['file']:<45} {r.rows_read:>6} rows {dt:7.3f} s "
                  f"{r.rows_read / dt:>9.0f} rows/s  golden {r.golden_verified}/{r.golden_total}")
        total_s = time.perf_counter() - t_all
        problems = db.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
        db.close()
    rows = sum(p["rows"] for p in per_file)
    print(json.dumps({"bench": "ingest", "files": len(files), "rows": rows, "problems": problems,
                      "seconds": round(total_s, 3), "rows_per_s": round(rows / total_s),
                      "python": platform.python_version(), "per_file": per_file}))


if __name__ == "__main__":
    main()
