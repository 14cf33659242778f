"""Opening a training run: what `train.setup` reads from the database before any model loads
(the recipe, the set, its held-out and benchmark problems, a resumed run's checkpoint), and
creating the run or marking a resumed one running again once the model has loaded. Rank 0 alone
calls these (with several processes it hands the others what it read).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import checkpoints, engines, paths, store, trackers
from .errors import GcpoError
from .eval_targets import resolve_benchmark
from .ingest import ensure_synthetic_set
from .recipe import Recipe
from .recipe_load import from_dict, to_dict
from .records import Problem
from .synthetic import parse_levels


@dataclass
class Opened:
    """What setting up reads from the database (rank 0's part), handed to every rank."""

    recipe: Recipe
    set_name: str
    pool: list[Problem]  # trained on, each with its golden answer or None
    holdout: list[Problem]  # the set's last eval.holdout problems
    start: int  # the checkpoint a resumed run starts from (0: a new run)
    run: dict | None  # a resumed run's row
    benchmarks: dict[str, list[Problem]] = field(default_factory=dict)  # eval.benchmarks (eval.limit each)


def open_run(db, recipe: Recipe | None, resume_run: str | None, steps: int | None, save_every: int | None,
             report_to: list[str] | None) -> tuple[Opened, object]:
    """What setting up reads from the database, and the run's lock when resuming. A live run is
    left alone; a tracker whose package is missing fails here, before any model loads."""
    run, start, run_lock = None, 0, None
    if resume_run:
        run = store.resolve_run(db, resume_run)
        run_lock = checkpoints.lock(checkpoints.run_folder(run), run["id"])  # a live run is left alone
        start = int(run["checkpoint_step"] or 0)
        if steps is not None and steps <= start:
            raise GcpoError(f"run {run['id']} has done {start} steps (checkpoint {start}); --steps must be more")
        overrides = {k: v for k, v in dict(steps=steps, save_every=save_every, report_to=report_to).items()
                     if v is not None}
        recipe = from_dict({**store.loads(run["recipe_json"]), **overrides})
        set_name = run["set_name"]
    else:
        set_name = recipe.set_name or default_set(db, recipe)
    trackers.check(recipe.report_to)
    engines.check_available(recipe.generation.engine, recipe.generation.rollout_server)
    set_name, problems = store.set_problems(db, set_name, golden_origin=recipe.golden.origin)
    holdout = recipe.eval.holdout
    if holdout >= len(problems):
        raise GcpoError(f"set '{set_name}' has {len(problems)} problems and eval.holdout is "
                        f"{holdout}: nothing left to train on")
    cut = len(problems) - holdout
    benchmarks = {}
    for name in recipe.eval.benchmarks:  # before any model loads: a missing set is one line
        bench = name if store.has_problems(db, name) else resolve_benchmark(db, name)  # any ingested set
        benchmarks[bench] = store.set_problems(db, bench, limit=recipe.eval.limit or None)[1]
    tested = {p.id for ps in benchmarks.values() for p in ps}
    pool = [p for p in problems[:cut] if p.id not in tested]  # never train on what is evaluated
    if not pool:
        raise GcpoError(f"set '{set_name}': every problem left to train on is in eval.benchmarks")
    return Opened(recipe, set_name, pool, problems[cut:], start, run, benchmarks), run_lock


def begin_run(db, o: Opened, run_lock, display) -> tuple:
    """Create the run, or mark a resumed one running again from its checkpoint (dropping the
    steps recorded after it). Returns (run id, its folder, its lock)."""
    if o.run:
        dropped = store.restart_run(db, o.run["id"], checkpoint_step=o.start, recipe=to_dict(o.recipe))
        if dropped:
            display.message(f"discarded {dropped} step(s) recorded after checkpoint {o.start}")
        return o.run["id"], o.run["out_dir"], run_lock
    run_id = store.new_id()
    out_dir = str(paths.run_dir(run_id))
    run_lock = checkpoints.lock(out_dir, run_id)
    store.create_run(db, recipe=to_dict(o.recipe), set_name=o.set_name, out_dir=out_dir, run_id=run_id)
    return run_id, out_dir, run_lock


def default_set(db, recipe: Recipe) -> str:
    """The recipe's synthetic set (made once, then reused)."""
    name = f"arithmetic-l{recipe.synthetic_levels.replace(',', '_')}-{recipe.synthetic_count}"
    return ensure_synthetic_set(db, name, count=recipe.synthetic_count, seed=0,
                                levels=parse_levels(recipe.synthetic_levels))
