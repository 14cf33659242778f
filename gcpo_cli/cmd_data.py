"""Commands: data (`ingest`, `sets`, `problems`)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.prompt import Confirm
from rich.table import Table

from . import ingest as ing
from .cli import DbOpt, GcpoError, JsonOpt, app, console, err_console, print_json
from .db import open_db

WIDTH = 80  # summaries fit a classic terminal; --json has everything untruncated
LIST_MAX = 20  # mismatches / rejected rows shown in the table


def _one_line(value, width: int) -> str:
    text = " ".join(str(value).split()) if value is not None else "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _kv_table(title: str, *extra: str, justify: str = "right") -> Table:
    t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column(justify=justify)
    for _ in extra:
        t.add_column()
    return t


def _mapping_line(m: dict) -> str:
    parts = [f"problem={m['problem']}", f"answer={m['answer']}", f"solution={m['solution'] or '-'}",
             f"id={m['id'] or '-'}"]
    return ", ".join(parts)


def _interactive() -> bool:
    """A person at a terminal who can answer a question (never true under CI or a pipe)."""
    return sys.stdin.isatty()


def _confirm_mapping(mapping, row: dict, label: str) -> bool:
    """Show the detected fields and one sample row; ask on the terminal."""
    why = escape("; ".join(mapping.unsure))
    err_console.print(f"[bold]Detected fields for {escape(label)}[/] (unsure: {why})")
    t = _kv_table("", justify="left")
    for k, v in mapping.describe().items():
        if k != "unsure":
            t.add_row(k, escape(str(v or "-")))
    err_console.print(t)
    sample = Table(title="Sample row", title_justify="left", show_header=False, box=None, padding=(0, 2))
    sample.add_column(style="bold")
    sample.add_column(overflow="ellipsis", no_wrap=True, max_width=WIDTH - 20)
    for k, v in row.items():
        sample.add_row(escape(str(k)), escape(_one_line(v, WIDTH - 20)))
    err_console.print(sample)
    return Confirm.ask("Use this mapping?", default=True, console=err_console)


def _print_report(r: ing.IngestReport) -> None:
    if r.noop:
        console.print(f"Already ingested into set [bold]{escape(r.set_name)}[/]: {escape(r.source)}; "
                      "nothing to do.")
        return
    console.print(f"Ingested [bold]{escape(_one_line(r.source, 50))}[/] "
                  f"into set [bold]{escape(r.set_name)}[/]")
    console.print(f"fields: {escape(_mapping_line(r.mapping))}", highlight=False)
    t = _kv_table("", "note")
    t.add_row("rows read", str(r.rows_read), "")
    t.add_row("added", str(r.added), f"{r.new_problems} new to the database")
    t.add_row("already present", str(r.present), "already in the set, or a repeat")
    t.add_row("golden answers verified", f"{r.golden_verified}/{r.golden_total}",
              f"{r.golden_verified / r.golden_total:.0%}" if r.golden_total else "no worked solutions")
    t.add_row("rows rejected", str(r.rejected), "skipped (--skip-invalid)" if r.rejected else "")
    console.print(t)
    _listing("Golden answers that did not verify (kept, marked unverified)",
             [("where", 10), ("answer", 25), ("golden final answer", 39)],
             [(m["where"], m["answer"], m["golden"]) for m in r.mismatches])
    _listing("Rejected rows", [("where", 12), ("reason", 64)],
             [(x["where"], x["reason"]) for x in r.rejects])
    _listing("Problems already stored with another answer (first answer kept)",
             [("where", 10), ("kept", 31), ("ignored", 33)],
             [(c["where"], c["kept"], c["ignored"]) for c in r.conflicts])


def _listing(title: str, columns: list[tuple[str, int]], rows: list[tuple]) -> None:
    if not rows:
        return
    t = Table(title=f"{title}: {len(rows)}", title_justify="left", box=None, padding=(0, 1),
              width=min(WIDTH, console.width))
    for name, width in columns:
        t.add_column(name, max_width=width, no_wrap=True, overflow="ellipsis")
    for row in rows[:LIST_MAX]:
        t.add_row(*(escape(_one_line(v, w)) for v, (_, w) in zip(row, columns)))
    console.print(t)
    if len(rows) > LIST_MAX:
        console.print(f"… and {len(rows) - LIST_MAX} more (--json lists them all)")


@app.command("ingest")
def ingest_cmd(
    source: Annotated[str, typer.Argument(
        help="A .jsonl/.json/.csv/.parquet file, a folder saved by datasets, hf:ORG/NAME, "
             "or synthetic:arithmetic.", show_default=False, metavar="SOURCE")],
    name: Annotated[str, typer.Option("--name", "-n", help="Problem set to add the rows to (created if new).",
                                      show_default=False)],
    split: Annotated[Optional[str], typer.Option(help="Split of a hub dataset or datasets folder.")] = None,
    subset: Annotated[Optional[str], typer.Option(help="Subset (config) of a hub dataset.")] = None,
    problem: Annotated[Optional[str], typer.Option(
        help='Problem field, or a template of fields: "{Body} {Question}".')] = None,
    solution: Annotated[Optional[str], typer.Option(
        help="Worked-solution field (becomes the golden answer); 'none' for none.")] = None,
    answer: Annotated[Optional[str], typer.Option(
        help="Final-answer field (default: detected; else the solution's last \\boxed{}).")] = None,
    id_: Annotated[Optional[str], typer.Option(
        "--id", help="Field with the source's own problem id.")] = None,
    count: Annotated[int, typer.Option(help="synthetic: number of problems.", min=1)] = 200,
    seed: Annotated[int, typer.Option(help="synthetic: random seed.")] = 0,
    levels: Annotated[str, typer.Option(help='synthetic: difficulty levels, e.g. "2" or "1-3".')] = "1-5",
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Write the valid rows and report each skipped one.")] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Accept the detected fields without asking.")] = False,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Add problems to a set from a file, a datasets folder, the hub or a generator.

    Finds the problem, worked solution and final answer on its own (flags override; on a terminal it asks when unsure), checks each worked solution's final answer against the answer with math-verify, and writes everything in one transaction. Re-ingesting the same source is a no-op; a problem in two sets is stored once.

    Example: gcpo ingest ../shared/data/gsm8k/test.jsonl --name gsm8k-test
    """
    loaded = ing.load_source(source, split=split, subset=subset, count=count, seed=seed, levels=levels)
    overrides = dict(problem=problem, solution=solution, answer=answer, id=id_)
    mapping = ing.detect(loaded, **overrides)
    if mapping.unsure and not yes:
        if _interactive():
            if not _confirm_mapping(mapping, loaded.rows[0], loaded.label):
                raise GcpoError("cancelled, nothing was written; name the fields with --problem, "
                                "--answer, --solution, --id")
        else:  # no one to ask: go on, but say what was assumed
            err_console.print(f"note: unsure field detection ({escape('; '.join(mapping.unsure))}); used "
                              f"{escape(_mapping_line(mapping.describe()))}. Flags override; --yes hides this.",
                              highlight=False)
    database = open_db(db)
    try:
        report = ing.ingest_loaded(database, loaded, name, mapping=mapping, skip_invalid=skip_invalid,
                                   **overrides)
    finally:
        database.close()
    if json_out:
        print_json(report.to_dict())
    else:
        _print_report(report)


