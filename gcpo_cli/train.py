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
import signal
import time
from dataclasses import dataclass, field

import torch
from transformers import get_scheduler

from . import checkpoints, curriculum, distributed, engines, paths, store, trackers
from .answers import extract_answer
from .errors import GcpoError
from .evaluation import evaluate_problems
from .grader import Grader
from .ingest import ensure_synthetic_set
from .loss import golden_slot, group_advantages, overlong_shaping, policy_loss, sampler_mismatch, tis_weights
from .model import (MergedSampler, add_lora, autocast_context, autocast_enabled, completion_logprobs,
                    describe_environment, environment,
                    load_adapter, load_base, prepare_base, prepare_for_update)
from .prompts import from_recipe as prompt_from_recipe
from .recipe import Recipe, from_dict, to_dict
from .rollout import Completion, render_prompt, response_ids
from .synthetic import parse_levels


@dataclass
class Rollout:
    """One member of a group: a sampled completion or the golden answer. Fields are named as
    the `rollouts` columns they are recorded in."""

    problem_id: str
    sample_index: int  # 0..G-1 for the policy's samples; G for an injected golden answer
    prompt_ids: list[int]  # the rendered prompt's tokens
    completion_ids: list[int]  # the completion's tokens, EOS included when it stopped
    completion: str  # decoded text
    extracted_answer: str | None  # its final answer, None when it states none
    truncated: bool  # hit max_new_tokens without EOS
    reward: float = 0.0
    correct: bool = False
    is_golden: bool = False
    advantage: float | None = 0.0  # None: displaced by the golden answer, not in the loss
    seq_ratio: float | None = None  # the sequence-level importance ratio of the update
    policy_version: int | None = None  # the training step whose update made the sampling policy (0: initial)
    sampler_logprobs: list[float] | None = None  # the engine's log-prob of each completion token

    def row(self) -> dict:
        return dict(problem_id=self.problem_id, sample_index=self.sample_index, completion=self.completion,
                    extracted_answer=self.extracted_answer, reward=self.reward, correct=int(self.correct),
                    completion_tokens=len(self.completion_ids), truncated=int(self.truncated),
                    is_golden=int(self.is_golden), advantage=self.advantage, seq_ratio=self.seq_ratio,
                    policy_version=self.policy_version, sampler_logprobs=store.pack_logprobs(self.sampler_logprobs))


@dataclass
class Context:
    """Everything a step needs: the run, its model and optimiser, its problems."""

    db: object
    run_id: str
    set_name: str
    out_dir: str
    recipe: Recipe
    model: object  # the policy: base + LoRA
    tok: object
    optimizer: object
    scheduler: object
    pool: list[dict]  # problems trained on: {id, text, answer, golden}
    holdout: list[dict]  # never trained on; evaluated before and after
    start_step: int = 0
    engine: object = None  # what samples rollouts and the held-out evaluation (engines.py), synced after each update
    by_id: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)  # problem id -> (prompt text, prompt ids)
    lock: object = None  # the run's lock file (checkpoints.lock), held while this process trains it
    dist: distributed.Dist = field(default_factory=distributed.Dist)  # this process's rank (one: rank 0 of 1)
    tracking: trackers.Trackers | None = None  # the --report-to mirrors (rank 0's; none elsewhere)


class Abandon(Exception):
    """Ctrl-C during a step: drop the step, nothing of it is written."""


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
    if ctx.start_step == 0 and ctx.holdout and dist.writer:
        display.message(f"evaluating {len(ctx.holdout)} held-out problems before training")
        summary["before"] = evaluate_holdout(ctx, 0)
        ctx.tracking.log_eval(0, summary["before"])
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
                    store.record_step(db, ctx.run_id, step, [x.row() for x in rollouts], metrics)
                    ctx.tracking.log(step, metrics)  # a copy of what was just committed
                    display.step(step, metrics)
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
    if status == "completed" and ctx.holdout:
        display.message(f"evaluating {len(ctx.holdout)} held-out problems after training")
        summary["after"] = evaluate_holdout(ctx, step)
        ctx.tracking.log_eval(step, summary["after"])
    store.set_status(db, ctx.run_id, status)
    summary.update(status=status, last_step=step, checkpoint_step=checkpoint,
                   reward_mean_per_step=store.rewards(db, ctx.run_id), out_dir=ctx.out_dir)
    return summary


