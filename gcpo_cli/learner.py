"""One policy update from one step's rollouts: `update(policy, kept, recipe, dist) -> UpdateStats`.

The PPO schedule, read top to bottom in `update`:

    plan = the step's kept rollouts cut into `mini_batches` contiguous mini-batches
    pi_old = every sequence's log-probs before the first optimiser step (no gradient)
    for epoch in range(ppo_epochs):
        for mini_batch in plan:
            for micro_batch in mini_batch:   (a memory knob: the sum of micro-batch
                loss(micro_batch).backward()  gradients is the mini-batch's gradient)
            sum the ranks' gradients; clip; optimiser step

With one update a step (1 x 1) the update is on-policy: pi_old is the policy's own log-prob,
detached, so it costs no forward of its own (loss.py, note 3). Zero-advantage sequences get no
forward or backward but count in their mini-batch's denominator where the recipe says so.

Data-parallel: each rank holds a share of the step's groups. Every collective of the update is in
`update` itself, in this order, the same on every rank: (1) gather every kept group's lengths and
flags, so that each rank cuts the step exactly as one process would; (2) after each mini-batch's
backward, sum the ranks' gradients; (3) gather the statistics. Why not DDP: a rank may run fewer
micro-batches than another, or none, and DDP's all-reduce inside each backward would wait for a
backward that never comes. A mini-batch is skipped only where no rank has a sequence in its loss
(the plan says so on every rank), so every rank makes the same collectives in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from . import distributed
from .logprobs import completion_logprobs
from .loss import policy_loss, sampler_mismatch, tis_weights
from .model import autocast_context
from .records import Rollout


@dataclass
class Policy:
    """What the update changes and how: the model (base + LoRA), its tokenizer and optimiser."""

    model: object
    tok: object
    optimizer: object

    @property
    def params(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class MiniBatch:
    """One optimiser update's slice of the step: rollouts [first, end) in the step's order."""

    first: int
    end: int
    denom: float  # the loss's denominator: its sequences (sequence/token_mean) or tokens (token_sum)
    active: bool  # whether any of its sequences is in the loss (on any rank)


@dataclass
class UpdateStats:
    """What one update reports; every field lands in the step's record under its own name
    (a `steps` column where one exists, else the step's metrics_json)."""

    loss: float = 0.0  # mean over optimiser updates of the mini-batch loss
    grad_norm: float = 0.0  # mean over optimiser updates, before clipping
    clip_frac: float = 0.0  # clipped share of the sequences (sequence ratio) or tokens (token ratio)
    clip_low_frac: float = 0.0  # of clip_frac, below 1 - eps_low (negative advantage): TRL's clip_ratio/low
    clip_high_frac: float = 0.0  # above 1 + eps_high (positive advantage): TRL's clip_ratio/high
    clip_frac_by_mini_batch: list[float] = field(default_factory=list)  # clip_frac of each optimiser update
    entropy: float | None = None  # pi_old's mean token entropy over the sequences in the loss
    ratio_mean: float | None = None  # the sequence ratio s_i over every sequence and pass
    ratio_min: float | None = None
    ratio_max: float | None = None
    optimizer_updates: int = 0
    golden_logp_mean: float | None = None  # pi_old's mean token log-prob of the golden answers
    sampler_logp_abs_diff: float | None = None  # mean |log pi_old - log pi_sampler| per token
    sampler_kl: float | None = None  # mean k3 estimate of KL(pi_sampler || pi_old) per token
    sampler_tokens: int = 0  # tokens with a sampler log-prob
    sampler_nonfinite: int = 0  # sampler log-probs that were NaN or infinite: treated as absent
    tis_weight_mean: float | None = None  # mean truncated importance weight (loss.tis_cap on)


@dataclass
class Tally:
    """One rank's running sums over an update, summed across ranks into UpdateStats."""

    losses: list = field(default_factory=list)  # per optimiser update, this rank's part
    clip_by_update: list = field(default_factory=list)  # (clipped, units) so far, after each update
    norms: list = field(default_factory=list)
    ratios: list = field(default_factory=list)
    clipped: float = 0.0
    clipped_low: float = 0.0
    clip_units: float = 0.0
    entropy: float = 0.0
    entropy_tokens: float = 0.0
    golden_logp: float = 0.0
    golden_tokens: int = 0
    mismatch_abs: float = 0.0
    mismatch_kl: float = 0.0
    mismatch_tokens: float = 0.0
    nonfinite: int = 0
    tis_sum: float = 0.0
    tis_n: float = 0.0


def update(policy: Policy, kept: list[tuple[int, list[Rollout]]], recipe, dist: distributed.Dist | None = None,
           stop=None) -> UpdateStats:
    """The PPO schedule over one step's kept groups (see the module docstring). `kept`: this
    rank's kept groups with their place in the step. Sets each rollout's `seq_ratio` (its last
    pass). `stop` (resumable.StopFlag): Ctrl-C abandons the step, but only before the first
    optimiser step."""
    dist = dist or distributed.Dist()
    layout = [(place, [x.completion_tokens for x in g], [x.in_loss for x in g]) for place, g in kept]
    plan, start = plan_mini_batches([entry for part in dist.gather(layout) for entry in part],  # collective 1
                                    recipe.loss.mini_batches, recipe.loss.loss_agg == "token_sum")
    parts = mine(plan, start, kept)
    tally = Tally()
    if any(mb.active for mb in plan):
        logprobs = logprob_fn(policy, recipe)
        on_policy = recipe.loss.mini_batches * recipe.loss.ppo_epochs == 1
        old = None if on_policy else old_logprobs(logprobs, [x for part in parts for x in part if x.in_loss],
                                                  recipe.optimizer.micro_batch, recipe.optimizer.micro_batch_tokens,
                                                  tally)
        for epoch in range(recipe.loss.ppo_epochs):
            for mb, part in zip(plan, parts):
                if not mb.active:  # no rank has a sequence in this mini-batch's loss: skipped everywhere
                    continue
                first = not tally.norms
                policy.optimizer.zero_grad(set_to_none=True)
                loss = 0.0
                active = [x for x in part if x.in_loss]
                for chunk in micro_batches(active, recipe.optimizer.micro_batch, recipe.optimizer.micro_batch_tokens):
                    if first and stop is not None:
                        stop.check()
                    loss += backward(logprobs, chunk, old, mb.denom, recipe, tally, first_epoch=epoch == 0)
                if first and stop is not None:
                    stop.check()
                tally.losses.append(loss)
                tally.clip_by_update.append((tally.clipped, tally.clip_units))  # running sums, this rank
                dist.sum_grads(policy.params)  # collective 2: the whole mini-batch's gradient on every rank
                tally.norms.append(float(torch.nn.utils.clip_grad_norm_(policy.params, recipe.optimizer.max_grad_norm)))
                policy.optimizer.step()
    return summarise(dist.gather(tally))  # collective 3


def plan_mini_batches(layout: list[tuple[int, list[int], list[bool]]], n: int,
                      token_sum: bool) -> tuple[list[MiniBatch], dict[int, int]]:
    """How one step's kept rollouts are cut into `n` optimiser updates, from every kept group's
    (place in the step, completion lengths, in-the-loss flags), whichever rank holds it. The
    rollouts, in the step's order, are cut into near-equal contiguous mini-batches (groups kept
    in order). Returns the mini-batches and {place: index of the group's first rollout}."""
    start, lengths, active = {}, [], []
    for place, group_lengths, flags in sorted(layout):
        start[place] = len(lengths)
        lengths += group_lengths
        active += flags
    bounds = [len(lengths) * i // n for i in range(n + 1)]
    plan = [MiniBatch(lo, hi, sum(lengths[lo:hi]) if token_sum else hi - lo, any(active[lo:hi]))
            for lo, hi in zip(bounds, bounds[1:])]
    return plan, start


def mine(plan: list[MiniBatch], start: dict[int, int], kept: list[tuple[int, list[Rollout]]]) -> list[list[Rollout]]:
    """This rank's rollouts of each mini-batch of the plan."""
    parts: list[list[Rollout]] = [[] for _ in plan]
    for place, group in kept:
        for j, x in enumerate(group):
            i = start[place] + j
            parts[next(k for k, mb in enumerate(plan) if mb.first <= i < mb.end)].append(x)
    return parts


def micro_batches(rollouts: list[Rollout], size: int, tokens: int = 0) -> list[list[Rollout]]:
    """Chunks of at most `size` sequences and, with `tokens`, at most that many padded tokens
    (sequences x the longest prompt + completion), similar lengths together (less padding). The
    update's activations grow with a chunk's tokens, so the token cap is what bounds its memory
    at long completions (a single longer sequence still makes a chunk of its own)."""
    chunks: list[list[Rollout]] = []
    for x in sorted(rollouts, key=lambda x: len(x.prompt_ids) + x.completion_tokens):
        width = len(x.prompt_ids) + x.completion_tokens  # the longest so far, sorted ascending
        if chunks and len(chunks[-1]) < size and (not tokens or (len(chunks[-1]) + 1) * width <= tokens):
            chunks[-1].append(x)
        else:
            chunks.append([x])
    return chunks


def logprob_fn(policy: Policy, recipe):
    """chunk -> (logp, mask) [n, L]: the policy's log-probs of a micro-batch's completions at the
    sampling temperature, under the update's autocast."""
    amp = autocast_context(policy.model, recipe.model.autocast)
    temperature = recipe.generation.temperature or 1.0  # greedy sampling: the policy's own distribution
    # HF turns the KV cache off under gradient checkpointing, so no prompt sharing there.
    share = not recipe.model.gradient_checkpointing

    def logprobs(chunk: list[Rollout], entropy: bool = False):
        with amp():
            return completion_logprobs(policy.model, policy.tok, [x.prompt_ids for x in chunk],
                                       [x.completion_ids for x in chunk], share, temperature, entropy)

    return logprobs


def old_logprobs(logprobs, rollouts: list[Rollout], micro_batch: int, tokens: int, tally: Tally) -> dict:
    """pi_old: each rollout's completion log-probs [L_i] under the policy that sampled, without
    gradient, keyed by id(rollout); its entropy goes to the tally."""
    old = {}
    with torch.no_grad():
        for chunk in micro_batches(rollouts, micro_batch, tokens):
            logp, mask, ent = logprobs(chunk, entropy=True)
            tally.entropy += float((ent * mask).sum())
            tally.entropy_tokens += float(mask.sum())
            for row, x in zip(logp, chunk):
                old[id(x)] = row[: x.completion_tokens]
    return old


def backward(logprobs, chunk: list[Rollout], old: dict | None, denom: float, recipe, tally: Tally,
             first_epoch: bool) -> float:
    """One micro-batch's share of a mini-batch's loss, backpropagated; returns its value and adds
    to the tally its clip counts and ratios and, in the first epoch (where each sequence is seen
    once), pi_old's golden-answer log-probs and the sampler/trainer mismatch. Sets each
    rollout's seq_ratio (its last pass). `old`: pi_old per rollout, or None on-policy (then
    pi_old is logp, detached)."""
    logp, mask, *ent = logprobs(chunk, entropy=first_epoch and old is None)
    old_logp = logp.detach() if old is None else stack_padded([old[id(x)] for x in chunk], logp)
    weight = None
    # the engine's own log-probs, where it reported them (never for a golden answer)
    has = [bool(x.sampler_logprobs) and not x.is_golden and len(x.sampler_logprobs) == x.completion_tokens
           for x in chunk]
    if any(has):
        rows = [torch.tensor(x.sampler_logprobs) if h else torch.zeros(0) for x, h in zip(chunk, has)]
        sampler_logp = stack_padded(rows, logp)
        smask = mask * torch.tensor(has, device=mask.device, dtype=mask.dtype)[:, None]
        # a NaN or infinite sampler log-prob (vLLM reports NaN where it has none) is absent
        finite = torch.isfinite(sampler_logp)
        if first_epoch:
            tally.nonfinite += int((smask.bool() & ~finite).sum())
        smask = smask * finite
        sampler_logp = torch.where(finite, sampler_logp, torch.zeros_like(sampler_logp))
        if first_epoch:
            abs_sum, kl_sum, tokens = sampler_mismatch(old_logp, sampler_logp, smask)
            tally.mismatch_abs += abs_sum
            tally.mismatch_kl += kl_sum
            tally.mismatch_tokens += tokens
        if recipe.loss.tis_cap:  # None or 0: off
            weight = tis_weights(old_logp, sampler_logp, smask, recipe.loss.tis_cap,
                                 "token" if recipe.loss.ratio_level == "token" else "sequence")
            counted = smask.bool() if weight.dim() == 2 else torch.tensor(has, device=weight.device)
            tally.tis_sum += float(weight[counted].sum())
            tally.tis_n += float(counted.sum())
    parts = policy_loss(logp, old_logp, mask,
                        torch.tensor([x.advantage for x in chunk], device=logp.device, dtype=logp.dtype),
                        ratio_level=recipe.loss.ratio_level, loss_agg=recipe.loss.loss_agg, eps_low=recipe.loss.eps_low,
                        eps_high=recipe.loss.eps_high, denom=denom,
                        golden=torch.tensor([x.is_golden for x in chunk], device=logp.device),
                        golden_weighting=recipe.golden.weighting, weight=weight)
    parts.loss.backward()
    tally.clipped += parts.clipped
    tally.clipped_low += parts.clipped_low
    tally.clip_units += parts.clip_units
    if ent:  # on-policy: this forward is pi_old's
        tally.entropy += float((ent[0] * mask).sum())
        tally.entropy_tokens += float(mask.sum())
    for i, (x, ratio) in enumerate(zip(chunk, parts.seq_ratio.tolist())):
        x.seq_ratio = ratio
        tally.ratios.append(ratio)
        if first_epoch and x.is_golden:
            tally.golden_logp += float(old_logp[i].sum())
            tally.golden_tokens += x.completion_tokens
    return float(parts.loss.detach())


def stack_padded(rows: list, like):
    """Rows of different lengths as one tensor shaped and placed like `like` ([n, L]), zero-padded."""
    out = torch.zeros_like(like)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def summarise(tallies: list[Tally]) -> UpdateStats:
    """Every rank's tally as the update's statistics (one process: its own). A mini-batch's loss
    is the sum of the ranks' parts; the gradient norm is the same everywhere (taken after the sum)."""
    norms = tallies[0].norms
    if not norms:
        return UpdateStats()
    total = Tally(**{f.name: sum(getattr(t, f.name) for t in tallies) for f in fields(Tally)
                     if f.name not in ("losses", "norms", "ratios", "clip_by_update")})
    ends = [tuple(map(sum, zip(*parts))) for parts in zip(*(t.clip_by_update for t in tallies))]  # every rank's
    per_update = [(c - pc, u - pu) for (c, u), (pc, pu) in zip(ends, [(0.0, 0.0)] + ends[:-1])]
    losses = [sum(parts) for parts in zip(*(t.losses for t in tallies))]
    ratios = [r for t in tallies for r in t.ratios]
    t = total.mismatch_tokens
    return UpdateStats(
        loss=sum(losses) / len(losses), grad_norm=sum(norms) / len(norms),
        clip_frac=total.clipped / total.clip_units if total.clip_units else 0.0,
        clip_low_frac=total.clipped_low / total.clip_units if total.clip_units else 0.0,
        clip_high_frac=(total.clipped - total.clipped_low) / total.clip_units if total.clip_units else 0.0,
        clip_frac_by_mini_batch=[c / u if u else 0.0 for c, u in per_update],
        entropy=total.entropy / total.entropy_tokens if total.entropy_tokens else None,
        ratio_mean=sum(ratios) / len(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
        optimizer_updates=len(norms),
        golden_logp_mean=total.golden_logp / total.golden_tokens if total.golden_tokens else None,
        sampler_logp_abs_diff=total.mismatch_abs / t if t else None,
        sampler_kl=total.mismatch_kl / t if t else None, sampler_tokens=int(t), sampler_nonfinite=total.nonfinite,
        tis_weight_mean=total.tis_sum / total.tis_n if total.tis_n else None)
