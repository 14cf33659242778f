"""Commands: golden (`gcpo golden generate|import|list|show|report`); golden.py does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import golden as gold
from . import resumable, store
from .cmd_common import SET_HELP, DbOpt, JsonOpt, console, err_console, make_app, open_for_reading, print_json
from .errors import GcpoError
from .store.golden import STORED_ORIGINS
from .prompts import PRESETS
from .recipe import GOLDEN_ORIGINS
from .render import CompactTable, clean, heading, one_line, pct

app = make_app(
    name="golden",
    help=("Make, check and compare golden answers: generate them with a teacher (verified by the "
          "training grader), import them from a file, list them with their provenance and use, and "
          f"report what a recipe would inject. Recipe key golden_origin: {'|'.join(GOLDEN_ORIGINS)} "
          "chooses which ones training injects."),
    no_args_is_help=True,
)
ORIGIN_HELP = "Only golden answers of this origin: dataset (from ingest) or teacher (from gcpo golden)."
TOKENIZER_HELP = "Count tokens with this model's tokenizer (hub id, folder, .gguf, smollm2-135m, tiny)."


def _coverage_rows(before: dict, after: dict) -> list[tuple[str, str]]:
    n = after["problems"] or 1
    return [(f"coverage, {o}", f"{before[o]} -> {after[o]} of {after['problems']} ({after[o] / n:.0%})")
            for o in GOLDEN_ORIGINS]


def _facts(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=escape(clean(title)) or None, title_justify="left", title_style="bold", show_header=False, box=None,
              padding=(0, 2, 0, 0))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for name, value in rows:
        t.add_row(escape(clean(name)), escape(clean(value)))
    console.print(t)


# Long only in its signature: its lines declare Typer options; golden.generate_golden does the work.
@app.command("generate")
def generate_cmd(
    set_name: Annotated[str, typer.Option("--set", "-s", help=SET_HELP, show_default=False)],
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", "-t", help="Teacher model: hub id, folder, .gguf file or smollm2-135m (embedded). With "
                                "--teacher-server: the served model's name (default: the server's first).",
        show_default=False)] = None,
    teacher_server: Annotated[Optional[str], typer.Option(
        "--teacher-server", help="Sample from an OpenAI-compatible server instead (vllm serve, llama.cpp), "
                                 "e.g. http://127.0.0.1:8000.", show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", help="Solutions sampled per problem.", min=1)] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.", min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.", min=0.0, max=1.0)] = 1.0,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        "--max-new-tokens", help="Most new tokens per solution (a solution cut there is wrong).  [default: the "
                                 "recipe's, else 512]", min=1, show_default=False)] = None,
    recipe: Annotated[Optional[str], typer.Option(
        "--recipe", help="Take the prompt preset and max_new_tokens from this recipe (what training uses).",
        show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", help=f"Prompt preset: {', '.join(PRESETS)}.  [default: the recipe's, else boxed]",
        show_default=False)] = None,
    only_missing: Annotated[bool, typer.Option(
        "--only-missing", help="Only problems without a verified golden answer; the others are left alone.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="The first N problems of the set.", min=1,
                                                 show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences generated at once.", min=1)] = 32,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Sample k solutions per problem from a teacher, keep the ones the grader verifies.

    Each solution is graded against the problem's answer as training grades rollouts; the correct ones become candidate golden answers of origin teacher, with the teacher and its settings. Per problem the shortest verified one is active (what training injects under golden_origin teacher, or any where the dataset has none). An interrupted generation resumes when the same command is run again.

    Examples:

      gcpo golden generate --set aime24 --teacher Qwen/Qwen2.5-Math-7B-Instruct \\
          --k 8 --only-missing

      gcpo golden generate --set arith --teacher smollm2-135m --recipe smollm2-cpu

      gcpo golden generate --set dm --teacher-server http://127.0.0.1:8000 \\
          --max-new-tokens 2048
    """
    from .grader import Grader
    from .prompts import from_recipe
    from .prompts import resolve as resolve_prompt
    from .recipe_load import load as load_recipe

    r = load_recipe(recipe) if recipe else None
    chosen = resolve_prompt(prompt) if prompt else from_recipe(r) if r else PRESETS["boxed"]
    limit_tokens = max_new_tokens or (r.generation.max_new_tokens if r else 512)
    if k > 1 and temperature == 0:
        err_console.print(f"[yellow]note:[/] temperature 0 is greedy: the {k} samples of a problem are identical")
    database = store.open_db(db)
    store.resolve_set(database, set_name)  # an unknown set fails before a model loads
    t = gold.teacher(teacher, teacher_server)
    # Ctrl-C or SIGTERM: the generation is marked interrupted, one line says so (exit code 128 +
    # the signal's number), and the same command resumes it.
    with resumable.StopSignals() as stop, Grader() as grader:
        try:
            out = gold.generate_golden(database, set_name, t, k=k, temperature=temperature, top_p=top_p,
                                       max_new_tokens=limit_tokens, seed=seed, prompt=chosen,
                                       only_missing=only_missing, limit=limit, batch_size=batch_size,
                                       progress=not json_out, grader=grader, stop=stop)
        except resumable.Interrupted as e:
            err_console.print(escape(e.message), highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
    if json_out:
        print_json(out)
        return
    p = out["params"]
    per = ", ".join(f"{n} with {i}/{p['k']}" for i, n in enumerate(out["correct_per_problem"]) if n)
    _facts(f"Golden answers for {out['set_name']} from {out['teacher']} (k={p['k']}, temperature {p['temperature']},"
           f" max {p['max_new_tokens']} tokens, prompt {p['prompt']})", [
        ("problems tried", f"{out['problems']}" + (f" ({out['resumed']} in an earlier, interrupted run)"
                                                   if out["resumed"] else "")),
        ("teacher success", f"{out['correct']} of {out['samples']} samples ({pct(out['success_rate'])})"),
        ("problems solved", f"{out['problems_solved']} of {out['problems']} ({pct(out['solved_rate'])})"),
        ("problems, by correct", per or "-"),
        ("candidates stored", f"{out['candidates']} verified (generation {out['generation_id']})"),
        *_coverage_rows(out["coverage_before"], out["coverage_after"])])


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="JSONL, JSON, CSV or Parquet file of solutions.", show_default=False,
                                         dir_okay=False)],
    set_name: Annotated[str, typer.Option("--set", "-s", help=SET_HELP, show_default=False)],
    solution: Annotated[Optional[str], typer.Option(
        help="Solution field (default: golden_answer, solution, completion, response...).", show_default=False)] = None,
    problem: Annotated[Optional[str], typer.Option(
        help="Problem text field, matched against the set's problems (default: problem, question...).",
        show_default=False)] = None,
    id_: Annotated[Optional[str], typer.Option(
        "--id", help="Problem id field: gcpo's id or the set file's own (default: problem_id, id...).",
        show_default=False)] = None,
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="The model that wrote the solutions, recorded with them.", show_default=False)] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Attach solutions from a file to a set's problems as teacher golden answers.

    Rows match a problem by id (gcpo's, or the set file's own) or by its text. Each solution is graded against the problem's answer; one that does not verify is kept, marked unverified, and never injected. Importing the same file again adds nothing.

    Example: gcpo golden import solutions.jsonl --set aime24 --teacher deepseek-r1"""
    database = store.open_db(db)
    out = gold.import_golden(database, file, set_name, solution=solution, problem=problem, id=id_, teacher=teacher)
    if json_out:
        print_json(out)
        return
    _facts(f"Imported {out['source']} into {out['set_name']}", [
        ("rows read", str(out["rows_read"])),
        ("matched a problem", str(out["matched"]) + (f" ({out['unmatched']} did not)" if out["unmatched"] else "")),
        ("verified", f"{out['verified']} of {out['matched']}"
                     + (f" ({out['unverified']} kept, marked unverified)" if out["unverified"] else "")),
        ("new golden answers", str(out["added"])),
        *_coverage_rows(out["coverage_before"], out["coverage_after"])])
    for title, n, rows, cells in (
            ("Rows that match no problem", out["unmatched"], out["unmatched_rows"], ("where", "reason")),
            ("Solutions that did not verify", out["unverified"], out["mismatches"], ("where", "answer", "golden"))):
        if rows:
            more = f" (the first {len(rows)}; --json lists them too)" if n > len(rows) else ""
            console.print(Text(f"{title}: {n}{more}", style="bold"))
            t = CompactTable(*cells)
            for row in rows:
                t.add_row(*(row[c] for c in cells))
            console.print(t)


def _usage(r: dict) -> str:
    if not r["injections"]:
        return "-"
    nxt = f", next group solved {r['next_solved']}/{r['next_groups']}" if r["next_groups"] else ""
    return f"{r['injections']}x in {r['runs']} run{'s' * (r['runs'] != 1)}{nxt}"


def _from(r: dict) -> str:
    """Who wrote it, short: the teacher, else the file it was read from."""
    return one_line(r["model"] or Path(r["source_file"] or "-").name, 18)


@app.command("list")
def list_cmd(
    set_name: Annotated[str, typer.Option("--set", "-s", help=SET_HELP, show_default=False)],
    origin: Annotated[Optional[str], typer.Option(help=ORIGIN_HELP, show_default=False)] = None,
    active: Annotated[bool, typer.Option("--active", help="Only the active one of each problem and origin.")] = False,
    tokenizer: Annotated[Optional[str], typer.Option(help=TOKENIZER_HELP, show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option(
        help="Most rows shown, --json included.  [default: 50 in the table, all with --json]", min=1,
        show_default=False)] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List a set's golden answers: provenance, verification, tokens and use in training.

    active: the one training injects for its problem and origin. used: how often training injected it, and how often the problem's next group in that run had a correct sample.

    Example: gcpo golden list --set aime24 --origin teacher --tokenizer smollm2-135m"""
    if origin is not None and origin not in STORED_ORIGINS:
        raise GcpoError(f"--origin {origin!r}: {' or '.join(STORED_ORIGINS)}")
    database = open_for_reading(db)
    if limit is None and not json_out:
        limit = 50
    out = gold.list_golden(database, set_name, origin=origin, active_only=active, tokenizer=tokenizer, limit=limit)
    if json_out:
        print_json(out)
        return
    rows = out["golden_answers"]
    if not rows:
        console.print(f"No golden answers in set {escape(out['set_name'])} match.")
        return
    t = CompactTable("problem", "origin", "from", "status", ">tokens", "used", "text",
                     title=f"Golden answers of {out['set_name']}: {out['total']}")
    for r in rows:
        t.add_row(r["problem_id"][:8], r["origin"], _from(r),
                  ("active" if r["active"] else "verified") if r["verified"] else "UNVERIFIED",
                  r["tokens"] if r["tokens"] is not None else r["completion_tokens"], _usage(r), one_line(r["text"]))
    console.print(t)
    if out["total"] > len(rows):
        console.print(f"… and {out['total'] - len(rows)} more (--limit)")
    if tokenizer is None:
        console.print("tokens: the teacher's own count; --tokenizer MODEL counts under another", style="dim")


