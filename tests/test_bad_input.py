"""Every environment problem and bad value a user can cause ends in one clear line and a
non-zero exit, with the database unchanged (issue 10, point 6)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gcpo_cli.cli import app

TABLES = ("problems", "problem_sets", "set_problems", "golden_answers", "ingests", "runs", "steps", "rollouts",
          "evaluations", "eval_results")


def state(path: Path) -> dict:
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


@pytest.fixture
def home(gcpo_home, runner, tmp_path):
    """A database with one small set, a folder, a non-database file and a checkpoint-less run."""
    db = gcpo_home / "gcpo.db"
    r = runner.invoke(app, ["ingest", "synthetic:arithmetic", "--set", "s", "--count", "6", "--levels", "1"])
    assert r.exit_code == 0, r.output
    (tmp_path / "folder").mkdir()
    (tmp_path / "notdb.db").write_text("this is not sqlite")
    (tmp_path / "file").write_text("x")
    return db


CASES = {
    "db is a folder": (["sets", "--db", "{tmp}/folder"], "is not a file"),
    "db is not sqlite": (["ingest", "synthetic:arithmetic", "--set", "t", "--db", "{tmp}/notdb.db"],
                         "not a SQLite database"),
    "db is /dev/null": (["sets", "--db", "/dev/null"], "is not a file"),
    "db parent cannot be made": (["ingest", "synthetic:arithmetic", "--set", "t", "--db", "/proc/none/x.db"],
                                 "cannot create the folder"),
    "read command, no database": (["sets", "--db", "{tmp}/typo.db"], "no database at"),
    "problems, no database": (["problems", "--set", "s", "--db", "{tmp}/typo.db"], "no database at"),
    "runs, no database": (["runs", "--db", "{tmp}/typo.db"], "no database at"),
    "unknown set": (["problems", "--set", "nope"], "unknown set 'nope'"),
    "export step 0": (["export", "--run", "zz"], "unknown run 'zz'"),
    "export out is a file": (["export", "--run", "zz", "--out", "{tmp}/file"], "unknown run"),
    "lr nan": (["train", "--recipe", "tiny", "-o", "lr=nan"], "'lr': must be a finite number"),
    "lr inf": (["train", "--recipe", "tiny", "-o", "lr=inf"], "'lr': must be a finite number"),
    "max_grad_norm nan": (["train", "--recipe", "tiny", "-o", "max_grad_norm=nan"], "'max_grad_norm'"),
    "weight_decay negative": (["train", "--recipe", "tiny", "-o", "weight_decay=-1"], "'weight_decay'"),
    "threads negative": (["train", "--recipe", "tiny", "-o", "threads=-1"], "'threads'"),
    "lora dropout 2": (["train", "--recipe", "tiny", "-o", "lora.dropout=2"], "'lora.dropout'"),
    "lora targets nope": (["train", "--recipe", "tiny", "--set", "s", "-o", "lora.target_modules=nope"],
                          "'lora.target_modules'"),
    "seed negative": (["train", "--recipe", "tiny", "-o", "seed=-1"], "'seed'"),
    "seed too large": (["train", "--recipe", "tiny", "-o", "seed=99999999999"], "'seed'"),
    "set named null": (["train", "--recipe", "tiny", "--set", "null"], "unknown set 'null'"),
    "set named empty": (["train", "--recipe", "tiny", "--set", ""], "needs a name"),
    # Issue 27 item 9: a 100,000-character name took 52 s to ingest 2 rows; a newline split its
    # row in `gcpo sets`.
    "set name too long": (["ingest", "synthetic:arithmetic", "--set", "n" * 201],
                          "201 characters long; the most is 200"),
    "set name with a newline": (["ingest", "synthetic:arithmetic", "--set", "a\nb"], "control character U+000A"),
    "set name with an escape": (["ingest", "synthetic:arithmetic", "--set", "a\x1b[2Jb"], "control character U+001B"),
    "train set name with a newline": (["train", "--recipe", "tiny", "--set", "s\nx"], "control character U+000A"),
}
USAGE = {  # refused by the option parser itself (exit 2), before anything runs
    "problems limit 1e20": ["problems", "--set", "s", "--limit", "100000000000000000000"],
    "runs limit 0": ["runs", "--limit", "0"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, home, runner, tmp_path):
    args, says = CASES[name]
    before = state(home)
    r = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    # one error line, the last one (train prints the resolved recipe first), and no traceback
    assert errors == [lines[-1]] and says in errors[0] and "Traceback" not in r.output, r.output
    assert state(home) == before
    assert not (tmp_path / "typo.db").exists()  # a read command never creates a database


@pytest.mark.parametrize("name", sorted(USAGE))
def test_out_of_range_options_are_usage_errors(name, home, runner):
    before = state(home)
    r = runner.invoke(app, USAGE[name])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert state(home) == before


def test_json_never_holds_nan(home, runner):
    import json

    r = runner.invoke(app, ["eval", "--model", "golden", "--set", "s", "--json"])
    assert r.exit_code == 0
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    json.loads(r.stdout)  # strict JSON


@pytest.mark.parametrize("args", [["sets"], ["ingest", "synthetic:arithmetic", "--set", "t"]])
def test_gcpo_home_that_is_a_file_is_one_line(args, runner, tmp_path):
    home = tmp_path / "home-file"
    home.write_text("x")
    r = runner.invoke(app, args, env={"GCPO_HOME": str(home)})
    assert r.exit_code == 1 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert home.read_text() == "x"
