from collections import Counter

import pytest

from gcpo_cli.answers import extract_answer
from gcpo_cli.synthetic import arithmetic, parse_levels


def test_levels_are_graded_distinct_and_worked():
    rows = arithmetic(400, seed=0, levels=[1, 2, 3])
    assert len({r["problem"] for r in rows}) == 400
    # level 1 has only 81 distinct sums: it leaves the rotation and the others fill the count
    assert Counter(r["level"] for r in rows) == {1: 81, 2: 159, 3: 160}
    for r in rows:
        assert extract_answer(r["solution"]) == r["answer"]
    assert arithmetic(400, 0, [1, 2, 3]) == rows  # deterministic


def test_impossible_counts_and_bad_levels_are_errors():
    with pytest.raises(ValueError, match="cannot make 100 distinct"):
        arithmetic(100, 0, [1])
    assert parse_levels("1-3") == [1, 2, 3] and parse_levels("2,5") == [2, 5]
    with pytest.raises(ValueError):
        parse_levels("0-9")
