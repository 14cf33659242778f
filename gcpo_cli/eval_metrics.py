"""Evaluation metrics as pure functions over graded samples (tested against hand computations).

- mean@k with its standard error over problems; unbiased pass@k (Chen et al. 2021, "Evaluating
  Large Language Models Trained on Code", eq. 1); maj@k counted two ways (answers grouped by
  math-verify equivalence, and by exact normalised string as Qwen2.5-Math's evaluation groups
  them); mean completion length, truncation rate and the share of samples that stated no answer.
- `average`: the mean over benchmarks, each counting once.
- `paired_delta`: one evaluation minus another on the same problems, every metric, with the
  standard error of the per-problem differences (paired: a problem's own difficulty cancels, so
  the error is far smaller than the two errors combined as if independent).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from .answers import clean_str

METRICS = ("mean_at_k", "stderr", "pass_at_k", "maj_at_k", "maj_at_k_exact", "completion_tokens_mean",
           "truncation_rate", "unextracted_rate")
# What each majority vote groups by; printed under the table and given in --json.
MAJ_LABELS = {
    "maj_at_k": "majority vote, answers grouped by math-verify equivalence (1/2 and 0.5 vote together)",
    "maj_at_k_exact": "majority vote, answers grouped by exact normalised string, as Qwen2.5-Math's "
                      "evaluation counts maj@k (1/2 and 0.5 are different answers)",
}
# The metrics a comparison differences, each the mean over problems of a per-problem value
# (`per_problem`); rates differ in points (x100), the length in tokens.
PAIRED = ("mean_at_k", "pass_at_k", "maj_at_k", "maj_at_k_exact", "completion_tokens_mean", "truncation_rate",
          "unextracted_rate")
IN_TOKENS = ("completion_tokens_mean",)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), computed as a
    product so that large n does not overflow (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample std / sqrt(n)); the error is None for fewer than 2."""
    if not values:
        return 0.0, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def maj_at_k(answers: list[str | None], verdicts: list[bool]) -> bool:
    """Is the most frequent stated answer correct? Correct answers all equal the gold answer, so
    they form one group whatever their spelling (1/2, 0.5); wrong ones group by normalised text.
    Samples without an answer do not vote; ties go to the answer stated first."""
    votes: Counter = Counter()
    for ans, ok in zip(answers, verdicts):
        if ok:
            votes[True] += 1
        elif ans is not None and ans.strip():
            votes["w:" + clean_str(ans)] += 1
    if not votes:
        return False
    return votes.most_common(1)[0][0] is True  # most_common keeps first-seen order on ties


def maj_at_k_exact(answers: list[str | None], verdicts: list[bool]) -> bool:
    """maj@k as Qwen2.5-Math's evaluation counts it (evaluation/rm_maj_eval.py, `group_pred`
    without `use_symbol`): answers vote by their text after a light normalisation (\\text{}
    unwrapped; \\!, \\, and $ dropped; whitespace removed; a trailing period cut; lower case),
    so 1/2 and 0.5 are two answers. The majority is correct if its answer was graded correct
    (a truncated sample is graded wrong). Unlike Qwen's script, where an empty prediction is a
    group of its own, samples without an answer do not vote (as in `maj_at_k`, so the two differ
    in the grouping only). Ties go to the answer stated first."""
    votes: Counter = Counter()
    correct: set[str] = set()
    for ans, ok in zip(answers, verdicts):
        if ans is None or not ans.strip():
            continue
        key = clean_str(ans)
        votes[key] += 1
        if ok:
            correct.add(key)
    if not votes:
        return False
    return votes.most_common(1)[0][0] in correct


@dataclass
class Sample:
    extracted_answer: str | None
    correct: bool
    completion_tokens: int | None = None
    truncated: bool = False


def per_problem(samples: list[Sample], k: int) -> dict[str, float | None]:
    """One problem's value of each metric in PAIRED, from all its samples (pass@k over as many as
    it has, up to k); a metric over problems is the mean of these (the length and the rates only
    when every problem has the same number of samples, as in a generated evaluation)."""
    n, c = len(samples), sum(x.correct for x in samples)
    answers, verdicts = [x.extracted_answer for x in samples], [x.correct for x in samples]
    tokens = [x.completion_tokens for x in samples if x.completion_tokens is not None]
    return dict(mean_at_k=c / n, pass_at_k=pass_at_k(n, c, min(k, n)), maj_at_k=float(maj_at_k(answers, verdicts)),
                maj_at_k_exact=float(maj_at_k_exact(answers, verdicts)),
                completion_tokens_mean=sum(tokens) / len(tokens) if tokens else None,
                truncation_rate=sum(x.truncated for x in samples) / n,
                unextracted_rate=sum(x.extracted_answer is None for x in samples) / n)


