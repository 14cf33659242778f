"""GCPO's maths as pure functions: advantages, going gold, importance ratios, the policy loss.

How this differs from the paper (arXiv 2510.07790), whose method section we could not read;
docs/gcpo-algorithm.md fixes the open choices and each is a recipe knob:
  1. The golden answer (GA) replaces the *last* wrong rollout of an all-wrong group
     (`golden_replace: last|random`), and only when the group is all wrong.
  2. A GA longer than the completion limit is not injected (counted as `golden_too_long`).
  3. The ratio is GSPO's length-normalised sequence ratio (`ratio_level`); clip ranges are
     GSPO-scale (3e-4 / 4e-4). The PPO schedule (`mini_batches` x `ppo_epochs` optimiser updates
     per rollout batch) is what makes it act: pi_old is fixed before the first update, so from
     the second update on s_i moves and the clip bites. With a single update s_i == 1 in value
     and its gradient is grad(mean token log-prob), so pi_old needs no forward of its own.
  4. Zero-variance groups (all correct, or all wrong with no GA) have zero advantage: they are
     left out of the loss (`zero_variance: skip`) and cost no forward/backward either way.
  5. No KL term and no reference model.
  6. Every log-prob is of the policy at the sampling temperature: log softmax(logits / T).
  7. The sampler (the rollout engine) reports its own log-probs; their gap to the trainer's
     pi_old is measured every step (`sampler_mismatch`) and, with `tis_cap`, corrected by
     truncated importance sampling (`tis_weights`, off by default).
The GRPO and DAPO baselines run through the same functions with token-level ratios.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

LUFFY_GAMMA = 0.1


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """A = (r - mean(r)) / (std(r) + eps) within each group.  rewards: [B, G] -> [B, G].

    std is the population std (unbiased=False), as in GRPO implementations; `scale="none"` is
    Dr. GRPO's unscaled r - mean(r)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)


def golden_slot(correct: list[bool], has_golden: bool, replace: str = "last",
                rng: random.Random | None = None) -> int | None:
    """Which rollout the GA replaces: only when every rollout is wrong and a GA exists."""
    if not has_golden or any(correct) or not correct:
        return None
    if replace == "random":
        return (rng or random).randrange(len(correct))
    return len(correct) - 1


def overlong_shaping(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max_len - buffer, then linearly down to
    -penalty at max_len (and below).  lengths: [N] -> [N]."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_len - buffer)).clamp(min=0) / buffer
    return -penalty * over.clamp(max=1.0)


MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: far outside any clip range, and finite


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """log importance ratio, clamped to +-MAX_LOG_RATIO so that its exp stays finite (a
    whole-sequence sum of log-ratios reaches hundreds after one update; verl clamps the same
    way).  logp, old_logp, mask: [N, L].
    sequence: mean over tokens -> [N] (GSPO);  sequence_sum: sum -> [N];  token: [N, L]."""
    diff = (logp - old_logp) * mask
    if level == "token":
        out = diff
    elif level == "sequence_sum":
        out = diff.sum(dim=1)
    else:
        out = diff.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return out.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """PPO's pessimistic term  min(s*A, clip(s, 1-eps_low, 1+eps_high)*A)  and where it clipped.
    ratio and adv broadcast ([N] or [N, L])."""
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    obj = torch.minimum(ratio * adv, clipped * adv)
    was_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return obj, was_clipped


def sampler_mismatch(old_logp: torch.Tensor, sampler_logp: torch.Tensor,
                     mask: torch.Tensor) -> tuple[float, float, float]:
    """How far the trainer's pi_old is from the sampler that drew the tokens, summed over the
    masked tokens: (sum |log pi_old - log pi_sampler|, sum of k3 = r - 1 - log r with
    r = pi_old / pi_sampler, tokens). k3 is Schulman's unbiased, non-negative estimator of
    KL(pi_sampler || pi_old) from samples of pi_sampler.  All [N, L]."""
    d = (old_logp - sampler_logp).float() * mask
    k3 = (torch.exp(d) - 1 - d) * mask
    return float(d.abs().sum()), float(k3.sum()), float(mask.sum())


def tis_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                level: str) -> torch.Tensor:
    """Truncated importance weights min(pi_old / pi_sampler, cap) (Yao et al. 2025), detached:
    per token ([N, L], level "token") or per sequence from the mean token log-ratio ([N], the
    length-normalised ratio that GSPO's sequence ratio uses). Rows with no sampler log-probs
    (mask all 0: golden answers) weigh 1."""
    d = ((old_logp - sampler_logp).float() * mask).detach()
    if level == "token":
        return torch.where(mask.bool(), torch.exp(d.clamp(max=math.log(cap))), torch.ones_like(d))
    mean = d.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return torch.exp(mean.clamp(max=math.log(cap)))