def train_step(ctx: Context, step: int, grader: Grader, stop: "StopFlag") -> tuple[list[Rollout], dict]:
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
    if r.dynamic_sampling:  # 3
        sampled_groups, groups = refill(ctx, step, order, groups, timing, rng, grader, stop)
    sampled_groups = [list(g) for g in sampled_groups]  # as sampled: going gold edits `groups`
    # one stream per group (golden_replace: random), so the choice does not depend on the ranks
    outcomes = [go_gold(ctx, g, random.Random(f"{r.seed}:{step}:{g[0].problem_id}")) for g in groups]  # 4
    kept = assign_advantages(ctx, groups)  # 5
    t0 = time.perf_counter()
    split = mini_batches([(order[g[0].problem_id], g) for g in kept], r, dist)
    stats = update(ctx.model, ctx.tok, ctx.optimizer, [x for g in kept for x in g], r, stop, split, dist)  # 6
    ctx.engine.sync(ctx.model, step)  # step k+1 samples from the policy of update k, never an older one
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.scheduler.step()
    timing["update_s"] = time.perf_counter() - t0
    golden = [x for g in groups for x in g if x.is_golden]
    # One writer: rank 0 gets every rank's part of the step, in the step's order.
    parts = dist.gather(dict(sampled=sampled_groups, golden=golden, kept=kept, outcomes=outcomes, timing=timing))
    if not dist.writer:
        return [], {}
    place = lambda x: order[x.problem_id]  # noqa: E731
    sampled_groups = sorted((g for p in parts for g in p["sampled"]), key=lambda g: place(g[0]))
    golden = sorted((x for p in parts for x in p["golden"]), key=place)
    metrics = step_metrics(r, sampled_groups, [g for p in parts for g in p["kept"]],
                           [o for p in parts for o in p["outcomes"]], stats, merge_timing([p["timing"] for p in parts]), lr)
    if dist.active:
        metrics.update(world_size=dist.world, comm_s=dist.comm_s)
    return [x for g in sampled_groups for x in g] + golden, metrics  # the policy's own samples, then golden


# ---------------------------------------------------------------------------- a step, in order

def pick_problems(ctx: Context, step: int) -> list[str]:
    r, ids = ctx.recipe, [p["id"] for p in ctx.pool]
    if r.curriculum == "frontier":
        rates = store.pass_rates(ctx.db, ctx.run_id, r.frontier_window)
        golden = {p["id"] for p in ctx.pool if p["golden"]} if r.golden == "on" else set()
        picked = curriculum.frontier(rates, ids, step - 1, r.problems_per_step, r.seed, golden,
                                     r.frontier_hopeless_after)
    else:
        picked = curriculum.uniform(ids, step - 1, r.problems_per_step, r.seed)
    return list(dict.fromkeys(picked))  # an epoch boundary can draw a problem twice in one step


def roll_out(ctx: Context, step: int, problem_ids: list[str], grader: Grader,
             stop: "StopFlag") -> tuple[list[list[Rollout]], dict]:
    """G completions per problem from the current policy, graded. Returns the groups and
    {gen_s, score_s, tokens, reward_failures}. Sample j of a problem draws its tokens from the
    stream (seed, step, problem, j): the same samples in any batch, on any rank."""
    r = ctx.recipe
    if not problem_ids:  # a rank with no group this round (fewer groups than ranks)
        return [], dict(gen_s=0.0, score_s=0.0, tokens=0, reward_failures=0)
    t0 = time.perf_counter()
    completions: list[list[Completion]] = ctx.engine.generate(
        [prompt(ctx, pid)[0] for pid in problem_ids], n=r.samples_per_problem, max_new_tokens=r.max_new_tokens,
        temperature=r.temperature, top_p=r.top_p, batch_size=r.problems_per_step * r.samples_per_problem,
        seeds=[f"{r.seed}:{step}:{pid}" for pid in problem_ids])
    t1 = time.perf_counter()
    stop.check()
    version = ctx.engine.version
    if version != step - 1:  # the stale-policy bug (issue 11): never train on another policy's samples
        raise GcpoError(f"step {step}: the {ctx.engine.name} engine samples policy version {version}, not {step - 1}")
    groups = [[Rollout(problem_id=pid, sample_index=j, prompt_ids=prompt(ctx, pid)[1], completion_ids=c.token_ids,
                       completion=c.text, extracted_answer=extract_answer(c.text), truncated=c.truncated,
                       policy_version=version, sampler_logprobs=c.logprobs)
               for j, c in enumerate(cs)] for pid, cs in zip(problem_ids, completions)]
    flat = [x for g in groups for x in g]
    failures = score(flat, [ctx.by_id[x.problem_id] for x in flat], grader)
    return groups, dict(gen_s=t1 - t0, score_s=time.perf_counter() - t1,
                        tokens=sum(len(x.completion_ids) for x in flat), reward_failures=failures or 0)


