"""Commands: eval."""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .cli import DbOpt, GcpoError, JsonOpt, app, console, err_console, print_json
from .db import open_db

GOLDEN = "golden"


@dataclass
class Target:
    """One model to evaluate: a model name, or a training run's checkpoint (base + adapter)."""

    label: str
    model: str
    adapter: Path | None = None
    run_id: str | None = None
    run_step: int | None = None
    template: str | None = None  # the run's own prompt template


def _run_target(db, run_id: str, step: int | None) -> Target:
    from .runs import checkpoint_dir, resolve_run

    run = resolve_run(db, run_id)  # an id prefix will do, as everywhere else
    ckpts = Path(run["out_dir"] or "") / "checkpoints"
    steps = sorted(int(p.parent.name[5:]) for p in ckpts.glob("step-*/adapter") if p.parent.name[5:].isdigit())
    if not run["out_dir"] or not steps:
        raise GcpoError(f"run '{run['id']}' has no checkpoint in {ckpts}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise GcpoError(f"run '{run['id']}' has no checkpoint at step {step}; steps: {', '.join(map(str, steps))}")
    try:
        template = json.loads(run["recipe_json"] or "{}").get("prompt_template")
    except json.JSONDecodeError:
        template = None
    return Target(f"run:{run['id']}@{step}", run["model"], checkpoint_dir(run["out_dir"], step) / "adapter",
                  run["id"], step, template)


def _parse_target(db, spec: str) -> Target:
    """--compare value: RUN_ID[@STEP] (an id prefix will do), else a model name."""
    run_id, _, step = spec.partition("@")
    named_model = spec in (GOLDEN, "tiny", "smollm2-135m") or "/" in spec or Path(spec).exists()
    if not named_model and db.execute("SELECT 1 FROM runs WHERE id LIKE ? LIMIT 1", [run_id + "%"]).fetchone():
        if step and not step.isdigit():
            raise GcpoError(f"--compare {spec}: the step after '@' must be a number")
        return _run_target(db, run_id, int(step) if step else None)
    return Target(spec, spec)


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
             f"k={k}, temperature {params['temperature']}, top-p {params['top_p']}, max {params['max_tokens']} tokens")
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
            tokens = m.get("mean_tokens")
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


def _deltas(result: dict, base: dict) -> None:
    keys = ("mean_at_k", "pass_at_k", "maj_at_k")
    for s, b in zip(result["sets"], base["sets"]):
        s["delta"] = {key: None if s.get(key) is None or b.get(key) is None else s[key] - b[key] for key in keys}
    a, b = result["average"], base["average"]
    if a and b:
        a["delta"] = {key: None if a.get(key) is None or b.get(key) is None else a[key] - b[key] for key in keys}


