"""Command: inspect. What happened to a problem, a run or a set, read from SQLite.

Reads only, so it never blocks the trainer: under WAL a reader sees the last committed step while
a step is being written. The queries live in store/history.py, the drawing in render.py and
plot.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.console import Console
from rich.prompt import Prompt

from . import render, store
from .cmd_common import RUN_HELP, SET_HELP, DbOpt, JsonOpt, make_app, open_for_reading, print_json
from .errors import GcpoError
from .store import history as hist
from .render import SafeConsole

app = make_app()

PAGE = 20


def _console() -> Console:
    # A console made per call rather than cli.console: it honours NO_COLOR and COLUMNS as they
    # are now (tests and wrappers set them after import), and keeps numbers unhighlighted.
    return SafeConsole(highlight=False)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


# Rich markup in the help ([bold]); cmd_common.reflow keeps the indented example lines apart.
HELP = (
    "Show what a problem went through, what a run learned, or how hard a set is.\n\n"
    "The problem view gives, per run, the pass count (k of G) at each appearance as a sparkline, "
    "where the golden answer was injected, when the problem graduated (first solved after failing) "
    "and where it regressed; then evaluation verdicts, the most common wrong answers, one wrong and "
    "the latest correct completion. On a terminal, with no target, a picker lets you choose a run "
    "and walk through its problems.\n\n"
    "[bold]Examples[/]\n"
    "  gcpo inspect --problem 3f9a                    # id prefix\n"
    "  gcpo inspect --problem \"train travels 60\"      # full-text search\n"
    "  gcpo inspect --problem 3f9a --run 01jq --full  # one run, every completion\n"
    "  gcpo inspect --run 01jq --plot run.png         # run curves, and a chart\n"
    "  gcpo inspect --set aime24 --json               # difficulty, for scripts\n"
    "  gcpo inspect                                   # picker, on a terminal"
)


@app.command("inspect", help=HELP)
def inspect_cmd(
    problem: Annotated[Optional[str], typer.Option(
        "--problem", "-p", metavar="ID", help="Problem id, unambiguous id prefix, source id, or words from its text.",
        show_default=False)] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", "-r", metavar="RUN", help=RUN_HELP + " Alone: the run's view; with --problem or --set: "
        "limit them to this run.", show_default=False)] = None,
    set_name: Annotated[Optional[str], typer.Option(
        "--set", "-s", metavar="NAME", help=SET_HELP + " Its measured difficulty and the problems that most "
        "need golden answers.", show_default=False)] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="Show everything: every completion, every listed problem, the whole recipe.")] = False,
    json_out: JsonOpt = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="FILE.png", help="Also write a chart of the curves (with --problem or --run; "
        "needs matplotlib: pip install 'gcpo-cli\\[plot]').", show_default=False)] = None,
    db_path: DbOpt = None,
) -> None:
    if problem is not None and set_name is not None:
        raise GcpoError("pass --problem or --set, not both")
    if plot is not None and problem is None and run is None:
        raise GcpoError("--plot draws the curves of --problem or --run; pass one of them")
    if problem is None and run is None and set_name is None and json_out:
        raise GcpoError("--json needs a target: --problem ID, --run ID or --set NAME")
    if problem is None and run is None and set_name is None and not _interactive():
        raise GcpoError("pass --problem ID, --run ID or --set NAME (no terminal for the picker)")
    if plot is not None and not plot.parent.exists():
        raise GcpoError(f"cannot write {plot}: folder {plot.parent} does not exist")
    db = open_for_reading(db_path)
    try:
        console = _console()
        if problem is None and run is None and set_name is None:
            return _picker(db, console)
        with store.snapshot(db):
            run_id = store.resolve_run(db, run)["id"] if run is not None else None
            if problem is not None:
                data = hist.problem_history(db, store.resolve_problem(db, problem), run_id, full=full)
                draw, kind = render.render_problem, "problem"
            elif set_name is not None:
                data = hist.set_history(db, set_name, run_id, limit=None if (full or json_out) else 10)
                draw, kind = render.render_set, "set"
            else:
                data = hist.run_history(db, run_id)
                draw, kind = render.render_run, "run"
        if plot is not None:
            from .plot import plot as draw_plot

            draw_plot(kind, data, plot)
        if json_out:
            print_json(data)
        else:
            draw(console, data, full=full)
        if plot is not None:
            (SafeConsole(stderr=True) if json_out else console).print(f"wrote {plot}", markup=False)
    finally:
        db.close()


# ----------------------------------------------------------------------------- picker
def _ask(console: Console, prompt: str) -> Optional[str]:
    try:
        return Prompt.ask(prompt, console=console).strip()
    except (EOFError, KeyboardInterrupt):
        console.print()
        return None


def _picker(db, console: Console) -> None:
    """Choose a run, then walk its problems (n/p/number/id) without retyping ids."""
    runs = store.list_runs(db)
    if not runs:
        raise GcpoError("no runs recorded yet; pass --problem ID or --set NAME")
    while True:
        console.print("Runs, newest first:")
        _run_list(console, runs)
        ans = _ask(console, "Run (number or id prefix, q quits)")
        if ans is None or ans.lower() == "q":
            return
        if not ans:
            continue
        try:
            if ans.isdigit() and 1 <= int(ans) <= len(runs):
                run_id = runs[int(ans) - 1]["id"]
            else:
                run_id = store.resolve_run(db, ans)["id"]
        except GcpoError as e:
            console.print(f"error: {escape(str(e))}")
            continue
        if _browse_run(db, console, run_id) == "quit":
            return


def _browse_run(db, console: Console, run_id: str) -> str:
    with store.snapshot(db):
        rh = hist.run_history(db, run_id)
    story = _run_stories(rh["problems"])
    order = _browse_order(rh["problems"], story)
    render.render_run(console, rh, limit=5)
    if not order:
        console.print("this run has no rollouts yet")
        return "runs"
    idx: Optional[int] = None
    page = _show_page(db, console, run_id, order, story, 0)
    while True:
        ans = _ask(console, "Problem (n next, p previous, number, id or words, l list, r runs, q)")
        if ans is None or ans.lower() == "q":
            return "quit"
        low = ans.lower()
        if low == "r":
            return "runs"
        if low == "l":
            page = _show_page(db, console, run_id, order, story, page)
            continue
        picked = _pick_index(db, console, ans, order, idx)
        if picked is None:
            continue
        idx = picked
        _show_problem(db, console, run_id, order, story, idx)


def _run_stories(ps: dict) -> dict[str, str]:
    """Returns per problem of the run a word on its story: solved, graduated @N, regressed xN..."""
    story: dict[str, str] = {}
    for pid in ps["solved_from_start"]:
        story[pid] = "solved"
    for a in ps["never_solved"]:
        story[a["problem_id"]] = "never solved"
    for a in ps["graduated"]:
        story[a["problem_id"]] = f"graduated @{a['graduated_step']}"
    for a in ps["regressed"]:
        story[a["problem_id"]] = f"regressed x{len(a['regressed_steps'])}"
    return story


def _browse_order(ps: dict, story: dict[str, str]) -> list[str]:
    """Returns the run's problem ids in the order the picker walks them."""
    # Most telling first: regressions, graduations, never solved, then the easy ones.
    return ([a["problem_id"] for a in ps["regressed"]]
            + [a["problem_id"] for a in ps["graduated"] if not a["regressed_steps"]]
            + [a["problem_id"] for a in ps["never_solved"]]
            + [p for p in ps["solved_from_start"] if not story[p].startswith("regressed")])


