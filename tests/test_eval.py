"""gcpo eval end to end on the tiny model: golden answers, tables and --json, resume, --compare
with a run, benchmarks, prompts, both majorities and sample files. Grading is tested in
test_eval_grading.py, the metrics in test_eval_metrics.py, stops and comparisons in
test_eval_stops.py."""

from __future__ import annotations

import json

import pytest

from gcpo_cli.cli import app
from gcpo_cli.evaluation import evaluate_problems
from gcpo_cli.records import Problem

# --------------------------------------------------------------------------------- the command


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"problem": f"What is {i} + {i}?", "solution": f"{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}",
             "answer": str(2 * i)} for i in range(offset, offset + n)]


@pytest.fixture
def small_set(db, shared_data):
    """Six real GSM8K and MATH-500 rows (their worked solutions become golden answers)."""
    from gcpo_cli.ingest import ingest_rows

    rows = []
    for name, n in (("gsm8k/test.jsonl", 3), ("math500/test.jsonl", 3)):
        with open(shared_data / name) as f:
            for _ in range(n):
                r = json.loads(f.readline())
                if "question" in r:  # GSM8K: the answer field is the worked solution
                    r = {"problem": r["question"], "solution": r["answer"], "answer": r["answer"].split("####")[-1].strip()}
                rows.append({k: r[k] for k in ("problem", "solution", "answer")})
    ingest_rows(db, rows, "mixed", problem="problem", solution="solution", answer="answer")
    return "mixed"


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_golden_answers_are_accepted_and_a_wrong_one_is_not(runner, db, small_set):
    from gcpo_cli.ingest import ingest_rows

    out = _json(runner.invoke(app, ["eval", "--model", "golden", "--set", small_set, "--json"]))
    s = out["results"][0]["sets"][0]
    assert s["n_problems"] == 6 and s["mean_at_k"] == 1.0 and s["unextracted_rate"] == 0.0
    # A golden solution that reaches the wrong answer must be caught by the same check.
    ingest_rows(db, [{"problem": "What is 2 + 3?", "solution": "2 + 3 = 6. \\boxed{6}", "answer": "5"}],
                "bad", problem="problem", solution="solution", answer="answer")
    out = _json(runner.invoke(app, ["eval", "--model", "golden", "--set", "bad", "--json"]))
    assert out["results"][0]["sets"][0]["mean_at_k"] == 0.0


def test_eval_tiny_model_stores_results_and_prints_a_table(runner, db, small_set):
    r = runner.invoke(app, ["eval", "--model", "tiny", "--set", small_set, "--limit", "3", "--max-new-tokens", "8"])
    assert r.exit_code == 0, r.output
    assert "mixed" in r.stdout and "mean@1" in r.stdout and "pass@1" in r.stdout
    ev = list(db["evaluations"].rows)
    assert len(ev) == 1 and ev[0]["status"] == "completed" and ev[0]["model"] == "tiny"
    res = list(db["eval_results"].rows)
    assert len(res) == 3 and all(x["completion_tokens"] and x["completion_tokens"] <= 8 and x["completion"] is not None for x in res)
    assert json.loads(ev[0]["metrics_json"])["n_problems"] == 3


def test_json_shape_with_k_samples_and_two_sets(runner, db, small_set):
    from gcpo_cli.ingest import ingest_rows

    ingest_rows(db, _rows(4), "sums", problem="problem", solution="solution", answer="answer")
    out = _json(runner.invoke(app, ["eval", "-m", "tiny", "-s", small_set, "-s", "sums", "--limit", "2", "--k", "2",
                                    "--temperature", "1.0", "--max-new-tokens", "4", "--json"]))
    assert out["params"]["k"] == 2 and out["params"]["limit"] == 2
    (res,) = out["results"]
    assert res["label"] == "tiny" and [s["set_name"] for s in res["sets"]] == ["mixed", "sums"]
    for s in res["sets"]:
        assert {"evaluation_id", "mean_at_k", "stderr", "pass_at_k", "maj_at_k", "completion_tokens_mean", "truncation_rate",
                "unextracted_rate", "n_problems", "n_samples", "k"} <= set(s)
        assert s["n_problems"] == 2 and s["n_samples"] == 4 and s["k"] == 2
    assert res["average"]["n_problems"] == 4
    assert db["eval_results"].count == 8


