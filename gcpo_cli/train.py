"""The GCPO training loop: set up, then one visible for-loop over steps.

Each step, top to bottom:
  1. pick B problems (curriculum), render their prompts;
  2. roll out G completions per problem from the current policy (pi_old);
  3. grade each with math-verify: reward 1 if the final answer verifies and it was not truncated;
  4. go gold: in an all-wrong group, the last wrong rollout becomes the golden answer (reward 1);
     DAPO instead drops zero-variance groups and refills the batch (dynamic sampling);
  5. group-relative advantages; sequences with zero advantage get no forward/backward;
  6. one policy-gradient update (no reference model, no KL);
  7. write every rollout and the step's metrics in one transaction; checkpoint every N steps.
Resuming restores the last checkpoint and discards the steps recorded after it, so a kill -9
loses at most those steps and no rollout is ever recorded twice. Sampling is seeded per step
(seed, step), so a resumed run draws the same problems and samples an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field

from . import curriculum, paths
from .answers import Grader, extract_answer
from .db import dumps
from .recipe import Recipe, from_dict, to_dict
from .runs import (TrainError, checkpoint_dir, create_run, discard_after, make_scheduler,  # noqa: F401
                   record_step, resolve_run, save_checkpoint)
from .rollout import Completion, generate, pad_left, render_prompt, response_ids


class _Abandon(Exception):
    """Ctrl-C during a step: drop the step, nothing of it is written."""


@dataclass
class Seq:
    """One member of a group: a sampled completion or the golden answer."""

    problem_id: str
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    extracted: str | None
    reward: float
    correct: bool
    truncated: bool
    is_golden: bool = False
    adv: float | None = 0.0  # None: displaced by the golden answer, not in the loss
    seq_ratio: float | None = None


@dataclass
class StopFlag:
    """First Ctrl-C: finish or abandon the current step cleanly. Second: stop at once."""

    requested: bool = False
    _previous: object = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread (tests): Ctrl-C handling stays default
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def check(self):
        if self.requested:
            raise _Abandon


# ---------------------------------------------------------------------------- data

def load_problems(db, set_name: str) -> list[dict]:
    """The set's problems in ingest order, each with its first verified golden answer (or None)."""
    from .evaluation import set_problems

    problems = set_problems(db, set_name)
    set_id = db.execute("SELECT id FROM problem_sets WHERE name = ?", [set_name]).fetchone()[0]
    # A golden answer is only used once its final answer verified against the problem's answer:
    # an unverified one could teach a wrong answer.
    golden: dict[str, str] = {}
    for pid, text in db.execute(
        "SELECT g.problem_id, g.text FROM golden_answers g JOIN set_problems sp ON sp.problem_id = g.problem_id "
        "WHERE sp.set_id = ? AND g.verified = 1 ORDER BY g.created_at, g.id", [set_id]):
        golden.setdefault(pid, text)
    for p in problems:
        p["golden"] = golden.get(p["id"])
    return problems


def default_data(db, recipe: Recipe) -> str:
    from .ingest import ensure_synthetic_set
    from .synthetic import parse_levels

    levels = parse_levels(recipe.synthetic_levels)
    name = f"arithmetic-l{recipe.synthetic_levels.replace(',', '_')}-{recipe.synthetic_count}"
    ensure_synthetic_set(db, name, count=recipe.synthetic_count, seed=0, levels=levels)
    return name


# ---------------------------------------------------------------------------- maths helpers

def score(seqs: list[Seq], answers: list[str], grader: Grader) -> None:
    verdicts = grader.grade([(a, s.extracted) for a, s in zip(answers, seqs)])
    for s, ok in zip(seqs, verdicts):
        s.correct = bool(ok) and not s.truncated  # a truncated completion scores 0
        s.reward = 1.0 if s.correct else 0.0


