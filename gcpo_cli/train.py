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
loses at most those steps and no rollout is ever recorded twice. Sampling is seeded per step
(seed, step), so a resumed run draws the same problems and samples an uninterrupted one would.
The helpers below come in the order a step calls them; setting up and the held-out evaluation
come last.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field

import torch
from transformers import get_scheduler

from . import checkpoints, curriculum, paths, store
from .answers import Grader, extract_answer
from .errors import GcpoError
from .evaluation import evaluate_problems
from .ingest import ensure_synthetic_set
from .loss import golden_slot, group_advantages, overlong_shaping, policy_loss
from .model import (MergedSampler, add_lora, autocast_context, autocast_enabled, completion_logprobs,
                    describe_environment, environment,
                    load_adapter, load_base, prepare_base, prepare_for_update)
from .prompts import from_recipe as prompt_from_recipe
from .recipe import Recipe, from_dict, to_dict
from .rollout import Completion, generate, render_prompt, response_ids
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

    def row(self) -> dict:
        return dict(problem_id=self.problem_id, sample_index=self.sample_index, completion=self.completion,
                    extracted_answer=self.extracted_answer, reward=self.reward, correct=int(self.correct),
                    completion_tokens=len(self.completion_ids), truncated=int(self.truncated),
                    is_golden=int(self.is_golden), advantage=self.advantage, seq_ratio=self.seq_ratio)


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
    sampler: MergedSampler | None = None  # None: the (quantised) policy samples itself
    stale: bool = True  # the policy changed since the sampler last merged its weights
    by_id: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)  # problem id -> (prompt text, prompt ids)
    lock: object = None  # the run's lock file (checkpoints.lock), held while this process trains it


class Abandon(Exception):
    """Ctrl-C during a step: drop the step, nothing of it is written."""


# ---------------------------------------------------------------------------- the loop

def train(db, recipe: Recipe | None = None, *, resume_run: str | None = None, steps: int | None = None,
          save_every: int | None = None, display=None) -> dict:
    """Run (or resume) a training run to its last step. Returns a summary with the run id."""
    display = display or NullDisplay()
    ctx = setup(db, recipe, resume_run, steps, save_every, display)
    try:
        return run_steps(ctx, display)
    finally:
        ctx.lock.close()  # releases the run's lock


def run_steps(ctx: Context, display) -> dict:
    """The held-out evaluation before, every step, checkpoints, the evaluation after."""
    db, r = ctx.db, ctx.recipe
    summary: dict = dict(run_id=ctx.run_id, recipe=r.name, algorithm=r.algorithm, set_name=ctx.set_name)
    if ctx.start_step == 0 and ctx.holdout:
        display.message(f"evaluating {len(ctx.holdout)} held-out problems before training")
        summary["before"] = evaluate_holdout(ctx, 0)
    status, step = "completed", ctx.start_step
    with StopFlag() as stop, Grader(reward=r.reward) as grader:
        display.start(ctx, r.steps, ctx.start_step)
        try:
            for step in range(ctx.start_step + 1, r.steps + 1):
                try:
                    rollouts, metrics = train_step(ctx, step, grader, stop)
                except Abandon:
                    step, status = step - 1, "interrupted"
                    break
                store.record_step(db, ctx.run_id, step, [x.row() for x in rollouts], metrics)
                display.step(step, metrics)
                if (r.save_every and step % r.save_every == 0) or step == r.steps:
                    save_checkpoint(ctx, step)
                if stop.requested:
                    status = "interrupted"
                    break
        except BaseException as e:  # record why, then let it surface
            display.stop()
            store.set_status(db, ctx.run_id, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                             error=f"{type(e).__name__}: {e}")
            raise
        display.stop()
    checkpoint = store.get_run(db, ctx.run_id)["checkpoint_step"] or 0
    if status == "interrupted" and step > checkpoint:
        save_checkpoint(ctx, step)
        checkpoint = step
    if status == "completed" and ctx.holdout:
        display.message(f"evaluating {len(ctx.holdout)} held-out problems after training")
        summary["after"] = evaluate_holdout(ctx, step)
    store.set_status(db, ctx.run_id, status)
    summary.update(status=status, last_step=step, checkpoint_step=checkpoint,
                   reward_mean_per_step=store.rewards(db, ctx.run_id), out_dir=ctx.out_dir)
    return summary


