"""The GCPO training loop: `train()` runs the steps, `train_step()` is one step, in this order:

  1. pick B problems (curriculum) and render their prompts;
  2. roll out G completions per problem from the current policy (pi_old) and grade each with
     math-verify: reward 1 if its final answer verifies and it was not truncated (or with the
     recipe's custom `reward` function, in the grader's worker; a failed call scores 0, counted);
  3. DAPO only: drop zero-variance groups and refill the batch from unused problems;
  4. go gold: in an all-wrong group, the last wrong rollout gives way to the golden answer
     (reward 1); the displaced rollout is still recorded, out of the loss;
  5. group-relative advantages; zero-variance groups leave the loss (`zero_variance: skip`);
  6. one policy-gradient update over the sequences with non-zero advantage (no KL, no reference);
  7. (in train) write every rollout and the step's metrics in one transaction; checkpoint every N.

Resuming restores the last checkpoint and discards the steps recorded after it, so a kill -9
loses at most those steps and no rollout is ever recorded twice. The curriculum is seeded per
step (seed, step) and every sample draws its tokens from its own stream (seed, step, problem,
sample index), so a resumed run draws the same problems and samples an uninterrupted one would.

Data-parallel (`torchrun` / `accelerate launch`, distributed.py): every rank runs this same
loop. Rank 0 picks the step's problems (the curriculum reads the database) and broadcasts them;
each rank rolls out a contiguous share of the groups and goes gold and computes advantages on
its own (a group is never split); the update sums the ranks' gradients before each optimiser
step; rank 0 gathers every rank's rollouts and metrics and alone writes the step, checkpoints
and the held-out evaluation. Because a sample's stream depends on its problem and not on its
batch, N ranks sample what one process samples and train the same weights (tests/test_distributed.py).
With one process every collective is a no-op. The helpers below come in the order a step calls
them; setting up and the held-out evaluation come last.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field, replace

import torch
from transformers import get_scheduler

from . import checkpoints, curriculum, distributed, engines, opening, store, trackers
from .answers import extract_answer
from .errors import GcpoError
from .evaluation import evaluate_problems
from .grader import Grader
from .groups import StepMetrics, assign_advantages, go_gold, is_mixed, merge_timing, step_metrics
from .learner import Policy, update
from .model import (MergedSampler, add_lora, autocast_enabled, describe_environment, environment, load_adapter,
                    load_base, prepare_base, prepare_for_update)
from .prompts import from_recipe as prompt_from_recipe
from .records import Problem, Rollout, Sampling
from .resumable import Abandon, StopFlag
from .recipe import Recipe
from .recipe_load import to_dict
from .rollout import render_prompt


@dataclass
class Context:
    """Everything a step needs: the run, its policy, its problems."""

    db: object
    run_id: str
    set_name: str
    out_dir: str
    recipe: Recipe
    policy: Policy  # base + LoRA, its tokenizer and optimiser
    scheduler: object
    pool: list[Problem]  # trained on, each with its golden answer or None
    holdout: list[Problem]  # never trained on; evaluated before and after
    engine: object  # what samples rollouts and the held-out evaluation (engines.py), synced after each update
    start_step: int = 0
    by_id: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)  # problem id -> (prompt text, prompt ids)
    lock: object = None  # the run's lock file (checkpoints.lock), held while this process trains it
    dist: distributed.Dist = field(default_factory=distributed.Dist)  # this process's rank (one: rank 0 of 1)
    tracking: trackers.Trackers | None = None  # the --report-to mirrors (rank 0's; none elsewhere)
    warned_off_policy: bool = False  # warn_off_policy said it once
    benchmarks: dict = field(default_factory=dict)  # eval.benchmarks: set name -> its problems, before and after
    usable_golden: frozenset = frozenset()  # the frontier's golden problems: curriculum.usable_golden

    @property
    def model(self):
        return self.policy.model

    @property
    def tok(self):
        return self.policy.tok


# ---------------------------------------------------------------------------- the loop

def train(db, recipe: Recipe | None = None, *, resume_run: str | None = None, steps: int | None = None,
          save_every: int | None = None, report_to: list[str] | None = None, display=None,
          dist: distributed.Dist | None = None) -> dict:
    """Run (or resume) a training run to its last step. Returns a summary with the run id.
    `dist`: this process's place in a torchrun job (distributed.from_env); `db` is rank 0's only."""
    display = display or NullDisplay()
    ctx = setup(db, recipe, resume_run, steps, save_every, display, report_to=report_to, dist=dist)
    try:
        return run_steps(ctx, display)
    finally:
        ctx.engine.close()
        ctx.tracking.close()
        if ctx.lock:
            ctx.lock.close()  # releases the run's lock


def run_steps(ctx: Context, display) -> dict:
    """The held-out evaluation before, every step, checkpoints, the evaluation after. Only rank 0
    (the only rank of one process) evaluates, writes and reports; the others wait for it at the
    next collective."""
    db, r, dist = ctx.db, ctx.recipe, ctx.dist
    summary: dict = dict(run_id=ctx.run_id, recipe=r.name, algorithm=r.algorithm, set_name=ctx.set_name)
    if ctx.start_step == 0 and dist.writer:
        evaluate_all(ctx, 0, "before", summary, display)
    status, step = "completed", ctx.start_step
    # With several ranks Ctrl-C finishes the step (abandoning it would need every rank to agree
    # mid-step); all ranks then stop after the same step.
    with StopFlag(abandon=not dist.active) as stop, Grader(reward=r.reward) as grader:
        display.start(ctx, r.steps, ctx.start_step)
        try:
            for step in range(ctx.start_step + 1, r.steps + 1):
                try:
                    rollouts, metrics = train_step(ctx, step, grader, stop)
                except Abandon:
                    step, status = step - 1, "interrupted"
                    break
                if dist.writer:  # one writer: every rank's rollouts, in one transaction
                    warn_off_policy(metrics, step, ctx, display)
                    row = metrics.flat()
                    store.record_step(db, ctx.run_id, step, rollouts, row)
                    ctx.tracking.log(step, row)  # a copy of what was just committed
                    if r.log_completions and step % r.log_completions == 0:
                        ctx.tracking.log_completions(step, [(step, ctx.by_id[x.problem_id].text, x.completion,
                                                             x.reward, x.advantage, x.is_golden) for x in rollouts])
                    display.step(step, row)
                    if (r.save_every and step % r.save_every == 0) or step == r.steps:
                        save_checkpoint(ctx, step)
                if dist.any(stop.requested):
                    status = "interrupted"
                    break
        except BaseException as e:  # record why, then let it surface
            display.stop()
            if dist.writer:
                store.set_status(db, ctx.run_id, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                                 error=f"{type(e).__name__}: {e}")
            raise
        display.stop()
    if not dist.writer:
        return dict(summary, status=status, last_step=step)
    checkpoint = store.get_run(db, ctx.run_id)["checkpoint_step"] or 0
    if status == "interrupted" and step > checkpoint:
        save_checkpoint(ctx, step)
        checkpoint = step
    if status == "completed":
        evaluate_all(ctx, step, "after", summary, display)
    store.set_status(db, ctx.run_id, status)
    summary.update(status=status, last_step=step, checkpoint_step=checkpoint,
                   reward_mean_per_step=store.rewards(db, ctx.run_id), out_dir=ctx.out_dir)
    return summary


def train_step(ctx: Context, step: int, grader: Grader, stop: "StopFlag") -> tuple[list[Rollout], StepMetrics | None]:
    """Steps 1-6 of the module docstring, on this rank's share of the groups; returns every
    rank's rollouts to record and the step's metrics on rank 0 (nothing on the others)."""
    r, dist = ctx.recipe, ctx.dist
    torch.manual_seed(distributed.rank_seed(r.seed, step, dist.rank))  # LoRA dropout; samples have their own streams
    rng = random.Random(r.seed * 1_000_003 + step)  # the same on every rank: DAPO's refill draws
    dist.comm_s = 0.0
    problem_ids = dist.broadcast(pick_problems(ctx, step) if dist.writer else None)  # 1: rank 0 reads the history
    order = {pid: i for i, pid in enumerate(problem_ids)}  # each group's place in the step, known to every rank
    groups, timing = roll_out(ctx, step, dist.share(problem_ids)[1], grader, stop)  # 2
    sampled_groups = groups
    if r.loss.dynamic_sampling:  # 3
        sampled_groups, groups = refill(ctx, step, order, groups, timing, rng, grader, stop)
    sampled_groups = [list(g) for g in sampled_groups]  # as sampled: going gold edits `groups`
    # one stream per group (golden_replace: random), so the choice does not depend on the ranks
    outcomes = [go_gold(r, ctx.by_id[g[0].problem_id], g, ctx.tok, random.Random(f"{r.seed}:{step}:{g[0].problem_id}"))
                for g in groups]  # 4
    kept = assign_advantages(r, groups)  # 5
    t0 = time.perf_counter()
    stats = update(ctx.policy, [(order[g[0].problem_id], g) for g in kept], r, dist, stop)  # 6
    ctx.engine.sync(ctx.model, step)  # step k+1 samples from the policy of update k, never an older one
    lr = ctx.policy.optimizer.param_groups[0]["lr"]
    ctx.scheduler.step()
    timing["update_s"] = time.perf_counter() - t0
    golden = [x for g in groups for x in g if x.is_golden]
    # One writer: rank 0 gets every rank's part of the step, in the step's order.
    parts = dist.gather(dict(sampled=sampled_groups, golden=golden, outcomes=outcomes, timing=timing, kept=len(kept),
                             in_loss=sum(x.in_loss for g in kept for x in g)))
    if not dist.writer:
        return [], None
    place = lambda x: order[x.problem_id]  # noqa: E731
    sampled_groups = sorted((g for p in parts for g in p["sampled"]), key=lambda g: place(g[0]))
    golden = sorted((x for p in parts for x in p["golden"]), key=place)
    metrics = step_metrics(r, sampled_groups, [o for p in parts for o in p["outcomes"]], sum(p["kept"] for p in parts),
                           sum(p["in_loss"] for p in parts), stats, merge_timing([p["timing"] for p in parts]), lr)
    if dist.active:
        metrics.world_size, metrics.comm_s = dist.world, dist.comm_s
    return [x for g in sampled_groups for x in g] + golden, metrics  # the policy's own samples, then golden


# k3 estimate of KL(sampler || trainer) per token above which a run is told it trains off-policy:
# bf16 kernels differ by ~0.002, a 16-bit sampler against an nf4 trainer by ~0.3 (bench/RESULTS.md)
SAMPLER_KL_WARN = 0.05


def warn_off_policy(metrics: StepMetrics, step: int, ctx: Context, display) -> None:
    """Say once per run when the engine's samples are measurably not the trained policy's."""
    kl = metrics.update.sampler_kl
    if kl is None or kl <= SAMPLER_KL_WARN or ctx.warned_off_policy:
        return
    ctx.warned_off_policy = True
    cap = ctx.recipe.loss.tis_cap
    display.message(f"sampler_kl {kl:.3f} per token at step {step}: the {ctx.engine.name} engine samples a "
                    f"different policy than the one that trains (off-policy); "
                    + (f"importance correction is on (loss.tis_cap {cap:g})" if cap else
                       "set loss.tis_cap (e.g. 3) to correct for it"))


# ---------------------------------------------------------------------------- a step, in order

def pick_problems(ctx: Context, step: int) -> list[str]:
    r, ids = ctx.recipe, [p.id for p in ctx.pool]
    if r.curriculum == "frontier":
        rates = store.pass_rates(ctx.db, ctx.run_id, r.frontier_window)
        picked = curriculum.frontier(rates, ids, step - 1, r.generation.problems_per_step, r.seed, ctx.usable_golden,
                                     r.frontier_hopeless_after)
    else:
        picked = curriculum.uniform(ids, step - 1, r.generation.problems_per_step, r.seed)
    return list(dict.fromkeys(picked))  # an epoch boundary can draw a problem twice in one step


def roll_out(ctx: Context, step: int, problem_ids: list[str], grader: Grader,
             stop: "StopFlag") -> tuple[list[list[Rollout]], dict]:
    """G completions per problem from the current policy, graded: reward 1 where the one grading
    path training and evaluation share says correct (a truncated completion is wrong), or the
    recipe's custom reward (a failed call scores 0, counted). Returns the groups and {gen_s,
    score_s, tokens, reward_failures}. Sample j of a problem draws its tokens from the stream
    (seed, step, problem, j): the same samples in any batch, on any rank."""
    r = ctx.recipe
    if not problem_ids:  # a rank with no group this round (fewer groups than ranks)
        return [], dict(gen_s=0.0, score_s=0.0, tokens=0, reward_failures=0)
    t0 = time.perf_counter()
    g = r.generation
    sampling = Sampling(n=g.samples_per_problem, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                        top_p=g.top_p, batch_size=g.problems_per_step * g.samples_per_problem)
    completions = ctx.engine.generate([prompt(ctx, pid)[0] for pid in problem_ids], sampling,
                                      seeds=[f"{r.seed}:{step}:{pid}" for pid in problem_ids])
    t1 = time.perf_counter()
    stop.check()
    version = ctx.engine.version
    if version != step - 1:  # the stale-policy bug (issue 11): never train on another policy's samples
        raise GcpoError(f"step {step}: the {ctx.engine.name} engine samples policy version {version}, not {step - 1}")
    flat = [(pid, j, c, extract_answer(c.text)) for pid, cs in zip(problem_ids, completions) for j, c in enumerate(cs)]
    scores = grader.scores([(ctx.by_id[pid], c.text, answer, c.truncated) for pid, _, c, answer in flat])
    rollouts = [Rollout(problem_id=pid, sample_index=j, completion=c.text, extracted_answer=answer,
                        truncated=c.truncated, reward=float(s.reward), correct=bool(s.correct), policy_version=version,
                        sampler_logprobs=c.logprobs, prompt_ids=prompt(ctx, pid)[1], completion_ids=c.token_ids)
                for (pid, j, c, answer), s in zip(flat, scores)]
    G = r.generation.samples_per_problem
    return [rollouts[i:i + G] for i in range(0, len(rollouts), G)], dict(
        gen_s=t1 - t0, score_s=time.perf_counter() - t1, tokens=sum(x.completion_tokens for x in rollouts),
        reward_failures=sum(s.failed for s in scores))


def refill(ctx: Context, step: int, order: dict, groups: list[list[Rollout]], timing: dict, rng: random.Random,
           grader: Grader, stop: "StopFlag") -> tuple[list[list[Rollout]], list[list[Rollout]]]:
    """DAPO's dynamic sampling: keep only mixed groups, sampling unused problems (up to
    max_resample_rounds) until B of them are mixed; the first B mixed in the step's order stay.
    Ranks count their mixed groups together and share each round's problems as they shared the
    first ones; `order` (problem id -> place in the step, the same on every rank) gains them.
    Returns (every group this rank sampled, its kept ones); adds the rounds' costs to `timing`."""
    r, dist = ctx.recipe, ctx.dist
    sampled = list(groups)
    for _ in range(r.loss.max_resample_rounds):
        mixed = sum(dist.gather(sum(is_mixed(g) for g in sampled)))
        spare = [p.id for p in ctx.pool if p.id not in order]
        if mixed >= r.generation.problems_per_step or not spare:
            break
        extra = rng.sample(spare, min(len(spare), r.generation.problems_per_step - mixed))
        order.update({pid: len(order) + i for i, pid in enumerate(extra)})
        more, t = roll_out(ctx, step, dist.share(extra)[1], grader, stop)
        sampled += more
        for k in timing:
            timing[k] += t[k]
    places = sorted(p for part in dist.gather([order[g[0].problem_id] for g in sampled if is_mixed(g)]) for p in part)
    first = set(places[: r.generation.problems_per_step])
    return sampled, [g for g in sampled if order[g[0].problem_id] in first]


