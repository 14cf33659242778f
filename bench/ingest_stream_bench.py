"""Streaming ingest of a large JSONL file: wall time and peak memory of `gcpo ingest`.

Usage:  .venv/bin/python bench/ingest_stream_bench.py [--mb 1000] [--distinct N] [--solution-every 10]
                                                      [--dir DIR] [--keep]

Writes a JSONL file of about --mb megabytes (10^6 bytes) of small synthetic rows into a temporary
folder (one line ~120 bytes: an id, a problem, an answer; every --solution-every'th row also a
short worked solution, which becomes a golden answer), then runs `python -m gcpo_cli ingest FILE
--set stream --json` on a fresh database in a subprocess and prints its wall time and the peak RSS
of that subprocess (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss, the largest child: the grader
worker too, if one starts). A tiny file is ingested first the same way, so the figures can be read
against the memory of an ingest process at rest (Python, the CLI's imports, SQLite). By default
every row is a new problem; --distinct N repeats N problems instead (each repeat is a problem of
its own too). Either way the rows are staged in SQLite's temporary tables a chunk at a time, so
peak RSS should stay near the tiny ingest's whatever --mb is (issue 27 item 11; on a 2-core AMD
EPYC, 33 MB / 251,857 rows: 293 MiB before staging, 145 MiB after, 134 MiB for the tiny file).

Prints one line per run, then one JSON line with everything (and the CPU model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, mb: float, distinct: int | None, solution_every: int) -> tuple[int, int]:
    """About `mb` * 10^6 bytes of JSONL; returns (rows, bytes)."""
    target, size, i = int(mb * 1_000_000), 0, 0
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as f:
        while size < target:
            k = i % distinct if distinct else i
            a, b = k % 100_003, k // 100_003 + 7
            line = (f'{{"id": "syn-{i}", "problem": "Problem {k}: what is {a} + {b}? Give the sum of the two whole '
                    f'numbers.", "answer": "{a + b}"')
            if solution_every and i % solution_every == 0:
                line += f', "solution": "{a} + {b} = \\\\boxed{{{a + b}}}"'
            line += "}\n"
            f.write(line)
            size += len(line)
            i += 1
    return i, size


def run_ingest(path: Path, db: Path, home: Path) -> dict:
    """`gcpo ingest` in a fresh child process; its wall time and peak RSS (this process has no
    other children, so RUSAGE_CHILDREN's maximum is this run's unless an earlier run was larger:
    runs go smallest first)."""
    env = dict(os.environ, GCPO_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "gcpo_cli", "ingest", str(path), "--set", "stream", "--db", str(db),
                          "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"ingest failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": round(wall, 2), "peak_rss_kb": usage.ru_maxrss, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(cpu, 1), "rows_read": report["rows_read"],
            "added": report["added"], "golden": f"{report['golden_verified']}/{report['golden_total']}",
            "ingest_seconds": round(report["seconds"], 2)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=1000, help="size of the generated file in MB (10^6 bytes)")
    ap.add_argument("--distinct", type=int, default=None, help="repeat this many problems (default: all distinct)")
    ap.add_argument("--solution-every", type=int, default=10, help="every Nth row has a worked solution (0: none)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the file and database (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the file and the database")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="gcpo-stream-", dir=args.dir))
    try:
        tiny = base / "tiny.jsonl"
        write_rows(tiny, 0.001, None, args.solution_every)
        at_rest = run_ingest(tiny, base / "tiny.db", base)
        print(f"tiny file ({tiny.stat().st_size} bytes): {at_rest['seconds']} s, peak RSS {at_rest['peak_rss_mb']} MB")

        path = base / "rows.jsonl"
        t0 = time.perf_counter()
        rows, size = write_rows(path, args.mb, args.distinct, args.solution_every)
        print(f"wrote {size / 1e6:.0f} MB, {rows:,} rows in {time.perf_counter() - t0:.1f} s")
        big = run_ingest(path, base / "rows.db", base)
        big["rss_over_file"] = round(big["peak_rss_kb"] * 1024 / size, 2)
        big["growth_over_file"] = round((big["peak_rss_kb"] - at_rest["peak_rss_kb"]) * 1024 / size, 2)
        print(f"ingest: {big['seconds']} s wall, {big['cpu_s']} s CPU ({rows / big['seconds']:,.0f} rows/s); peak RSS "
              f"{big['peak_rss_mb']} MiB = {big['rss_over_file']}x the file ({big['growth_over_file']}x above the "
              f"tiny ingest's); added {big['added']:,}, golden {big['golden']}")
        print(json.dumps({"bench": "ingest_stream", "file_mb": round(size / 1e6, 1), "rows": rows,
                          "distinct": args.distinct or rows, "solution_every": args.solution_every,
                          "tiny": at_rest, "ingest": big, "cpu": cpu_model(), "cores": os.cpu_count(),
                          "python": platform.python_version()}))
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            for p in sorted(base.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            base.rmdir()


if __name__ == "__main__":
    main()