def train_step(ctx: Context, step: int, grader: Grader, stop: "StopFlag") -> tuple[list[Rollout], dict]:
    """Steps 1-6 of the module docstring; returns every rollout to record and the metrics."""
    r = ctx.recipe
    torch.manual_seed(r.seed * 1_000_003 + step)
    rng = random.Random(r.seed * 1_000_003 + step)
    problem_ids = pick_problems(ctx, step)  # 1
    groups, timing = roll_out(ctx, problem_ids, grader, stop)  # 2
    sampled_groups = groups
    if r.dynamic_sampling:  # 3
        sampled_groups, groups = refill(ctx, groups, timing, rng, grader, stop)
    sampled_groups = [list(g) for g in sampled_groups]  # as sampled: going gold edits `groups`
    outcomes = [go_gold(ctx, g, rng) for g in groups]  # 4
    kept = assign_advantages(ctx, groups)  # 5
    t0 = time.perf_counter()
    stats = update(ctx.model, ctx.tok, ctx.optimizer, [x for g in kept for x in g], r, stop)  # 6
    ctx.stale = True
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.scheduler.step()
    timing["update_s"] = time.perf_counter() - t0
    sampled = [x for g in sampled_groups for x in g]  # the policy's own samples
    golden = [x for g in groups for x in g if x.is_golden]
    metrics = step_metrics(r, sampled_groups, kept, outcomes, stats, timing, lr)
    return sampled + golden, metrics


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