def save_checkpoint(ctx: Context, step: int) -> None:
    checkpoints.save(ctx.out_dir, step, ctx.model, ctx.policy.optimizer, ctx.scheduler)
    # The database names the new checkpoint before the old one's optimiser state goes: a crash
    # between the two must leave it naming a complete checkpoint.
    store.set_checkpoint(ctx.db, ctx.run_id, step)
    checkpoints.prune(ctx.out_dir, step)


def prompt(ctx: Context, problem_id: str) -> tuple[str, list[int]]:
    """A problem's prompt (the recipe's preset, prompts.py) and its tokens, exactly as generate()
    tokenises it."""
    if problem_id not in ctx.prompts:
        text = render_prompt(ctx.tok, ctx.by_id[problem_id].text, prompt_from_recipe(ctx.recipe))
        ctx.prompts[problem_id] = (text, ctx.tok(text, add_special_tokens=False).input_ids)
    return ctx.prompts[problem_id]


# ---------------------------------------------------------------------------- setting up

def setup(db, recipe: Recipe | None, resume_run: str | None, steps: int | None,
          save_every: int | None, display, *, report_to: list[str] | None = None,
          dist: distributed.Dist | None = None) -> Context:
    """Load the model, the problems and (on resume) the checkpoint; create or restart the run.
    The run is created (or marked running) only once everything loaded: a missing model or
    checkpoint leaves no phantom "running" run behind. With several ranks, rank 0 alone reads the
    database and the run's folder and hands the others what they need; an error on any rank
    stops them all, reported once by rank 0 (`dist.together`)."""
    dist = dist or distributed.Dist()
    run_lock = None
    with dist.together():  # rank 0 reads the database (a bad run id, a live run: every rank stops)
        if dist.writer:
            opened, run_lock = opening.open_run(db, recipe, resume_run, steps, save_every, report_to)
    o: opening.Opened = dist.broadcast(opened if dist.writer else None)
    r = o.recipe
    with dist.together():  # a model, adapter or checkpoint that does not load stops every rank
        adapter = checkpoints.adapter(checkpoints.run_folder(o.run), o.start) if o.start and dist.writer else None
        policy, scheduler, sampler, kind = load_policy(r, o.pool[0].text, adapter, dist)
        r = o.recipe = with_engine(r, kind)  # stored with the run as it trains
        # before the run exists: a vLLM that fails to start leaves no run behind
        evaluated = o.holdout + [p for ps in o.benchmarks.values() for p in ps]
        engine = engines.for_training(kind, r, policy.model, policy.tok, sampler, o.pool + evaluated, dist.rank)
        begun = None
        if dist.writer:
            state = checkpoints.load_trainer_state(checkpoints.run_folder(o.run), o.start) if o.start else None
            load_state(policy, scheduler, state)  # a bad checkpoint fails before the run is marked running
            run_id, out_dir, run_lock = opening.begin_run(db, o, run_lock, display)
            env = dict(environment(policy.model, r.model, sampler), **engine.describe())
            store.set_environment(db, run_id, dict(env, world_size=dist.world) if dist.active else env)
            display.message(describe_environment(env) + (f", {dist.world} processes" if dist.active else ""))
            begun = (run_id, out_dir, state)
    run_id, out_dir, state = dist.broadcast(begun)
    if not dist.writer:
        load_state(policy, scheduler, state)
    dist.broadcast_params(policy.params)  # every rank starts from rank 0's weights (a resumed run's adapter)
    with dist.together():
        engine.sync(policy.model, o.start)  # the policy of update `start` samples step start + 1
    tracking = trackers.Trackers(r.report_to if dist.writer else (), run_id=run_id, config=to_dict(r),
                                 out_dir=out_dir, start_step=o.start, warn=display.message)
    usable = (curriculum.usable_golden(o.pool, policy.tok, r.golden.template, r.generation.max_new_tokens)
              if r.golden.enabled and r.curriculum == "frontier" else frozenset())  # once: issue 25 item 7
    return Context(db=db, run_id=run_id, set_name=o.set_name, out_dir=out_dir, recipe=r, policy=policy,
                   scheduler=scheduler, pool=o.pool, holdout=o.holdout, engine=engine, start_step=o.start,
                   by_id={p.id: p for p in o.pool + o.holdout}, lock=run_lock, dist=dist, tracking=tracking,
                   benchmarks=o.benchmarks,
                   usable_golden=usable)