def _set_id(database, name: str) -> int:
    row = database.execute("SELECT id FROM problem_sets WHERE name = ?", [name]).fetchone()
    if row:
        return row[0]
    known = [r[0] for r in database.execute("SELECT name FROM problem_sets ORDER BY name")]
    raise GcpoError(f"no problem set named {name!r}; "
                    + (f"known sets: {', '.join(known)}" if known else "none yet (gcpo ingest ... --name SET)"))


_SETS_SQL = """
SELECT s.name, s.created_at, COUNT(sp.problem_id) AS problems,
  COALESCE(SUM(g.problem_id IS NOT NULL), 0) AS with_golden,
  COALESCE(SUM(g.verified), 0) AS verified
FROM problem_sets s
LEFT JOIN set_problems sp ON sp.set_id = s.id
LEFT JOIN (SELECT problem_id, MAX(verified) AS verified FROM golden_answers GROUP BY problem_id) g
  ON g.problem_id = sp.problem_id
GROUP BY s.id ORDER BY s.name
"""


@app.command("sets")
def sets_cmd(json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """List problem sets with their size, golden-answer coverage and verified share.

    Golden: share of problems with a golden answer. Verified: share of those whose golden answer's final answer matched the problem's answer.

    Example: gcpo sets --json
    """
    database = open_db(db)
    rows = []
    for name, created, n, golden, verified in database.execute(_SETS_SQL).fetchall():
        sources = [r[0] for r in database.execute(
            "SELECT i.source FROM ingests i JOIN problem_sets s ON s.id = i.set_id WHERE s.name = ?"
            " ORDER BY i.id", [name])]
        rows.append({"name": name, "problems": n, "with_golden": golden, "verified": verified,
                     "golden_coverage": round(golden / n, 4) if n else 0.0,
                     "verified_share": round(verified / golden, 4) if golden else 0.0,
                     "sources": sources, "created_at": created})
    database.close()
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("No problem sets yet. Add one: gcpo ingest synthetic:arithmetic --name arith")
        return
    t = Table(box=None, padding=(0, 1), width=min(WIDTH, console.width))
    t.add_column("set", no_wrap=True, overflow="ellipsis", max_width=30)
    t.add_column("problems", justify="right")
    t.add_column("golden", justify="right")
    t.add_column("verified", justify="right")
    t.add_column("created", no_wrap=True)
    for r in rows:
        t.add_row(escape(r["name"]), str(r["problems"]), f"{r['golden_coverage']:.0%}",
                  f"{r['verified_share']:.0%}" if r["with_golden"] else "-", r["created_at"][:10])
    console.print(t)


@app.command("problems")
def problems_cmd(
    set_name: Annotated[str, typer.Option("--set", help="Problem set to list.", show_default=False)],
    search: Annotated[Optional[str], typer.Option(help="Full-text search in the problem text.")] = None,
    limit: Annotated[int, typer.Option(help="Most problems to show.", min=1)] = 20,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List a set's problems: id, text preview, answer and golden-answer status.

    Golden status: verified (a worked solution whose final answer matches), unverified (one that does not), or none. --json rows carry the full text, answer and metadata.

    Example: gcpo problems --set gsm8k-test --search "ducks eggs" --limit 5
    """
    database = open_db(db)
    set_id = _set_id(database, set_name)
    sql = ("SELECT p.id, sp.position, sp.source_id, p.text, p.answer, p.metadata_json,"
           " (SELECT MAX(g.verified) FROM golden_answers g WHERE g.problem_id = p.id)"
           " FROM set_problems sp JOIN problems p ON p.id = sp.problem_id")
    args: list = [set_id]
    if search is not None:
        if not search.strip():
            raise GcpoError("--search needs some words")
        sql += (" JOIN problems_fts f ON f.rowid = p.rowid WHERE sp.set_id = ? AND problems_fts MATCH ?"
                " ORDER BY f.rank LIMIT ?")
        args += [database.quote_fts(search), limit]
    else:
        sql += " WHERE sp.set_id = ? ORDER BY sp.position LIMIT ?"
        args.append(limit)
    status = {None: "none", 0: "unverified", 1: "verified"}
    rows = [{"id": pid, "position": pos, "source_id": sid, "text": text, "answer": ans,
             "golden": status[g], "metadata": json.loads(meta or "{}")}
            for pid, pos, sid, text, ans, meta, g in database.execute(sql, args).fetchall()]
    database.close()
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("No problems match." if search else "The set is empty.")
        return
    width = min(WIDTH, console.width)
    t = Table(box=None, padding=(0, 1), width=width)
    t.add_column("id", no_wrap=True, min_width=16)
    t.add_column("problem", no_wrap=True, overflow="ellipsis", ratio=1)
    t.add_column("answer", no_wrap=True, overflow="ellipsis", max_width=14)
    t.add_column("golden", no_wrap=True)
    for r in rows:
        t.add_row(r["id"], escape(_one_line(r["text"], width)), escape(_one_line(r["answer"], 14)),
                  r["golden"])
    console.print(t)
