"""Experiment trackers (issue 12): `--report-to` mirrors the `steps` table and the held-out
evaluation into TensorBoard event files and a local Trackio store; a missing tracker package is one line; a tracker that
fails costs its mirror, never the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gcpo_cli import recipe_load as recipes
from gcpo_cli import store, trackers
from gcpo_cli import train as training
from gcpo_cli.cli import app
from gcpo_cli.model import build_tiny
from gcpo_cli.store.runs import step_columns


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_steps_table_and_the_held_out_evaluation(db, tiny_dir):
    r = recipes.load("tiny", [f"model.name={tiny_dir}", "eval.holdout=4", "report_to=tensorboard"])
    assert r.report_to == ("tensorboard",)
    summary = training.train(db, r)
    assert summary["status"] == "completed" and summary["last_step"] == 3
    got = scalars(Path(summary["out_dir"]) / "tensorboard")
    steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [summary["run_id"]]))
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        metrics = json.loads(s["metrics_json"])
        for key in step_columns(db):  # every column of the steps table, at its step, as float32
            if s[key] is not None:
                assert got[f"train/{key}"][s["step"]] == np.float32(s[key]), key
        assert got["train/groups"][s["step"]] == metrics["groups"]
    assert "train/reward_mean" in got and len(got["train/reward_mean"]) == 3
    # the held-out evaluation before (step 0) and after (step 3), as the summary reports it
    assert got["eval/mean_at_k"] == {0: np.float32(summary["before"]["mean_at_k"]),
                                     3: np.float32(summary["after"]["mean_at_k"])}
    run = db["runs"].get(summary["run_id"])
    assert json.loads(run["recipe_json"])["report_to"] == ["tensorboard"]  # stored: a resume reports too


@pytest.mark.parametrize("name", ["wandb", "trackio", "tensorboard"])
def test_a_missing_tracker_package_is_one_line_and_starts_nothing(runner, tiny_dir, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    r = runner.invoke(app, ["train", "--recipe", "tiny", "--model", tiny_dir, "--report-to", name])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"--report-to {name} needs the {name} package: pip install 'gcpo-cli[{name}]'" in r.output
    assert store.list_runs(store.open_db()) == []  # no run was created


def test_report_to_is_a_list_key_and_none_means_no_tracker(tiny_dir):
    r = recipes.load("tiny", ["report_to=[tensorboard, wandb]"])
    assert r.report_to == ("tensorboard", "wandb")
    assert recipes.load("tiny", [], {"report_to": ["trackio"]}).report_to == ("trackio",)
    assert recipes.load("tiny", ["report_to=none"]).report_to == ()
    with pytest.raises(recipes.RecipeError, match="report_to"):
        recipes.load("tiny", ["report_to=[none, wandb]"])
    with pytest.raises(recipes.RecipeError, match="report_to"):
        recipes.load("tiny", ["report_to=mlflow"])


def test_a_failing_tracker_costs_a_warning_not_the_run(db, tiny_dir, monkeypatch):
    class Broken:
        def __init__(self, **kw):
            pass

        def log(self, step, values):
            raise OSError("disk full")

        def close(self):
            pass

    monkeypatch.setitem(trackers.OPEN, "tensorboard", Broken)
    messages = []

    class Display(training.NullDisplay):
        def message(self, text):
            messages.append(text)

    summary = training.train(db, recipes.load("tiny", [f"model.name={tiny_dir}", "steps=2", "report_to=tensorboard"]),
                             display=Display())
    assert summary["status"] == "completed" and summary["last_step"] == 2
    assert [m for m in messages if "tracking stopped" in m] == [
        "warning: tensorboard tracking stopped (disk full); the database still records every step"]
    assert len(store.rewards(db, summary["run_id"])) == 2


def test_trackio_holds_the_steps_table_locally(tmp_path, tiny_dir):
    """A real local Trackio store (TRACKIO_DIR, read at trackio's import: hence a process of
    its own), read back with trackio's own storage API."""
    import os
    import subprocess

    env = dict(os.environ, GCPO_HOME=str(tmp_path / "home"), TRACKIO_DIR=str(tmp_path / "trackio"))
    gcpo = [sys.executable, "-m", "gcpo_cli"]
    r = subprocess.run(gcpo + ["train", "--recipe", "tiny", "--model", tiny_dir, "--report-to", "trackio"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    db = store.open_db(tmp_path / "home" / "gcpo.db")
    (run,) = store.list_runs(db)
    run_id = run["id"]
    read = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage; "
            "print(json.dumps(SQLiteStorage.get_logs('gcpo', run=sys.argv[1]), default=str))")
    logs = json.loads(subprocess.run([sys.executable, "-c", read, run_id], env=env, capture_output=True,
                                     text=True, timeout=120, check=True).stdout)
    steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [run_id]))
    logged = {e["step"]: e for e in logs if "train/reward_mean" in e}
    assert sorted(logged) == [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        for key in step_columns(db):
            if s[key] is not None:
                assert logged[s["step"]][f"train/{key}"] == pytest.approx(s[key], rel=1e-6), key


def test_trl_names_and_a_completions_table_reach_tensorboard(db, tiny_dir):
    """Issue 26: the scalars a TRL dashboard reads (train/reward, train/completions/mean_length,
    train/clip_ratio/..., train/entropy, train/reward_std, train/frac_reward_zero_std) beside
    gcpo's own names, and with log_completions N a table of a step's completions every N steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = recipes.load("tiny", [f"model.name={tiny_dir}", "report_to=tensorboard", "log_completions=2"])
    summary = training.train(db, r)
    got = scalars(Path(summary["out_dir"]) / "tensorboard")
    steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [summary["run_id"]]))
    for s in steps:
        assert got["train/reward"][s["step"]] == np.float32(s["reward_mean"])
        assert got["train/completions/mean_length"][s["step"]] == np.float32(s["completion_tokens_mean"])
    for name in ("train/clip_ratio/region_mean", "train/clip_ratio/low_mean", "train/clip_ratio/high_mean",
                 "train/entropy", "train/reward_std", "train/frac_reward_zero_std", "train/learning_rate"):
        assert len(got[name]) == 3, name
    events = EventAccumulator(str(Path(summary["out_dir"]) / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tables = [e for e in events.Tensors("completions/text_summary")]
    assert [e.step for e in tables] == [2]  # every 2 steps of 3
    text = tables[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| step | problem | completion | reward | advantage | golden |")
    rows = db.execute("SELECT COUNT(*) FROM rollouts WHERE run_id = ? AND step = 2", [summary["run_id"]]).fetchone()[0]
    assert text.count("\n") == rows + 1  # the header, its rule, one row per recorded rollout