def completion_logprobs(model, seqs: list[Seq], pad_id: int, share_prompts: bool = True):
    """Log-probs of each completion token under `model`.  Returns logp, mask: [N, L].

    Only completion positions go through the LM head, never the prompt's full-vocabulary
    logits. With share_prompts, each distinct prompt (a group's G members share one) is run
    once and its KV cache fanned out to its completions; gradients flow back through the
    shared prefix, so this is exact, with far fewer tokens than padding every sequence."""
    import torch

    from .loss import head_logprobs

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()  # LoRA lives inside both
    device = next(model.parameters()).device
    L = max(len(s.completion_ids) for s in seqs)
    comp = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        comp[i, :len(s.completion_ids)] = torch.tensor(s.completion_ids)
        cmask[i, :len(s.completion_ids)] = 1
    if share_prompts:
        prompts: dict[tuple, int] = {}
        row = torch.tensor([prompts.setdefault(tuple(s.prompt_ids), len(prompts)) for s in seqs])
        pids, pmask = pad_left([list(p) for p in prompts], pad_id)
        out = decoder(input_ids=pids.to(device), attention_mask=pmask.to(device),
                      position_ids=((pmask.cumsum(1) - 1).clamp(min=0)).to(device), use_cache=True)
        cache = out.past_key_values
        cache.batch_select_indices(row.to(device))  # [P] prompts -> [N] rows, differentiable
        attn = torch.cat([pmask[row], cmask], 1)
        pos = pmask[row].sum(1, keepdim=True) + torch.arange(L)[None]
        out2 = decoder(input_ids=comp.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
                       past_key_values=cache, use_cache=True)
        # the prompt's last position predicts completion token 0; completion t predicts t+1
        hidden = torch.cat([out.last_hidden_state[row.to(device), -1:], out2.last_hidden_state[:, :-1]], 1)
    else:
        pids, pmask = pad_left([s.prompt_ids for s in seqs], pad_id)
        P = pids.shape[1]
        ids, attn = torch.cat([pids, comp], 1), torch.cat([pmask, cmask], 1)
        out = decoder(input_ids=ids.to(device), attention_mask=attn.to(device),
                      position_ids=((attn.cumsum(1) - 1).clamp(min=0)).to(device), use_cache=False)
        hidden = out.last_hidden_state[:, P - 1:-1]  # position P-1+t predicts completion token t
    mask = cmask.to(device).float()
    return head_logprobs(hidden, head, comp.to(device)) * mask, mask  # [N, L]


def autocast_enabled(model, setting: str) -> bool:
    """bf16 autocast for the update pass: "auto" uses it where matrix units make bf16 several
    times faster (CUDA with bf16, CPUs with AMX)."""
    from .model import fast_bf16

    if setting == "auto":
        return fast_bf16(next(model.parameters()).device.type)
    return setting == "bfloat16"


def autocast_context(model, setting: str):
    import contextlib
    import functools

    import torch

    if not autocast_enabled(model, setting):
        return contextlib.nullcontext
    device = next(model.parameters()).device.type
    return functools.partial(torch.autocast, device_type=device, dtype=torch.bfloat16)