def load_policy(r: Recipe, sample_text: str, adapter, dist: distributed.Dist) -> tuple:
    """(Policy, lr scheduler, merged sampler or None, engine kind): the base with a new LoRA
    adapter or a checkpoint's (`adapter`), ready to train; the hf engine's merged sampling copy
    for an unquantised base."""
    # processes of one host share its cores (torchrun sets LOCAL_WORLD_SIZE)
    torch.set_num_threads(r.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    torch.manual_seed(r.seed)
    model, tok, _ = load_base(r.model, device=dist.device)
    prompt_from_recipe(r).render(tok, sample_text)  # a chat preset without a chat template: fail now
    kind = engines.resolve(r.generation.engine, next(model.parameters()).device.type, r.model.quant)
    merge = r.model.quant == "none" and kind == "hf"  # the hf engine samples a merged copy
    sampler = MergedSampler(model, r.model.sampler_dtype, r.model.sampler_attention) if merge else None
    prepare_for_update(model, r.model, autocast_enabled(model, r.model.autocast))
    model = prepare_base(model, r.model)
    model = load_adapter(model, adapter, trainable=True) if adapter else add_lora(model, r.lora)
    model.train()  # from_pretrained leaves eval mode: no gradient checkpointing, no LoRA dropout
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=r.optimizer.lr,
                                  weight_decay=r.optimizer.weight_decay)
    # transformers' schedules; its "constant" would ignore the warmup the recipe asks for
    schedule = "constant_with_warmup" if r.optimizer.lr_schedule == "constant" else r.optimizer.lr_schedule
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=r.optimizer.warmup_steps, num_training_steps=r.steps)
    return Policy(model, tok, optimizer), scheduler, sampler, kind


