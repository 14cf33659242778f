"""gcpo eval --output-path DIR writes a results folder in lm-evaluation-harness's layout (issue 26
section 1): DIR/MODEL/results_DATE.json with each set's metrics and standard errors, configs,
versions, n-samples and the model, beside samples_SET_DATE.jsonl in lm-eval's --log_samples
layout, which gcpo eval --import reads back."""

from __future__ import annotations

import hashlib
import json

import pytest

from gcpo_cli.cli import app


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def sums(db):
    from gcpo_cli.ingest import ingest_rows

    for name, n in (("sums", 3), ("more", 2)):
        ingest_rows(db, [{"id": f"{name}{i}", "problem": f"What is {i} + {i}?",
                          "solution": f"{i} + {i} = \\boxed{{{2 * i}}}", "answer": str(2 * i)} for i in range(n)],
                    name, problem="problem", solution="solution", answer="answer", id="id")
    return "sums"


def test_results_and_samples_in_lm_evals_layout_read_back_by_import(runner, db, sums, tmp_path):
    out_dir = tmp_path / "out"
    out = _json(runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "-s", "more", "--k", "2", "--temperature", "1",
                                    "--max-new-tokens", "4", "--limit", "2", "--output-path", str(out_dir), "--json"]))
    (results_file,) = (out_dir / "tiny").glob("results_*.json")
    date = results_file.name[len("results_"):-len(".json")]
    samples_files = {f.name for f in (out_dir / "tiny").glob("samples_*.jsonl")}
    assert samples_files == {f"samples_sums_{date}.jsonl", f"samples_more_{date}.jsonl"}
    assert sorted(out["params"]["output_path"]["files"]) == sorted(str(f) for f in (out_dir / "tiny").iterdir())
    res = json.loads(results_file.read_text())
    assert {"results", "configs", "versions", "n-shot", "n-samples", "higher_is_better", "config", "date"} <= set(res)
    assert isinstance(res["date"], float) and res["config"]["model_args"] == "pretrained=tiny"
    assert res["config"]["model"] == "hf" and res["config"]["limit"] == 2 and res["model_name"] == "tiny"
    for s in out["results"][0]["sets"]:
        task = s["set_name"]
        r = res["results"][task]
        assert r["mean_at_k,none"] == s["mean_at_k"] and r["pass_at_k,none"] == s["pass_at_k"]
        assert r["maj_at_k_exact,none"] == s["maj_at_k_exact"] and r["truncation_rate,none"] == 1.0
        assert r["mean_at_k_stderr,none"] == pytest.approx(s["stderr"])
        assert res["n-samples"][task] == {"original": 3 if task == "sums" else 2, "effective": 2}
        config = res["configs"][task]
        assert config["repeats"] == 2 and config["generation_kwargs"]["temperature"] == 1.0
        assert config["generation_kwargs"]["max_gen_toks"] == 4 and config["metadata"]["evaluation_id"] == s[
            "evaluation_id"]
        assert res["higher_is_better"][task]["mean_at_k"] is True and res["n-shot"][task] == 0
        assert task in res["versions"]
    lines = _lines(out_dir / "tiny" / f"samples_sums_{date}.jsonl")
    stored = list(db.query("SELECT er.problem_id, er.completion, er.extracted_answer, er.correct, pr.text AS prompt"
                           " FROM eval_results er JOIN evaluations e ON e.id = er.evaluation_id"
                           " JOIN prompts pr ON pr.id = er.prompt_id WHERE e.set_name = 'sums'"
                           " ORDER BY er.problem_id, er.sample_index"))
    assert [x["doc"]["source_id"] for x in lines] == ["sums0", "sums1"] and [x["doc_id"] for x in lines] == [0, 1]
    for x in lines:
        mine = [r for r in stored if r["problem_id"] == x["doc"]["problem_id"]]
        assert x["resps"] == [[r["completion"] for r in mine]] and x["filter"] == "none"
        assert x["filtered_resps"] == [[r["extracted_answer"] for r in mine]]
        assert x["correct"] == [bool(r["correct"]) for r in mine] and x["finish_reason"] == ["length", "length"]
        assert x["arguments"]["gen_args_0"]["arg_0"] == mine[0]["prompt"]
        assert x["prompt_hash"] == hashlib.sha256(mine[0]["prompt"].encode()).hexdigest()
        assert x["target"] == x["doc"]["answer"] and x["metrics"][0] == "mean_at_k"
    # Read back: the same metrics, and gcpo agrees with every verdict the file states.
    back = _json(runner.invoke(app, ["eval", "--import", str(out_dir / "tiny" / f"samples_sums_{date}.jsonl"),
                                     "--set", "sums", "--json"]))["results"][0]["sets"][0]
    first = out["results"][0]["sets"][0]
    assert back["layout"] == "lm-eval" and back["file_verdicts"]["agree"] == back["file_verdicts"]["samples"] == 4
    for key in ("n_problems", "n_samples", "mean_at_k", "pass_at_k", "maj_at_k", "truncation_rate",
                "completion_tokens_mean", "unextracted_rate"):
        assert back[key] == first[key], key


def test_stored_and_golden_evaluations_get_their_own_model_folders(runner, db, sums, tmp_path):
    out_dir = tmp_path / "out"
    _json(runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--output-path", str(out_dir), "--json"]))
    (golden,) = (out_dir / "golden").glob("results_*.json")
    res = json.loads(golden.read_text())
    assert res["config"]["model"] == "golden" and res["configs"]["sums"]["generation_kwargs"] == {}
    assert res["results"]["sums"]["mean_at_k,none"] == 1.0
    assert "completion_tokens_mean,none" not in res["results"]["sums"]  # golden answers have no length
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"problem_id": "sums1", "completion": "\\boxed{2}"}) + "\n")
    _json(runner.invoke(app, ["eval", "--import", str(f), "--set", "sums", "--json"]))
    _json(runner.invoke(app, ["eval", "--evaluation", "latest", "--output-path", str(out_dir), "--json"]))
    (imported,) = (out_dir / "import__mine.jsonl").glob("results_*.json")  # lm-eval's sanitised model name
    res = json.loads(imported.read_text())
    assert res["model_name"] == "import:mine.jsonl" and res["config"]["model"] == "import"
    assert res["results"]["sums"]["mean_at_k,none"] == 1.0 and res["results"]["sums"]["mean_at_k_stderr,none"] == "N/A"


def test_an_output_path_that_cannot_be_written_fails_before_evaluating(runner, db, sums, tmp_path):
    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    r = runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--output-path", str(a_file)])
    assert r.exit_code != 0 and "Traceback" not in r.output and db["evaluations"].count == 0
    r = runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--output-path", "/proc/gcpo/out"])
    assert r.exit_code == 1 and "--output-path /proc/gcpo/out: cannot write in /proc" in r.output
    assert len(r.output.strip().splitlines()) == 1 and db["evaluations"].count == 0