def update(model, optimizer, seqs: list[Seq], recipe: Recipe, pad_id: int, stop: StopFlag) -> dict:
    """One policy update over the batch. Zero-advantage sequences are skipped: their gradient is
    exactly zero, but they still count in the loss's denominator where the recipe says so."""
    import torch

    from .loss import policy_loss

    active = [s for s in seqs if s.adv != 0.0]
    kept_tokens = sum(len(s.completion_ids) for s in seqs)
    denom = kept_tokens if recipe.loss_agg == "token_sum" else len(seqs)
    stats = dict(loss=0.0, grad_norm=0.0, clip_frac=0.0, ga_logp_mean=None)
    if not active:
        return stats
    active.sort(key=lambda s: len(s.prompt_ids) + len(s.completion_ids))
    chunks = [active[i:i + recipe.micro_batch] for i in range(0, len(active), recipe.micro_batch)]
    params = [p for p in model.parameters() if p.requires_grad]
    # HF turns the KV cache off under gradient checkpointing, so no prompt sharing there.
    share = not recipe.model.gradient_checkpointing
    amp = autocast_context(model, recipe.model.autocast)

    def logprobs(chunk):
        with amp():
            return completion_logprobs(model, chunk, pad_id, share)

    old: list = [None] * len(chunks)
    if recipe.updates_per_step > 1:  # pi_old must be frozen across the passes
        with torch.no_grad():
            old = [logprobs(c)[0] for c in chunks]
    ga_logp, ga_tokens, clipped, units = 0.0, 0, 0.0, 0.0
    for epoch in range(recipe.updates_per_step):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for ci, chunk in enumerate(chunks):
            if epoch == 0:  # after the first optimiser step the step is finished, not abandoned
                stop.check()
            logp, mask = logprobs(chunk)
            old_logp = logp.detach() if old[ci] is None else old[ci]
            golden = torch.tensor([s.is_golden for s in chunk], device=logp.device)
            adv = torch.tensor([s.adv for s in chunk], device=logp.device, dtype=logp.dtype)
            parts = policy_loss(logp, old_logp, mask, adv, ratio_level=recipe.ratio_level,
                                loss_agg=recipe.loss_agg, eps_low=recipe.eps_low, eps_high=recipe.eps_high,
                                denom=denom, golden=golden, golden_weighting=recipe.golden_weighting)
            parts.loss.backward()
            total += float(parts.loss.detach())
            clipped += parts.clipped
            units += parts.clip_units
            for s, r in zip(chunk, parts.seq_ratio.tolist()):
                s.seq_ratio = r
            if epoch == 0:
                for i, s in enumerate(chunk):
                    if s.is_golden:
                        ga_logp += float(old_logp[i].sum())
                        ga_tokens += len(s.completion_ids)
        if epoch == 0:
            stop.check()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        stats.update(loss=total, grad_norm=float(grad_norm))
    stats["clip_frac"] = clipped / units if units else 0.0
    stats["ga_logp_mean"] = ga_logp / ga_tokens if ga_tokens else None
    return stats


@dataclass
class Context:
    db: object
    run_id: str
    recipe: Recipe
    model: object
    tok: object
    optimizer: object
    scheduler: object
    pool: list[dict]
    holdout: list[dict]
    by_id: dict = field(default_factory=dict)
    prompt_ids: dict = field(default_factory=dict)
    prompt_text: dict = field(default_factory=dict)
    start_step: int = 0
    sampler: object = None  # MergedSampler, or None to sample from the policy itself (nf4)

    stale: bool = True  # the policy changed since the sampler last merged its weights

    def generation_model(self):
        """The model to sample from; the merged copy is refreshed only after an update (DAPO's
        refill rounds and the held-out evaluation reuse it)."""
        if self.sampler is None:
            return self.model
        if self.stale:
            self.sampler.sync(self.model)
            self.stale = False
        return self.sampler.model


class NullDisplay:
    """What the loop reports to; the CLI passes a rich progress display."""

    def message(self, text: str) -> None: ...
    def start(self, ctx: Context, total: int, done: int) -> None: ...
    def step(self, step: int, metrics: dict) -> None: ...
    def stop(self) -> None: ...


def setup(db, recipe: Recipe | None, resume_run: str | None, steps: int | None,
          save_every: int | None, display) -> Context:
    import torch

    from .model import MergedSampler, add_lora, load_adapter, load_base, prepare_base, prepare_for_update

    if resume_run:
        run = resolve_run(db, resume_run)
        overrides = {k: v for k, v in dict(steps=steps, save_every=save_every).items() if v is not None}
        recipe = from_dict({**json.loads(run["recipe_json"]), **overrides})
        run_id, data_set, start = run["id"], run["data_set"], int(run["checkpoint_step"] or 0)
    else:
        data_set = recipe.data or default_data(db, recipe)
        start = 0
    torch.set_num_threads(recipe.threads or os.cpu_count() or 1)
    problems = load_problems(db, data_set)
    holdout = problems[len(problems) - recipe.eval.holdout:] if recipe.eval.holdout else []
    pool = problems[: len(problems) - len(holdout)]
    if not pool:
        raise TrainError(f"set '{data_set}' has {len(problems)} problems and eval.holdout is "
                         f"{recipe.eval.holdout}: nothing left to train on")
    torch.manual_seed(recipe.seed)
    model, tok, _ = load_base(recipe.model)
    sampler = MergedSampler(model, recipe.model.sampler_dtype) if recipe.model.quant == "none" else None
    prepare_for_update(model, recipe.model, autocast_enabled(model, recipe.model.autocast))
    model = prepare_base(model, recipe.model)
    if start:
        ckpt = checkpoint_dir(run["out_dir"], start)
        model = load_adapter(model, ckpt / "adapter", trainable=True)
    else:
        model = add_lora(model, recipe.lora)
    model.train()  # from_pretrained leaves eval mode: no gradient checkpointing, no LoRA dropout
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = make_scheduler(optimizer, recipe)
    if start:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    # The run is created (or marked running) only once everything loaded: a missing model or
    # checkpoint leaves no phantom "running" run behind.
    if resume_run:
        dropped = discard_after(db, run_id, start)
        if dropped:
            display.message(f"discarded {dropped} step(s) recorded after checkpoint {start}")
        db["runs"].update(run_id, dict(status="running", steps_planned=recipe.steps, error=None,
                                       recipe_json=dumps(to_dict(recipe))))
    else:
        run_id = create_run(db, recipe, data_set)
    ctx = Context(db, run_id, recipe, model, tok, optimizer, scheduler, pool, holdout, start_step=start,
                  sampler=sampler)
    ctx.by_id = {p["id"]: p for p in problems}
    return ctx


