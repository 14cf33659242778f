"""Evaluation metrics against hand computations: pass@k, mean and its error, both majorities,
the summary over problems and sets, and the paired difference a comparison reports."""

from __future__ import annotations

import math

import pytest

from gcpo_cli.eval_metrics import (Sample, average, average_delta, maj_at_k, maj_at_k_exact, mean_and_stderr,
                                   paired_delta, pass_at_k, stderrs, summarize)


# ------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4),  # pass@1 is the plain accuracy c/n
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
    (5, 2, 4, 1.0),  # fewer than k wrong samples: some draw of k always holds a correct one
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (4, 0, 2, 0.0),
    (4, 4, 4, 1.0),
])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_mean_and_stderr_by_hand():
    m, se = mean_and_stderr([1.0, 0.0, 0.5, 0.5])
    # sample variance = (0.25 + 0.25 + 0 + 0) / 3 = 1/6; se = sqrt(1/6 / 4)
    assert m == 0.5 and se == pytest.approx(math.sqrt(1 / 24))
    assert mean_and_stderr([0.7]) == (0.7, None)


@pytest.mark.parametrize("answers,verdicts,expected", [
    (["1/2", "0.5", "3", "3", "3"], [True, True, False, False, False], False),  # wrong 3 outvotes
    (["1/2", "0.5", "3"], [True, True, False], True),  # correct spellings vote together
    (["3", "1/2"], [False, True], False),  # a tie goes to the answer stated first
    (["1/2", "3"], [True, False], True),
    ([None, None, "2"], [False, False, True], True),  # no answer, no vote
    (["\\text{4}", "4 ", "5"], [False, False, True], False),  # wrong answers group by normalised text
    ([None, None], [False, False], False),
])
def test_maj_at_k(answers, verdicts, expected):
    assert maj_at_k(answers, verdicts) is expected


@pytest.mark.parametrize("answers,verdicts,expected", [
    (["1/2", "0.5", "3", "3"], [True, True, False, False], False),  # 1/2 and 0.5 are two answers: 3 wins
    (["3", "1/2", "0.5"], [False, True, True], False),  # three answers, one vote each: the first stated
    (["1/2", "1/2", "0.5", "3"], [True, True, True, False], True),
    (["\\text{4}", " 4 ", "$4$.", "5", "5"], [True, True, True, False, False], True),  # normalised alike
    (["X", "x", "y", "y"], [True, True, False, False], True),  # lower case: x and X together, a tie, X first
    ([None, "", "2"], [False, False, True], True),  # no answer, no vote
    (["5", "5", "6"], [False, True, False], True),  # the majority answer graded correct (a truncated 5 is not)
    (["7", "7", "8"], [False, False, False], False),
    ([None, None], [False, False], False),
])
def test_maj_at_k_exact_groups_by_normalised_string(answers, verdicts, expected):
    assert maj_at_k_exact(answers, verdicts) is expected


def test_the_two_majorities_differ_only_in_grouping():
    p = [Sample("1/2", True), Sample("0.5", True), Sample("3", False), Sample("3", False)]
    m = summarize([p], k=4)
    assert m["maj_at_k"] == 1.0 and m["maj_at_k_exact"] == 0.0  # 2 equivalent votes tie 3's two, stated first


def test_summarize_by_hand():
    p1 = [Sample("1", True, 10), Sample("2", False, 20, True), Sample("2", False, 30), Sample("1", True, 40)]
    p2 = [Sample("7", False, 5), Sample(None, False, 5, True), Sample("7", False, 5), Sample("8", False, 5)]
    m = summarize([p1, p2], k=2)
    assert m["n_problems"] == 2 and m["n_samples"] == 8
    assert m["mean_at_k"] == pytest.approx(0.25)
    assert m["stderr"] == pytest.approx(0.25)  # std([0.5, 0]) = 0.3536, / sqrt(2)
    assert m["pass_at_k"] == pytest.approx((1 - 1 / 6) / 2)  # p1: 1 - C(2,2)/C(4,2); p2: 0
    assert m["maj_at_k"] == pytest.approx(0.5)  # p1: a 2-2 tie led by the correct "1"; p2: all wrong
    assert m["maj_at_k_exact"] == pytest.approx(0.5)  # the same here: no two spellings of one answer
    assert m["completion_tokens_mean"] == pytest.approx(120 / 8)
    assert m["truncation_rate"] == pytest.approx(2 / 8)
    assert m["unextracted_rate"] == pytest.approx(1 / 8)
    avg = average([m, dict(m, mean_at_k=0.75, n_problems=3)])
    assert avg["mean_at_k"] == pytest.approx(0.5) and avg["n_problems"] == 5
    assert avg["stderr"] == pytest.approx(math.sqrt(2 * 0.25**2) / 2)


def test_paired_delta_by_hand():
    right, wrong = Sample("2", True, 10), Sample("3", False, 30, True)
    a = {"p1": [right, right], "p2": [right, wrong], "p3": [wrong, wrong], "only-a": [right, right]}
    b = {"p1": [wrong, wrong], "p2": [wrong, wrong], "p3": [right, wrong], "only-b": [wrong, wrong]}
    d = paired_delta(a, b, k=2)
    assert d["n_paired"] == 3  # the problems both answered
    diffs = [100.0, 50.0, -50.0]  # mean@2 per problem, a minus b, in points
    mean = sum(diffs) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2 / 3)
    assert d["mean_at_k"]["value"] == pytest.approx(mean) and d["mean_at_k"]["stderr"] == pytest.approx(se)
    assert d["pass_at_k"]["value"] == pytest.approx((100 + 100 - 100) / 3)  # pass@2: 1-0, 1-0, 0-1
    # the length in tokens: p1 10 - 30, p2 20 - 30, p3 30 - 20
    assert d["completion_tokens_mean"]["value"] == pytest.approx((-20 - 10 + 10) / 3)
    assert d["truncation_rate"]["value"] == pytest.approx((-100 - 50 + 50) / 3)
    assert paired_delta({"p": [right]}, {"p": [wrong]}, k=1)["mean_at_k"] == {"value": 100.0, "stderr": None}
    both = average_delta([d, dict(d, mean_at_k={"value": 0.0, "stderr": 3.0})])
    assert both["mean_at_k"]["value"] == pytest.approx(mean / 2)
    assert both["mean_at_k"]["stderr"] == pytest.approx(math.sqrt(se**2 + 9) / 2)
    assert both["n_paired"] == 6


def test_stderrs_are_over_problems_of_each_metric():
    ok, wrong = Sample("1", True, 10), Sample("2", False, 30, truncated=True)
    problems = [[ok, ok], [ok, wrong], [wrong, wrong], []]  # an empty problem is left out, as summarize does
    se = stderrs(problems, 2)
    assert se["mean_at_k"] == pytest.approx(mean_and_stderr([1.0, 0.5, 0.0])[1])
    assert se["mean_at_k"] == pytest.approx(summarize(problems, 2)["stderr"])
    assert se["pass_at_k"] == pytest.approx(mean_and_stderr([1.0, 1.0, 0.0])[1])
    assert se["completion_tokens_mean"] == pytest.approx(mean_and_stderr([10.0, 20.0, 30.0])[1])
    assert se["truncation_rate"] == pytest.approx(mean_and_stderr([0.0, 0.5, 1.0])[1])
    assert stderrs([[ok]], 1)["mean_at_k"] is None  # one problem: no error
