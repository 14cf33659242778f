"""Which problems to train on next.

Both samplers are stateless functions of (seed, step, the run's history): a resumed run picks exactly
the problems an uninterrupted one would have, with no sampler state to save.
- uniform: epochs of seeded permutations, B problems per step.
- frontier: favours problems the model solves sometimes (pass rate p near 1/2: weight p(1-p)),
  then unseen ones; always-solved and hopeless problems keep a small floor weight. The pass rate
  is over each problem's last `window` sampled (non-golden) rollouts in this run. Under GCPO an
  all-wrong problem with a golden answer to inject is no dead end but exactly where going gold
  teaches (issue 9): it weighs like a half-solved problem until `hopeless_after` injections
  brought no correct sample. Hopeless: all wrong with no golden answer, or past that many.
  Only a golden answer training can inject counts (`usable_golden`, issue 25 item 7): one too
  long for max_new_tokens is never injected, so its problem would never become hopeless and,
  all wrong, would be drawn ~12x as often as a hopeless one while teaching nothing.
"""

from __future__ import annotations

import random

from .prompts import golden_response
from .records import Problem
from .rollout import response_ids

FLOOR = 0.02
UNSEEN = 0.25  # as attractive as a problem solved half the time


def uniform(problem_ids: list[str], step: int, batch: int, seed: int) -> list[str]:
    n = len(problem_ids)
    out = []
    for k in range(step * batch, step * batch + batch):
        epoch, pos = divmod(k, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(problem_ids[order[pos]])
    return out


GOLDEN = 0.25  # an all-wrong problem with a golden answer to inject: as attractive as p = 1/2


def frontier_weight(correct: int | None, attempts: int | None, injections: int = 0, golden: bool = False,
                    hopeless_after: int = 4) -> float:
    if not attempts:
        return UNSEEN
    if correct == 0 and golden and injections < hopeless_after:
        return GOLDEN
    p = correct / attempts
    return FLOOR + p * (1 - p)


def usable_golden(problems: list[Problem], tok, template: str, max_new_tokens: int) -> frozenset[str]:
    """The ids of `problems` ({id, answer, golden}) whose golden answer training can inject: the
    recipe's golden_template filled in and tokenised as train.go_gold does (rollout.response_ids:
    its tokens, then end-of-turn), at most max_new_tokens. The loop asks once, at setup: the
    pool, the template and the limit are fixed for a run."""
    return frozenset(p.id for p in problems if p.golden and len(response_ids(
        tok, golden_response(template, p.golden, p.answer))) <= max_new_tokens)


def frontier(rates: dict[str, tuple[int, int, int]], problem_ids: list[str], step: int, batch: int,
             seed: int, golden: set[str] = frozenset(), hopeless_after: int = 4) -> list[str]:
    """`rates`: problem id -> (correct, attempts, golden injections) in this run
    (store.pass_rates); `golden`: the problems with a golden answer the run can inject
    (`usable_golden`)."""
    weights = [frontier_weight(*rates.get(pid, (None, None, 0)), golden=pid in golden, hopeless_after=hopeless_after)
               for pid in problem_ids]
    rng = random.Random(seed * 1_000_003 + step)
    # Weighted sampling without replacement (Efraimidis-Spirakis keys).
    keys = sorted(range(len(problem_ids)), key=lambda i: -(rng.random() ** (1.0 / weights[i])))
    return [problem_ids[i] for i in keys[: min(batch, len(problem_ids))]]