def roll_out(ctx: Context, problem_ids: list[str], grader: Grader, stop: "StopFlag") -> tuple[list[list[Rollout]], dict]:
    """G completions per problem from the current policy, graded. Returns the groups and
    {gen_s, score_s, tokens, reward_failures}."""
    r = ctx.recipe
    t0 = time.perf_counter()
    # A quantised policy samples itself: under the update's bf16 autocast, so activations and the
    # KV cache are bf16 rather than the fp32 that k-bit preparation leaves (GPU memory).
    amp = autocast_context(ctx.model, r.model.autocast) if ctx.sampler is None else contextlib.nullcontext
    with amp():
        completions: list[list[Completion]] = generate(
            generation_model(ctx), ctx.tok, [prompt(ctx, pid)[0] for pid in problem_ids],
            n=r.samples_per_problem, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
            top_p=r.top_p, batch_size=r.problems_per_step * r.samples_per_problem)
    t1 = time.perf_counter()
    stop.check()
    groups = [[Rollout(problem_id=pid, sample_index=j, prompt_ids=prompt(ctx, pid)[1], completion_ids=c.token_ids,
                       completion=c.text, extracted_answer=extract_answer(c.text), truncated=c.truncated)
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


def refill(ctx: Context, groups: list[list[Rollout]], timing: dict, rng: random.Random, grader: Grader,
           stop: "StopFlag") -> tuple[list[list[Rollout]], list[list[Rollout]]]:
    """DAPO's dynamic sampling: keep only mixed groups, sampling unused problems (up to
    max_resample_rounds) until B of them are mixed. Returns (every group sampled, the kept B);
    adds the extra rounds' costs to `timing`."""
    r = ctx.recipe
    used = {g[0].problem_id for g in groups}
    sampled = list(groups)
    for _ in range(r.max_resample_rounds):
        mixed = [g for g in sampled if _mixed(g)]
        spare = [p["id"] for p in ctx.pool if p["id"] not in used]
        if len(mixed) >= r.problems_per_step or not spare:
            break
        extra = rng.sample(spare, min(len(spare), r.problems_per_step - len(mixed)))
        used.update(extra)
        more, t = roll_out(ctx, extra, grader, stop)
        sampled += more
        for k in timing:
            timing[k] += t[k]
    return sampled, [g for g in sampled if _mixed(g)][: r.problems_per_step]


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


def update(model, tok, optimizer, rollouts: list[Rollout], recipe: Recipe, stop: "StopFlag") -> dict:
    """The PPO schedule over one rollout batch: `ppo_epochs` passes, each split into
    `mini_batches` optimiser updates. pi_old's log-probs are computed once, without gradient,
    before the first update; with a single update they are the policy's own, detached (the same
    numbers, so no extra forward). Zero-advantage sequences get no forward/backward but count in
    their mini-batch's denominator where the recipe says so. Log-probs are at the sampling
    temperature. Ctrl-C abandons the step only before the first optimiser step."""
    stats = dict(loss=0.0, grad_norm=0.0, clip_frac=0.0, golden_logp_mean=None, ratio_mean=None,
                 ratio_min=None, ratio_max=None, optimizer_updates=0)
    if not any(x.advantage for x in rollouts):
        return stats
    temperature = recipe.temperature or 1.0  # greedy sampling: the policy's own distribution
    amp = autocast_context(model, recipe.model.autocast)
    # HF turns the KV cache off under gradient checkpointing, so no prompt sharing there.
    share = not recipe.model.gradient_checkpointing

    def logprobs(chunk):  # -> logp, mask: [n, L]
        with amp():
            return completion_logprobs(model, tok, [x.prompt_ids for x in chunk], [x.completion_ids for x in chunk],
                                       share, temperature)

    on_policy = recipe.mini_batches * recipe.ppo_epochs == 1
    old = {} if on_policy else old_logprobs(logprobs, [x for x in rollouts if x.advantage], recipe.micro_batch)
    n = len(rollouts)  # near-equal contiguous mini-batches of the batch, groups kept in order
    bounds = [n * i // recipe.mini_batches for i in range(recipe.mini_batches + 1)]
    mini_batches = [rollouts[bounds[i]:bounds[i + 1]] for i in range(recipe.mini_batches)]
    params = [p for p in model.parameters() if p.requires_grad]
    acc = dict(losses=[], norms=[], ratios=[], clipped=0.0, units=0.0, golden_logp=0.0, golden_tokens=0)
    for _ in range(recipe.ppo_epochs):
        for batch in mini_batches:
            active = sorted((x for x in batch if x.advantage), key=lambda x: len(x.prompt_ids) + len(x.completion_ids))
            if not active:
                continue
            first = not acc["norms"]
            optimizer.zero_grad(set_to_none=True)
            denom = sum(len(x.completion_ids) for x in batch) if recipe.loss_agg == "token_sum" else len(batch)
            acc["losses"].append(sum(backward(logprobs, chunk, None if on_policy else old, denom, recipe, acc,
                                              stop if first else None)
                                     for chunk in (active[i:i + recipe.micro_batch]
                                                   for i in range(0, len(active), recipe.micro_batch))))
            if first:
                stop.check()
            acc["norms"].append(float(torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)))
            optimizer.step()
    ratios = acc["ratios"]
    return dict(loss=sum(acc["losses"]) / len(acc["losses"]), grad_norm=sum(acc["norms"]) / len(acc["norms"]),
                clip_frac=acc["clipped"] / acc["units"] if acc["units"] else 0.0,
                golden_logp_mean=acc["golden_logp"] / acc["golden_tokens"] if acc["golden_tokens"] else None,
                ratio_mean=sum(ratios) / len(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                optimizer_updates=len(acc["norms"]))


def backward(logprobs, chunk: list[Rollout], old: dict | None, denom: float, recipe: Recipe, acc: dict,
             stop: "StopFlag | None") -> float:
    """One micro-batch's share of a mini-batch's loss, backpropagated; returns its value and adds
    its clip counts, ratios and (with `stop`, i.e. in the first update) pi_old's golden log-probs
    to `acc`. `old`: pi_old per rollout, or None on-policy (then pi_old is logp, detached)."""
    if stop is not None:
        stop.check()
    logp, mask = logprobs(chunk)
    old_logp = logp.detach() if old is None else stack_padded([old[id(x)] for x in chunk], logp)
    parts = policy_loss(logp, old_logp, mask,
                        torch.tensor([x.advantage for x in chunk], device=logp.device, dtype=logp.dtype),
                        ratio_level=recipe.ratio_level, loss_agg=recipe.loss_agg, eps_low=recipe.eps_low,
                        eps_high=recipe.eps_high, denom=denom,
                        golden=torch.tensor([x.is_golden for x in chunk], device=logp.device),
                        golden_weighting=recipe.golden_weighting)
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
        optimizer_updates=stats["optimizer_updates"],
        completion_tokens_mean=timing["tokens"] / n, truncation_rate=sum(x.truncated for x in sampled) / n,
        grad_norm=stats["grad_norm"], loss=stats["loss"], lr=lr, gen_s=timing["gen_s"],
        score_s=timing["score_s"], update_s=timing["update_s"],
        tokens_per_s=timing["tokens"] / timing["gen_s"] if timing["gen_s"] else 0.0,
        groups=len(groups), groups_in_loss=len(kept), reward_failures=timing.get("reward_failures", 0),
        sequences_in_loss=sum(1 for g in kept for x in g if x.advantage != 0.0),
    )


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
    """The model to sample from; the merged copy is refreshed only after an update (DAPO's
    refill rounds and the held-out evaluation reuse it)."""
    if ctx.sampler is None:
        return ctx.model
    if ctx.stale:
        ctx.sampler.sync(ctx.model)
        ctx.stale = False
    return ctx.sampler.model


# ---------------------------------------------------------------------------- setting up

def setup(db, recipe: Recipe | None, resume_run: str | None, steps: int | None,
          save_every: int | None, display) -> Context:
    """Load the model, the problems and (on resume) the checkpoint; create or restart the run.
    The run is created (or marked running) only once everything loaded: a missing model or
    checkpoint leaves no phantom "running" run behind."""
    run, start = None, 0
    if resume_run:
        run = store.resolve_run(db, resume_run)
        run_lock = checkpoints.lock(checkpoints.run_folder(run), run["id"])  # a live run is left alone
        start = int(run["checkpoint_step"] or 0)
        if steps is not None and steps <= start:
            raise GcpoError(f"run {run['id']} has done {start} steps (checkpoint {start}); --steps must be more")
        overrides = {k: v for k, v in dict(steps=steps, save_every=save_every).items() if v is not None}
        recipe = from_dict({**store.loads(run["recipe_json"]), **overrides})
        set_name = run["set_name"]
    else:
        set_name = recipe.set_name or default_set(db, recipe)
    torch.set_num_threads(recipe.threads or os.cpu_count() or 1)
    set_name, problems = load_problems(db, set_name)
    holdout = problems[len(problems) - recipe.eval.holdout:] if recipe.eval.holdout else []
    pool = problems[: len(problems) - len(holdout)]
    if not pool:
        raise GcpoError(f"set '{set_name}' has {len(problems)} problems and eval.holdout is "
                        f"{recipe.eval.holdout}: nothing left to train on")
    torch.manual_seed(recipe.seed)
    model, tok, _ = load_base(recipe.model)
    prompt_from_recipe(recipe).render(tok, pool[0]["text"])  # a chat preset without a chat template: fail now
    sampler = MergedSampler(model, recipe.model.sampler_dtype) if recipe.model.quant == "none" else None
    prepare_for_update(model, recipe.model, autocast_enabled(model, recipe.model.autocast))
    model = prepare_base(model, recipe.model)
    if start:
        model = load_adapter(model, checkpoints.adapter(checkpoints.run_folder(run), start), trainable=True)
    else:
        model = add_lora(model, recipe.lora)
    model.train()  # from_pretrained leaves eval mode: no gradient checkpointing, no LoRA dropout
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    # transformers' schedules; its "constant" would ignore the warmup the recipe asks for
    schedule = "constant_with_warmup" if recipe.lr_schedule == "constant" else recipe.lr_schedule
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=recipe.warmup_steps,
                              num_training_steps=recipe.steps)
    if start:
        state = checkpoints.load_trainer_state(checkpoints.run_folder(run), start)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    if run:
        dropped = store.restart_run(db, run["id"], checkpoint_step=start, recipe=to_dict(recipe))
        if dropped:
            display.message(f"discarded {dropped} step(s) recorded after checkpoint {start}")
        run_id, out_dir = run["id"], run["out_dir"]
    else:
        run_id = store.new_id()
        out_dir = str(paths.run_dir(run_id))
        run_lock = checkpoints.lock(out_dir, run_id)
        store.create_run(db, recipe=to_dict(recipe), set_name=set_name, out_dir=out_dir, run_id=run_id)
    env = environment(model, recipe.model, sampler)
    store.set_environment(db, run_id, env)
    display.message(describe_environment(env))
    return Context(db=db, run_id=run_id, set_name=set_name, out_dir=out_dir, recipe=recipe, model=model, tok=tok,
                   optimizer=optimizer, scheduler=scheduler, pool=pool, holdout=holdout, start_step=start,
                   sampler=sampler, by_id={p["id"]: p for p in problems}, lock=run_lock)


def load_problems(db, set_ref: str) -> tuple[str, list[dict]]:
    """(set name, its problems in ingest order, each with its first verified golden answer or None)."""
    set_name, problems = store.set_problems(db, set_ref)
    golden = store.verified_golden(db, set_name)
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
        ctx.db, generation_model(ctx), ctx.tok, ctx.holdout, label=f"run:{ctx.run_id}@{step}",
        set_name=ctx.set_name, k=e.k, temperature=e.temperature, max_new_tokens=e.max_new_tokens or r.max_new_tokens,
        seed=r.seed, prompt=prompt_from_recipe(r), run_id=ctx.run_id, run_step=step,
        batch_size=max(32, r.problems_per_step * r.samples_per_problem), progress=False)


@dataclass
class StopFlag:
    """First Ctrl-C (or SIGTERM, as a scheduler or `kill` sends): finish or abandon the current
    step cleanly, save, mark the run interrupted. Second: stop at once."""

    requested: bool = False
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
        if self.requested:
            raise Abandon


class NullDisplay:
    """What the loop reports to; the CLI passes a rich progress display."""

    def message(self, text: str) -> None: ...
    def start(self, ctx: Context, total: int, done: int) -> None: ...
    def step(self, step: int, metrics: dict) -> None: ...
    def stop(self) -> None: ...