@app.command("eval")
def eval_cmd(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Hub id, model folder, .gguf file, 'smollm2-135m' (embedded), 'tiny', "
                              "or 'golden' (grade each problem's own golden answers; loads no model).",
        show_default=False)] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", help="Evaluate a training run's checkpoint (its base model plus adapter).", show_default=False)] = None,
    step: Annotated[Optional[int], typer.Option(
        "--step", help="Checkpoint step of --run (default: the latest).", show_default=False, min=0)] = None,
    data: Annotated[Optional[list[str]], typer.Option(
        "--data", "-d", help="An ingested problem set (repeatable).", show_default=False)] = None,
    benchmark: Annotated[Optional[list[str]], typer.Option(
        "--benchmark", "-b", help="A known benchmark (repeatable): aime24, aime25, amc23, math500, gsm8k, "
                                  "minerva_math, olympiadbench, svamp, mawps, mathqa, synthetic.",
        show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", help="Samples per problem (mean@k, pass@k, maj@k).", min=1)] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.", min=0.0)] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.", min=0.0, max=1.0)] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most new tokens per completion.", min=1)] = 512,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N problems of each set.", min=1,
                                                 show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    template: Annotated[Optional[str], typer.Option(
        help="Prompt template with {problem} (default: the training template, or the run's own).",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences generated at once.", min=1)] = 32,
    compare: Annotated[Optional[list[str]], typer.Option(
        "--compare", help="Another model, RUN_ID or RUN_ID@STEP to evaluate side by side, with deltas (repeatable).",
        show_default=False)] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Evaluate a model or a training checkpoint on problem sets and benchmarks.

    Reports mean@k with its standard error, unbiased pass@k, maj@k, mean completion length,
    truncation rate and the share of completions with no final answer; with several sets, their
    average. Every sample is stored; an interrupted evaluation resumes when the same command is
    run again. Offline, a benchmark must be ingested first (the error says how).

    Examples:

      gcpo eval --model smollm2-135m --benchmark gsm8k --benchmark math500 --limit 32 --k 4 --temperature 0.7

      gcpo eval --run 01jq3v... --data arithmetic --compare smollm2-135m

      gcpo eval --model golden --benchmark math500
    """
    from .rollout import DEFAULT_TEMPLATE

    if (model is None) == (run is None):
        raise GcpoError("name exactly one of --model M or --run RUN_ID")
    if step is not None and run is None:
        raise GcpoError("--step applies to --run only")
    if not data and not benchmark:
        raise GcpoError("name what to evaluate on: --data SET or --benchmark NAME (repeatable)")
    if template is not None:
        try:
            ok = "{problem}" in template and template.format(problem="") is not None
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise GcpoError("--template must contain {problem} and write other braces doubled, "
                            "e.g. '{problem} Put the final answer in \\boxed{{}}.'")
    if k > 1 and temperature == 0:
        err_console.print(f"[yellow]note:[/] temperature 0 is greedy: the {k} samples of a problem are identical "
                          "(pass@k = mean@k); sample with --temperature > 0")
    database = open_db(db)
    targets = [_run_target(database, run, step) if run else Target(model, model)]
    targets += [_parse_target(database, c) for c in compare or []]
    from .answers import Grader
    from .evaluation import evaluate_golden, resolve_benchmark, set_problems

    params = dict(k=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, limit=limit, seed=seed,
                  batch_size=batch_size, template=template)
    with Grader() as grader:
        names = list(data or []) + [resolve_benchmark(database, b, grader) for b in benchmark or []]
        names = list(dict.fromkeys(names))
        sets = {name: set_problems(database, name, limit) for name in names}
        empty = [n for n, ps in sets.items() if not ps]
        if empty:
            raise GcpoError(f"set '{empty[0]}' has no problems")
        results = []
        for t in targets:
            per_set = []
            if t.model == GOLDEN:
                for name, problems in sets.items():
                    per_set.append(evaluate_golden(database, problems, set_name=name, grader=grader,
                                                   progress=not json_out))
            else:
                per_set = _evaluate_model(database, t, sets, grader, template or t.template or DEFAULT_TEMPLATE,
                                          params, progress=not json_out)
            results.append(_result(t, per_set))
    for r in results[1:]:
        _deltas(r, results[0])
    if json_out:
        print_json({"params": params, "results": results})
        return
    for r in results:
        if any(s.get("no_golden") for s in r["sets"]):
            missing = ", ".join(f"{s['set_name']} ({s['no_golden']})" for s in r["sets"] if s.get("no_golden"))
            console.print(f"[yellow]problems without a golden answer, not graded:[/] {escape(missing)}")
    if len(results) == 1:
        console.print(f"[bold]{escape(results[0]['label'])}[/]", highlight=False)
    console.print(_table(results, k, params))


def _evaluate_model(db, t: Target, sets: dict, grader, template: str, p: dict, progress: bool) -> list[dict]:
    from .evaluation import evaluate_problems
    from .model import load_for_inference

    try:
        model, tok = load_for_inference(t.model, adapter_dir=t.adapter)
    except GcpoError:
        raise
    except (OSError, ValueError) as e:  # a hub id offline, a folder transformers cannot read
        raise GcpoError(f"cannot load model '{t.model}': {str(e).splitlines()[0][:300]}") from None
    try:
        return [evaluate_problems(db, model, tok, problems, label=t.label, set_name=name, k=p["k"],
                                  temperature=p["temperature"], top_p=p["top_p"], max_new_tokens=p["max_tokens"],
                                  seed=p["seed"], template=template, run_id=t.run_id, run_step=t.run_step,
                                  batch_size=p["batch_size"], progress=progress, grader=grader)
                for name, problems in sets.items()]
    finally:
        del model, tok
        gc.collect()


def _result(t: Target, per_set: list[dict]) -> dict:
    from .evaluation import average

    return dict(label=t.label, model=t.model, run_id=t.run_id, run_step=t.run_step,
                adapter=str(t.adapter) if t.adapter else None, sets=per_set, average=average(per_set))
