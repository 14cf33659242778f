"""Answer extraction and grading as gcpo eval uses them: hard answer pairs drawn from the shared
benchmarks, option letters, and the grader's robustness to pathological completions."""

from __future__ import annotations

import threading
import time

import pytest

from gcpo_cli.answers import extract_answer, grading_target, verify_answer
from gcpo_cli.grader import Grader

# -------------------------------------------------------------------------- extraction, grading


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("Put the answer in \\boxed{}. I think \\boxed{7} and \\boxed{}", "7"),  # an echoed empty box
    ("Natalia sold 72 clips.\n#### 72", "72"),
    ("#### 5\nQuestion: next one\n#### 9", "9"),  # the last answer line, not the rest of the text
    ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
    ("The answer is 3.5.", "3.5"),
    ("So the answer is (B).", "(B)"),
    ("answer = 42", "42"),
    ("$\\boxed{\\textbf{(113) }}$", "113"),  # AoPS bolds its answers
    ("I am not sure.", None),
    ("the answer isn't clear", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extraction_is_linear_on_degenerate_completions():
    t = time.perf_counter()
    assert extract_answer("\\boxed{" * 20000) is None  # was quadratic: ~70 s
    assert extract_answer("#### " + " " * 50000 + "x") == "x"
    assert extract_answer("the answer is " + "9" * 300000) is not None
    assert time.perf_counter() - t < 2


# Hard pairs drawn from the answer formats in ../shared/data (MATH-500, GSM8K, AIME, AMC's
# floats, MathQA's letters): (gold, predicted, verdict). Every kind has a pair that must fail.
HARD_PAIRS = [
    # fractions
    ("\\frac{1}{2}", "0.5", True), ("\\frac{3}{4}", "3/4", True), ("\\dfrac{17}{50}", "\\frac{17}{50}", True),
    ("\\dfrac{17}{50}", "0.34", True), ("\\frac{3}{4}", "\\frac{4}{3}", False), ("\\frac{270}7", "\\frac{270}{7}", True),
    # mixed numbers
    ("2\\frac{1}{2}", "\\frac{5}{2}", True), ("7\\frac{1}{2}", "7.5", True), ("5/2", "2 1/2", True),
    ("2\\frac{1}{2}", "1", False), ("1", "2 1/2", False),  # not 2 * 1/2
    # degrees
    ("90^\\circ", "90", True), ("30^\\circ", "30^{\\circ}", True), ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True),
    ("145^\\circ", "35^\\circ", False),
    # percentages
    ("25\\%", "25", True), ("40\\%", "40%", True), ("40\\%", "45\\%", False),
    # units, currency, thousands separators
    ("5.4 \\text{ cents}", "5.4", True), ("864 \\mbox{ inches}^2", "864", True), ("15\\mbox{ cm}^2", "15 \\text{cm}^2", True),
    ("\\$32,\\!348", "32348", True), ("\\$18.90", "18.9", True), ("10,\\!080", "10080", True), ("58,500", "58500", True),
    ("18", "\\$18", True), ("18", "18 dollars", True), ("1,080", "1,800", False), ("18", "19 dollars", False),
    # intervals
    ("(3,4]", "(3, 4]", True), ("(3,4]", "[3,4]", False), ("(-\\infty, 0]", "(-\\infty,0]", True),
    ("(0,9) \\cup (9,36)", "(0,9)\\cup(9,36)", True), ("x \\in [-2,7]", "[-2,7]", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 3) \\cup (2, \\infty)", False),
    # tuples
    ("(6,31,-1)", "(6, 31, -1)", True), ("(6,31,-1)", "(6,-1,31)", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True), ("(15,-29)", "(15,29)", False),
    # sets and lists of solutions
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1+\\sqrt{5}, 1-\\sqrt{5}\\}", True), ("3, 5, 7", "7, 5, 3", True),
    ("1,-2", "-2, 1", True), ("1,-2", "1, 2", False),
    # expressions
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1", True), ("6r^2-4r-24", "2(3r^2-2r-12)", True),
    ("p - q", "q - p", False), ("18+2\\pi", "2\\pi+18", True), ("\\sqrt{51}", "\\sqrt{50}", False),
    ("\\frac{\\sqrt{21}}{5}", "\\sqrt{21}/5", True), ("6 - 5i", "6+5i", False),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", "\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\end{pmatrix}", True),
    ("\\begin{pmatrix} -2 \\\\ -14 \\end{pmatrix}", "\\begin{pmatrix} -2 \\\\ 14 \\end{pmatrix}", False),
    # option letters
    ("b", "(B)", True), ("b", "b )", True), ("b", "c", False), ("\\text{(C)}", "C", True), ("\\text{(C)}", "(D)", False),
    # floats written as 27.0, leading zeros, text answers
    ("27", "27.0", True), ("27.0", "27", True), ("145", "145.00", True), (".35625", "0.35625", True),
    (".0000672", "6.72\\times10^{-5}", True), ("27", "27.5", False), ("3", "3.01", False), ("0.3333", "\\frac{1}{3}", False),
    ("073", "73", True), ("\\text{Evelyn}", "Evelyn", True), ("\\text{east}", "\\text{west}", False),
    ("5", "x=5", True), ("5", "y = 6", False), ("5", None, False), ("5", "", False),
]


