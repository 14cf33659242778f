"""Worked solutions that never state their final answer (issue 25 item 8).

OlympiadBench's solutions are proofs ending in prose ("Hence $x=2$ or $x=3$."): nothing the
grader reads as a final answer, so 639 of its 675 golden answers stayed unverified and were never
injected. When a row has both a worked solution and a final answer, and the solution states none,
ingest also stores the solution completed with that answer, "\\n\\nThe final answer is
$\\boxed{ANSWER}$.", verified like any other, with the construction in its provenance; the
original stays beside it, unverified."""

from __future__ import annotations

import json
import re

from gcpo_cli.cli import app
from gcpo_cli.rows import FINAL_ANSWER_FORM, problem_id
from test_ingest import _json, _write_jsonl

COMMON = {"context": None, "unit": None, "error": None, "question_type": "Open-ended", "subject": "Math",
          "language": "English", "modality": "Text-only", "difficulty": "Competition"}
# OlympiadBench's layout (OE_TO_maths_en_COMP): solutions and final answers are lists.
PROOFS = [
    {"id": 2001, "question": "Compute the number of positive divisors of $2024$.",
     "solution": ["We factor $2024 = 2^{3} \\cdot 11 \\cdot 23$. A divisor takes one of four powers of 2 and one of "
                  "two powers of each of 11 and 23, so there are $4 \\cdot 2 \\cdot 2 = 16$ of them."],
     "final_answer": ["$16$"], "is_multiple_answer": False, "answer_type": "Numerical", "subfield": "Number Theory"},
    {"id": 2002, "question": "Find all real numbers $x$ such that $x^2 = 5x - 6$.",
     "solution": ["Rearranging gives $x^2 - 5x + 6 = (x-2)(x-3) = 0$. Hence $x=2$ or $x=3$, and both satisfy the "
                  "equation."],
     "final_answer": ["$2$", "$3$"], "is_multiple_answer": True, "answer_type": "Numerical",
     "subfield": "Algebra"},
    {"id": 2003, "question": "Let $f(x) = 2x + 1$. Determine $f(f(x))$.",
     "solution": ["We have $f(f(x)) = 2(2x + 1) + 1 = 4x + 3$."],
     "final_answer": ["$4x+3$"], "is_multiple_answer": False, "answer_type": "Expression", "subfield": "Algebra"},
    # A solution that states its answer is stored as it is, and nothing is built.
    {"id": 2004, "question": "What is $7 \\cdot 8$?", "solution": ["$7 \\cdot 8 = \\boxed{56}$."],
     "final_answer": ["$56$"], "is_multiple_answer": False, "answer_type": "Numerical", "subfield": "Arithmetic"},
]
PROOFS = [dict(COMMON, **r) for r in PROOFS]
STATED_NONE = PROOFS[:3]
ANSWERS = {2001: "16", 2002: "2, 3", 2003: "4x+3", 2004: "56"}


def _ingest(runner, path, set_name: str, *extra: str):
    return runner.invoke(app, ["ingest", str(path), "--set", set_name, *extra])


def test_a_solution_that_states_no_answer_is_completed_with_the_rows_answer(tmp_path, runner, db):
    path = _write_jsonl(tmp_path / "OE_TO_maths_en_COMP.jsonl", PROOFS)
    r = _json(_ingest(runner, path, "olympiad", "--json"))
    assert (r["added"], r["golden_total"], r["golden_verified"], r["golden_completed"]) == (4, 4, 4, 3)
    assert r["mismatches"] == []
    rows = {g["id"]: g for g in db["golden_answers"].rows}
    assert len(rows) == 4 + 3  # the originals stay, beside what was built from them
    for row in STATED_NONE:
        pid, solution = problem_id(row["question"]), row["solution"][0]
        by_text = {g["text"]: g for g in rows.values() if g["problem_id"] == pid}
        original = by_text.pop(solution)
        (built,) = by_text.values()
        assert (original["verified"], original["final_answer"], original["derived_from"]) == (0, None, None)
        assert built["text"] == solution + f"\n\nThe final answer is $\\boxed{{{ANSWERS[row['id']]}}}$."
        assert built["text"] == FINAL_ANSWER_FORM.format(solution=solution, answer=ANSWERS[row["id"]])
        assert (built["verified"], built["final_answer"], built["origin"]) == (1, ANSWERS[row["id"]], "dataset")
        assert built["derived_from"] == original["id"] and built["source_file"] == str(path)
        assert json.loads(built["params_json"]) == {"construction": "solution + final answer",
                                                    "form": FINAL_ANSWER_FORM, "answer_field": "final_answer"}
    stated = [g for g in rows.values() if g["problem_id"] == problem_id(PROOFS[3]["question"])]
    assert [(g["verified"], g["derived_from"]) for g in stated] == [(1, None)]
    # The summary says what was built, and how.
    shown = _ingest(runner, path, "olympiad-2")
    assert shown.exit_code == 0, shown.output
    flat = " ".join(shown.output.split())
    assert "golden answers verified 4/4" in flat and "final answers added 3" in flat, shown.output
    assert all(len(line) <= 80 for line in shown.output.splitlines())