def test_interrupted_evaluation_resumes_only_unfinished_problems(db, monkeypatch):
    from gcpo_cli import rollout
    from gcpo_cli.model import load_for_inference

    model, tok = load_for_inference("tiny")
    problems = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(5)]
    for p in problems:  # eval_results reference problems
        db["problems"].insert(dict(id=p.id, text=p.text, answer=p.answer, metadata_json="{}",
                                   created_at="2025-01-01T00:00:00Z"))
    real, calls = rollout.generate, []

    def flaky(model, tok, prompts, n, *a, **kw):
        if calls:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second batch
        calls.append(len(prompts))
        return real(model, tok, prompts, n, *a, **kw)

    kw = dict(label="tiny", set_name="s", k=1, max_new_tokens=4, batch_size=2, progress=False)
    monkeypatch.setattr(rollout, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate_problems(db, model, tok, problems, **kw)
    (ev,) = db["evaluations"].rows
    assert ev["status"] == "interrupted"
    first = {r["problem_id"] for r in db["eval_results"].rows}
    assert len(first) == 2  # the first batch was kept

    seen: list[str] = []

    def counting(model, tok, prompts, n, *a, **kw):
        seen.extend(prompts)
        return real(model, tok, prompts, n, *a, **kw)

    monkeypatch.setattr(rollout, "generate", counting)
    out = evaluate_problems(db, model, tok, problems, **kw)
    assert out["evaluation_id"] == ev["id"] and out["resumed"] == 2
    assert len(seen) == 3  # only the unfinished problems were generated again
    assert db["evaluations"].get(ev["id"])["status"] == "completed"
    rows = list(db["eval_results"].rows)
    assert len(rows) == 5 and {r["problem_id"] for r in rows} == {p.id for p in problems}
    assert out["n_problems"] == 5
    # A finished evaluation is not reopened: the same call starts a new one.
    again = evaluate_problems(db, model, tok, problems, **kw)
    assert again["evaluation_id"] != ev["id"] and again["resumed"] == 0


def test_run_checkpoint_compared_with_its_base(runner, db, gcpo_home):
    from peft import LoraConfig, get_peft_model

    from gcpo_cli.ingest import ingest_rows
    from gcpo_cli.model import load_for_inference

    ingest_rows(db, _rows(3), "sums", problem="problem", solution="solution", answer="answer")
    base, _ = load_for_inference("tiny")
    out_dir = gcpo_home / "runs" / "r1"  # run folders live in GCPO_HOME
    get_peft_model(base, LoraConfig(r=2, target_modules="all-linear")).save_pretrained(
        out_dir / "checkpoints" / "step-2" / "adapter")
    db["runs"].insert(dict(id="r1", model="tiny", out_dir=str(out_dir), status="completed",
                           recipe_json=json.dumps({"generation": {"prompt_template": "Q: {problem}"}})))
    out = _json(runner.invoke(app, ["eval", "--run", "r1", "--set", "sums", "--compare", "tiny",
                                    "--max-new-tokens", "4", "--json"]))
    run_res, base_res = out["results"]
    assert run_res["label"] == "run:r1@2" and run_res["run_step"] == 2 and run_res["adapter"].endswith("adapter")
    assert base_res["label"] == "tiny"
    d = base_res["sets"][0]["delta"]
    assert (d["of"], d["minus"], d["n_paired"]) == ("run:r1@2", "tiny", 3)  # the run minus its base
    assert d["mean_at_k"]["value"] == pytest.approx(100 * (run_res["sets"][0]["mean_at_k"]
                                                           - base_res["sets"][0]["mean_at_k"]))
    stored = {e["model"]: e for e in db["evaluations"].rows}
    assert stored["run:r1@2"]["run_id"] == "r1" and stored["run:r1@2"]["run_step"] == 2
    assert json.loads(stored["run:r1@2"]["params_json"])["template"] == "Q: {problem}"  # the run's own
    r = runner.invoke(app, ["eval", "--run", "r1", "--step", "7", "--set", "sums"])
    assert r.exit_code != 0 and "no checkpoint at step 7; steps: 2" in r.output


def test_benchmarks_offline(runner, db, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["eval", "--model", "golden", "--benchmark", "gsm9k"])
    assert r.exit_code == 1 and "unknown benchmark 'gsm9k'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["eval", "--model", "golden", "--benchmark", "gsm8k"])
    assert r.exit_code == 1 and "gcpo ingest FILE --set gsm8k" in r.output and "openai/gsm8k (split test)" in r.output
    # The synthetic benchmark is built in; its worked solutions all grade correct.
    out = _json(runner.invoke(app, ["eval", "--model", "golden", "--benchmark", "synthetic", "--limit", "10", "--json"]))
    assert out["results"][0]["sets"][0]["set_name"] == "synthetic"
    assert out["results"][0]["sets"][0]["mean_at_k"] == 1.0


def test_benchmark_comes_from_the_hub_when_online(db, shared_data, monkeypatch):
    from gcpo_cli import eval_targets, ingest, store
    from gcpo_cli.errors import GcpoError

    real, calls = ingest.ingest_source, []

    def hub(db_, source, set_name, **kw):  # the hub, played by the shared copy of the same file
        calls.append((source, kw))
        return real(db_, str(shared_data / "gsm8k" / "test.jsonl"), set_name)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(ingest, "ingest_source", hub)
    monkeypatch.setattr(eval_targets, "hub_reachable", lambda: True)
    assert eval_targets.resolve_benchmark(db, "gsm8k") == "gsm8k"
    assert calls[0][0] == "hf:openai/gsm8k" and calls[0][1]["subset"] == "main" and calls[0][1]["split"] == "test"
    assert len(store.set_problems(db, "gsm8k")[1]) == 1319
    eval_targets.resolve_benchmark(db, "gsm8k")
    assert len(calls) == 1  # once ingested, the set is used as it is
    monkeypatch.setattr(eval_targets, "hub_reachable", lambda: False)  # no connection: the advice
    with pytest.raises(GcpoError, match="cannot be reached.*gcpo ingest FILE --set math500.*MATH-500"):
        eval_targets.resolve_benchmark(db, "math500")
    assert len(calls) == 1


def test_bad_invocations_end_in_one_line(runner, db):
    r = runner.invoke(app, ["eval", "--set", "x"])
    assert r.exit_code == 1 and "exactly one of --model" in r.output
    r = runner.invoke(app, ["eval", "--model", "tiny", "--set", "nope"])
    assert r.exit_code == 1 and "unknown set 'nope'" in r.output


# ------------------------------------------------------------ prompts, both majorities, sample files

EXPORT_KEYS = {"evaluation_id", "model", "set", "problem_id", "source_id", "problem", "sample_index", "prompt",
               "completion", "extracted_answer", "gold", "correct", "completion_tokens", "finish_reason"}
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture
def sums(db):
    from gcpo_cli.ingest import ingest_rows

    ingest_rows(db, [dict(r, id=f"q{i}") for i, r in enumerate(_rows(3))], "sums", problem="problem",
                solution="solution", answer="answer", id="id")
    return {r["source_id"]: r["problem_id"] for r in db["set_problems"].rows}  # file id -> gcpo id


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_records_the_preset_and_every_rendered_prompt(runner, db, sums):
    out = _json(runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "--prompt", "qwen25-math-cot", "--k", "2",
                                    "--temperature", "1", "--max-new-tokens", "3", "--json"]))
    assert out["results"][0]["sets"][0]["prompt"] == "qwen25-math-cot"
    (ev,) = db["evaluations"].rows
    params = json.loads(ev["params_json"])
    assert (params["prompt"], params["template"], params["system_prompt"]) == ("qwen25-math-cot", "{problem}",
                                                                                QWEN_SYSTEM)
    texts = {p["id"]: p["text"] for p in db["prompts"].rows}
    problems = {p["id"]: p["text"] for p in db["problems"].rows}
    rows = list(db["eval_results"].rows)
    assert len(rows) == 6 and len(texts) == 3  # one stored text per problem, shared by its k samples
    for r in rows:
        assert texts[r["prompt_id"]] == (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                                         f"{problems[r['problem_id']]}<|im_end|>\n<|im_start|>assistant\n")


