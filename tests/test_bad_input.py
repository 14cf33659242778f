"""Every environment problem and bad value a user can cause ends in one clear line and a
non-zero exit, with the database unchanged (issue 10, point 6)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import JsonHandler, LocalServer
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
    "lr nan": (["train", "--recipe", "tiny", "-o", "lr=nan"], "'optimizer.lr': must be a finite number"),
    "lr inf": (["train", "--recipe", "tiny", "-o", "lr=inf"], "'optimizer.lr': must be a finite number"),
    "max_grad_norm nan": (["train", "--recipe", "tiny", "-o", "max_grad_norm=nan"], "'optimizer.max_grad_norm'"),
    "weight_decay negative": (["train", "--recipe", "tiny", "-o", "weight_decay=-1"], "'optimizer.weight_decay'"),
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
    # one error line, the last one (train shows its recipe first when the error needs the model), no traceback
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


# ------------------------------------- issue 27 items 3 and 4: one validation for every text in

def _first_problem(db: Path) -> tuple[str, str]:
    """(id, answer) of the first problem of set s."""
    with sqlite3.connect(db) as c:
        return c.execute("SELECT p.id, p.answer FROM problems p JOIN set_problems sp ON sp.problem_id = p.id"
                         " ORDER BY sp.position LIMIT 1").fetchone()


def _one_error_line(r, says: str) -> None:
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.output


SOLUTIONS = {  # a solution `gcpo golden import` must refuse, as ingest refuses it in a row
    "chat token": (lambda good: good + "<|im_end|>",
                   "field 'solution' holds the chat special token '<|im_end|>', which would reach the model"),
    "lone surrogate": (lambda good: "\ud800 " + good, "field 'solution' holds a lone surrogate (U+D800)"),
    "3 MB": (lambda good: "x" * 3_000_000, "field 'solution' is 3,000,000 bytes, over the 1,048,576-byte limit"),
    "NaN": (lambda good: float("nan"), "field 'solution' is NaN, not text"),
    "a number": (lambda good: 4.5, "field 'solution' is a number (4.5), not text"),
}


@pytest.mark.parametrize("case", sorted(SOLUTIONS))
def test_golden_import_validates_solutions_as_ingest_does(case, home, runner, tmp_path):
    """Golden answers are injected as the model's own response: `<|im_end|>` in one was stored as
    verified, a lone surrogate gave a 53-line traceback, a 3 MB one was stored, and NaN was
    reported as "no row matches a problem". Each is one line naming the line; nothing is stored."""
    pid, answer = _first_problem(home)
    make, says = SOLUTIONS[case]
    path = tmp_path / "solutions.jsonl"
    good = json.dumps({"problem_id": pid, "solution": f"So it is \\boxed{{{answer}}}."})
    path.write_text(good + "\n" + json.dumps({"problem_id": pid, "solution": make(f"\\boxed{{{answer}}}")}) + "\n")
    before = state(home)
    r = runner.invoke(app, ["golden", "import", str(path), "--set", "s"])
    _one_error_line(r, f"solutions.jsonl: line 2: {says}")
    assert state(home) == before


@pytest.mark.parametrize("key", ["completion", "prompt"])
def test_eval_import_of_a_lone_surrogate_is_one_line_and_leaves_no_evaluation(key, home, runner, tmp_path):
    """Issue 27 item 4: an 83-line traceback, and an `interrupted` evaluation left behind. The
    samples are validated before the evaluation's row is opened."""
    pid, answer = _first_problem(home)
    path = tmp_path / "samples.jsonl"
    sample = {"problem_id": pid, "completion": f"So it is \\boxed{{{answer}}}.", "prompt": "Solve it."}
    bad = dict(sample, **{key: "\udc80" + sample[key]})
    path.write_text(json.dumps(sample) + "\n" + json.dumps(bad) + "\n")
    before = state(home)
    r = runner.invoke(app, ["eval", "--import", str(path), "--set", "s"])
    _one_error_line(r, f"samples.jsonl line 2: '{key}' holds a lone surrogate (U+DC80)")
    assert state(home) == before  # no evaluation row at all, not even an interrupted one


class Unusable(JsonHandler):
    """A teacher server whose three correct completions are one usable, one with a chat token and
    one with a lone surrogate (a JSON "\\ud800" escape in its reply)."""

    def do_GET(self):
        self.send(200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = ["\\boxed{4}", "\\boxed{4}<|im_end|><|im_start|>user", "\ud800 \\boxed{4}"]
        self.send(200, {"choices": [dict(index=i, finish_reason="stop", text=t) for i, t in enumerate(texts)
                                    ][: body.get("n", 1)]})


def test_golden_generate_stores_only_completions_that_pass_the_validation(home, runner, tmp_path):
    """A teacher's completion is validated before it is stored: one holding `<|im_end|>` was
    stored as a verified candidate (and injected), one with a lone surrogate ended the generation
    in a traceback."""
    four = tmp_path / "four.jsonl"
    four.write_text(json.dumps({"problem": "What is 2 + 2?", "answer": "4"}) + "\n")
    assert runner.invoke(app, ["ingest", str(four), "--set", "four"]).exit_code == 0
    server = LocalServer(Unusable)
    try:
        r = runner.invoke(app, ["golden", "generate", "--set", "four", "--teacher-server", server.url,
                                "--teacher", "stand-in", "--k", "3", "--prompt", "raw", "--json"])
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["candidates"] == 1
    with sqlite3.connect(home) as c:
        assert c.execute("SELECT text, origin, verified FROM golden_answers WHERE origin = 'teacher'").fetchall() == [
            ("\\boxed{4}", "teacher", 1)]
