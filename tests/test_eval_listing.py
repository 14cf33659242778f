"""`gcpo evals` lists evaluations, and `latest` names the newest run or evaluation wherever an id
is accepted (issue 26 section 1): eval --run / --evaluation, inspect --run, export --run and
train --resume all resolve it in one place (store.resolve_run, store.resolve_evaluation)."""

from __future__ import annotations

import json

import pytest

from gcpo_cli.cli import app


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def sums(db):
    from gcpo_cli.ingest import ingest_rows

    for name, n in (("sums", 3), ("more", 2)):
        ingest_rows(db, [{"problem": f"What is {i} + {i}?", "solution": f"{i} + {i} = \\boxed{{{2 * i}}}",
                          "answer": str(2 * i)} for i in range(n)], name, problem="problem", solution="solution",
                    answer="answer")
    return "sums"


def test_evals_lists_newest_first_with_status_and_headline(runner, db, sums):
    r = runner.invoke(app, ["evals"])
    assert r.exit_code == 0 and "no evaluations yet" in r.output
    first = _json(runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--json"]))["results"][0]["sets"][0]
    second = _json(runner.invoke(app, ["eval", "-m", "golden", "-s", "more", "--json"]))["results"][0]["sets"][0]
    # A third, marked running by a process that is gone (no lock held): it died after one problem.
    db["evaluations"].insert(dict(id="0zzzzzzzzzdied0", model="tiny", set_name="sums", status="running",
                                  params_json=json.dumps({"k": 2, "prompt": "qwen25-math-cot", "problems": 3}),
                                  metrics_json=None, created_at="2999-01-01T00:00:00Z",
                                  updated_at="2999-01-01T00:00:00Z"))
    pid = db.execute("SELECT problem_id FROM set_problems LIMIT 1").fetchone()[0]
    db["eval_results"].insert_all([dict(evaluation_id="0zzzzzzzzzdied0", problem_id=pid, sample_index=j,
                                        completion="\\boxed{0}", extracted_answer="0", correct=j, truncated=0,
                                        completion_tokens=5, created_at="2999-01-01T00:00:00Z") for j in (0, 1)])
    rows = _json(runner.invoke(app, ["evals", "--json"]))
    assert [x["id"] for x in rows] == ["0zzzzzzzzzdied0", second["evaluation_id"], first["evaluation_id"]]
    died, golden = rows[0], rows[1]
    assert (died["status"], died["model"], died["k"], died["prompt"], died["n_problems"], died["problems"]) == (
        "died", "tiny", 2, "qwen25-math-cot", 1, 3)
    assert died["mean_at_k"] == 0.5  # over the problem it finished
    assert (golden["status"], golden["model"], golden["set_name"], golden["prompt"], golden["mean_at_k"],
            golden["n_problems"], golden["k"]) == ("completed", "golden", "more", "golden", 1.0, 2, 1)
    assert golden["created_at"].endswith("Z") and golden["run_id"] is None
    assert [x["id"] for x in _json(runner.invoke(app, ["evals", "--json", "--limit", "2"]))] == [
        x["id"] for x in rows[:2]]
    table = runner.invoke(app, ["evals"])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines)
    died_line = next(line for line in lines if "0zzzzzzzzzdied0" in line)
    assert "died" in died_line and "1/3" in died_line and "50.0%" in died_line and "2999-01-01 00:00" in died_line
    assert "100.0%" in next(line for line in lines if second["evaluation_id"] in line)


def test_latest_evaluation(runner, db, sums):
    r = runner.invoke(app, ["eval", "--evaluation", "latest"])
    assert r.exit_code == 1 and "no evaluations recorded yet" in r.output
    _json(runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--json"]))
    newest = _json(runner.invoke(app, ["eval", "-m", "golden", "-s", "more", "--json"]))["results"][0]["sets"][0]
    shown = _json(runner.invoke(app, ["eval", "--evaluation", "latest", "--json"]))
    assert shown["results"][0]["sets"][0]["evaluation_id"] == newest["evaluation_id"]
    assert shown["params"]["evaluation"] == [newest["evaluation_id"]]


@pytest.fixture
def two_runs(db, gcpo_home):
    """Two runs of the tiny model with a checkpoint each; "rnew" is the newer."""
    from peft import LoraConfig, get_peft_model

    from gcpo_cli.model import load_for_inference

    base, _ = load_for_inference("tiny")
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear"))
    for run_id, step, created in (("rold", 2, "2025-01-01T00:00:00Z"), ("rnew", 3, "2025-01-02T00:00:00Z")):
        out_dir = gcpo_home / "runs" / run_id
        adapter.save_pretrained(out_dir / "checkpoints" / f"step-{step}" / "adapter")
        db["runs"].insert(dict(id=run_id, model="tiny", algorithm="gcpo", recipe="tiny", out_dir=str(out_dir),
                               status="completed", set_name="sums",
                               recipe_json=json.dumps({"steps": step}), created_at=created, updated_at=created,
                               last_step=step, checkpoint_step=step, steps_planned=step))
    return "rnew"


def test_latest_run_everywhere_a_run_is_read(runner, db, sums, two_runs, tmp_path):
    out = _json(runner.invoke(app, ["eval", "--run", "latest", "-s", "sums", "--max-new-tokens", "2", "--json"]))
    assert out["results"][0]["label"] == "run:rnew@3" and out["results"][0]["run_id"] == "rnew"
    assert _json(runner.invoke(app, ["inspect", "--run", "latest", "--json"]))["run"]["id"] == "rnew"
    exported = _json(runner.invoke(app, ["export", "--run", "latest", "--out", str(tmp_path / "x"), "--json"]))
    assert (exported["run_id"], exported["step"]) == ("rnew", 3)
    r = runner.invoke(app, ["train", "--resume", "latest", "--steps", "2"])
    assert r.exit_code == 1 and "run rnew has done 3 steps" in r.output
    # An id that is a prefix of none, and no runs at all, still say what is known.
    db["runs"].delete_where()
    r = runner.invoke(app, ["inspect", "--run", "latest", "--json"])
    assert r.exit_code == 1 and "no runs recorded yet, so no latest run" in r.output


def test_evals_in_80_columns_keeps_the_id_status_and_score_whole(runner, db, sums):
    """At 80 columns the score was cut to '78.' and the status to 'compl…': what a reader came
    for. The model and set names give way instead."""
    for i, status in enumerate(("completed", "interrupted")):
        db["evaluations"].insert(dict(id=f"01evaluation{i:04d}", model=f"run:01m99fez8q96jmr{i}@20",
                                      set_name="arithmetic-l2-400", status=status,
                                      params_json=json.dumps({"k": 1, "prompt": "boxed", "problems": 32}),
                                      metrics_json=json.dumps({"mean_at_k": 0.78125, "stderr": 0.0742,
                                                               "n_problems": 32}),
                                      created_at=f"2026-12-0{i + 1}T00:36:00Z", updated_at="2026-12-08T00:36:00Z"))
    table = runner.invoke(app, ["evals"], env={"COLUMNS": "80"})
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines)
    done = next(line for line in lines if "01evaluation0000" in line)
    assert "completed" in done and "78.1% ±7.4" in done and "2026-12-01" in done, done
    cut = next(line for line in lines if "01evaluation0001" in line)  # its score: over the problems it finished
    assert "interrupted" in cut and "0/32" in cut and "2026-12-02" in cut, cut
