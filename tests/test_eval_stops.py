"""gcpo eval stopped and compared: Ctrl-C and SIGTERM (a real process and real signals), kill -9
(died, then resumed), a live evaluation not run twice, a bad --export path refused before
anything runs, --compare's references, columns and paired deltas, and a run's own length."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from gcpo_cli.cli import app


def _rows(n: int) -> list[dict]:
    return [{"problem": f"What is {i} + {i}?", "solution": f"{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}",
             "answer": str(2 * i)} for i in range(n)]


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def sums(db):
    from gcpo_cli.ingest import ingest_rows

    ingest_rows(db, _rows(3), "sums", problem="problem", solution="solution", answer="answer")


# ------------------------------------------------------------- stopping, bad paths, comparisons


def _count(db_path, sql: str, args=()) -> int:
    import sqlite3

    try:
        with sqlite3.connect(db_path) as c:
            return c.execute(sql, args).fetchone()[0] or 0
    except sqlite3.OperationalError:  # not created yet
        return 0


def _wait_for_results(proc, db_path, at_least: int) -> int:
    """Polls until the evaluation has stored `at_least` samples (the process still running)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        n = _count(db_path, "SELECT COUNT(*) FROM eval_results")
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError(f"the evaluation did not reach {at_least} samples while running (rc {proc.poll()})")