@app.command("show")
def show_cmd(
    ref: Annotated[str, typer.Argument(help="A golden answer id (or prefix), or a problem: id, prefix, source id "
                                            "or words from its text.", show_default=False)],
    set_name: Annotated[Optional[str], typer.Option("--set", "-s", help=SET_HELP, show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help=TOKENIZER_HELP, show_default=False)] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Show golden answers in full: one by its id, or every candidate of a problem.

    Example: gcpo golden show 3f9a --set gsm8k --tokenizer smollm2-135m"""
    database = open_for_reading(db)
    out = gold.list_golden(database, set_name, problem=ref, tokenizer=tokenizer)
    if json_out:
        print_json(out)
        return
    for r in out["golden_answers"]:
        heading(console, f"golden answer {r['id']}", f"problem {r['problem_id']}", r["origin"],
                ("active" if r["active"] else "candidate") if r["verified"] else "UNVERIFIED")
        params = r["params"] if isinstance(r["params"], dict) else {}
        tokens = r["tokens"] if r["tokens"] is not None else r["completion_tokens"]
        facts = [("source file", r["source_file"] or "-"), ("model", r["model"] or "-"),
                 ("final answer", r["final_answer"] or "-"), ("tokens", "-" if tokens is None else str(tokens)),
                 ("used in training", _usage(r)), ("created", r["created_at"])]
        if r["derived_from"]:  # built at ingest from another answer (ingest.py: a solution that states none)
            facts.append(("derived from", r["derived_from"]))
        facts += [(f"  {k}", one_line(str(v), 60)) for k, v in params.items() if v is not None]
        _facts("", facts)
        console.print(Text(clean(r["text"])), overflow="fold")
    if not out["golden_answers"]:
        console.print("No golden answers: when every sample is wrong there is nothing to inject.")


@app.command("report")
def report_cmd(
    set_name: Annotated[str, typer.Option("--set", "-s", help=SET_HELP, show_default=False)],
    recipe: Annotated[str, typer.Option("--recipe", help="Recipe name or .yaml file.", show_default=False)],
    override: Annotated[list[str], typer.Option("--override", "-o", help="Any recipe key: -o max_new_tokens=256")] = [],
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """What a recipe would inject on a set: coverage, too long, length distribution.

    Per golden origin (dataset, teacher, any): how many problems have a golden answer, how many of those the recipe would skip as too long for its max_new_tokens (counted with its model's tokenizer and golden_template, as training counts them), and their token lengths.

    Example: gcpo golden report --set aime24 --recipe 1.5b-qlora"""
    from .recipe_load import load as load_recipe

    r = load_recipe(recipe, list(override))
    out = gold.report(open_for_reading(db), set_name, r)
    if json_out:
        print_json(out)
        return
    n = out["problems"]
    t = CompactTable("golden_origin", ">covered", ">too long", ">injectable", ">p50", ">p90", ">max", "",
                     title=f"{out['set_name']} ({n} problems) under recipe {out['recipe']}: max_new_tokens "
                           f"{out['max_new_tokens']}, tokenizer of {out['model']}")
    for origin, s in out["origins"].items():
        d = s["lengths"]
        t.add_row(origin, f"{s['covered']} ({s['coverage']:.0%})", s["too_long"],
                  f"{s['injectable']} ({s['injectable_share']:.0%})", d["p50"], d["p90"], d["max"],
                  "<- this recipe" if origin == out["golden_origin"] else "")
    console.print(t)
    bins = out["origins"][out["golden_origin"]]["lengths"]["histogram"]
    console.print("length / max_new_tokens (" + out["golden_origin"] + "): "
                  + "  ".join(f"{k} {v}" for k, v in bins.items()), highlight=False)
    if out["golden"] != "on":
        console.print(f"note: this recipe has golden: {out['golden']}, so it injects none", style="yellow")
