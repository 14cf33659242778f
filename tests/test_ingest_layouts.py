"""Benchmark files in the layouts that lost rows or golden answers (issue 13, points a and c).

- OlympiadBench keeps worked solutions as a list of strings and its final answer as a list
  (`"final_answer": ["$3$"]`): the first non-empty solution is the golden answer, verified
  against the answer like any other.
- Exercise sets repeat a question text with another answer (the figure or context differs):
  every row is a problem (a repeated row too), re-ingesting adds nothing, and the
  ids a database already holds never change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gcpo_cli.cli import app
from gcpo_cli.rows import problem_id, repeat_id, variant_id
from gcpo_cli.store import open_db
from test_ingest import _fails, _json, _write_jsonl

V0_1 = Path(__file__).resolve().parent / "data" / "v0.1"  # a database made by gcpo 0.1


def _ingest(runner, path: Path, set_name: str, *extra: str):
    return runner.invoke(app, ["ingest", str(path), "--set", set_name, *extra])


def _sets(runner, *extra: str) -> dict:
    return {s["name"]: s for s in _json(runner.invoke(app, ["sets", "--json", *extra]))}


def _members(runner, set_name: str, *extra: str) -> list[tuple[str, str, str]]:
    rows = _json(runner.invoke(app, ["problems", "--set", set_name, "--limit", "1000", "--json", *extra]))
    return [(r["id"], r["text"], r["answer"]) for r in rows]


# ------------------------------------------------------------------- (a) OlympiadBench's layout

OLYMPIAD = [
    {"id": 1606, "question": "Find the positive integer $x$ with $2x + 1 = 7$.",
     "solution": ["Subtract 1 and halve: $x = \\boxed{3}$."], "final_answer": ["$3$"],
     "is_multiple_answer": False, "unit": None, "answer_type": "Numerical"},
    # An empty first solution is passed over; the second states the answer.
    {"id": 1607, "question": "How many primes are less than 12?",
     "solution": ["", "They are 2, 3, 5, 7 and 11, so there are $\\boxed{5}$."], "final_answer": ["5"],
     "is_multiple_answer": False, "unit": None, "answer_type": "Numerical"},
    # Several solutions: the first is the golden answer.
    {"id": 1608, "question": "Compute $\\frac{1}{2} + \\frac{1}{3}$.",
     "solution": ["Over 6: $\\frac{3}{6} + \\frac{2}{6} = \\boxed{\\frac{5}{6}}$.",
                  "Decimals: $0.5 + 0.333... = \\boxed{\\frac{5}{6}}$."],
     "final_answer": ["$\\frac{5}{6}$"], "is_multiple_answer": False, "unit": None, "answer_type": "Numerical"},
    # A multi-answer row: its answer list is joined into one comma-separated answer.
    {"id": 1609, "question": "Find all real $x$ with $x^2 - 3x + 2 = 0$.",
     "solution": ["It factors as $(x-1)(x-2)$, so $x = \\boxed{1, 2}$."], "final_answer": ["$1$", "$2$"],
     "is_multiple_answer": True, "unit": None, "answer_type": "Numerical"},
]


def test_a_list_of_solutions_gives_a_verified_golden_answer(tmp_path, runner, db):
    path = _write_jsonl(tmp_path / "OE_TO_maths_en_COMP.jsonl", OLYMPIAD)
    r = _json(_ingest(runner, path, "olympiad", "--json"))
    assert r["mapping"]["solution"] == "solution" and r["mapping"]["problem"] == "question"
    assert (r["added"], r["golden_total"], r["golden_verified"]) == (4, 4, 4)
    assert r["solution_lists"] == 4
    assert r["mismatches"] == []
    answers = {row["text"]: row["answer"] for row in db["problems"].rows}
    # One-item answer lists are their item, without the $...$ OlympiadBench writes for display.
    assert [answers[row["question"]] for row in OLYMPIAD] == ["3", "5", "\\frac{5}{6}", "1, 2"]
    golden = {g["problem_id"]: (g["text"], g["final_answer"], g["verified"]) for g in db["golden_answers"].rows}
    assert golden[problem_id(OLYMPIAD[0]["question"])] == (OLYMPIAD[0]["solution"][0], "3", 1)
    assert golden[problem_id(OLYMPIAD[1]["question"])] == (OLYMPIAD[1]["solution"][1], "5", 1)
    assert golden[problem_id(OLYMPIAD[2]["question"])][0] == OLYMPIAD[2]["solution"][0]
    assert golden[problem_id(OLYMPIAD[3]["question"])][1:] == ("1, 2", 1)
    sets = _sets(runner)
    assert sets["olympiad"]["golden_coverage"] == 1.0 and sets["olympiad"]["verified_share"] == 1.0
    # The summary says where the golden answers came from.
    shown = _ingest(runner, path, "olympiad-2")
    assert shown.exit_code == 0, shown.output
    flat = " ".join(shown.output.split())
    assert "solutions from lists 4 first non-empty item of each list" in flat and "4/4" in flat
    assert all(len(line) <= 80 for line in shown.output.splitlines())


def test_a_list_solution_alone_states_the_answer(tmp_path, runner, db):
    """No answer field: the answer is the last \\boxed{} of the first non-empty listed solution."""
    rows = [{"question": r["question"], "solution": r["solution"]} for r in OLYMPIAD[:2]]
    r = _json(_ingest(runner, _write_jsonl(tmp_path / "s.jsonl", rows), "s", "--json"))
    assert (r["added"], r["golden_verified"], r["golden_total"]) == (2, 2, 2)
    assert sorted(row["answer"] for row in db["problems"].rows) == ["3", "5"]


def test_list_fields_without_usable_items(tmp_path, runner, gcpo_home):
    rows = [{"question": "What is 2 + 2?", "solution": ["", "  "], "final_answer": ["4"]},
            {"question": "What is 3 + 3?", "solution": ["\\boxed{6}"], "final_answer": []},
            {"question": "What is 4 + 4?", "solution": ["\\boxed{8}"], "final_answer": [{"value": "8"}]}]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    _fails(_ingest(runner, path, "b"), "bad.jsonl: line 2: field 'final_answer' is empty", "1 more invalid row")
    r = _json(_ingest(runner, path, "b", "--skip-invalid", "--json"))
    assert r["rejects"] == [{"where": "line 2", "reason": "field 'final_answer' is empty"},
                            {"where": "line 3", "reason": "field 'final_answer' holds a list with a dict in it, "
                                                          "not answers"}]
    # A list with no non-empty solution is no golden answer, and the row is still a problem.
    assert (r["added"], r["golden_total"], r["solution_lists"]) == (1, 0, 0)


# ------------------------------------------------- (c) one question text, several answers

Q = "In the figure, how many triangles are there?"
SAME_TEXT = [
    {"question": Q, "answer": "4", "solution": "Count them: \\boxed{4}", "figure": "fig-1.png"},
    {"question": Q, "answer": "6", "solution": "Count them: \\boxed{6}", "figure": "fig-2.png"},
    {"question": "What is 1 + 1?", "answer": "2", "figure": ""},
    {"question": Q, "answer": "4", "solution": "Count them: \\boxed{4}", "figure": "fig-1.png"},  # exact repeat
    {"question": " In the figure,  how many\ntriangles are there? ", "answer": "6", "figure": "fig-2.png"},
    # The same answer written another way is the same problem ("1/2" and "0.5").
    {"question": "Halve one.", "answer": "1/2"},
    {"question": "Halve one.", "answer": "0.5"},
]
ROWS = len(SAME_TEXT)  # every row a problem: benchmarks count repeated rows


def test_every_row_is_a_problem(tmp_path, runner, db):
    path = _write_jsonl(tmp_path / "exercises.jsonl", SAME_TEXT)
    r = _json(_ingest(runner, path, "ex", "--json"))
    assert (r["rows_read"], r["added"], r["present"], r["new_problems"]) == (ROWS, ROWS, 0, ROWS)
    assert _sets(runner)["ex"]["problems"] == ROWS
    # In source order; the first row with a text keeps the text's id, another answer gets its own,
    # a repeat (same text, same answer: "1/2" and "0.5" are the same) gets one by its place.
    assert _members(runner, "ex") == [(problem_id(Q), Q, "4"), (variant_id(Q, "6"), Q, "6"),
                                      (problem_id("What is 1 + 1?"), "What is 1 + 1?", "2"),
                                      (repeat_id(problem_id(Q), 1), Q, "4"),
                                      (repeat_id(variant_id(Q, "6"), 1), SAME_TEXT[4]["question"].strip(), "6"),
                                      (problem_id("Halve one."), "Halve one.", "1/2"),
                                      (repeat_id(problem_id("Halve one."), 1), "Halve one.", "0.5")]
    assert r["variants"] == [{"where": "line 2", "id": variant_id(Q, "6"), "same_text_as": problem_id(Q),
                              "answer": "6", "other_answer": "4"}]
    # Each problem has its own golden answer, verified against its own answer.
    golden = {g["problem_id"]: (g["final_answer"], g["verified"]) for g in db["golden_answers"].rows}
    assert golden == {problem_id(Q): ("4", 1), variant_id(Q, "6"): ("6", 1), repeat_id(problem_id(Q), 1): ("4", 1)}
    assert (r["golden_total"], r["golden_verified"]) == (3, 3)

    again = _json(_ingest(runner, path, "ex", "--json"))
    assert again["noop"] and again["added"] == 0 and again["present"] == ROWS
    assert _sets(runner)["ex"]["problems"] == ROWS and db["problems"].count == ROWS
    # Into another set: the same problems, none new to the database.
    other = _json(_ingest(runner, path, "ex-again", "--json"))
    assert (other["added"], other["present"], other["new_problems"]) == (ROWS, 0, 0)
    assert _members(runner, "ex-again") == _members(runner, "ex")


def test_the_summary_lists_rows_kept_apart(tmp_path, runner):
    out = _ingest(runner, _write_jsonl(tmp_path / "exercises.jsonl", SAME_TEXT), "ex")
    assert out.exit_code == 0, out.output
    flat = " ".join(out.output.split())
    assert "same text, other answer 1 each a problem of its own" in flat
    assert "Same text as another problem, another answer (each its own problem): 1" in flat
    assert "line 2 6 4" in flat and "first answer kept" not in flat
    assert all(len(line) <= 80 for line in out.output.splitlines())


def test_another_answer_for_a_stored_text_joins_as_its_own_problem(tmp_path, runner, db):
    """The database holds the text with one answer; a later file holds it with another, then both."""
    first = _write_jsonl(tmp_path / "first.jsonl", [SAME_TEXT[0]])
    second = _write_jsonl(tmp_path / "second.jsonl", [SAME_TEXT[1]])
    both = _write_jsonl(tmp_path / "both.jsonl", SAME_TEXT[:2])
    _json(_ingest(runner, first, "a", "--json"))
    r = _json(_ingest(runner, second, "b", "--json"))
    assert (r["added"], r["new_problems"], r["variants"][0]["other_answer"]) == (1, 1, "4")
    r = _json(_ingest(runner, both, "c", "--json"))
    assert (r["added"], r["present"], r["new_problems"]) == (2, 0, 0)
    assert db["problems"].get(problem_id(Q))["answer"] == "4"
    assert db["problems"].get(variant_id(Q, "6"))["answer"] == "6"


def test_an_old_database_keeps_its_ids(tmp_path, runner):
    """gcpo 0.1's problems keep their ids, so its runs and evaluations still point at them; a row
    with one of their texts and another answer is a new problem beside them."""
    db_path = tmp_path / "old.db"
    shutil.copy(V0_1 / "gcpo.db", db_path)
    db = open_db(db_path)
    before = sorted((p["id"], p["text"], p["answer"]) for p in db["problems"].rows)
    assert before and all(pid == problem_id(text) for pid, text, _ in before)
    db.close()
    rows = [{"problem": text, "answer": answer} for _, text, answer in before]
    text = before[0][1]
    rows.append({"problem": text, "answer": "-1"})
    path = _write_jsonl(tmp_path / "old-texts.jsonl", rows)
    r = _json(_ingest(runner, path, "again", "--db", str(db_path), "--json"))
    assert (r["added"], r["new_problems"]) == (len(before) + 1, 1)
    ids = [pid for pid, _, _ in _members(runner, "again", "--db", str(db_path))]
    assert ids == [pid for pid, _, _ in before] + [variant_id(text, "-1")]
    db = open_db(db_path)
    after = sorted((p["id"], p["text"], p["answer"]) for p in db["problems"].rows)
    pointed = {row[0] for row in db.execute("SELECT problem_id FROM rollouts UNION "
                                            "SELECT problem_id FROM eval_results")}
    db.close()
    assert [p for p in after if p[0] != variant_id(text, "-1")] == before
    assert pointed and pointed <= {pid for pid, _, _ in before}