def prompt_text(ctx: Context, pid: str) -> str:
    if pid not in ctx.prompt_text:
        ctx.prompt_text[pid] = render_prompt(ctx.tok, ctx.by_id[pid]["text"], ctx.recipe.prompt_template)
    return ctx.prompt_text[pid]


def prompt_ids(ctx: Context, pid: str) -> list[int]:
    """The prompt's tokens, exactly as generate() tokenises the prompt text."""
    if pid not in ctx.prompt_ids:
        ctx.prompt_ids[pid] = ctx.tok(prompt_text(ctx, pid), add_special_tokens=False).input_ids
    return ctx.prompt_ids[pid]


def rollout_groups(ctx: Context, pids: list[str], grader: Grader, stop: StopFlag) -> tuple[list[list[Seq]], dict]:
    """Sample G completions per problem and grade them."""
    r = ctx.recipe
    t0 = time.perf_counter()
    prompts = [prompt_text(ctx, pid) for pid in pids]
    # A quantised policy samples itself: under the update's bf16 autocast, so activations and the
    # KV cache are bf16 rather than the fp32 that k-bit preparation leaves (GPU memory).
    amp = autocast_context(ctx.model, r.model.autocast) if ctx.sampler is None else contextlib.nullcontext
    with amp():
        comps: list[list[Completion]] = generate(
            ctx.generation_model(), ctx.tok, prompts, n=r.samples_per_problem, max_new_tokens=r.max_new_tokens,
            temperature=r.temperature, top_p=r.top_p, batch_size=r.problems_per_step * r.samples_per_problem)
    t1 = time.perf_counter()
    stop.check()
    groups = [[Seq(pid, j, prompt_ids(ctx, pid), c.token_ids, c.text, extract_answer(c.text), 0.0, False,
                   c.truncated) for j, c in enumerate(cs)] for pid, cs in zip(pids, comps)]
    flat = [s for g in groups for s in g]
    score(flat, [ctx.by_id[s.problem_id]["answer"] for s in flat], grader)
    timing = dict(gen_s=t1 - t0, score_s=time.perf_counter() - t1, tokens=sum(len(s.completion_ids) for s in flat))
    return groups, timing


def go_gold(ctx: Context, group: list[Seq], rng: random.Random) -> str | None:
    """Swap one wrong rollout of an all-wrong group for the golden answer. Returns what happened:
    "injected", "too_long" or None."""
    r = ctx.recipe
    problem = ctx.by_id[group[0].problem_id]
    from .loss import golden_slot

    slot = golden_slot([s.correct for s in group], bool(problem["golden"]) and r.golden == "on",
                       r.golden_replace, rng)
    if slot is None:
        return None
    text = r.golden_template.format(solution=problem["golden"], answer=problem["answer"])
    ids = response_ids(ctx.tok, text)
    truncated = len(ids) > r.max_new_tokens
    if truncated:
        if r.golden_too_long == "skip":
            return "too_long"
        ids = ids[: r.max_new_tokens]
    # The displaced rollout is still recorded (advantage NULL: not in the loss); the GA is
    # recorded as one extra row, sample index G.
    group[slot].adv = None
    group[slot] = Seq(problem["id"], len(group), group[slot].prompt_ids, ids, text,
                      extract_answer(text), 1.0, True, truncated, is_golden=True)
    return "injected"