def score(rollouts: list[Rollout], problems: list[dict], grader: Grader) -> int:
    """Reward 1 where the rollout is correct by the one grading path training and evaluation
    share (Grader.verdicts: a truncated completion is wrong; option letters and values map as
    in evaluation), else 0; or, with a custom reward (the grader's), what it returns, correct by
    its flag or reward == 1 (going gold counts that). Returns how many reward calls failed."""
    scores = grader.scores([(p, x.completion, x.extracted_answer, x.truncated) for p, x in zip(problems, rollouts)])
    for x, s in zip(rollouts, scores):
        x.correct = bool(s.correct)
        x.reward = float(s.reward)
    return sum(s.failed for s in scores)


def refill(ctx: Context, step: int, order: dict, groups: list[list[Rollout]], timing: dict, rng: random.Random,
           grader: Grader, stop: "StopFlag") -> tuple[list[list[Rollout]], list[list[Rollout]]]:
    """DAPO's dynamic sampling: keep only mixed groups, sampling unused problems (up to
    max_resample_rounds) until B of them are mixed; the first B mixed in the step's order stay.
    Ranks count their mixed groups together and share each round's problems as they shared the
    first ones; `order` (problem id -> place in the step, the same on every rank) gains them.
    Returns (every group this rank sampled, its kept ones); adds the rounds' costs to `timing`."""
    r, dist = ctx.recipe, ctx.dist
    sampled = list(groups)
    for _ in range(r.max_resample_rounds):
        mixed = sum(dist.gather(sum(_mixed(g) for g in sampled)))
        spare = [p["id"] for p in ctx.pool if p["id"] not in order]
        if mixed >= r.problems_per_step or not spare:
            break
        extra = rng.sample(spare, min(len(spare), r.problems_per_step - mixed))
        order.update({pid: len(order) + i for i, pid in enumerate(extra)})
        more, t = roll_out(ctx, step, dist.share(extra)[1], grader, stop)
        sampled += more
        for k in timing:
            timing[k] += t[k]
    places = sorted(p for part in dist.gather([order[g[0].problem_id] for g in sampled if _mixed(g)]) for p in part)
    first = set(places[: r.problems_per_step])
    return sampled, [g for g in sampled if order[g[0].problem_id] in first]


def _mixed(group: list[Rollout]) -> bool:
    return len({x.correct for x in group}) > 1


def go_gold(ctx: Context, group: list[Rollout], rng: random.Random | None) -> str | None:
    """Swap one wrong rollout of an all-wrong group for the golden answer. Returns what happened:
    "injected", "too_long" or None."""
    r = ctx.recipe
    problem = ctx.by_id[group[0].problem_id]
    slot = golden_slot([x.correct for x in group], bool(problem["golden"]) and r.golden == "on",
                       r.golden_replace, rng)
    if slot is None:
        return None
    text = r.golden_template.format(solution=problem["golden"], answer=problem["answer"])
    ids = response_ids(ctx.tok, text)
    if len(ids) > r.max_new_tokens:
        return "too_long"
    # The displaced rollout stays recorded (advantage NULL: not in the loss); the golden answer
    # is one extra row, sample index G.
    group[slot].advantage = None
    group[slot] = Rollout(problem_id=problem["id"], sample_index=len(group), prompt_ids=group[slot].prompt_ids,
                          completion_ids=ids, completion=text, extracted_answer=extract_answer(text),
                          truncated=False, reward=1.0, correct=True, is_golden=True)
    return "injected"


def assign_advantages(ctx: Context, groups: list[list[Rollout]]) -> list[list[Rollout]]:
    """Advantages per group (after DAPO's overlong shaping of rewards); returns the groups that
    stay in the loss."""
    r = ctx.recipe
    kept = []
    for g in groups:
        rewards = torch.tensor([x.reward for x in g])  # [G]
        if r.overlong_buffer:
            lengths = torch.tensor([len(x.completion_ids) for x in g])
            rewards = rewards + overlong_shaping(lengths, r.max_new_tokens, r.overlong_buffer, r.overlong_penalty)
            for x, v in zip(g, rewards.tolist()):
                x.reward = v
        if bool((rewards == rewards[0]).all()) and r.zero_variance == "skip":
            continue  # every advantage is 0: nothing to learn, nothing to compute
        for x, a in zip(g, group_advantages(rewards[None], r.scale_rewards)[0].tolist()):
            x.advantage = a
        kept.append(g)
    return kept