def test_the_completed_answer_is_active_the_original_visible_and_golden_eval_reaches_all(tmp_path, runner, db):
    path = _write_jsonl(tmp_path / "OE_TO_maths_en_COMP.jsonl", PROOFS)
    _json(_ingest(runner, path, "olympiad", "--json"))
    listed = _json(runner.invoke(app, ["golden", "list", "--set", "olympiad", "--json"]))["golden_answers"]
    pid = problem_id(PROOFS[1]["question"])
    mine = [(g["text"] == PROOFS[1]["solution"][0], g["verified"], g["active"], g["origin"])
            for g in listed if g["problem_id"] == pid]
    assert sorted(mine) == [(False, True, True, "dataset"), (True, False, False, "dataset")]
    # Training injects the completed one.
    from gcpo_cli import store

    assert store.verified_golden(db, "olympiad")[pid].endswith("The final answer is $\\boxed{2, 3}$.")
    shown = runner.invoke(app, ["golden", "show", pid, "--set", "olympiad"])
    assert shown.exit_code == 0, shown.output
    assert "UNVERIFIED" in shown.output and re.search(r"construction +solution \+ final answer", shown.output)
    assert re.search(r"derived from +[0-9a-f]{16}", shown.output)
    out = _json(runner.invoke(app, ["eval", "--model", "golden", "--set", "olympiad", "--json"]))
    s = out["results"][0]["sets"][0]
    assert (s["n_problems"], s["mean_at_k"]) == (4, 1.0)


def test_a_solution_that_states_a_wrong_answer_is_not_completed(tmp_path, runner, db):
    wrong = dict(PROOFS[3], id=2005, question="What is $6 \\cdot 9$?", solution=["$6 \\cdot 9 = \\boxed{56}$."],
                 final_answer=["$54$"])
    r = _json(_ingest(runner, _write_jsonl(tmp_path / "w.jsonl", [wrong]), "w", "--json"))
    assert (r["golden_total"], r["golden_verified"], r["golden_completed"]) == (1, 0, 0)
    assert [(m["answer"], m["golden"]) for m in r["mismatches"]] == [("54", "56")]
    assert [g["verified"] for g in db["golden_answers"].rows] == [0]
    # Without an answer field the solution must state the answer: the row is refused, as before.
    bad = _ingest(runner, _write_jsonl(tmp_path / "a.jsonl", [{"question": PROOFS[0]["question"],
                                                              "solution": PROOFS[0]["solution"]}]), "a")
    assert bad.exit_code == 1 and "states no final answer" in bad.output


def test_the_real_aime_files_get_a_verified_golden_answer_for_every_problem(runner, db, shared_data):
    """AIME's AoPS solutions are the OlympiadBench-style sets of ../shared/data: human worked
    solutions beside a final-answer field, a few of which end in prose ("... so t = 24. $180 + 24
    = 204$."). Every problem gets a verified golden answer, and graded as completions they all
    pass."""
    r = _json(_ingest(runner, shared_data / "aime_1983_2023" / "train.jsonl", "aime", "--json"))
    assert (r["golden_total"], r["golden_verified"], r["golden_completed"], r["mismatches"]) == (975, 975, 2, [])
    r = _json(_ingest(runner, shared_data / "aime24" / "test.jsonl", "aime24", "--json"))
    assert (r["golden_total"], r["golden_verified"], r["golden_completed"]) == (30, 30, 1)
    out = _json(runner.invoke(app, ["eval", "--model", "golden", "--set", "aime24", "--json"]))
    s = out["results"][0]["sets"][0]
    assert (s["n_problems"], s["mean_at_k"]) == (30, 1.0)
    assert db.execute("SELECT COUNT(*) FROM golden_answers WHERE verified = 0").fetchone()[0] == 3  # still there