@pytest.fixture(scope="module")
def grader():
    with Grader(seconds_per_item=20) as g:
        yield g


def test_hard_pairs_grade_both_ways(grader):
    verdicts = grader.grade([(g, p) for g, p, _ in HARD_PAIRS])
    wrong = [(g, p, want) for (g, p, want), got in zip(HARD_PAIRS, verdicts) if got != want]
    assert not wrong, wrong
    assert sum(not want for *_, want in HARD_PAIRS) >= 20  # the table tests rejection too


def test_option_values_map_to_letters():
    mathqa = "the compound ratio of 5 : 6 , 3 : 2 and 6 : 5 ?\n\nOptions: a ) 1 : 1 , b ) 3 : 2 , c ) 12 , d ) 9 , e ) 2 : 3"
    assert grading_target(mathqa, "c", "12") == "c"  # the value of option c
    assert grading_target(mathqa, "c", "60 = c") == "c"  # MathQA rationales end like this
    assert grading_target(mathqa, "c", "0.3571 option d is correct") == "d"
    assert grading_target(mathqa, "c", "e ( 15 / 2 minutes )") == "e"
    assert grading_target(mathqa, "c", "13") == "13"  # no option has that value: graded as is
    assert verify_answer("c", grading_target(mathqa, "c", "9")) is False


def test_grader_survives_pathological_input_and_threads():
    bad = [
        ("5", "9" * 1_000_000),  # a huge output
        ("5", "x^{2}+" * 200_000),  # a huge expression (cut to its first 1000 characters)
        ("5", "\\frac{" * 400 + "1" + "}{2}" * 400),  # deeply nested LaTeX
        ("5", "(" * 3000 + "1" + ")" * 3000),
        ("5", "10^{10^{10}}"),  # sympy would evaluate a 10-billion-digit power
    ]
    result: dict = {}

    def work():  # signal-based time-outs cannot run here: the worker process must do them
        t = time.perf_counter()
        # An outer deadline shorter than math-verify's own 5 s alarm: the power tower overruns
        # it, so its worker is killed and a fresh one grades the rest.
        with Grader(seconds_per_item=1.5, timeout_s=5) as g:
            result["verdicts"] = g.grade(bad + [("\\frac{1}{2}", "0.5"), ("\\sqrt{2}", "\\sqrt{3}")])
            result["restarts"] = g.restarts
        result["seconds"] = time.perf_counter() - t

    th = threading.Thread(target=work)
    th.start()
    th.join(120)
    assert not th.is_alive()
    assert result["verdicts"] == [False] * len(bad) + [True, False]
    assert result["restarts"] >= 1
    assert result["seconds"] < 45