def mini_batch_plan(groups: list[tuple[int, list[int], list[bool]]], n: int,
                    token_sum: bool) -> tuple[dict[int, int], list[tuple[int, int, int, bool]]]:
    """How one step's kept rollouts are cut into `n` optimiser updates, from every kept group's
    (place in the step, completion lengths, in-the-loss flags), whichever rank holds it.
    Returns ({place: index of the group's first rollout}, per mini-batch (first, end, loss
    denominator, whether any sequence is in its loss)). The rollouts, in the step's order, are
    cut into near-equal contiguous mini-batches, groups kept in order; the denominator is the
    mini-batch's tokens (token_sum) or sequences, zero-advantage ones included."""
    start, lengths, active = {}, [], []
    for place, group_lengths, flags in sorted(groups):
        start[place] = len(lengths)
        lengths += group_lengths
        active += flags
    total = len(lengths)
    bounds = [total * i // n for i in range(n + 1)]
    return start, [(lo, hi, sum(lengths[lo:hi]) if token_sum else hi - lo, any(active[lo:hi]))
                   for lo, hi in zip(bounds, bounds[1:])]


def mini_batches(kept: list[tuple[int, list[Rollout]]], recipe: Recipe,
                 dist: distributed.Dist) -> tuple[list[list[Rollout]], list[tuple[int, int, int, bool]]]:
    """This rank's part of each of the step's mini-batches, and the plan (mini_batch_plan) of the
    whole step, the same on every rank. `kept`: (place in the step, group) of this rank's kept
    groups. Every rank learns every kept group's lengths and flags (one small gather), so each
    cuts the step exactly as one process holding all of it would."""
    layout = [(place, [len(x.completion_ids) for x in g], [bool(x.advantage) for x in g]) for place, g in kept]
    start, plan = mini_batch_plan([entry for part in dist.gather(layout) for entry in part], recipe.mini_batches,
                                  recipe.loss_agg == "token_sum")
    parts: list[list[Rollout]] = [[] for _ in plan]
    for place, g in kept:
        for j, x in enumerate(g):
            i = start[place] + j
            parts[next(k for k, (lo, hi, _, _) in enumerate(plan) if lo <= i < hi)].append(x)
    return parts, plan


def update(model, tok, optimizer, rollouts: list[Rollout], recipe: Recipe, stop: "StopFlag",
           split: tuple | None = None, dist: distributed.Dist | None = None) -> dict:
    """The PPO schedule over one rollout batch: `ppo_epochs` passes, each split into
    `mini_batches` optimiser updates. pi_old's log-probs are computed once, without gradient,
    before the first update; with a single update they are the policy's own, detached (the same
    numbers, so no extra forward). Zero-advantage sequences get no forward/backward but count in
    their mini-batch's denominator where the recipe says so. Log-probs are at the sampling
    temperature. Ctrl-C abandons the step only before the first optimiser step.

    `rollouts`: the kept rollouts in the step's order, cut as `mini_batches` cuts them; `split`
    (this rank's part of each mini-batch, the step's plan) when several ranks share the step.
    Each rank backpropagates its own part, every loss divided by the whole mini-batch's
    denominator; `dist.sum_grads` then makes every rank's gradient the whole mini-batch's (the
    sum of the parts), and every rank clips and steps on that same gradient. Why not DDP: a rank
    may run fewer micro-batches than another, or none (its sequences all have zero advantage),
    and DDP's all-reduce inside each backward would wait for a backward that never comes. Here a
    mini-batch is skipped only where no rank has a sequence in its loss (the plan says so on
    every rank), so every rank makes the same collectives in the same order."""
    dist = dist or distributed.Dist()
    parts, plan = split or mini_batches([(0, rollouts)], recipe, distributed.Dist())
    acc = dict(losses=[], norms=[], ratios=[], clipped=0.0, units=0.0, golden_logp=0.0, golden_tokens=0,
               mm_abs=0.0, mm_kl=0.0, mm_tokens=0.0, tis_sum=0.0, tis_n=0.0)
    if not any(active for *_, active in plan):
        return update_stats([acc])
    temperature = recipe.temperature or 1.0  # greedy sampling: the policy's own distribution
    amp = autocast_context(model, recipe.model.autocast)
    # HF turns the KV cache off under gradient checkpointing, so no prompt sharing there.
    share = not recipe.model.gradient_checkpointing

    def logprobs(chunk):  # -> logp, mask: [n, L]
        with amp():
            return completion_logprobs(model, tok, [x.prompt_ids for x in chunk], [x.completion_ids for x in chunk],
                                       share, temperature)

    on_policy = recipe.mini_batches * recipe.ppo_epochs == 1
    old = {} if on_policy else old_logprobs(logprobs, [x for b in parts for x in b if x.advantage], recipe.micro_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(recipe.ppo_epochs):
        for batch, (_, _, denom, anyone) in zip(parts, plan):
            if not anyone:  # no rank has a sequence in this mini-batch's loss: skipped everywhere
                continue
            active = sorted((x for x in batch if x.advantage), key=lambda x: len(x.prompt_ids) + len(x.completion_ids))
            first = not acc["norms"]
            optimizer.zero_grad(set_to_none=True)
            acc["losses"].append(sum(backward(logprobs, chunk, None if on_policy else old, denom, recipe, acc,
                                              stop if first else None, epoch == 0)
                                     for chunk in (active[i:i + recipe.micro_batch]
                                                   for i in range(0, len(active), recipe.micro_batch))))
            if first:
                stop.check()
            dist.sum_grads(params)  # the whole mini-batch's gradient on every rank (no-op alone)
            acc["norms"].append(float(torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)))
            optimizer.step()
    return update_stats(dist.gather(acc))


def update_stats(accs: list[dict]) -> dict:
    """The update's metrics from every rank's accumulators (one process: its own). A
    mini-batch's loss is the sum of the ranks' parts; the gradient norm is the same everywhere
    (taken after the sum)."""
    losses = [sum(parts) for parts in zip(*(a["losses"] for a in accs))]
    norms, ratios = accs[0]["norms"], [x for a in accs for x in a["ratios"]]
    if not norms:
        return dict(loss=0.0, grad_norm=0.0, clip_frac=0.0, golden_logp_mean=None, ratio_mean=None,
                    ratio_min=None, ratio_max=None, optimizer_updates=0, sampler_logp_abs_diff=None,
                    sampler_kl=None, sampler_tokens=0, tis_weight_mean=None)
    total = {k: sum(a[k] for a in accs) for k in ("clipped", "units", "golden_logp", "golden_tokens", "mm_abs",
                                                  "mm_kl", "mm_tokens", "tis_sum", "tis_n")}
    t = total["mm_tokens"]
    return dict(loss=sum(losses) / len(losses), grad_norm=sum(norms) / len(norms),
                clip_frac=total["clipped"] / total["units"] if total["units"] else 0.0,
                golden_logp_mean=total["golden_logp"] / total["golden_tokens"] if total["golden_tokens"] else None,
                ratio_mean=sum(ratios) / len(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                optimizer_updates=len(norms),
                sampler_logp_abs_diff=total["mm_abs"] / t if t else None, sampler_kl=total["mm_kl"] / t if t else None,
                sampler_tokens=int(t), tis_weight_mean=total["tis_sum"] / total["tis_n"] if total["tis_n"] else None)


def backward(logprobs, chunk: list[Rollout], old: dict | None, denom: float, recipe: Recipe, acc: dict,
             stop: "StopFlag | None", first_epoch: bool = True) -> float:
    """One micro-batch's share of a mini-batch's loss, backpropagated; returns its value and adds
    its clip counts, ratios, (with `stop`, i.e. in the first update) pi_old's golden log-probs
    and (in the first epoch, where each sequence is seen once) the sampler/trainer mismatch to
    `acc`. `old`: pi_old per rollout, or None on-policy (then pi_old is logp, detached)."""
    if stop is not None:
        stop.check()
    logp, mask = logprobs(chunk)
    old_logp = logp.detach() if old is None else stack_padded([old[id(x)] for x in chunk], logp)
    # the engine's own log-probs, where it reported them (never for a golden answer)
    has = [bool(x.sampler_logprobs) and not x.is_golden and len(x.sampler_logprobs) == len(x.completion_ids)
           for x in chunk]
    weight = None
    if any(has):
        rows = [torch.tensor(x.sampler_logprobs) if h else torch.zeros(0) for x, h in zip(chunk, has)]
        sampler_logp = stack_padded(rows, logp)
        smask = mask * torch.tensor(has, device=mask.device, dtype=mask.dtype)[:, None]
        if first_epoch:
            abs_sum, kl_sum, tokens = sampler_mismatch(old_logp, sampler_logp, smask)
            acc["mm_abs"] += abs_sum
            acc["mm_kl"] += kl_sum
            acc["mm_tokens"] += tokens
        if recipe.tis_cap is not None:
            weight = tis_weights(old_logp, sampler_logp, smask, recipe.tis_cap,
                                 "token" if recipe.ratio_level == "token" else "sequence")
            counted = smask.bool() if weight.dim() == 2 else torch.tensor(has, device=weight.device)
            acc["tis_sum"] += float(weight[counted].sum())
            acc["tis_n"] += float(counted.sum())
    parts = policy_loss(logp, old_logp, mask,
                        torch.tensor([x.advantage for x in chunk], device=logp.device, dtype=logp.dtype),
                        ratio_level=recipe.ratio_level, loss_agg=recipe.loss_agg, eps_low=recipe.eps_low,
                        eps_high=recipe.eps_high, denom=denom,
                        golden=torch.tensor([x.is_golden for x in chunk], device=logp.device),
                        golden_weighting=recipe.golden_weighting, weight=weight)
    parts.loss.backward()
    acc["clipped"] += parts.clipped
    acc["units"] += parts.clip_units
    for i, (x, ratio) in enumerate(zip(chunk, parts.seq_ratio.tolist())):
        x.seq_ratio = ratio
        acc["ratios"].append(ratio)
        if stop is not None and x.is_golden:  # pi_old's log-prob of the golden answer
            acc["golden_logp"] += float(old_logp[i].sum())
            acc["golden_tokens"] += len(x.completion_ids)
    return float(parts.loss.detach())


def old_logprobs(logprobs, rollouts: list[Rollout], micro_batch: int) -> dict:
    """pi_old: each rollout's completion log-probs [L_i] under the policy that sampled, without
    gradient, keyed by id(rollout)."""
    old = {}
    ordered = sorted(rollouts, key=lambda x: len(x.prompt_ids) + len(x.completion_ids))
    with torch.no_grad():
        for i in range(0, len(ordered), micro_batch):
            chunk = ordered[i:i + micro_batch]
            logp, _ = logprobs(chunk)
            for row, x in zip(logp, chunk):
                old[id(x)] = row[: len(x.completion_ids)]
    return old


def stack_padded(rows: list, like):
    """Rows of different lengths as one tensor shaped and placed like `like` ([n, L]), zero-padded."""
    out = torch.zeros_like(like)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def step_metrics(r: Recipe, groups: list[list[Rollout]], kept: list[list[Rollout]], outcomes: list,
                 stats: dict, timing: dict, lr: float) -> dict:
    """What a step records (the algorithm doc's list), from the groups the policy sampled."""
    sampled = [x for g in groups for x in g]
    n, n_groups, G = max(1, len(sampled)), max(1, len(groups)), r.samples_per_problem
    correct = [sum(x.correct for x in g) for g in groups]
    return dict(
        reward_mean=sum(x.correct for x in sampled) / n,
        all_wrong_frac=sum(c == 0 for c in correct) / n_groups,
        all_correct_frac=sum(c == G for c in correct) / n_groups,
        mixed_frac=sum(0 < c < G for c in correct) / n_groups,
        golden_injections=outcomes.count("injected"), golden_too_long=outcomes.count("too_long"),
        golden_logp_mean=stats["golden_logp_mean"], clip_frac=stats["clip_frac"],
        ratio_mean=stats["ratio_mean"], ratio_min=stats["ratio_min"], ratio_max=stats["ratio_max"],
        optimizer_updates=stats["optimizer_updates"], sampler_logp_abs_diff=stats["sampler_logp_abs_diff"],
        sampler_kl=stats["sampler_kl"], sampler_tokens=stats["sampler_tokens"],
        tis_weight_mean=stats["tis_weight_mean"],
        completion_tokens_mean=timing["tokens"] / n, truncation_rate=sum(x.truncated for x in sampled) / n,
        grad_norm=stats["grad_norm"], loss=stats["loss"], lr=lr, gen_s=timing["gen_s"],
        score_s=timing["score_s"], update_s=timing["update_s"],
        tokens_per_s=timing["tokens"] / timing["gen_s"] if timing["gen_s"] else 0.0,
        groups=len(groups), groups_in_loss=len(kept), reward_failures=timing.get("reward_failures", 0),
        sequences_in_loss=sum(1 for g in kept for x in g if x.advantage != 0.0),
    )


def merge_timing(timings: list[dict]) -> dict:
    """Every rank's {gen_s, score_s, update_s, tokens, reward_failures} as the step's: the ranks
    work at once, so a phase takes as long as its slowest rank; tokens and failures add up."""
    return {k: (max if k.endswith("_s") else sum)(t[k] for t in timings) for k in timings[0]}


def save_checkpoint(ctx: Context, step: int) -> None:
    checkpoints.save(ctx.out_dir, step, ctx.model, ctx.optimizer, ctx.scheduler)
    # The database names the new checkpoint before the old one's optimiser state goes: a crash
    # between the two must leave it naming a complete checkpoint.
    store.set_checkpoint(ctx.db, ctx.run_id, step)
    checkpoints.prune(ctx.out_dir, step)


def prompt(ctx: Context, problem_id: str) -> tuple[str, list[int]]:
    """A problem's prompt (the recipe's preset, prompts.py) and its tokens, exactly as generate()
    tokenises it."""
    if problem_id not in ctx.prompts:
        text = render_prompt(ctx.tok, ctx.by_id[problem_id]["text"], prompt_from_recipe(ctx.recipe))
        ctx.prompts[problem_id] = (text, ctx.tok(text, add_special_tokens=False).input_ids)
    return ctx.prompts[problem_id]


def generation_model(ctx: Context):
    """The hf engine's sampling model, merged up to the current policy."""
    return ctx.engine.model


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
    with dist.together():  # rank 0 reads the database (a bad run id, a live run: every rank stops)
        opened = read_run(db, recipe, resume_run, steps, save_every, report_to) if dist.writer else None
    recipe, set_name, problems, start, run = dist.broadcast(opened and opened[:5])
    run_lock = opened and opened[5]
    pool, holdout = split_holdout(problems, recipe.eval.holdout)
    with dist.together():  # a model, adapter or checkpoint that does not load stops every rank
        # processes of one host share its cores (torchrun sets LOCAL_WORLD_SIZE)
        torch.set_num_threads(recipe.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
        torch.manual_seed(recipe.seed)
        model, tok, _ = load_base(recipe.model, device=dist.device)
        prompt_from_recipe(recipe).render(tok, pool[0]["text"])  # a chat preset without a chat template: fail now
        kind = engines.resolve(recipe.engine, next(model.parameters()).device.type)
        merge = recipe.model.quant == "none" and kind == "hf"  # the hf engine samples a merged copy
        sampler = MergedSampler(model, recipe.model.sampler_dtype, recipe.model.attention) if merge else None
        prepare_for_update(model, recipe.model, autocast_enabled(model, recipe.model.autocast))
        model = prepare_base(model, recipe.model)
        if start and dist.writer:  # the other ranks get rank 0's weights below
            model = load_adapter(model, checkpoints.adapter(checkpoints.run_folder(run), start), trainable=True)
        else:
            model = add_lora(model, recipe.lora)
        model.train()  # from_pretrained leaves eval mode: no gradient checkpointing, no LoRA dropout
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        # transformers' schedules; its "constant" would ignore the warmup the recipe asks for
        schedule = "constant_with_warmup" if recipe.lr_schedule == "constant" else recipe.lr_schedule
        scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=recipe.warmup_steps,
                                  num_training_steps=recipe.steps)
        # before the run exists: a vLLM that fails to start leaves no run behind
        engine = engines.for_training(kind, recipe, model, tok, sampler, problems, dist.rank)
        begun = None
        if dist.writer:
            state = checkpoints.load_trainer_state(checkpoints.run_folder(run), start) if start else None
            if state:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            run_id, out_dir, run_lock = begin_run(db, recipe, set_name, run, start, run_lock, display)
            env = dict(environment(model, recipe.model, sampler), **engine.describe())
            store.set_environment(db, run_id, dict(env, world_size=dist.world) if dist.active else env)
            display.message(describe_environment(env) + (f", {dist.world} processes" if dist.active else ""))
            begun = (run_id, out_dir, state)
    run_id, out_dir, state = dist.broadcast(begun)
    if state and not dist.writer:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    dist.broadcast_params(params)  # every rank starts from rank 0's weights (a resumed run's adapter)
    with dist.together():
        engine.sync(model, start)  # the policy of update `start` samples step start + 1
    tracking = trackers.Trackers(recipe.report_to if dist.writer else (), run_id=run_id, config=to_dict(recipe),
                                 out_dir=out_dir, start_step=start, warn=display.message)
    return Context(db=db, run_id=run_id, set_name=set_name, out_dir=out_dir, recipe=recipe, model=model, tok=tok,
                   optimizer=optimizer, scheduler=scheduler, pool=pool, holdout=holdout, start_step=start,
                   engine=engine, by_id={p["id"]: p for p in problems}, lock=run_lock, dist=dist,
                   tracking=tracking)


def read_run(db, recipe: Recipe | None, resume_run: str | None, steps: int | None, save_every: int | None,
             report_to: list[str] | None) -> tuple:
    """What setting up reads from the database (rank 0's part): (recipe, set name, problems,
    start step, the run's row or None, the run's lock when resuming). A live run is left alone;
    a tracker whose package is missing fails here, before any model loads."""
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
    engines.check_available(recipe.engine, recipe.rollout_server)
    set_name, problems = load_problems(db, set_name, recipe.golden_source)
    if not split_holdout(problems, recipe.eval.holdout)[0]:
        raise GcpoError(f"set '{set_name}' has {len(problems)} problems and eval.holdout is "
                        f"{recipe.eval.holdout}: nothing left to train on")
    return recipe, set_name, problems, start, run, run_lock


def begin_run(db, recipe: Recipe, set_name: str, run: dict | None, start: int, run_lock, display) -> tuple:
    """Rank 0: create the run, or mark a resumed one running again from its checkpoint (dropping
    the steps recorded after it). Returns (run id, its folder, its lock)."""
    if run:
        dropped = store.restart_run(db, run["id"], checkpoint_step=start, recipe=to_dict(recipe))
        if dropped:
            display.message(f"discarded {dropped} step(s) recorded after checkpoint {start}")
        return run["id"], run["out_dir"], run_lock
    run_id = store.new_id()
    out_dir = str(paths.run_dir(run_id))
    run_lock = checkpoints.lock(out_dir, run_id)
    store.create_run(db, recipe=to_dict(recipe), set_name=set_name, out_dir=out_dir, run_id=run_id)
    return run_id, out_dir, run_lock


def split_holdout(problems: list[dict], holdout: int) -> tuple[list[dict], list[dict]]:
    """(problems trained on, the held-out last `holdout`)."""
    held = problems[len(problems) - holdout:] if holdout else []
    return problems[: len(problems) - len(held)], held


def load_problems(db, set_ref: str, golden_source: str = "any") -> tuple[str, list[dict]]:
    """(set name, its problems in ingest order, each with the verified golden answer the recipe's
    golden_source chooses, or None)."""
    set_name, problems = store.set_problems(db, set_ref)
    golden = store.verified_golden(db, set_name, golden_source)
    return set_name, [dict(p, golden=golden.get(p["id"])) for p in problems]


def default_set(db, recipe: Recipe) -> str:
    """The recipe's synthetic set (made once, then reused)."""
    name = f"arithmetic-l{recipe.synthetic_levels.replace(',', '_')}-{recipe.synthetic_count}"
    return ensure_synthetic_set(db, name, count=recipe.synthetic_count, seed=0,
                                levels=parse_levels(recipe.synthetic_levels))


def evaluate_holdout(ctx: Context, step: int) -> dict | None:
    """The held-out problems, as `gcpo eval --run RUN@STEP` would grade them."""
    e, r = ctx.recipe.eval, ctx.recipe
    return evaluate_problems(
        ctx.db, ctx.engine, ctx.tok, ctx.holdout, label=f"run:{ctx.run_id}@{step}",
        set_name=ctx.set_name, k=e.k, temperature=e.temperature, max_new_tokens=e.max_new_tokens or r.max_new_tokens,
        seed=r.seed, prompt=prompt_from_recipe(r), run_id=ctx.run_id, run_step=step,
        batch_size=max(32, r.problems_per_step * r.samples_per_problem), progress=False)


@dataclass
class StopFlag:
    """First Ctrl-C (or SIGTERM, as a scheduler or `kill` sends): finish or abandon the current
    step cleanly, save, mark the run interrupted. Second: stop at once. `abandon=False` (several
    ranks): the step is always finished, never abandoned on one rank alone."""

    requested: bool = False
    abandon: bool = True
    _previous: dict = field(default_factory=dict)

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests): signal handling stays default
                pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def check(self):
        if self.requested and self.abandon:
            raise Abandon


class NullDisplay:
    """What the loop reports to; the CLI passes a rich progress display."""

    def message(self, text: str) -> None: ...
    def start(self, ctx: Context, total: int, done: int) -> None: ...
    def step(self, step: int, metrics: dict) -> None: ...
    def stop(self) -> None: ...