def summarize(samples: list[list[Sample]], k: int) -> dict:
    """Metrics over problems, each a list of its samples. pass@k and maj@k use all samples of a
    problem (k of them in a normal evaluation; a problem with fewer samples uses as many as it
    has). The standard error is over problems: each problem's mean accuracy is one observation.
    Length and rates are over samples."""
    samples = [s for s in samples if s]
    flat = [x for s in samples for x in s]
    out: dict = {"n_problems": len(samples), "n_samples": len(flat), "k": k}
    if not samples:  # nothing graded (a golden check of a set without golden answers)
        return out | {key: None for key in METRICS}
    rows = [per_problem(s, k) for s in samples]
    mean, se = mean_and_stderr([r["mean_at_k"] for r in rows])
    tokens = [x.completion_tokens for x in flat if x.completion_tokens is not None]
    out.update(
        mean_at_k=mean,
        stderr=se,
        pass_at_k=sum(r["pass_at_k"] for r in rows) / len(rows),
        maj_at_k=sum(r["maj_at_k"] for r in rows) / len(rows),
        maj_at_k_exact=sum(r["maj_at_k_exact"] for r in rows) / len(rows),
        completion_tokens_mean=sum(tokens) / len(tokens) if tokens else None,
        truncation_rate=sum(x.truncated for x in flat) / len(flat),
        unextracted_rate=sum(x.extracted_answer is None for x in flat) / len(flat),
    )
    return out


def stderrs(samples: list[list[Sample]], k: int) -> dict[str, float | None]:
    """For every metric in PAIRED, the standard error over problems of its per-problem value (as
    `summarize`'s "stderr" is mean@k's): what a results file reports beside each metric. None for
    fewer than two problems with a value."""
    rows = [per_problem(s, k) for s in samples if s]
    return {key: mean_and_stderr([r[key] for r in rows if r[key] is not None])[1] for key in PAIRED}


def average(per_set: list[dict]) -> dict:
    """Unweighted mean over benchmarks (each counts once, as papers report; sets with nothing
    graded are left out); the standard error combines the sets' errors as independent."""
    per_set = [m for m in per_set if m["n_problems"]]
    if not per_set:
        return {}
    out: dict = {"n_problems": sum(m["n_problems"] for m in per_set),
                 "n_samples": sum(m["n_samples"] for m in per_set), "k": per_set[0]["k"]}
    for key in METRICS:
        vals = [m[key] for m in per_set if m.get(key) is not None]
        if key == "stderr":
            out[key] = (math.sqrt(sum(v * v for v in vals)) / len(per_set)
                        if len(vals) == len(per_set) else None)
        else:
            out[key] = sum(vals) / len(vals) if vals else None
    return out


def paired_delta(a: dict[str, list[Sample]], b: dict[str, list[Sample]], k: int) -> dict:
    """`a` minus `b` (each problem id -> its samples) over the problems both graded: for every
    metric in PAIRED, {"value": the mean per-problem difference, "stderr": its standard error},
    rates in points and the length in tokens; None where either side has no value. "n_paired"
    counts the problems. The error is that of paired differences: the per-problem difficulty
    both sides share cancels (None for fewer than two problems)."""
    common = [p for p in a if a[p] and b.get(p)]
    va, vb = {p: per_problem(a[p], k) for p in common}, {p: per_problem(b[p], k) for p in common}
    out: dict = {"n_paired": len(common)}
    for key in PAIRED:
        scale = 1.0 if key in IN_TOKENS else 100.0
        diffs = [scale * (va[p][key] - vb[p][key]) for p in common
                 if va[p][key] is not None and vb[p][key] is not None]
        value, se = mean_and_stderr(diffs)
        out[key] = {"value": value, "stderr": se} if diffs else None
    return out


def average_delta(deltas: list[dict]) -> dict:
    """The unweighted mean of several sets' paired deltas (each set counts once, as `average`
    averages them); the errors combine as independent, None unless every set has one."""
    out: dict = {"n_paired": sum(d["n_paired"] for d in deltas)}
    for key in PAIRED:
        got = [d[key] for d in deltas if d.get(key) is not None]
        if not got:
            out[key] = None
            continue
        errors = [g["stderr"] for g in got if g["stderr"] is not None]
        out[key] = {"value": sum(g["value"] for g in got) / len(got),
                    "stderr": math.sqrt(sum(e * e for e in errors)) / len(got) if len(errors) == len(got) else None}
    return out