@dataclass
class LossParts:
    loss: torch.Tensor  # this micro-batch's share of the batch loss (already divided)
    seq_ratio: torch.Tensor  # [N] exp(mean token log-ratio): the sequence ratio, for the record
    clipped: float  # clipped sequences (or tokens) in this micro-batch
    clip_units: float  # sequences (or tokens) considered
    clipped_low: float = 0.0  # of those clipped, the ones below 1 - eps_low (negative advantage)


def policy_loss(
    logp: torch.Tensor,  # [N, L] log pi_theta of the completion tokens
    old_logp: torch.Tensor,  # [N, L] log pi_old (== logp.detach() with one update per batch)
    mask: torch.Tensor,  # [N, L] 1 on completion tokens
    adv: torch.Tensor,  # [N]
    *,
    ratio_level: str,
    loss_agg: str,
    eps_low: float,
    eps_high: float,
    denom: float,  # kept sequences (sequence/token_mean) or kept tokens (token_sum) in the batch
    golden: torch.Tensor | None = None,  # [N] bool: which rows are golden answers
    golden_weighting: str = "plain",
    weight: torch.Tensor | None = None,  # importance weights (tis_weights): [N, L] token ratios, [N] sequence
) -> LossParts:
    """The negated objective for one micro-batch, divided by the whole batch's `denom`, so that
    summing micro-batch gradients gives exactly the batch gradient."""
    mask = mask.to(logp.dtype)
    lengths = mask.sum(dim=1).clamp(min=1)
    seq_ratio = torch.exp(log_ratio(logp, old_logp, mask, "sequence")).detach()
    lr = log_ratio(logp, old_logp, mask, ratio_level)
    if ratio_level == "token":
        obj, clipped = clipped_objective(torch.exp(lr), adv[:, None], eps_low, eps_high)
        obj = obj * mask if weight is None else obj * mask * weight
        clipped = clipped & mask.bool()
        per_seq = obj.sum(dim=1) if loss_agg == "token_sum" else obj.sum(dim=1) / lengths
        units = float(mask.sum())
    else:
        per_seq, clipped = clipped_objective(torch.exp(lr), adv, eps_low, eps_high)
        if weight is not None:
            per_seq = per_seq * weight
        units = float(len(adv))
    n_clipped, n_low = float(clipped.sum()), float((clipped & (lr < 0)).sum())
    if golden is not None and golden_weighting == "luffy" and bool(golden.any()):
        # LUFFY's policy shaping on golden tokens: f(p) = p / (p + gamma) in place of the ratio,
        # unclipped. Its gradient is gamma*p/(p+gamma)^2 * grad log p per token. Against
        # importance-sampling the golden answer as an off-policy sample (weight p), that is a
        # boost of ~1/gamma on low-probability tokens (LUFFY's point); against `plain`, where a
        # token's weight is the on-policy ratio (1), it is a shrink to at most 1/4 (at p = gamma)
        # and far less for tokens far from p = gamma (tests/test_loss.py measures it).
        p = torch.exp(logp)
        shaped = (p / (p + LUFFY_GAMMA)) * mask
        shaped_seq = shaped.sum(dim=1) if loss_agg == "token_sum" else shaped.sum(dim=1) / lengths
        per_seq = torch.where(golden, shaped_seq * adv, per_seq)
    loss = -per_seq.sum() / denom
    return LossParts(loss, seq_ratio, n_clipped, units, n_low)