def with_engine(r: Recipe, kind: str) -> Recipe:
    """The recipe's knobs that follow the engine: tis_cap auto (None) is TRL's cap, 3, where
    another engine samples than the policy that trains (vllm, a server: bf16 or 16-bit-base
    kernels against the trainer's), and off (0) where the policy samples itself (hf)."""
    if r.loss.tis_cap is not None:
        return r
    return replace(r, loss=replace(r.loss, tis_cap=0.0 if kind == "hf" else 3.0))


def load_state(policy: Policy, scheduler, state: dict | None) -> None:
    """A checkpoint's optimiser and scheduler state (None: a new run)."""
    if state:
        policy.optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])


def evaluate_all(ctx: Context, step: int, when: str, summary: dict, display) -> None:
    """The held-out problems (summary[when]) and each of eval.benchmarks
    (summary["benchmarks"][set][when]), as `gcpo eval --run RUN@STEP` would grade them."""
    if ctx.holdout:
        display.message(f"evaluating {len(ctx.holdout)} held-out problems {when} training")
        summary[when] = evaluate(ctx, step, ctx.set_name, ctx.holdout)
        ctx.tracking.log_eval(step, summary[when])
    for set_name, problems in ctx.benchmarks.items():
        display.message(f"evaluating {len(problems)} problems of {set_name} {when} training")
        result = evaluate(ctx, step, set_name, problems)
        summary.setdefault("benchmarks", {}).setdefault(set_name, {})[when] = result
        ctx.tracking.log_eval(step, result, set_name)


def evaluate(ctx: Context, step: int, set_name: str, problems: list[Problem]) -> dict | None:
    e, r = ctx.recipe.eval, ctx.recipe
    g = r.generation
    return evaluate_problems(
        ctx.db, ctx.engine, ctx.tok, problems, label=f"run:{ctx.run_id}@{step}", set_name=set_name, k=e.k,
        temperature=e.temperature, max_new_tokens=e.max_new_tokens or g.max_new_tokens, seed=r.seed,
        prompt=prompt_from_recipe(r), run_id=ctx.run_id, run_step=step,
        batch_size=max(64, g.problems_per_step * g.samples_per_problem), progress=False)


class NullDisplay:
    """What the loop reports to; the CLI passes a rich progress display."""

    def message(self, text: str) -> None: ...
    def start(self, ctx: Context, total: int, done: int) -> None: ...
    def step(self, step: int, metrics: dict) -> None: ...
    def stop(self) -> None: ...