def assign_advantages(ctx: Context, groups: list[list[Seq]]) -> list[list[Seq]]:
    """Advantages per group; returns the groups that stay in the loss."""
    import torch

    from .loss import group_advantages, overlong_shaping

    r = ctx.recipe
    kept = []
    for g in groups:
        rewards = torch.tensor([s.reward for s in g])
        if r.overlong_buffer:
            lengths = torch.tensor([len(s.completion_ids) for s in g])
            rewards = rewards + overlong_shaping(lengths, r.max_new_tokens, r.overlong_buffer, r.overlong_penalty)
            for s, v in zip(g, rewards.tolist()):
                s.reward = v
        zero_var = bool((rewards == rewards[0]).all())
        if zero_var and r.all_correct == "skip":
            continue  # every advantage is 0: nothing to learn, nothing to compute
        for s, a in zip(g, group_advantages(rewards[None], r.scale_rewards)[0].tolist()):
            s.adv = a
        kept.append(g)
    return kept


def train_step(ctx: Context, step: int, grader: Grader, stop: StopFlag) -> tuple[list[Seq], dict]:
    """Steps 1-6 of the module docstring for one step; returns every rollout and the metrics."""
    import torch

    r = ctx.recipe
    torch.manual_seed(r.seed * 1_000_003 + step)
    rng = random.Random(r.seed * 1_000_003 + step)
    if r.curriculum == "frontier":
        pids = curriculum.frontier(ctx.db, ctx.run_id, [p["id"] for p in ctx.pool], step - 1,
                                   r.problems_per_step, r.seed, r.frontier_window)
    else:
        pids = curriculum.uniform([p["id"] for p in ctx.pool], step - 1, r.problems_per_step, r.seed)
    pids = list(dict.fromkeys(pids))  # an epoch boundary can draw a problem twice in one step
    groups, timing = rollout_groups(ctx, pids, grader, stop)
    all_groups = list(groups)
    if r.dynamic_sampling:  # DAPO: keep only mixed groups, refill from unused problems
        used = set(pids)
        for _ in range(r.max_resample_rounds):
            mixed = [g for g in all_groups if len({s.correct for s in g}) > 1]
            if len(mixed) >= r.problems_per_step:
                break
            spare = [p["id"] for p in ctx.pool if p["id"] not in used]
            if not spare:
                break
            extra = rng.sample(spare, min(len(spare), r.problems_per_step - len(mixed)))
            used.update(extra)
            more, t = rollout_groups(ctx, extra, grader, stop)
            all_groups += more
            for k in timing:
                timing[k] += t[k]
        groups = [g for g in all_groups if len({s.correct for s in g}) > 1][: r.problems_per_step]
    sampled = [s for g in all_groups for s in g]  # the policy's own samples, before going gold
    correct_counts = [sum(s.correct for s in g) for g in all_groups]
    G = r.samples_per_problem
    injected = too_long = 0
    for g in groups:
        outcome = go_gold(ctx, g, rng)
        injected += outcome == "injected"
        too_long += outcome == "too_long"
    kept = assign_advantages(ctx, groups)
    t0 = time.perf_counter()
    stats = update(ctx.model, ctx.optimizer, [s for g in kept for s in g], r, ctx.tok.pad_token_id, stop)
    ctx.stale = True
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.scheduler.step()
    update_s = time.perf_counter() - t0
    final = sampled + [s for g in groups for s in g if s.is_golden]
    n_groups = max(1, len(all_groups))
    metrics = dict(
        reward_mean=sum(s.correct for s in sampled) / max(1, len(sampled)),
        all_wrong_frac=sum(c == 0 for c in correct_counts) / n_groups,
        all_correct_frac=sum(c == G for c in correct_counts) / n_groups,
        mixed_frac=sum(0 < c < G for c in correct_counts) / n_groups,
        ga_injections=injected, ga_too_long=too_long, ga_logp_mean=stats["ga_logp_mean"],
        clip_frac=stats["clip_frac"], completion_len_mean=timing["tokens"] / max(1, len(sampled)),
        truncation_rate=sum(s.truncated for s in sampled) / max(1, len(sampled)),
        grad_norm=stats["grad_norm"], loss=stats["loss"], lr=lr, gen_s=timing["gen_s"],
        score_s=timing["score_s"], update_s=update_s,
        tokens_per_s=timing["tokens"] / timing["gen_s"] if timing["gen_s"] else 0.0,
        groups=len(all_groups), groups_in_loss=len(kept),
        sequences_in_loss=sum(1 for g in kept for s in g if s.adv != 0.0),
    )
    return final, metrics


