"""The grader cannot be gamed (issue 9, point 3) and training and evaluation grade alike (point 4).

A policy under RL learns whatever the reward accepts: a number followed by anything ("3x",
"3 or five", "4 = 3") must not pass for the number. Units and currency around a number still do.
Every case goes through `verify_answer` and through the real `Grader` (its worker process)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from gcpo_cli.answers import MAX_ANSWER_CHARS, extract_answer, verify_answer
from gcpo_cli.grader import Grader
from gcpo_cli.records import Problem
from gcpo_cli.units import gold_value, strip_unit

# What the grader accepts and rejects, by rule. docs/grading.md publishes these tables: its cases section
# is written by `python tests/test_grader.py`, and a test fails when it is not these cases.
# (gold, predicted final answer): the answer is correct.
ACCEPTED = {
    "A unit or currency after or before a number is ignored": [
        ("18", "18 dollars"), ("9", "9 (apples)"), ("5", "5 cm"), ("18", "$18"), ("18", "\\$18"),
        ("18", "18 \\text{ cm}"), ("18", "\\$18.00"), ("18", "18%"), ("0.18", "18%"),  # math-verify's percent rule
        ("60", "60 km/h"), ("5", "5 m/s"), ("90", "90°"), ("90", "90^\\circ"), ("25", "25 square feet"),
        ("864", "864 \\text{ inches}^2"), ("5", "5 \\, \\text{cm}"), ("3", "3 \\text{m}"), ("18", "€18"),
        ("18", "Rs. 18"), ("7", "7 hrs."), ("1080", "1,080 people"), ("12.5", "\\$12.50 per hour"),
        ("\\frac{1}{2}", "\\frac{1}{2} cup"), ("5/2", "2 1/2 cups"), ("12\\pi", "12\\pi \\text{ cm}^2"),
    ],
    "Digits grouped in thousands": [
        ("1000", "1,000"), ("1000", "1\\,000"), ("1000", "1 000"), ("10455", "10,455"), ("1,000", "1000"),
    ],
    "An equation whose left side is a single variable name counts by its right side": [
        ("3", "x = 3"), ("3", "x=3 dollars"), ("3", "\\theta = 3"), ("3", "a_1 = 3"), ("3", "$x = 3$"),
        ("3", "x = 2 + 1 = 3"), ("\\frac{1}{2}", "p = 0.5"),
    ],
    "Gold answers with units, letters or structure of their own": [
        ("\\frac{\\pi}{2}", "\\pi/2"), ("x^2+1", "x^2+1"), ("x^2+1", "1 + x^2"), ("(1,2)", "(1, 2)"),
        ("[2,5)", "[2, 5)"), ("(3, -1)", "(3,-1)"), ("10\\%", "10"), ("10\\%", "10\\%"), ("10\\%", "10%"),
        ("5\\text{ cm}", "5 cm"), ("5.4 \\text{ cents}", "5.4"), ("y = 2x + 3", "2x+3"), ("y = 2x + 3", "y=2x+3"),
        ("\\text{Evelyn}", "Evelyn"), ("2+3i", "3i + 2"), ("3\\sqrt{2}", "3 \\sqrt{2}"), ("\\{1, 2\\}", "2, 1"),
        ("3", "3."), ("3", "3.0"), ("-1", "-1"), ("\\mathrm{E}", "E"), ("\\text{F}", "F"),
    ],
    "Option letters, and a box around the whole answer": [
        ("c", "(c)"), ("c", "C"), ("e", "\\mathrm{E}"), ("e", "\\textbf{(E)}"), ("3", "\\boxed{3}"),
        ("\\frac12", "\\boxed{\\frac{1}{2}}"),
    ],
    "A gold answer with a unit or a label after its value is graded by the value": [
        ("9 (apples)", "9"), ("5 (dollars)", "5"), ("9 (apples)", "\\boxed{9}"), ("2.5 (cm)", "2.5"),
        ("\\frac{1}{2} (cup)", "1/2"), ("18 dollars", "18"), ("9 (apples)", "9 apples"), ("9 (apples)", "9 (apples)"),
        ("1,080 (people)", "1080"), ("12 (inches of snow)", "12"), ("55 (pieces of drawing paper)", "55"),
        ("9 (quarters)", "9"), ("4 (hot-dog buns)", "4"),
    ],
    "... and parentheses that are mathematics stay": [
        ("(1, 2)", "(1,2)"), ("f(x)", "f(x)"), ("(a) 3", "(a) 3"), ("3 (mod 5)", "3 (mod 5)"), ("3 (x)", "3 (x)"),
        ("2 hours 30 minutes", "2 hours 30 minutes"),
    ],
    "Several parts, for a gold answer of that many parts, match it as a whole": [
        ("(2,2),(6,2)", "(2,2) and (6,2)"), ("(2,2),(6,2)", "(6,2) \\text{ and } (2,2)"),
        ("(5,8),(8,5)", "(x,y) = (5,8) \\quad\\text{and}\\quad (8,5)"), ("\\{1,2,3\\}", "1, 2, 3"),
        ("\\{1,2,3\\}", "1, 2 and 3"), ("x=2, y=3", "x = 2 \\text{ and } y = 3"),
        ("1, -1", "x = 1 \\text{ and } x = -1"),
    ],
}

# (gold, predicted final answer): the answer is wrong, however close it reads.
REJECTED = {
    "A variable or constant after a number": [
        ("3", "3x"), ("3", "3 x"), ("2", "2pi"), ("5", "5 i"), ("7", "7n"), ("3", "3\\pi"), ("3", "3 \\pi"),
        ("3", "3e"), ("3", "3 e"), ("3", "3i"), ("3", "3 xy"), ("3", "3 x/y"), ("3", "3\\text{ i}"),
        ("2", "2 \\sqrt{2}"), ("3", "3 sin"),
    ],
    "Conjunctions and several candidate answers": [
        ("3", "3 or five"), ("-1", "-1 or more"), ("1", "1 and two"), ("3", "3, 4"), ("3", "3 or 4"),
        ("4", "3 or 4"), ("3", "3 \\text{ or } 4"), ("3", "3\\text{ or five}"), ("3", "3 (or 4)"),
        ("3", "3 apples or 4 apples"), ("3", "3 \\pm 1"), ("3", "3 and 3.5"), ("3", "\\{3, 4\\}"),
        ("3", "\\boxed{3} or 4"), ("3", "\\boxed{3}, \\boxed{4}"), ("3", "3 and 4"), ("(2,2)", "(2,2) and (6,2)"),
        ("x^2+1", "x^2+1 or x^2-1"), ("10\\%", "10 or 20"), ("c", "c or d"), ("c", "(c) or (d)"), ("d", "c, d"),
    ],
    "Several parts that are not the gold's parts": [
        ("(2,2),(6,2)", "(2,2)"), ("(2,2),(6,2)", "(2,2) and (6,3)"), ("(2,2),(6,2)", "(2,2) and (6,2) and (1,1)"),
        ("\\{1,2,3\\}", "1 and 2"), ("\\{1,2,3\\}", "1, 2, 3, 4"),
        ("(5,8),(8,5)", "(x,y) = (5,8) \\text{ and } (8,6)"),
    ],
    "Number words and hedges that change the number": [
        ("3", "3 hundred"), ("3", "3 dozen"), ("3", "3 more"), ("3", "3 times"), ("3", "3 squared"),
        ("3", "3 five"), ("3", "3 less"),
    ],
    "Digits apart are not one number": [
        ("12", "1 2"), ("3", "1 2"), ("12", "1\\ 2"), ("1000", "10 00"), ("123", "1 23"),
    ],
    "Symbols differ by their case": [
        ("\\pi", "\\Pi"), ("\\Pi", "\\pi"), ("2\\pi", "2\\Pi"), ("\\frac{\\pi}{2}", "\\frac{\\Pi}{2}"), ("x", "X"),
        ("x^2+1", "X^2+1"), ("\\gamma", "\\Gamma"), ("\\mathrm{E}", "e"),
    ],
    "An equation whose right side is not the answer": [
        ("3", "4 = 3"), ("3", "4 = 3 cm"), ("3", "2x = 3"), ("3", "x = 4 = 3"), ("3", "f(x) = 3"), ("3", "3 = x"),
    ],
    "Text math-verify cannot read is not a number picked out of it": [
        ("3", "3 | 4"), ("4", "3 | 4"), ("4", "3 \\unknown 4"),
    ],
    "Plain wrong answers, with and without units": [
        ("18", "19 dollars"), ("18", "\\$19"), ("5", "5 m^2 + 1"), ("(1,2)", "(2, 1)"), ("(1,2)", "[1, 2]"),
        ("\\frac{\\pi}{2}", "\\pi"), ("5", None), ("5", ""), ("5", "   "),
    ],
    "A gold answer's unit goes, its value stays; mathematical parentheses are not a unit": [
        ("9 (apples)", "8"), ("9 (apples)", "90"), ("5 (dollars)", "5x"), ("9 (apples)", "apples"), ("(1, 2)", "1"),
        ("(1, 2)", "2"), ("f(x)", "f"), ("f(x)", "x"), ("(a) 3", "(b) 3"), ("(a) 3", "(a) 4"), ("3 (x)", "3"),
        ("\\sin(abc)", "\\sin"), ("f(abc)", "f"), ("12 (inches of snow)", "13"), ("9 (quarters)", "9 quarters or 10"),
    ],
    "A hedge hidden past the length limit is not cut back into an answer": [
        ("3", "3" + " " * MAX_ANSWER_CHARS + "or 4"),
    ],
}

# (gold, whole completion): what `extract_answer` reads from it is correct.
ACCEPTED_COMPLETIONS = {
    "Boxes side by side are one answer of several parts": [
        ("(2,2),(6,2)", "The solutions are $\\boxed{(2,2)}$ and $\\boxed{(6,2)}$."),
        ("\\{1,2,3\\}", "So $n$ is one of $\\boxed{1},\\boxed{2},\\boxed{3}$."),
        ("(5,8),(8,5)", "Hence $\\boxed{(x,y) = (5,8) \\quad\\text{and}\\quad (8,5)}$."),
        ("1, -1", "The roots are \\(\\boxed{1}\\) and \\(\\boxed{-1}\\)."),
    ],
    "The last box, or a final-answer statement after it": [
        ("10455", "Each term is $\\boxed{10}$, so the sum is 10455. The final answer is $10,455$."),
        ("3", "First $\\boxed{2}$ is wrong; checking again gives $\\boxed{3}$."),
        ("5", "The answer is $\\boxed{5}$. Note that the answer is consistent with the data."),
        ("12 (inches of snow)", "It snowed 4 + 8 = 12 inches. \\boxed{12}"),
    ],
}

# (gold, whole completion): what `extract_answer` reads from it is wrong.
REJECTED_COMPLETIONS = {
    "Two boxes for a single-valued gold are a hedge": [
        ("4", "It is $\\boxed{3}$ or $\\boxed{4}$."), ("3", "It is $\\boxed{3}$ or $\\boxed{4}$."),
        ("4", "$\\boxed{3}, \\boxed{4}$"), ("4", "$\\boxed{3}$ $\\boxed{4}$"),
    ],
    "The final statement wins over an earlier box": [
        ("10", "Each term is $\\boxed{10}$, so the sum is 10455. The final answer is $10,455$."),
    ],
    "Several boxes that are not the gold's parts": [
        ("(2,2),(6,2)", "$\\boxed{(2,2)}$ and $\\boxed{(6,2)}$ and $\\boxed{(1,1)}$"),
    ],
}

ACCEPT = [case for cases in ACCEPTED.values() for case in cases]
REJECT = [case for cases in REJECTED.values() for case in cases]
ACCEPT_COMPLETIONS = [case for cases in ACCEPTED_COMPLETIONS.values() for case in cases]
REJECT_COMPLETIONS = [case for cases in REJECTED_COMPLETIONS.values() for case in cases]


def test_the_table_is_big_enough():
    assert len(ACCEPT) >= 40 and len(REJECT) >= 40
    assert len(set(ACCEPT)) == len(ACCEPT) and len(set(REJECT)) == len(REJECT)
    assert not set(ACCEPT) & set(REJECT) and not set(ACCEPT_COMPLETIONS) & set(REJECT_COMPLETIONS)


@pytest.fixture(scope="module")
def graded():
    """Every pair graded once by the real Grader (worker process, deadlines)."""
    pairs = ACCEPT + REJECT
    with Grader(seconds_per_item=20) as g:
        verdicts = g.grade(pairs)
        restarts = g.restarts
    assert restarts == 0  # no case should need its worker killed
    return dict(zip(pairs, verdicts))


@pytest.mark.parametrize("gold,predicted", ACCEPT)
def test_accepts(gold, predicted, graded):
    assert verify_answer(gold, predicted) is True
    assert graded[(gold, predicted)] is True


@pytest.mark.parametrize("gold,predicted", REJECT)
def test_rejects(gold, predicted, graded):
    assert verify_answer(gold, predicted) is False
    assert graded[(gold, predicted)] is False


@pytest.fixture(scope="module")
def graded_completions():
    """Every whole completion read by `extract_answer` and graded once by the real Grader."""
    pairs = ACCEPT_COMPLETIONS + REJECT_COMPLETIONS
    with Grader(seconds_per_item=20) as g:
        verdicts = g.verdicts([(None, gold, extract_answer(completion), False) for gold, completion in pairs])
    return dict(zip(pairs, verdicts))


@pytest.mark.parametrize("gold,completion", ACCEPT_COMPLETIONS)
def test_accepts_completions(gold, completion, graded_completions):
    assert verify_answer(gold, extract_answer(completion)) is True
    assert graded_completions[(gold, completion)] is True


@pytest.mark.parametrize("gold,completion", REJECT_COMPLETIONS)
def test_rejects_completions(gold, completion, graded_completions):
    assert verify_answer(gold, extract_answer(completion)) is False
    assert graded_completions[(gold, completion)] is False


@pytest.mark.parametrize("completion,answer", [
    ("so $\\boxed{(2,2)}$ and $\\boxed{(6,2)}$.", "(2,2) and (6,2)"),
    ("$\\boxed{1},\\boxed{2},\\boxed{3}$", "1, 2, 3"),
    ("$\\boxed{3}$ or $\\boxed{4}$", "3 or 4"),
    ("$\\boxed{3}$ \\quad $\\boxed{4}$", "3, 4"),
    ("\\boxed{\\boxed{3}}", "3"),
    ("$\\boxed{2}$ is wrong, so $\\boxed{3}$", "3"),  # words between: only the last box
    ("$\\boxed{10}$. The final answer is $10,455$.", "10,455"),
    ("The final answer is $\\boxed{7}$.", "7"),
    ("$\\boxed{5}$. Note that the answer is consistent with the data.", "5"),  # prose, not a statement
    ("$\\boxed{5}$. Final answer: \\(6\\)", "6"),
])
def test_extract_answer_reads_side_by_side_boxes_and_a_later_final_statement(completion, answer):
    assert extract_answer(completion) == answer


# ------------------------------------------------------------- the published table (docs/grading.md)

DOC = Path(__file__).resolve().parents[1] / "docs" / "grading.md"
BEGIN, END = "<!-- cases: generated by tests/test_grader.py -->", "<!-- end of cases -->"


def _shown(text: str | None) -> str:
    if text is None:
        return "(no answer)"
    if not text.strip():
        return f"({len(text)} blanks)" if text else "(empty)"
    text = re.sub(r" {10,}", lambda m: f" ({len(m.group())} blanks) ", text)
    return "`" + text.replace("|", "\\|") + "`"


def _table(title: str, groups: dict[str, list[tuple]], header: str) -> list[str]:
    lines = [f"### {title}", "", f"| Rule | {header} |", "|---|---|"]
    for rule, cases in groups.items():
        lines.append(f"| {rule} | " + "; ".join(f"{_shown(g)} ← {_shown(a)}" for g, a in cases) + " |")
    return lines + [""]


def render_cases() -> str:
    """The cases section of docs/grading.md, from the tables above."""
    lines = [BEGIN, ""]
    lines += _table(f"Accepted: reward 1 ({len(ACCEPT)} final answers)", ACCEPTED, "gold ← final answer")
    lines += _table(f"Rejected: reward 0 ({len(REJECT)} final answers)", REJECTED, "gold ← final answer")
    lines += _table(f"Accepted: whole completions ({len(ACCEPT_COMPLETIONS)})", ACCEPTED_COMPLETIONS,
                    "gold ← completion")
    lines += _table(f"Rejected: whole completions ({len(REJECT_COMPLETIONS)})", REJECTED_COMPLETIONS,
                    "gold ← completion")
    return "\n".join(lines + [END])


def test_the_published_table_is_these_cases():
    # Each case above is asserted by test_accepts / test_rejects; the published table must be them.
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    published = text[text.index(BEGIN): text.index(END) + len(END)]
    assert published == render_cases(), "docs/grading.md is stale: run `python tests/test_grader.py`"


@pytest.mark.parametrize("answer,bare", [
    ("18 dollars", "18"), ("9 (apples)", "9"), ("5 \\text{ cm}^2", "5"), ("60 km/h", "60"), ("90°", "90"),
    ("x = 3 dollars", "x = 3"), ("2 1/2 cups", "2 1/2"), ("5 \\, \\text{cm}", "5"), ("3 \\text{m}", "3"),
    ("3 x", None), ("7n", None), ("2pi", None), ("5 i", None), ("3 or five", None), ("-1 or more", None),
    ("3 (or 4)", None), ("3 \\text{ or } 4", None), ("3 hundred", None), ("18%", None), ("apples", None),
    ("\\text{Evelyn}", None),
])
def test_strip_unit(answer, bare):
    assert strip_unit(answer) == bare


@pytest.mark.parametrize("gold,value", [
    ("9 (apples)", "9"), ("5 (dollars)", "5"), ("18 dollars", "18"), ("2.5 (cm)", "2.5"), ("9(apples)", "9"),
    ("\\frac{1}{2} (cup)", "\\frac{1}{2}"), ("13 (miles per hour)", "13"), ("5\\text{ cm}", "5"),
    # nothing to strip: mathematical parentheses, option styles, variables, a bare function name
    ("(1, 2)", "(1, 2)"), ("f(x)", "f(x)"), ("(a) 3", "(a) 3"), ("3 (a)", "3 (a)"), ("3 (mod 5)", "3 (mod 5)"),
    ("3 (x)", "3 (x)"), ("\\sin(abc)", "\\sin(abc)"), ("f(abc)", "f(abc)"), ("(apples)", "(apples)"),
    ("10\\%", "10\\%"), ("y = 2x + 3", "y = 2x + 3"), ("\\text{Evelyn}", "\\text{Evelyn}"), ("3 (or 4)", "3 (or 4)"),
])
def test_gold_value(gold, value):
    assert gold_value(gold) == value


def test_a_perfect_model_scores_full_marks_on_unit_bearing_golds():
    # ASDiv stores "9 (apples)"; a completion boxes the number. All three used to score 0.
    rows = [("Tom has 4 apples and buys 5 more. How many apples?", "9 (apples)", "4 + 5 = 9. \\boxed{9}"),
            ("A pen costs 2 dollars. What do 2.5 pens cost?", "5 (dollars)", "2 x 2.5 = 5, so \\boxed{5}"),
            ("Half of 3 cups?", "1.5 (cups)", "Half is \\boxed{1.5}")]
    with Grader() as g:
        assert g.verdicts([(q, gold, extract_answer(c), False) for q, gold, c in rows]) == [True] * 3
        assert g.verdicts([(q, gold, "7", False) for q, gold, _ in rows]) == [False] * 3


# Degenerate strings for every alternative of the tokeniser and the other regular expressions.
DEGENERATE = ["9", "a", "a ", "\\text{", "(", "(a", "a/", "a /", "^", "^ ", "\\", "° ", "{", "\\text{a", "a.",
              "c or d ", "x = ", "3 apples ", "\\boxed{"]


@pytest.mark.parametrize("unit", DEGENERATE)
def test_a_1mb_answer_is_verified_at_once(unit):
    answer = unit * (1_000_000 // len(unit))
    t = time.perf_counter()
    assert verify_answer("5", answer) is False
    assert verify_answer("c", answer) is False
    assert verify_answer("\\frac{1}{2}", answer) is False
    assert time.perf_counter() - t < 0.3  # well under a second


def test_a_1mb_answer_through_the_grader():
    with Grader() as g:
        g.grade([("1", "2")])  # start the worker outside the timing
        t = time.perf_counter()
        answers = [unit * (1_000_000 // len(unit)) for unit in DEGENERATE[:6]]
        assert g.grade([("5", a) for a in answers]) == [False] * len(answers)
        assert g.verdicts([("Options: a ) 1 , b ) 2", "c", a, False) for a in answers]) == [False] * len(answers)
        assert time.perf_counter() - t < 2


@pytest.mark.parametrize("unit", ["\\boxed{1} and ", "$\\boxed{1}$ ", "\\boxed 1 ", "\\boxed{", "\\boxed{\\boxed{",
                                  "final answer is ", "\\boxed{1} final answer is $", "}", "\\boxed{ }"])
def test_extracting_from_a_1mb_completion_is_linear(unit):
    # ~0.5 s for 70,000 boxes side by side (a quadratic walk took minutes); loose for shared CI cores
    completion = unit * (1_000_000 // len(unit))
    t = time.perf_counter()
    extract_answer(completion)
    assert time.perf_counter() - t < 3


def test_boxes_side_by_side_past_the_length_limit_are_no_answer():
    assert verify_answer("1, 2", extract_answer("$\\boxed{1}, \\boxed{2}$")) is True
    answer = extract_answer("$\\boxed{1}, \\boxed{2}$, " * 1000)
    assert len(answer) > MAX_ANSWER_CHARS and verify_answer("1, 2", answer) is False


def test_unit_reading_is_linear():
    # strip_unit is only ever given answers of at most MAX_ANSWER_CHARS, but it must not be
    # what a long one hangs on: 100 KB of each degenerate pattern takes ~0.1 s (one regex pass
    # and a walk back over the tokens); a quadratic pattern would take minutes. The bound is
    # loose because CI shares its cores.
    for unit in DEGENERATE:
        answer = unit * (100_000 // len(unit))
        t = time.perf_counter()
        strip_unit(answer)
        assert time.perf_counter() - t < 2, unit


# ----------------------------------------------------------------- one grading path (point 4)

MATHQA = ("the compound ratio of 5 : 6 , 3 : 2 and 6 : 5 ?\n\n"
          "Options: a ) 1 : 1 , b ) 3 : 2 , c ) 12 , d ) 9 , e ) 2 : 3")


def test_verdicts_map_options_and_fail_truncated_completions():
    items = [
        (MATHQA, "c", "12", False),  # the value of option c: correct (training used to give 0)
        (MATHQA, "c", "60 = c", False),  # MathQA rationales end like this
        (MATHQA, "c", "c or d", False),  # two options named
        (MATHQA, "c", "9", False),  # option d's value
        ("What is 2 + 3?", "5", "5", True),  # right answer, but cut at the token limit
        ("What is 2 + 3?", "5", "5 apples", False),
        ("What is 2 + 3?", "5", None, False),  # no answer stated
        (None, "5", "5", False),  # no problem text is fine
        ("What is 2 + 3?", "5", "5x", False),
    ]
    with Grader() as g:
        assert g.verdicts(items) == [True, True, False, False, False, True, False, True, False]
        assert g.verdicts([]) == []


def test_evaluation_stores_a_truncated_sample_as_incorrect(db):
    from gcpo_cli import store
    from gcpo_cli.evaluation import Ungraded, graded_rows

    problems = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(3)]
    for p in problems:
        db["problems"].insert(dict(id=p.id, text=p.text, answer=p.answer, metadata_json="{}",
                                   created_at="2025-01-01T00:00:00Z"))
    ev_id, _ = store.open_evaluation(db, model="m", set_name="s", params={}, run_id=None, run_step=None)
    with Grader() as g:
        store.write_results(db, ev_id, graded_rows(g, [Ungraded(problems[0], 0, "... \\boxed{0}", "0", 9, False),
                                                        Ungraded(problems[1], 0, "... \\boxed{2}", "2", 9, True),
                                                        Ungraded(problems[2], 0, "... \\boxed{4x}", "4x", 9, False)]))
    rows = {r["problem_id"]: r for r in db["eval_results"].rows}
    assert [rows[p]["correct"] for p in ("p0", "p1", "p2")] == [1, 0, 0]
    assert rows["p1"]["truncated"] == 1


if __name__ == "__main__":  # rewrite the cases section of docs/grading.md from the tables above
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(text[: text.index(BEGIN)] + render_cases() + text[text.index(END) + len(END):], encoding="utf-8")
    print(f"wrote {DOC}", file=sys.stderr)
