"""Commands: eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import store
from .cmd_common import RUN_HELP, SET_HELP, DbOpt, JsonOpt, console, err_console, make_app, one_of, print_json
from .errors import GcpoError
from .evaluation import GOLDEN

app = make_app()


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def _delta(v, base) -> str:
    if v is None or base is None:
        return ""
    d = (v - base) * 100
    style = "green" if d > 0 else "red" if d < 0 else "dim"
    return f" [{style}]({d:+.1f})[/]"


def _table(results: list[dict], k: int, params: dict) -> Table:
    first = results[0]
    single = len(results) == 1
    golden = all(r["model"] == GOLDEN for r in results)
    title = ("golden answers graded as completions" if golden else
             f"k={k}, temperature {params['temperature']}, top-p {params['top_p']}, max {params['max_new_tokens']} tokens")
    t = Table(title=title, title_justify="left",
              caption=None if golden or not single else "len: mean completion tokens; trunc: hit the token limit; "
                                                        "no ans: no final answer stated",
              caption_justify="left")
    t.add_column("set")
    t.add_column("n", justify="right")
    if single:
        for name in (f"mean@{k}", f"pass@{k}", f"maj@{k}", "len", "trunc", "no ans"):
            t.add_column(name, justify="right")
    else:
        for r in results:
            t.add_column(f"{escape(r['label'])}\nmean@{k}", justify="right")
            if k > 1:
                t.add_column(f"{escape(r['label'])}\npass@{k}", justify="right")
    def row(name: str, ms: list[dict]) -> list[str]:
        cells = [name, str(ms[0].get("n_problems", 0))]
        if single:
            m = ms[0]
            se = f" ± {m['stderr']:.1%}" if m.get("stderr") is not None else ""
            tokens = m.get("completion_tokens_mean")
            return cells + [_pct(m.get("mean_at_k")) + se, _pct(m.get("pass_at_k")), _pct(m.get("maj_at_k")),
                            "–" if tokens is None else f"{tokens:.0f}",
                            _pct(m.get("truncation_rate")), _pct(m.get("unextracted_rate"))]
        base = ms[0]
        for j, m in enumerate(ms):
            se = f" ± {m['stderr']:.1%}" if m.get("stderr") is not None and j == 0 else ""
            cells.append(_pct(m.get("mean_at_k")) + se + (_delta(m.get("mean_at_k"), base.get("mean_at_k")) if j else ""))
            if k > 1:
                cells.append(_pct(m.get("pass_at_k")) + (_delta(m.get("pass_at_k"), base.get("pass_at_k")) if j else ""))
        return cells

    for i, s in enumerate(first["sets"]):
        t.add_row(*row(escape(s["set_name"]), [r["sets"][i] for r in results]))
    if len(first["sets"]) > 1 and first["average"]:
        t.add_section()
        t.add_row(*row("[bold]average[/]", [r["average"] for r in results]))
    return t


def _is_model_name(spec: str) -> bool:
    return spec in (GOLDEN, "tiny", "smollm2-135m") or "/" in spec or Path(spec).exists()


# Long only in its signature: ~45 of its lines declare Typer options; the body is short.
@app.command("eval")
def eval_cmd(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Hub id, model folder, .gguf file, 'smollm2-135m' (embedded), 'tiny', "
                              "or 'golden' (grade each problem's own golden answers; loads no model).",
        show_default=False)] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", "-r", help=RUN_HELP + " Evaluates its checkpoint (base model plus adapter).",
        show_default=False)] = None,
    step: Annotated[Optional[int], typer.Option(
        "--step", help="Checkpoint step of --run (default: the latest).", show_default=False, min=0)] = None,
    set_names: Annotated[Optional[list[str]], typer.Option(
        "--set", "-s", help=SET_HELP + " Repeatable.", show_default=False)] = None,
    benchmark: Annotated[Optional[list[str]], typer.Option(
        "--benchmark", "-b", help="A known benchmark (repeatable): aime24, aime25, amc23, math500, gsm8k, "
                                  "minerva_math, olympiadbench, svamp, mawps, mathqa, synthetic.",
        show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", help="Samples per problem (mean@k, pass@k, maj@k).", min=1)] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.", min=0.0)] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.", min=0.0, max=1.0)] = 1.0,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        "--max-new-tokens", help="Most new tokens per completion.  [default: 512]", min=1, show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N problems of each set.", min=1,
                                                 show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    template: Annotated[Optional[str], typer.Option(
        help="Prompt template with {problem} (default: the training template, or the run's own).",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences generated at once.", min=1)] = 32,
    compare: Annotated[Optional[list[str]], typer.Option(
        "--compare", help="Another model, RUN or RUN@STEP to evaluate side by side, with deltas (repeatable).",
        show_default=False)] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    old_data: Annotated[Optional[list[str]], typer.Option("--data", "-d", hidden=True)] = None,
    old_max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", hidden=True, min=1)] = None,
) -> None:
    """Evaluate a model or a training checkpoint on problem sets and benchmarks.

    Reports mean@k with its standard error, unbiased pass@k, maj@k, mean completion length,
    truncation rate and the share of completions with no final answer; with several sets, their
    average. Every sample is stored; an interrupted evaluation resumes when the same command is
    run again. Offline, a benchmark must be ingested first (the error says how).

    Examples:

      gcpo eval --model smollm2-135m --benchmark gsm8k --benchmark math500 --limit 32 --k 4 --temperature 0.7

      gcpo eval --run 01jq3v... --set arithmetic --compare smollm2-135m

      gcpo eval --model golden --benchmark math500
    """
    from . import evaluation as ev
    from .answers import Grader

    names = list(set_names or []) + list(old_data or [])
    max_new_tokens = one_of(max_new_tokens, old_max_tokens, "--max-new-tokens") or 512
    if (model is None) == (run is None):
        raise GcpoError("name exactly one of --model M or --run RUN")
    if step is not None and run is None:
        raise GcpoError("--step applies to --run only")
    if not names and not benchmark:
        raise GcpoError("name what to evaluate on: --set SET or --benchmark NAME (repeatable)")
    if template is not None:
        _check_template(template)
    if k > 1 and temperature == 0:
        err_console.print(f"[yellow]note:[/] temperature 0 is greedy: the {k} samples of a problem are identical "
                          "(pass@k = mean@k); sample with --temperature > 0")
    database = store.open_db(db)
    targets = [ev.run_target(database, run, step) if run else ev.Target(model, model)]
    targets += [ev.parse_target(database, c, _is_model_name) for c in compare or []]
    params = dict(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, limit=limit,
                  seed=seed, batch_size=batch_size, template=template)
    with Grader() as grader:
        names += [ev.resolve_benchmark(database, b, grader) for b in benchmark or []]
        sets = dict(store.set_problems(database, name, limit) for name in dict.fromkeys(names))
        empty = [n for n, ps in sets.items() if not ps]
        if empty:
            raise GcpoError(f"set '{empty[0]}' has no problems")
        results = ev.compare([ev.result(t, ev.evaluate_target(database, t, sets, grader, template, params,
                                                              progress=not json_out))
                              for t in targets])
    if json_out:
        print_json({"params": params, "results": results})
        return
    _print_results(results, k, params)


def _check_template(template: str) -> None:
    try:
        ok = "{problem}" in template and template.format(problem="") is not None
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise GcpoError("--template must contain {problem} and write other braces doubled, "
                        "e.g. '{problem} Put the final answer in \\boxed{{}}.'")


def _print_results(results: list[dict], k: int, params: dict) -> None:
    for r in results:
        if any(s.get("no_golden") for s in r["sets"]):
            missing = ", ".join(f"{s['set_name']} ({s['no_golden']})" for s in r["sets"] if s.get("no_golden"))
            console.print(f"[yellow]problems without a golden answer, not graded:[/] {escape(missing)}")
    if len(results) == 1:
        console.print(f"[bold]{escape(results[0]['label'])}[/]", highlight=False)
    console.print(_table(results, k, params))
