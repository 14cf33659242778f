"""The schema, stated literally, and an old database upgrading in place."""

import json
import re
import shutil
from pathlib import Path

from gcpo_cli.cli import app
from gcpo_cli.store import open_db

PACKAGE = Path(__file__).resolve().parents[1] / "gcpo_cli"
V0_1 = Path(__file__).resolve().parent / "data" / "v0.1"  # made by gcpo 0.1 (see its make.sh)

# What migrations m001-m010 produce: every table's columns, in order, with their types.
SCHEMA = {
    "problems": "id TEXT, text TEXT, answer TEXT, metadata_json TEXT, created_at TEXT",
    "problem_sets": "id INTEGER, name TEXT, description TEXT, created_at TEXT",
    "set_problems": "set_id INTEGER, problem_id TEXT, position INTEGER, source_id TEXT",
    "ingests": "id INTEGER, set_id INTEGER, source TEXT, fingerprint TEXT, rows_read INTEGER, added INTEGER, "
               "present INTEGER, rejected INTEGER, golden_verified INTEGER, golden_total INTEGER, created_at TEXT",
    "golden_answers": "id TEXT, problem_id TEXT, text TEXT, final_answer TEXT, source_file TEXT, verified INTEGER, "
                      "created_at TEXT, origin TEXT, active INTEGER, model TEXT, params_json TEXT, "
                      "completion_tokens INTEGER, generation_id TEXT, derived_from TEXT",
    "golden_generations": "id TEXT, set_name TEXT, teacher TEXT, params_json TEXT, metrics_json TEXT, status TEXT, "
                          "created_at TEXT, updated_at TEXT",
    "golden_attempts": "id INTEGER, generation_id TEXT, problem_id TEXT, samples INTEGER, correct INTEGER, "
                       "created_at TEXT",
    "runs": "id TEXT, recipe TEXT, recipe_json TEXT, model TEXT, algorithm TEXT, set_name TEXT, seed INTEGER, "
            "status TEXT, steps_planned INTEGER, last_step INTEGER, checkpoint_step INTEGER, out_dir TEXT, "
            "error TEXT, created_at TEXT, updated_at TEXT, environment_json TEXT",
    "steps": "id INTEGER, run_id TEXT, step INTEGER, reward_mean REAL, all_wrong_frac REAL, all_correct_frac REAL, "
             "mixed_frac REAL, golden_injections REAL, golden_too_long REAL, golden_logp_mean REAL, clip_frac REAL, "
             "completion_tokens_mean REAL, truncation_rate REAL, grad_norm REAL, loss REAL, lr REAL, gen_s REAL, "
             "score_s REAL, update_s REAL, tokens_per_s REAL, metrics_json TEXT, created_at TEXT, ratio_mean REAL, "
             "ratio_min REAL, ratio_max REAL, optimizer_updates REAL",
    "rollouts": "id INTEGER, run_id TEXT, step INTEGER, problem_id TEXT, sample_index INTEGER, completion TEXT, "
                "extracted_answer TEXT, reward REAL, correct INTEGER, completion_tokens INTEGER, truncated INTEGER, "
                "is_golden INTEGER, advantage REAL, seq_ratio REAL, policy_version INTEGER, sampler_logprobs BLOB",
    "evaluations": "id TEXT, model TEXT, run_id TEXT, run_step INTEGER, set_name TEXT, params_json TEXT, "
                   "metrics_json TEXT, status TEXT, created_at TEXT, updated_at TEXT",
    "eval_results": "id INTEGER, evaluation_id TEXT, problem_id TEXT, sample_index INTEGER, completion TEXT, "
                    "extracted_answer TEXT, correct INTEGER, completion_tokens INTEGER, truncated INTEGER, "
                    "created_at TEXT, prompt_id TEXT",
    "prompts": "id TEXT, text TEXT, created_at TEXT",
}
INDEXES = {
    "problem_sets": [("name",)],
    "set_problems": [("problem_id",), ("source_id",)],
    "golden_answers": [("derived_from",), ("problem_id",)],
    "golden_attempts": [("generation_id", "problem_id")],
    "steps": [("run_id", "step")],
    "rollouts": [("problem_id", "run_id", "step"), ("problem_id", "run_id", "step", "is_golden", "correct"),
                 ("run_id", "problem_id", "step", "is_golden", "correct"), ("run_id", "step")],
    "eval_results": [("evaluation_id", "problem_id"), ("problem_id",)],
}