def evaluate_holdout(ctx: Context, label: str, step: int) -> dict | None:
    if not ctx.holdout:
        return None
    from .evaluation import evaluate_problems

    e = ctx.recipe.eval
    return evaluate_problems(
        ctx.db, ctx.generation_model(), ctx.tok, ctx.holdout, label=label, set_name=ctx.db["runs"].get(ctx.run_id)["data_set"],
        k=e.k, temperature=e.temperature, max_new_tokens=e.max_new_tokens or ctx.recipe.max_new_tokens,
        seed=ctx.recipe.seed, template=ctx.recipe.prompt_template, run_id=ctx.run_id, run_step=step,
        batch_size=max(32, ctx.recipe.problems_per_step * ctx.recipe.samples_per_problem), progress=False)


def train(db, recipe: Recipe | None = None, *, resume_run: str | None = None, steps: int | None = None,
          save_every: int | None = None, display=None) -> dict:
    """Run (or resume) a training run to its last step. Returns a summary with the run id."""
    display = display or NullDisplay()
    ctx = setup(db, recipe, resume_run, steps, save_every, display)
    r, run = ctx.recipe, db["runs"].get(ctx.run_id)
    out_dir = run["out_dir"]
    summary: dict = dict(run_id=ctx.run_id, recipe=r.name, algorithm=r.algorithm, data_set=run["data_set"])
    if ctx.start_step == 0 and ctx.holdout:
        display.message(f"evaluating {len(ctx.holdout)} held-out problems before training")
        summary["before"] = evaluate_holdout(ctx, f"run:{ctx.run_id}@0", 0)
    status, step = "completed", ctx.start_step
    with StopFlag() as stop, Grader() as grader:
        display.start(ctx, r.steps, ctx.start_step)
        try:
            for step in range(ctx.start_step + 1, r.steps + 1):
                try:
                    seqs, metrics = train_step(ctx, step, grader, stop)
                except _Abandon:
                    step -= 1
                    status = "interrupted"
                    break
                record_step(db, ctx.run_id, step, seqs, metrics)
                display.step(step, metrics)
                if (r.save_every and step % r.save_every == 0) or step == r.steps:
                    save_checkpoint(db, ctx.run_id, out_dir, step, ctx.model, ctx.optimizer, ctx.scheduler)
                if stop.requested:
                    status = "interrupted"
                    break
        except BaseException as e:  # record why, then let it surface
            display.stop()
            db["runs"].update(ctx.run_id, dict(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                                               error=f"{type(e).__name__}: {e}"[:500], updated_at=paths.utcnow()))
            raise
        display.stop()
    last = db["runs"].get(ctx.run_id)
    if status == "interrupted" and step > (last["checkpoint_step"] or 0):
        save_checkpoint(db, ctx.run_id, out_dir, step, ctx.model, ctx.optimizer, ctx.scheduler)
    if status == "completed" and ctx.holdout:
        display.message(f"evaluating {len(ctx.holdout)} held-out problems after training")
        summary["after"] = evaluate_holdout(ctx, f"run:{ctx.run_id}@{step}", step)
    db["runs"].update(ctx.run_id, dict(status=status, updated_at=paths.utcnow()))
    rewards = [row[0] for row in db.execute("SELECT reward_mean FROM steps WHERE run_id = ? ORDER BY step", [ctx.run_id])]
    summary.update(status=status, last_step=step, checkpoint_step=db["runs"].get(ctx.run_id)["checkpoint_step"],
                   reward_mean_per_step=rewards, out_dir=out_dir)
    return summary
