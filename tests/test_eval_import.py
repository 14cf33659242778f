"""gcpo eval --import reads other harnesses' sample files as they write them (issue 26 section 1):
lm-evaluation-harness's --log_samples files (both `arguments` layouts, several filters, repeats)
and Qwen2.5-Math's evaluation outputs, told apart by their fields; any other JSON lines with
--completion-field and --problem-field. The fixtures are in tests/data/harnesses (README there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gcpo_cli.cli import app

DATA = Path(__file__).parent / "data" / "harnesses"
LM_EVAL_GSM8K = DATA / "samples_gsm8k_2025-01-20T10-11-12.345678.jsonl"
LM_EVAL_MATH500 = DATA / "samples_math500_2024-06-02T08-30-00.000001.jsonl"
QWEN_GSM8K = DATA / "qwen25-math" / "gsm8k" / "test_qwen25-math-cot_-1_seed0_t0.7_s0_e-1.jsonl"


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _docs(path: Path) -> list[dict]:
    """The dataset rows an lm-eval samples file evaluated, once each."""
    seen: dict = {}
    for x in _lines(path):
        seen.setdefault(x["doc_id"], x["doc"])
    return list(seen.values())


def _ingest(runner, tmp_path, rows: list[dict], name: str) -> None:
    f = tmp_path / f"{name}.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    r = runner.invoke(app, ["ingest", str(f), "--set", name, "--json"])
    assert r.exit_code == 0, r.output


@pytest.fixture
def gsm8k(runner, db, tmp_path):
    """The gsm8k-layout rows the harnesses evaluated, ingested as `gcpo ingest` reads them."""
    _ingest(runner, tmp_path, _docs(LM_EVAL_GSM8K), "gsm8k")
    return "gsm8k"


def _set(out: dict) -> dict:
    (result,) = out["results"]
    (s,) = result["sets"]
    return s


def test_lm_eval_log_samples_file(runner, db, gsm8k):
    r = runner.invoke(app, ["eval", "--import", str(LM_EVAL_GSM8K), "--set", "gsm8k"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert f"samples imported from {LM_EVAL_GSM8K.name} (an lm-eval --log_samples file), graded by gcpo" in text
    # Each document once, though the file has a line per filter; its first filter (strict-match)
    # gives the file's verdicts: 1, 0, 0. gcpo reads "The answer is 12." and grades 9, 12 right.
    assert "the file's own mean@1 is 33.3%; gcpo's grader agrees with the file's verdicts on 2 of 3 samples" in text
    (ev,) = db["evaluations"].rows
    assert ev["model"] == f"import:{LM_EVAL_GSM8K.name}" and json.loads(ev["params_json"])["layout"] == "lm-eval"
    m = json.loads(ev["metrics_json"])
    assert (m["n_problems"], m["n_samples"], m["k"], m["mean_at_k"]) == (3, 3, 1, pytest.approx(2 / 3))
    rows = list(db.query("SELECT p.text AS problem, er.completion, er.extracted_answer, er.correct, pr.text AS prompt"
                         " FROM eval_results er JOIN problems p ON p.id = er.problem_id"
                         " JOIN prompts pr ON pr.id = er.prompt_id ORDER BY er.completion"))
    samples = {x["doc_id"]: x for x in _lines(LM_EVAL_GSM8K) if x["filter"] == "strict-match"}
    assert sorted((x["doc"]["question"], x["resps"][0][0], x["arguments"]["gen_args_0"]["arg_0"])
                  for x in samples.values()) == sorted((x["problem"], x["completion"], x["prompt"]) for x in rows)
    assert sorted((x["extracted_answer"], x["correct"]) for x in rows) == [("12", 1), ("3000", 0), ("9", 1)]
    out = _json(runner.invoke(app, ["eval", "--evaluation", "latest", "--json"]))
    assert _set(out)["n_samples"] == 3


def test_lm_eval_older_layout_with_repeats_matches_by_the_docs_id_field(runner, db, tmp_path):
    docs = _docs(LM_EVAL_MATH500)
    # The set's copy of the first problem words it differently: the doc's unique_id (the field
    # ingest takes as the row's id) still finds it.
    _ingest(runner, tmp_path, [dict(docs[0], problem="Convert (0,4) to polar coordinates.")] + docs[1:], "math500")
    out = _json(runner.invoke(app, ["eval", "--import", str(LM_EVAL_MATH500), "--set", "math500", "--json"]))
    s = _set(out)
    assert (s["layout"], s["n_problems"], s["n_samples"], s["k"]) == ("lm-eval", 3, 6, 2)
    # right, wrong (4, pi); right, wrong 2/5; right, no answer stated
    assert (s["mean_at_k"], s["pass_at_k"], s["unextracted_rate"]) == (0.5, 1.0, pytest.approx(1 / 6))
    assert s["file_verdicts"] is None  # exact_match per document of 2 samples: no per-sample verdict
    prompts = {p["text"] for p in db["prompts"].rows}
    assert prompts == {x["arguments"][0][0] for x in _lines(LM_EVAL_MATH500)}


def test_qwen25_math_evaluation_output(runner, db, gsm8k):
    out = _json(runner.invoke(app, ["eval", "--import", str(QWEN_GSM8K), "--set", "gsm8k", "--json"]))
    s = _set(out)
    assert out["params"]["layout"] == "qwen25-math"
    assert (s["n_problems"], s["n_samples"], s["k"], s["mean_at_k"]) == (3, 6, 2, pytest.approx(5 / 6))
    # Qwen's `score` is the file's verdict on each completion of `code`; gcpo agrees (\$300 is 300).
    assert s["file_verdicts"] == {"samples": 6, "agree": 6, "mean_at_k": pytest.approx(5 / 6)}
    stored = {(r["problem"], r["sample_index"]): (r["completion"], bool(r["correct"])) for r in db.query(
        "SELECT p.text AS problem, er.sample_index, er.completion, er.correct FROM eval_results er"
        " JOIN problems p ON p.id = er.problem_id")}
    assert stored == {(x["question"], j): (c, ok) for x in _lines(QWEN_GSM8K)
                      for j, (c, ok) in enumerate(zip(x["code"], x["score"]))}
    assert db["prompts"].count == 0  # Qwen's output keeps no prompt


def test_fields_named_for_any_other_layout(runner, db, gsm8k, tmp_path):
    problems = {r["source_id"] or r["problem_id"]: r["problem_id"] for r in db["set_problems"].rows}
    texts = [d["question"] for d in _docs(LM_EVAL_GSM8K)]
    f = tmp_path / "outputs.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [
        {"query": {"text": texts[0]}, "outputs": ["so \\boxed{9}", "\\boxed{8}"]},
        {"query": {"text": texts[1]}, "outputs": ["\\boxed{12}", "\\boxed{12}"]},
        {"query": {"text": list(problems.values())[2]}, "outputs": ["\\boxed{300}"]},  # an id works too
    ]) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["eval", "--import", str(f), "--set", "gsm8k"])
    assert r.exit_code == 1 and "outputs.jsonl line 1: no 'completion' text (fields: query, outputs)" in r.output
    assert "--completion-field FIELD --problem-field FIELD" in r.output
    out = _json(runner.invoke(app, ["eval", "--import", str(f), "--set", "gsm8k", "--completion-field", "outputs",
                                    "--problem-field", "query.text", "--json"]))
    s = _set(out)
    assert (s["layout"], s["n_problems"], s["n_samples"], s["k"], s["pass_at_k"]) == ("gcpo", 3, 5, 2, 1.0)
    assert s["mean_at_k"] == pytest.approx((0.5 + 1 + 1) / 3)
    # --problem-field also overrides a known layout's problem: lm-eval's doc.question.
    again = _json(runner.invoke(app, ["eval", "--import", str(LM_EVAL_GSM8K), "--set", "gsm8k", "--problem-field",
                                      "doc.question", "--json"]))
    assert _set(again)["n_samples"] == 3 and _set(again)["layout"] == "lm-eval"


@pytest.mark.parametrize("lines,flags,message", [
    ([{"out": "\\boxed{9}", "q": "nope"}], ["--completion-field", "out", "--problem-field", "q"],
     "bad.jsonl line 1: 'nope' is neither a problem id nor a problem text of set 'gsm8k'"),
    ([{"out": 5, "q": "x"}], ["--completion-field", "out"], "bad.jsonl line 1: no 'out' text"),
    ([{"completion": "x", "q": {"a": 1}}], ["--problem-field", "q"],
     "bad.jsonl line 1: --problem-field 'q' holds no problem text or id"),
    ([{"doc": {"x": 1}, "doc_id": 0, "resps": [["\\boxed{9}"]]}], [],
     "bad.jsonl: 'doc': no problem field found"),
    ([{"doc": {"question": "q", "answer": "1"}, "doc_id": 0, "resps": [[["-1.5", "False"]]]}], [],
     "bad.jsonl line 1: 'resps' holds no generated texts (--import reads generate_until tasks)"),
    ([{"idx": 0, "question": "q", "code": ["a", 3]}], [],
     "bad.jsonl line 1: 'code' must be the list of completions"),
])
def test_a_file_in_no_layout_read_is_one_line_and_stores_nothing(runner, db, gsm8k, tmp_path, lines, flags, message):
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    r = runner.invoke(app, ["eval", "--import", str(f), "--set", "gsm8k", *flags])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert db["evaluations"].count == 0


def test_field_flags_need_an_import(runner, db, gsm8k):
    r = runner.invoke(app, ["eval", "-m", "golden", "-s", "gsm8k", "--completion-field", "x"])
    assert r.exit_code == 1 and "name the fields of an --import file" in r.output
