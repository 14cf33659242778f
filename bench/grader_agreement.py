"""Grader agreement: gcpo's grader against plain math-verify on every stored golden answer.

    nice -n 10 .venv/bin/python bench/grader_agreement.py            # all of ../shared/data
    .venv/bin/python bench/grader_agreement.py --show 20 gsm8k/test.jsonl

Every JSONL file under ../shared/data is ingested (skip_invalid=True) into its own throw-away
database, so each set's golden answers are graded against that file's own answers. Each stored
golden answer (a worked solution) is then graded two ways:

- gcpo: what `gcpo eval --model golden` and training do: the final answer `extract_answer` finds
  in the solution (or, where it finds none, the ingest's own reading, e.g. MathQA's trailing
  "answer : d"), through `Grader.verdicts` (grading_target, then verify_answer in the worker).
- plain math-verify: `verify(parse("$" + gold + "$"), parse(whole golden text))`, math-verify's
  own extraction from the whole solution with its default settings (the gold answer wrapped in
  $...$ as math-verify's README does, since a bare LaTeX string is not parsed at all).

Per set: golden answers n, both sides' accept rates, agreement %, then the first --show
disagreements with each side's verdict, the gold answer, gcpo's extracted answer and what
math-verify read from the text. Files without worked solutions have no golden answers and
are listed with n = 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = next((p for p in ([Path(os.environ["GCPO_SHARED_DATA"])] if os.environ.get("GCPO_SHARED_DATA") else [])
             + [REPO.parent / "shared" / "data", REPO / "shared" / "data"] if p.exists()), None)

GOLDEN = """SELECT p.text AS problem, p.answer AS answer, ga.text AS text, ga.final_answer AS final_answer
            FROM golden_answers ga JOIN problems p ON p.id = ga.problem_id
            JOIN set_problems sp ON sp.problem_id = p.id JOIN problem_sets s ON s.id = sp.set_id
            WHERE s.name = ? ORDER BY sp.position, ga.id"""


def _short(s, n: int = 70) -> str:
    if s is None:
        return "(none)"
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def plain_verdict(gold: str, text: str) -> tuple[bool, str]:
    """Plain math-verify on the whole golden text: (verdict, what it read from the text)."""
    from math_verify import parse, verify

    try:
        g = parse(f"${gold}$", parsing_timeout=5)
        p = parse(text, parsing_timeout=5)
        read = p[1] if len(p) > 1 else (str(p[0]) if p else "")
        return bool(g and p and verify(g, p, timeout_seconds=5)), read
    except Exception as e:  # math-verify raises on some inputs despite raise_on_error=False
        return False, f"<{type(e).__name__}>"


def grade_set(rel: str, grader, show: int) -> dict:
    from gcpo_cli.answers import extract_answer
    from gcpo_cli.ingest import ingest_source
    from gcpo_cli.store import open_db

    name = rel.removesuffix(".jsonl").replace("/", "-")
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "agreement.db")
        ingest_source(db, str(DATA / rel), name, skip_invalid=True, grader=grader)
        rows = list(db.query(GOLDEN, [name]))
        db.close()
    t0 = time.perf_counter()
    extracted = [extract_answer(r["text"]) or r["final_answer"] for r in rows]
    ours = grader.verdicts([(r["problem"], r["answer"], ext, False) for r, ext in zip(rows, extracted)])
    t1 = time.perf_counter()
    plain = [plain_verdict(r["answer"], r["text"]) for r in rows]
    t2 = time.perf_counter()
    differ = [(r, ext, o, p, read) for r, ext, o, (p, read) in zip(rows, extracted, ours, plain) if o != p]
    n = len(rows)
    return dict(set=name, n=n, gcpo=sum(ours), plain=sum(p for p, _ in plain),
                agree=(n - len(differ)) / n if n else None, differ=differ, shown=differ[:show],
                gcpo_s=t1 - t0, plain_s=t2 - t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="JSONL files relative to ../shared/data (default: all)")
    ap.add_argument("--show", type=int, default=10, help="disagreements listed per set")
    args = ap.parse_args()
    if DATA is None:
        sys.exit("shared data folder not found (set GCPO_SHARED_DATA)")
    logging.disable(logging.WARNING)  # math-verify logs every time-out and unparsable string
    from gcpo_cli.grader import Grader

    files = args.files or sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*.jsonl"))
    t0 = time.perf_counter()
    results = []
    with Grader() as grader:
        for rel in files:
            results.append(grade_set(rel, grader, args.show))
            r = results[-1]
            print(f"  {r['set']}: {r['n']} golden answers, gcpo {r['gcpo_s']:.1f} s, plain {r['plain_s']:.1f} s",
                  file=sys.stderr)
    total = time.perf_counter() - t0

    print("| set | golden answers | gcpo accepts | plain math-verify accepts | agreement | disagreements |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        agree = f"{100 * r['agree']:.1f}%" if r["agree"] is not None else "–"
        print(f"| {r['set']} | {r['n']:,} | {r['gcpo']:,} | {r['plain']:,} | {agree} | {len(r['differ']):,} |")
    n = sum(r["n"] for r in results)
    d = sum(len(r["differ"]) for r in results)
    print(f"| **all** | {n:,} | {sum(r['gcpo'] for r in results):,} | {sum(r['plain'] for r in results):,} | "
          f"{100 * (n - d) / n:.1f}% | {d:,} |")
    print(f"\n{total:.0f} s in all (ingest included).")
    for r in results:
        if not r["shown"]:
            continue
        print(f"\n{r['set']}: first {len(r['shown'])} of {len(r['differ'])} disagreements")
        for row, ext, ours, plain_ok, read in r["shown"]:
            mark = {True: "✓", False: "✗"}
            print(f"  gcpo {mark[ours]}  plain {mark[plain_ok]}  gold {_short(row['answer'], 30)!r}"
                  f"  gcpo read {_short(ext, 40)!r}  math-verify read {_short(read, 40)!r}")


if __name__ == "__main__":
    main()