def test_sigterm_then_kill_9_during_eval_leave_it_resumable(tmp_path, gcpo_home):
    """A real `gcpo eval` process: SIGTERM finishes or abandons the batch in flight, marks the
    evaluation interrupted, says so in one line and exits non-zero; the same command resumes it.
    Killed with SIGKILL, it shows as died (nobody holds its lock) and resumes too."""
    import signal
    import subprocess
    import sys

    from gcpo_cli.ingest import ingest_rows
    from gcpo_cli.store import open_db

    N = 400  # enough that neither process can finish before the test signals it, however fast
    db_path = tmp_path / "eval.db"
    d = open_db(db_path)
    ingest_rows(d, _rows(N), "sums", problem="problem", solution="solution", answer="answer")
    d.close()
    env = {**os.environ, "GCPO_HOME": str(gcpo_home)}
    gcpo = [sys.executable, "-m", "gcpo_cli"]
    cmd = gcpo + ["eval", "-m", "tiny", "-s", "sums", "--max-new-tokens", "8", "--batch-size", "1", "--db",
                  str(db_path), "--json"]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_results(proc, db_path, 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err and "SIGTERM" in err and "the same command resumes it" in err
    ev_id = err.split("evaluation ")[1].split()[0]
    first = _count(db_path, "SELECT COUNT(*) FROM eval_results")
    assert 2 <= first < N
    assert _count(db_path, "SELECT COUNT(*) FROM evaluations WHERE id = ? AND status = 'interrupted'", [ev_id]) == 1

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_results(proc, db_path, first + 2)
        shown = subprocess.run(gcpo + ["eval", "--evaluation", ev_id, "--db", str(db_path), "--json"], env=env,
                               capture_output=True, text=True)
        assert json.loads(shown.stdout)["results"][0]["sets"][0]["status"] == "running"  # resumed, live
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    second = _count(db_path, "SELECT COUNT(*) FROM eval_results")
    assert second < N and _count(db_path, "SELECT COUNT(*) FROM evaluations") == 1
    shown = subprocess.run(gcpo + ["eval", "--evaluation", ev_id, "--db", str(db_path)], env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"evaluation {ev_id} (died)" in " ".join(shown.stdout.split())

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)["results"][0]["sets"][0]
    assert s["evaluation_id"] == ev_id and s["resumed"] == second and s["n_problems"] == N
    assert _count(db_path, "SELECT COUNT(*) FROM eval_results") == N
    assert _count(db_path, "SELECT COUNT(DISTINCT problem_id) FROM eval_results") == N
    assert _count(db_path, "SELECT COUNT(*) FROM evaluations WHERE status = 'completed'") == 1


def test_ctrl_c_during_eval_marks_it_interrupted_in_one_line(runner, db, monkeypatch):
    """SIGINT (Ctrl-C) through the real handler: the evaluation is interrupted with one line and
    exit code 130, not click's "Aborted!"; the same command resumes it."""
    import signal

    from gcpo_cli import rollout
    from gcpo_cli.ingest import ingest_rows

    ingest_rows(db, _rows(4), "sums", problem="problem", solution="solution", answer="answer")
    real, calls = rollout.generate, []

    def pressed(*a, **kw):  # Ctrl-C while the second batch generates
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(rollout, "generate", pressed)
    args = ["eval", "-m", "tiny", "-s", "sums", "--max-new-tokens", "3", "--batch-size", "1", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 130, r.output
    assert "Aborted" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "interrupted" in r.output and "SIGINT" in r.output
    (ev,) = db["evaluations"].rows
    assert ev["status"] == "interrupted" and 1 <= db["eval_results"].count < 4
    monkeypatch.setattr(rollout, "generate", real)
    out = _json(runner.invoke(app, args))
    assert out["results"][0]["sets"][0]["evaluation_id"] == ev["id"] and db["eval_results"].count == 4


@pytest.mark.parametrize("where,message", [
    ("missing/samples.jsonl", "no such folder"),
    ("a-file/samples.jsonl", "is not a folder"),
    ("/sys/samples.jsonl", "cannot write there"),  # sysfs: no new files, even for root
])
def test_export_to_a_bad_path_fails_before_anything_is_evaluated(runner, db, sums, tmp_path, where, message):
    (tmp_path / "a-file").write_text("x")
    path = tmp_path / where
    r = runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "--max-new-tokens", "3", "--export", str(path)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"--export {path}" in r.output and message in r.output and len(r.output.strip().splitlines()) == 1
    assert db["evaluations"].count == 0  # refused before evaluating


def test_compare_with_a_bad_reference_names_it_and_the_accepted_forms(runner, db, sums):
    r = runner.invoke(app, ["eval", "-m", "tiny", "-s", "sums", "--compare", "@abc"])
    assert r.exit_code == 1 and "unknown run ''" not in r.output, r.output
    text = " ".join(r.output.split())
    assert "--compare '@abc'" in text and "RUN@STEP" in text and "model" in text
    assert db["evaluations"].count == 0


def _per_problem(db, evaluation_id: str, column: str) -> dict[str, float]:
    rows = list(db.query(f"SELECT problem_id, AVG({column}) AS v FROM eval_results WHERE evaluation_id = ?"
                         " GROUP BY problem_id", [evaluation_id]))
    return {r["problem_id"]: r["v"] for r in rows}


def test_compare_shows_every_column_and_the_run_minus_baseline_delta_with_a_paired_stderr(runner, db):
    from gcpo_cli.ingest import ingest_rows

    # golden answers: three right, two wrong, so the paired differences vary
    rows = _rows(5)
    for r in rows[1::2]:
        r["solution"] = "It is 1000. \\boxed{1000}"
    ingest_rows(db, rows, "mixedgold", problem="problem", solution="solution", answer="answer")
    args = ["eval", "-m", "golden", "-s", "mixedgold", "--compare", "tiny", "--max-new-tokens", "3"]
    out = _json(runner.invoke(app, args + ["--json"]))
    run, base = out["results"]
    d = base["sets"][0]["delta"]
    assert set(d) >= {"mean_at_k", "pass_at_k", "maj_at_k", "maj_at_k_exact", "completion_tokens_mean",
                      "truncation_rate", "unextracted_rate"}
    mine = _per_problem(db, run["sets"][0]["evaluation_id"], "correct")
    theirs = _per_problem(db, base["sets"][0]["evaluation_id"], "correct")
    diffs = [mine[p] - theirs[p] for p in mine]
    mean = sum(diffs) / 5
    se = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4 / 5)
    assert mean > 0 and se > 0  # a varied, positive difference: the sign and the error are tested
    assert d["mean_at_k"]["value"] == pytest.approx(100 * mean)  # run minus baseline, in points
    assert d["mean_at_k"]["stderr"] == pytest.approx(100 * se)  # paired over the same problems
    trunc = _per_problem(db, base["sets"][0]["evaluation_id"], "truncated")
    assert d["truncation_rate"]["value"] == pytest.approx(-100 * sum(trunc.values()) / 5)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    for column in ("mean@1", "pass@1", "maj@1", "len", "trunc", "no ans"):
        assert column in text, column
    assert f"{100 * mean:+.1f}" in text and f"±{100 * se:.1f}" in text
    assert "golden minus tiny, in points" in text


def test_eval_of_a_run_uses_the_runs_own_max_new_tokens(runner, db, gcpo_home):
    from peft import LoraConfig, get_peft_model

    from gcpo_cli.ingest import ingest_rows
    from gcpo_cli.model import load_for_inference

    ingest_rows(db, _rows(2), "sums", problem="problem", solution="solution", answer="answer")
    base, _ = load_for_inference("tiny")
    out_dir = gcpo_home / "runs" / "r1"
    get_peft_model(base, LoraConfig(r=2, target_modules="all-linear")).save_pretrained(
        out_dir / "checkpoints" / "step-1" / "adapter")
    db["runs"].insert(dict(id="r1", model="tiny", out_dir=str(out_dir), status="completed",
                           recipe_json=json.dumps({"max_new_tokens": 5})))
    out = _json(runner.invoke(app, ["eval", "--run", "r1", "--set", "sums", "--compare", "tiny", "--json"]))
    assert out["params"]["max_new_tokens"] == 5
    assert {json.loads(e["params_json"])["max_new_tokens"] for e in db["evaluations"].rows} == {5}  # both targets
    assert max(r["completion_tokens"] for r in db["eval_results"].rows) <= 5
    out = _json(runner.invoke(app, ["eval", "--run", "r1", "--set", "sums", "--max-new-tokens", "2", "--json"]))
    assert out["params"]["max_new_tokens"] == 2  # the flag wins


def test_an_evaluation_running_in_another_process_is_not_run_twice(runner, db, sums, monkeypatch):
    """While a live process holds an evaluation's lock, the same command is refused in one line
    (it would store every problem twice) and the evaluation shows as running; once the lock is
    free it resumes."""
    from gcpo_cli import resumable, store

    real = store.write_results

    def stopped(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_results", stopped)
    r = runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--json"])
    assert r.exit_code != 0
    (ev,) = db["evaluations"].rows
    monkeypatch.setattr(store, "write_results", real)
    store.open_evaluation(db, model="golden", set_name="sums", params=json.loads(ev["params_json"]), run_id=None,
                          run_step=None)  # marked running again, as the other process would
    lock = resumable.hold(db, ev["id"], "evaluation")  # the other process
    try:
        r = runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--json"])
        assert r.exit_code == 1 and f"evaluation {ev['id']} is running right now" in r.output, r.output
        assert f"pid\": {os.getpid()}" in r.output and len(r.output.strip().splitlines()) == 1
        shown = _json(runner.invoke(app, ["eval", "--evaluation", ev["id"], "--json"]))
        assert shown["results"][0]["sets"][0]["status"] == "running"
    finally:
        resumable.release(db, ev["id"], lock)
    shown = _json(runner.invoke(app, ["eval", "--evaluation", ev["id"], "--json"]))
    assert shown["results"][0]["sets"][0]["status"] == "died"  # running, and nobody holds it
    out = _json(runner.invoke(app, ["eval", "-m", "golden", "-s", "sums", "--json"]))
    assert out["results"][0]["sets"][0]["evaluation_id"] == ev["id"] and db["eval_results"].count == 3