PRIMARY_KEYS = {t: ["id"] for t in SCHEMA} | {"set_problems": ["set_id", "problem_id"]}


def schema(db) -> dict:
    assert {t: db[t].pks for t in SCHEMA} == PRIMARY_KEYS
    return {t: ", ".join(f"{c.name} {c.type}" for c in db[t].columns) for t in SCHEMA}


def indexes(db) -> dict:
    out = {t: sorted(tuple(i.columns) for i in db[t].indexes if not i.name.startswith("sqlite_autoindex"))
           for t in SCHEMA}
    return {t: v for t, v in out.items() if v}


def test_a_fresh_database_has_exactly_the_stated_schema(tmp_path):
    db = open_db(tmp_path / "x.db")
    assert schema(db) == SCHEMA
    assert indexes(db) == INDEXES
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db["problems"].detect_fts() == "problems_fts"
    # Re-opening applies nothing twice.
    n = db["_sqlite_migrations"].count
    db.close()
    assert open_db(tmp_path / "x.db")["_sqlite_migrations"].count == n


def _old_home(tmp_path) -> tuple[Path, str]:
    """A copy of the database, run folder and checkpoints that gcpo 0.1 made, as GCPO_HOME."""
    home = tmp_path / "gcpo-home"
    home.mkdir(exist_ok=True)
    shutil.copy(V0_1 / "gcpo.db", home / "gcpo.db")
    shutil.copytree(V0_1 / "runs", home / "runs")
    run_id = json.loads((V0_1 / "train.json").read_text())["run_id"]
    return home, run_id


def test_an_old_database_upgrades_in_place_and_keeps_everything(tmp_path):
    home, run_id = _old_home(tmp_path)
    import sqlite3

    old = sqlite3.connect(home / "gcpo.db")
    old_tables = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    counts = {t: old.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] if t in old_tables else 0 for t in SCHEMA}
    old_tokens = old.execute("SELECT SUM(tokens) FROM rollouts").fetchone()[0]
    assert old.execute("SELECT COUNT(*) FROM evaluations WHERE status = 'done'").fetchone()[0] == 2
    old.close()
    db = open_db(home / "gcpo.db")
    assert schema(db) == SCHEMA and indexes(db) == INDEXES
    assert {t: db[t].count for t in SCHEMA} == counts
    assert db.execute("SELECT SUM(completion_tokens) FROM rollouts").fetchone()[0] == old_tokens
    # m008: 0.1 sampled step k from the policy of update k - 1; golden answers have no sampler
    versions = db.execute("SELECT DISTINCT step, is_golden, policy_version FROM rollouts").fetchall()
    assert versions and all(v == (None if golden else step - 1) for step, golden, v in versions)
    assert {golden for _, golden, _ in versions} == {0, 1}
    assert {r["status"] for r in db.query("SELECT status FROM evaluations")} == {"completed"}
    run = db["runs"].get(run_id)
    recipe = json.loads(run["recipe_json"])
    assert run["set_name"] == "arithmetic-l1-24" and recipe["set_name"] is None
    assert recipe["loss"]["zero_variance"] == "skip"  # m003 renamed it, m011 moved it into its section
    assert "data" not in recipe and "all_correct" not in recipe and "zero_variance" not in recipe
    step = json.loads(db.execute("SELECT metrics_json FROM steps WHERE run_id = ? AND step = 1",
                                 [run_id]).fetchone()[0])
    assert "golden_injections" in step and "ga_injections" not in step
    evaluation = json.loads(db.execute("SELECT metrics_json FROM evaluations WHERE model = 'tiny'").fetchone()[0])
    assert "completion_tokens_mean" in evaluation and "mean_tokens" not in evaluation


