"""What happens to a step's groups between sampling and the update, and what the step records:
going gold, group-relative advantages (after DAPO's overlong shaping), and the step's metrics.
The maths is loss.py's; these apply it to the records (records.Rollout).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields

import torch

from .answers import extract_answer
from .prompts import golden_response
from .learner import UpdateStats
from .loss import golden_slot, group_advantages, overlong_shaping
from .recipe import Recipe
from .records import Problem, Rollout
from .rollout import response_ids


@dataclass
class StepMetrics:
    """What a step records (the algorithm doc's list), with the update's statistics. Every field
    lands in the step's record under its own name: a `steps` column where the schema has one,
    else the step's metrics_json (store.record_step)."""

    reward_mean: float  # of the policy's own samples
    reward_std: float  # mean over groups of the rewards' population std (TRL's reward_std)
    frac_reward_zero_std: float  # groups whose rewards are all equal: no contrast for GRPO
    all_wrong_frac: float  # groups with no correct sample
    all_correct_frac: float
    mixed_frac: float
    golden_injections: int
    golden_too_long: int  # all-wrong groups whose golden answer is over max_new_tokens
    completion_tokens_mean: float
    truncation_rate: float
    lr: float
    gen_s: float
    score_s: float
    update_s: float
    tokens_per_s: float  # generation
    groups: int
    groups_in_loss: int
    sequences_in_loss: int
    reward_failures: int  # custom reward calls that failed (scored 0)
    update: UpdateStats
    world_size: int | None = None  # data-parallel only
    comm_s: float | None = None  # data-parallel only: seconds in collectives

    def flat(self) -> dict:
        """One flat {name: value}, the update's statistics inlined (data-parallel fields only
        when data-parallel)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "update"}
        out.update(asdict(self.update))
        return {k: v for k, v in out.items() if v is not None or k not in ("world_size", "comm_s")}


def is_mixed(group: list[Rollout]) -> bool:
    return len({x.correct for x in group}) > 1


def go_gold(r: Recipe, problem: Problem, group: list[Rollout], tok, rng: random.Random | None) -> str | None:
    """Swap one wrong rollout of an all-wrong group for the problem's golden answer, written by
    the recipe's golden.template and tokenised as the model emits a response. Returns what
    happened: "injected", "too_long" (over max_new_tokens: not injected) or None."""
    slot = golden_slot([x.correct for x in group], bool(problem.golden) and r.golden.enabled,
                       r.golden.replace, rng)
    if slot is None:
        return None
    text = golden_response(r.golden.template, problem.golden, problem.answer)
    ids = response_ids(tok, text)
    if len(ids) > r.generation.max_new_tokens:
        return "too_long"
    # The displaced rollout stays recorded (advantage NULL: not in the loss); the golden answer
    # is one extra row, sample index G.
    group[slot].advantage = None
    group[slot] = Rollout(problem_id=problem.id, sample_index=len(group), completion=text,
                          extracted_answer=extract_answer(text), truncated=False, reward=1.0, correct=True,
                          is_golden=True, prompt_ids=group[slot].prompt_ids, completion_ids=ids)
    return "injected"


def assign_advantages(r: Recipe, groups: list[list[Rollout]]) -> list[list[Rollout]]:
    """Advantages per group (after DAPO's overlong shaping of rewards); returns the groups that
    stay in the loss."""
    kept = []
    for g in groups:
        rewards = torch.tensor([x.reward for x in g])  # [G]
        if r.loss.overlong_buffer:
            lengths = torch.tensor([x.completion_tokens for x in g])
            rewards = rewards + overlong_shaping(lengths, r.generation.max_new_tokens, r.loss.overlong_buffer,
                                                 r.loss.overlong_penalty)
            for x, v in zip(g, rewards.tolist()):
                x.reward = v
        if bool((rewards == rewards[0]).all()) and r.loss.zero_variance == "skip":
            continue  # every advantage is 0: nothing to learn, nothing to compute
        for x, a in zip(g, group_advantages(rewards[None], r.loss.scale_rewards)[0].tolist()):
            x.advantage = a
        kept.append(g)
    return kept


def step_metrics(r: Recipe, groups: list[list[Rollout]], outcomes: list, groups_in_loss: int, sequences_in_loss: int,
                 stats: UpdateStats, timing: dict, lr: float) -> StepMetrics:
    """The step's record, from the groups the policy sampled."""
    sampled = [x for g in groups for x in g]
    n, n_groups, G = max(1, len(sampled)), max(1, len(groups)), r.generation.samples_per_problem
    correct = [sum(x.correct for x in g) for g in groups]
    stds = [torch.tensor([x.reward for x in g]).std(unbiased=False).item() for g in groups if g]
    return StepMetrics(
        reward_mean=sum(x.correct for x in sampled) / n, reward_std=sum(stds) / n_groups,
        frac_reward_zero_std=sum(s == 0 for s in stds) / n_groups, all_wrong_frac=sum(c == 0 for c in correct) / n_groups,
        all_correct_frac=sum(c == G for c in correct) / n_groups, mixed_frac=sum(0 < c < G for c in correct) / n_groups,
        golden_injections=outcomes.count("injected"), golden_too_long=outcomes.count("too_long"),
        completion_tokens_mean=timing["tokens"] / n, truncation_rate=sum(x.truncated for x in sampled) / n, lr=lr,
        gen_s=timing["gen_s"], score_s=timing["score_s"], update_s=timing["update_s"],
        tokens_per_s=timing["tokens"] / timing["gen_s"] if timing["gen_s"] else 0.0, groups=len(groups),
        groups_in_loss=groups_in_loss, sequences_in_loss=sequences_in_loss,
        reward_failures=timing.get("reward_failures", 0), update=stats)


def merge_timing(timings: list[dict]) -> dict:
    """Every rank's {gen_s, score_s, update_s, tokens, reward_failures} as the step's: the ranks
    work at once, so a phase takes as long as its slowest rank; tokens and failures add up."""
    return {k: (max if k.endswith("_s") else sum)(t[k] for t in timings) for k in timings[0]}