def test_table_and_json_say_which_majority_is_which(runner, db, sums):
    r = runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "--k", "2", "--temperature", "1",
                            "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    head = [line for line in r.stdout.splitlines() if "maj@2" in line]
    assert head and "maj@2" in head[0] and head[0].count("maj@2") == 2  # two columns: eq and str
    text = " ".join(r.stdout.split())
    assert "maj@2 eq: majority answer, spellings grouped by math-verify equivalence" in text
    assert "maj@2 str: grouped by exact normalised string (Qwen2.5-Math's maj@k)" in text
    assert "prompt boxed" in text
    out = _json(runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "--max-new-tokens", "3", "--json"]))
    assert set(out["metrics"]) == {"maj_at_k", "maj_at_k_exact"}
    assert "math-verify equivalence" in out["metrics"]["maj_at_k"]
    assert "exact normalised string" in out["metrics"]["maj_at_k_exact"]
    s = out["results"][0]["sets"][0]
    assert s["maj_at_k"] is not None and s["maj_at_k_exact"] is not None


def test_export_writes_one_line_per_sample_with_what_a_regrader_needs(runner, db, sums, tmp_path):
    path = tmp_path / "samples.jsonl"
    out = _json(runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "--k", "2", "--temperature", "1",
                                    "--max-new-tokens", "4", "--export", str(path), "--json"]))
    lines = _lines(path)
    assert out["params"]["export"] == {"path": str(path), "samples": 6} and len(lines) == 6
    assert all(set(x) == EXPORT_KEYS for x in lines)
    assert [(x["source_id"], x["sample_index"]) for x in lines] == [("q0", 0), ("q0", 1), ("q1", 0), ("q1", 1),
                                                                     ("q2", 0), ("q2", 1)]
    stored = {(r["problem_id"], r["sample_index"]): r for r in db["eval_results"].rows}
    for x in lines:
        r = stored[(x["problem_id"], x["sample_index"])]
        i = int(x["source_id"][1:])
        assert x["problem_id"] == sums[x["source_id"]] and x["set"] == "sums" and x["model"] == "tiny"
        assert x["problem"] == f"What is {i} + {i}?" and x["gold"] == str(2 * i)
        assert x["prompt"] == f"<|im_start|>user\nWhat is {i} + {i}? Put the final answer in \\boxed{{}}.<|im_end|>\n" \
                              "<|im_start|>assistant\n"
        assert x["completion"] == r["completion"] and x["extracted_answer"] == r["extracted_answer"]
        assert x["correct"] is bool(r["correct"]) and x["completion_tokens"] == r["completion_tokens"]
        assert x["finish_reason"] == ("length" if r["truncated"] else "stop")
    assert {x["finish_reason"] for x in lines} == {"length"}  # a random model never stops in 4 tokens