def test_an_old_run_is_still_inspectable_and_resumable(tmp_path, monkeypatch, runner):
    home, run_id = _old_home(tmp_path)
    monkeypatch.setenv("GCPO_HOME", str(home))
    db = open_db(home / "gcpo.db")
    # The run folder moved with the copy; the database says where it was made.
    with db.conn:
        db.execute("UPDATE runs SET out_dir = ?", [str(home / "runs" / run_id)])
    db.close()
    shown = runner.invoke(app, ["inspect", "--run", run_id[:8], "--json"])
    assert shown.exit_code == 0, shown.output
    h = json.loads(shown.stdout)
    assert [s["step"] for s in h["steps"]] == [1, 2] and h["run"]["set_name"] == "arithmetic-l1-24"
    resumed = runner.invoke(app, ["train", "--resume", run_id, "--steps", "3", "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["status"] == "completed" and summary["last_step"] == 3 and summary["checkpoint_step"] == 3
    db = open_db(home / "gcpo.db")
    assert [r[0] for r in db.execute("SELECT step FROM steps WHERE run_id = ? ORDER BY step", [run_id])] == [1, 2, 3]


SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET)\b|\.execute\(|\.query\(|db\[\"")


def test_no_sql_outside_the_store():
    """store/ is the one home for data access: no other module writes SQL or touches tables."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "store" in path.relative_to(PACKAGE).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SQL.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert offenders == []


# ----------------------------------------------------------------------------- a database that goes away
def _wait_for_step(db_path: Path, step: int, proc, timeout: float = 180) -> str:
    """The id of the run once its step `step` is committed (polled read-only)."""
    import sqlite3
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.3)
        try:
            with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as c:
                row = c.execute("SELECT run_id, MAX(step) FROM steps").fetchone()
        except sqlite3.OperationalError:
            continue
        if row and row[1] is not None and row[1] >= step:
            return row[0]
    raise AssertionError(f"no step {step} within {timeout} s")


def test_a_database_deleted_under_a_running_training_stops_it_in_one_line(tmp_path):
    """Issue 27 item 1: with gcpo.db and its WAL removed mid-run, training went on, printed
    `completed`, exited 0, and every record was gone. It must stop, say so, keep its checkpoints."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    db_path = home / "gcpo.db"
    env = {**os.environ, "GCPO_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--steps", "40",
                             "-o", "max_new_tokens=8", "--db", str(db_path), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = _wait_for_step(db_path, 2, proc)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out[-500:], err[-2000:])
    assert "completed" not in out and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-2000:]
    assert "deleted or replaced" in errors[0] and str(db_path) in errors[0]
    assert (home / "runs" / run_id / "checkpoints" / "step-2" / "adapter").is_dir()


def test_a_database_replaced_or_losing_its_wal_refuses_the_next_write(tmp_path):
    """A backup copied over the file, or the WAL removed, is caught by the next write (in process)."""
    import os
    import shutil

    import pytest

    from gcpo_cli.store import write
    from gcpo_cli.store.db import DatabaseGone

    path = tmp_path / "x.db"
    db = open_db(path)
    with write(db):
        db["problem_sets"].insert({"name": "kept", "created_at": "2025-01-01T00:00:00Z"})
    shutil.copy(path, tmp_path / "backup.db")
    os.replace(tmp_path / "backup.db", path)
    with pytest.raises(DatabaseGone, match="deleted or replaced"):
        with write(db):
            db["problem_sets"].insert({"name": "lost", "created_at": "2025-01-01T00:00:00Z"})
    db.close()
    other = open_db(tmp_path / "y.db")
    os.unlink(tmp_path / "y.db-wal")
    with pytest.raises(DatabaseGone):
        with write(other):
            other["problem_sets"].insert({"name": "lost", "created_at": "2025-01-01T00:00:00Z"})