def _show_page(db, console: Console, run_id: str, order: list[str], story: dict[str, str],
               page: int) -> int:
    """Returns the page to show next (wrapping to 0) after printing page `page` of the problems."""
    ids = order[page * PAGE:(page + 1) * PAGE]
    texts = store.problem_texts(db, ids)
    console.print(f"Problems of run {run_id} ({len(order)}), page {page + 1}:", markup=False)
    _problem_list(console, [(page * PAGE + i + 1, p, story[p], texts.get(p, "")) for i, p in enumerate(ids)])
    return page + 1 if (page + 1) * PAGE < len(order) else 0


def _pick_index(db, console: Console, ans: str, order: list[str], idx: Optional[int]) -> Optional[int]:
    """Returns the index in `order` an answer picks; None when there is nothing more to show."""
    low = ans.lower()
    if low in ("n", ""):
        return 0 if idx is None else min(idx + 1, len(order) - 1)
    if low == "p":
        return 0 if idx is None else max(idx - 1, 0)
    if ans.isdigit() and 1 <= int(ans) <= len(order):
        return int(ans) - 1
    try:
        pid = store.resolve_problem(db, ans)
    except GcpoError as e:
        console.print(f"error: {e}")
        return None
    if pid not in order:
        console.print(f"{pid} was not sampled in this run; showing its history anyway", markup=False)
        with store.snapshot(db):
            h = hist.problem_history(db, pid)
        render.render_problem(console, h)
        return None
    return order.index(pid)


def _show_problem(db, console: Console, run_id: str, order: list[str], story: dict[str, str],
                  idx: int) -> None:
    """Returns nothing; prints the history, within the run, of the problem at `idx` of `order`."""
    pid = order[idx]
    console.rule(f"problem {idx + 1} of {len(order)} · {story[pid]}")
    with store.snapshot(db):
        h = hist.problem_history(db, pid, run_id)
    render.render_problem(console, h)


# ----------------------------------------------------------------------------- picker lists
def _run_list(console: Console, runs: list[dict]) -> None:
    t = render.CompactTable(">#", "run", "algorithm", ">step", "status", "set")
    for i, r in enumerate(runs, 1):
        t.add_row(str(i), r["id"], r["algorithm"] or "-",
                  f"{r['last_step'] if r['last_step'] is not None else '-'}/{r['steps_planned'] or '-'}",
                  r["status"] or "-", r["set_name"] or "-")
    console.print(t)


def _problem_list(console: Console, rows: list[tuple[int, str, str, str]]) -> None:
    t = render.CompactTable(">#", "problem", "story", "text")
    for i, pid, story, text in rows:
        t.add_row(str(i), render.short(pid, 16), story, render.one_line(text))
    console.print(t)