def test_a_stored_evaluation_exports_interrupted_then_resumed(runner, db, sums, tmp_path, monkeypatch):
    from gcpo_cli import rollout
    from gcpo_cli.model import load_for_inference

    model, tok = load_for_inference("tiny")
    problems = [Problem(sums[f"q{i}"], f"What is {i} + {i}?", str(2 * i)) for i in range(3)]
    real, calls = rollout.generate, []

    def flaky(*a, **kw):  # Ctrl-C during the second batch
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    kw = dict(label="tiny", set_name="sums", k=1, max_new_tokens=3, batch_size=1, progress=False)
    monkeypatch.setattr(rollout, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate_problems(db, model, tok, problems, **kw)
    (ev,) = db["evaluations"].rows
    path = tmp_path / "partial.jsonl"
    r = runner.invoke(app, ["eval", "--evaluation", ev["id"][:10], "--export", str(path)])
    assert r.exit_code == 0, r.output
    assert f"evaluation {ev['id']} is interrupted: its 1 finished problems are shown" in " ".join(r.stdout.split())
    assert len(_lines(path)) == 1 and _lines(path)[0]["evaluation_id"] == ev["id"]
    monkeypatch.setattr(rollout, "generate", real)
    evaluate_problems(db, model, tok, problems, **kw)  # resumed: the same evaluation
    out = _json(runner.invoke(app, ["eval", "--evaluation", ev["id"], "--export", str(path), "--json"]))
    assert out["results"][0]["sets"][0]["status"] == "completed" and out["results"][0]["sets"][0]["n_problems"] == 3
    assert [x["source_id"] for x in _lines(path)] == ["q0", "q1", "q2"]
    assert {x["evaluation_id"] for x in _lines(path)} == {ev["id"]}


def test_import_of_an_export_agrees_with_itself(runner, db, sums, tmp_path):
    path = tmp_path / "mine.jsonl"
    first = _json(runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "--k", "2", "--temperature", "1",
                                      "--max-new-tokens", "4", "--export", str(path), "--json"]))
    again = _json(runner.invoke(app, ["eval", "--import", str(path), "--set", "sums", "--json"]))
    a, b = first["results"][0]["sets"][0], again["results"][0]["sets"][0]
    assert b["model"] == "import:mine.jsonl" and b["k"] == 2
    for key in ("n_problems", "n_samples", "mean_at_k", "pass_at_k", "maj_at_k", "maj_at_k_exact", "truncation_rate",
                "unextracted_rate", "completion_tokens_mean"):
        assert a[key] == b[key], key
    assert b["file_verdicts"] == {"samples": 6, "agree": 6, "mean_at_k": a["mean_at_k"]}
    # The golden answers, written as completions, round-trip as all correct.
    gold = tmp_path / "gold.jsonl"
    _json(runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--export", str(gold), "--json"]))
    assert [(x["correct"], x["finish_reason"], x["prompt"]) for x in _lines(gold)] == [(True, "stop", None)] * 3
    back = _json(runner.invoke(app, ["eval", "--import", str(gold), "--set", "sums", "--json"]))
    s = back["results"][0]["sets"][0]
    assert s["mean_at_k"] == 1.0 and s["file_verdicts"] == {"samples": 3, "agree": 3, "mean_at_k": 1.0}


def test_import_grades_another_systems_samples_with_gcpos_grader(runner, db, sums, tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"problem_id": "q1", "completion": "1 + 1 = 2, so \\boxed{2}.", "correct": True},  # the file's own id
        {"problem_id": sums["q1"], "completion": "The answer is 2.0", "correct": False},  # gcpo's id; 2.0 = 2
        {"problem": "What is 2 + 2?", "completion": "\\boxed{4}", "finish_reason": "length", "correct": True},
        {"problem": "  What is 2 +   2? ", "completion": "so \\boxed{5}", "completion_tokens": 7},
    ]) + "\n\n", encoding="utf-8")
    r = runner.invoke(app, ["eval", "--import", str(path), "--set", "sums"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "samples imported from other.jsonl, graded by gcpo" in text
    assert "gcpo's grader agrees with the file's verdicts on 1 of 3 samples" in text
    (ev,) = db["evaluations"].rows
    assert ev["model"] == "import:other.jsonl" and ev["status"] == "completed"
    m = json.loads(ev["metrics_json"])
    # q1: both right (2.0 verifies as 2); q2: a cut-off sample is wrong whatever it states, 5 is wrong
    assert (m["n_problems"], m["n_samples"], m["mean_at_k"], m["pass_at_k"]) == (2, 4, 0.5, 0.5)
    assert m["truncation_rate"] == 0.25 and m["completion_tokens_mean"] == 7
    source = {pid: src for src, pid in sums.items()}
    rows = sorted(db["eval_results"].rows, key=lambda x: (source[x["problem_id"]], x["sample_index"]))
    assert [(r["extracted_answer"], r["correct"]) for r in rows] == [("2", 1), ("2.0", 1), ("4", 0), ("5", 0)]
    assert db["prompts"].count == 0  # the file gave none


@pytest.mark.parametrize("content,message", [
    ('{"problem_id": "q9", "completion": "x"}\n', "bad.jsonl line 1: problem id 'q9' is not in set 'sums'"),
    ('{"problem_id": "q0", "completion": "x"}\n{"problem": "What is 7 + 7?", "completion": "y"}\n'
     '{"problem": "nope", "completion": "z"}\n',
     "bad.jsonl line 2: the problem text is not in set 'sums' (and 1 more lines)"),
    ('{"problem_id": "q0"}\n', "bad.jsonl line 1: no 'completion' text"),
    ('{"completion": "x"}\n', "bad.jsonl line 1: no problem_id or problem field"),
    ('{"problem_id": "q0", "completion": "x", "completion_tokens": "many"}\n',
     "bad.jsonl line 1: 'completion_tokens' must be a whole number"),
    ('["q0", "x"]\n', "bad.jsonl line 1: not a JSON object"),
    ("\n\n", "no samples"),
])
def test_a_bad_import_file_is_one_line_and_stores_nothing(runner, db, sums, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    r = runner.invoke(app, ["eval", "--import", str(path), "--set", "sums"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert db["evaluations"].count == 0 and db["eval_results"].count == 0


@pytest.mark.parametrize("args,message", [
    (["--import", "x.jsonl"], "--import grades against one set: give --set NAME once"),
    (["--import", "x.jsonl", "-s", "sums", "--prompt", "raw"], "--import and --evaluation generate nothing"),
    (["--import", "x.jsonl", "-s", "sums", "--compare", "tiny"], "does not combine with --import or --evaluation"),
    (["--evaluation", "01", "-s", "sums"], "--evaluation names stored evaluations; drop --set and --benchmark"),
    (["--evaluation", "zz"], "unknown evaluation 'zz': no evaluations recorded yet"),
    (["-m", "tiny", "--import", "x.jsonl", "-s", "sums"], "name exactly one of --model M, --run RUN, --import FILE"),
    (["-m", "tiny", "-s", "sums", "--prompt", "qwen"], "unknown prompt 'qwen'; presets: boxed, qwen25-math-cot"),
    (["-m", "tiny", "-s", "sums", "--template", "Q:"], "prompt template 'Q:': must contain {problem}"),
])
def test_bad_sample_file_and_prompt_invocations(runner, db, sums, args, message):
    r = runner.invoke(app, ["eval", *args])
    assert r.exit_code == 1 and message in " ".join(r.output.split()), r.output
