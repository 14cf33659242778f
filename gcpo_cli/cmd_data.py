"""Commands: data (`ingest`, `sets`, `problems`)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.prompt import Confirm
from rich.table import Table

from . import ingest as ing
from . import store
from .cmd_common import (SET_HELP, DbOpt, JsonOpt, console, err_console, make_app, one_of, open_for_reading,
                         print_json)
from .errors import GcpoError
from .render import one_line

app = make_app()

WIDTH = 80  # summaries fit a classic terminal; --json has everything untruncated
LIST_MAX = 20  # mismatches / rejected rows shown in the table


def _one_line(value, width: int) -> str:
    return "-" if value is None else one_line(str(value), width)


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
    t.add_row("already present", str(r.present), "already in the set")
    if r.variants:
        t.add_row("same text, other answer", str(len(r.variants)), "each a problem of its own")
    t.add_row("golden answers verified", f"{r.golden_verified}/{r.golden_total}",
              f"{r.golden_verified / r.golden_total:.0%}" if r.golden_total else "no worked solutions")
    if r.solution_lists:
        t.add_row("solutions from lists", str(r.solution_lists), "first non-empty item of each list")
    if r.golden_completed:  # ingest.py: a solution that states no final answer, completed with the row's
        t.add_row("final answers added", str(r.golden_completed), "solution + the row's final answer")
    t.add_row("rows rejected", str(r.rejected), "skipped (--skip-invalid)" if r.rejected else "")
    console.print(t)
    _listing("Golden answers that did not verify (kept, marked unverified)",
             [("where", 10), ("answer", 25), ("golden final answer", 39)],
             [(m["where"], m["answer"], m["golden"]) for m in r.mismatches])
    _listing("Rejected rows", [("where", 12), ("reason", 64)],
             [(x["where"], x["reason"]) for x in r.rejects])
    _listing("Same text as another problem, another answer (each its own problem)",
             [("where", 10), ("answer", 31), ("other problem's answer", 33)],
             [(v["where"], v["answer"], v["other_answer"]) for v in r.variants])


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


# Long only in its signature: most of its lines declare Typer options.
@app.command("ingest")
def ingest_cmd(
    source: Annotated[str, typer.Argument(
        help="A .jsonl/.json/.csv/.parquet file, a folder saved by datasets, hf:ORG/NAME, "
             "or synthetic:arithmetic.", show_default=False, metavar="SOURCE")],
    set_name: Annotated[Optional[str], typer.Option(
        "--set", "-s", metavar="NAME", help="Problem set to add the rows to (created if new).",
        show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option(
        metavar="NAME", help="Split of a hub dataset or datasets folder.")] = None,
    subset: Annotated[Optional[str], typer.Option(metavar="NAME", help="Subset (config) of a hub dataset.")] = None,
    problem: Annotated[Optional[str], typer.Option(
        metavar="FIELD", help='Problem field, or a template of fields: "{Body} {Question}".')] = None,
    solution: Annotated[Optional[str], typer.Option(
        metavar="FIELD", help="Worked-solution field (becomes the golden answer; a list: its first non-empty item); "
             "'none' for none.")] = None,
    answer: Annotated[Optional[str], typer.Option(
        metavar="FIELD", help="Final-answer field (default: detected; else the solution's last \\boxed{}).")] = None,
    id_: Annotated[Optional[str], typer.Option(
        "--id", metavar="FIELD", help="Field with the source's own problem id.")] = None,
    count: Annotated[int, typer.Option(metavar="N", help="synthetic: number of problems.", min=1)] = 200,
    seed: Annotated[int, typer.Option(metavar="N", help="synthetic: random seed.")] = 0,
    levels: Annotated[str, typer.Option(
        metavar="LEVELS", help='synthetic: difficulty levels, e.g. "2" or "1-3".')] = "1-5",
    max_field_bytes: Annotated[Optional[int], typer.Option(
        metavar="BYTES", help="Largest text field accepted, in bytes (default: GCPO_MAX_FIELD_BYTES or 1 MiB).", min=1,
        show_default=False)] = None,
    max_input_bytes: Annotated[Optional[int], typer.Option(
        metavar="BYTES", help="Largest input accepted, in bytes (default: GCPO_MAX_INPUT_BYTES or 2 GiB).", min=1,
        show_default=False)] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Write the valid rows and report each skipped one.")] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Accept the detected fields without asking.")] = False,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    old_name: Annotated[Optional[str], typer.Option("--name", "-n", hidden=True)] = None,
) -> None:
    """Add problems to a set from a file, a datasets folder, the hub or a generator.

    Finds the problem, worked solution and final answer on its own (flags override; on a terminal
    it asks when unsure), checks each worked solution's final answer against the answer with
    math-verify, and writes everything in one transaction. Every distinct row is a problem: rows
    with the same text and another answer are kept apart, and so are repeated rows (benchmarks
    count them). A solution given as a list gives its first non-empty item as the golden answer.
    Re-ingesting the same source is a no-op; a problem in two sets is stored once.

    Example: gcpo ingest data/gsm8k/test.jsonl --set gsm8k-test
    """
    name = one_of(set_name, old_name, "--set")
    if name is None:
        raise GcpoError("name the problem set to add to: --set NAME")
    store.require_set_name(name)
    loaded = ing.load_source(source, split=split, subset=subset, count=count, seed=seed, levels=levels,
                             max_field_bytes=max_field_bytes, max_input_bytes=max_input_bytes)
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
    database = store.open_db(db)
    try:
        report = ing.ingest_loaded(database, loaded, name, mapping=mapping, skip_invalid=skip_invalid,
                                   **overrides)
    finally:
        database.close()
    if json_out:
        print_json(report.to_dict())
    else:
        _print_report(report)


@app.command("sets")
def sets_cmd(json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """List problem sets with their size, golden-answer coverage and verified share.

    Golden: share of problems with a golden answer. Verified: share of those whose golden answer's
    final answer matched the problem's answer. Teacher: share of problems with a verified golden
    answer from gcpo golden (generated or imported). --json gives "coverage": problems with a
    verified golden answer from the dataset, a teacher, and either, as gcpo golden report counts
    them.

    Example: gcpo sets --json
    """
    database = open_for_reading(db)
    rows = store.list_sets(database)
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
    t.add_column("teacher", justify="right")
    t.add_column("created", no_wrap=True)
    for r in rows:
        teacher = r["coverage"]["teacher"]
        t.add_row(escape(r["name"]), str(r["problems"]), f"{r['golden_coverage']:.0%}",
                  f"{r['verified_share']:.0%}" if r["with_golden"] else "-",
                  f"{teacher / r['problems']:.0%}" if teacher and r["problems"] else "-", r["created_at"][:10])
    console.print(t)


@app.command("problems")
def problems_cmd(
    set_name: Annotated[str, typer.Option("--set", "-s", metavar="NAME", help=SET_HELP, show_default=False)],
    search: Annotated[Optional[str], typer.Option(
        metavar="WORDS", help="Full-text search in the problem text.")] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="Most problems to show.", min=1, max=1_000_000)] = 20,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List a set's problems: id, text preview, answer and golden-answer status.

    Golden status: verified (a worked solution whose final answer matches), unverified (one that
    does not), or none. --json rows carry the full text, answer and metadata.

    Example: gcpo problems --set gsm8k-test --search "ducks eggs" --limit 5
    """
    if search is not None and not search.strip():
        raise GcpoError("--search needs some words")
    database = open_for_reading(db)
    rows = [dict(r, metadata=store.loads(r.pop("metadata_json")) or {})
            for r in store.list_problems(database, set_name, search, limit)]
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
