"""`gcpo inspect` (issue 5): histories built by writing rows straight into the schema.

The fixture database tells a known story, so every assertion is about a fact a user reads:
  a1b2c3d4 (37 * 8 = 296, verified golden answer), run A: steps 1-2 all wrong with the golden
    answer injected, solved at step 3 (graduated), 4 of 4 at step 4, all wrong again at step 5
    (regression, golden injected), 1 of 4 at step 6. Wrong answers: 286 most often, then 306.
    As the trainer records it, an injected golden answer is one extra row (sample index G) and
    the wrong rollout it displaced stays recorded (advantage NULL): G=4 groups of 5 rows.
    Run B (later): solved from its first appearance. Evaluation of A@6: 2 of 4 (partial).
  a1b2ffff (2 + 2): always 4 of 4 in run A; evaluation 4 of 4 (solved).
  c0ffee00 (a word problem, no golden answer): all wrong at every step, never solved, nothing to
    inject; evaluation 0 of 4 (failed).
  d00d0000: in the set, never sampled.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import threading
import time

import pytest

from gcpo_cli import cmd_inspect, store
from gcpo_cli.cli import app
from gcpo_cli.store import open_db

RUN_A = "01runaaaa0000001"
RUN_B = "01runbbbb0000002"
EVAL = "01evalcccc000003"
P1, P2, P3, P4 = "a1b2c3d4", "a1b2ffff", "c0ffee00", "d00d0000"
G = 4

# run A, problem P1: per step the sampled answers (when all are wrong, the golden answer is
# added as row G and the last one is displaced from the loss; the table lists what the model produced).
P1_STEPS = {
    1: ["286", "286", "306", "286"],
    2: ["286", "306", "286", "12"],
    3: ["296", "286", "296", "306"],
    4: ["296", "296", "296", "296"],
    5: ["286", "286", "286", "306"],
    6: ["296", "286", "286", "306"],
}


def _group(run, step, pid, answers, truth, golden_text=None):
    """A group as train.go_gold records it: G sampled rows, and when all are wrong and a golden
    answer exists, the golden answer as row G with the last sampled row displaced (advantage NULL)."""
    rows = []
    inject = bool(golden_text) and all(a != truth for a in answers)
    for i, a in enumerate(answers):
        rows.append({
            "run_id": run, "step": step, "problem_id": pid, "sample_index": i,
            "completion": f"Let me compute. I get {a}.\nThe answer is \\boxed{{{a}}}.",
            "extracted_answer": a, "reward": float(a == truth), "correct": int(a == truth),
            "completion_tokens": 20, "truncated": 0, "is_golden": 0,
            "advantage": None if inject and i == len(answers) - 1 else 0.0, "seq_ratio": 1.0,
        })
    if inject:
        rows.append({"run_id": run, "step": step, "problem_id": pid, "sample_index": len(answers),
                     "completion": golden_text, "extracted_answer": truth, "reward": 1.0, "correct": 1,
                     "completion_tokens": 20, "truncated": 0, "is_golden": 1, "advantage": 1.0,
                     "seq_ratio": 1.0})
    return rows


def build(db) -> None:
    now = "2025-01-01T00:00:00Z"
    db["problems"].insert_all([
        {"id": P1, "text": "What is 37 * 8?", "answer": "296", "metadata_json": "{}", "created_at": now},
        {"id": P2, "text": "What is 2 + 2?", "answer": "4", "metadata_json": "{}", "created_at": now},
        {"id": P3, "text": "A train travels 60 miles in 1.5 hours. What is its speed in mph?",
         "answer": "40", "metadata_json": "{}", "created_at": now},
        {"id": P4, "text": "What is 9 - 3?", "answer": "6", "metadata_json": "{}", "created_at": now},
    ])
    db["problem_sets"].insert({"id": 1, "name": "demo", "description": "a demo set", "created_at": now})
    db["set_problems"].insert_all([{"set_id": 1, "problem_id": p, "position": i, "source_id": f"demo-{i}"}
                                   for i, p in enumerate([P1, P2, P3, P4])])
    gold = "8 * 37 = 8 * 30 + 8 * 7 = 240 + 56 = 296. The answer is \\boxed{296}."
    db["golden_answers"].insert({"id": "ga1", "problem_id": P1, "text": gold, "final_answer": "296",
                                 "source_file": "human.jsonl", "origin": "dataset", "verified": 1,
                                 "created_at": now})
    for rid, created, algo in ((RUN_A, "2025-01-01T00:00:00Z", "gcpo"),
                               (RUN_B, "2025-01-02T00:00:00Z", "grpo")):
        db["runs"].insert({"id": rid, "recipe": "tiny", "recipe_json": json.dumps(
            {"algorithm": algo, "group_size": G, "optim": {"lr": 1e-5}}), "model": "tiny-model",
            "algorithm": algo, "set_name": "demo", "seed": 1, "status": "finished", "steps_planned": 6,
            "last_step": 6, "created_at": created, "updated_at": created})
    rows = []
    for step, answers in P1_STEPS.items():
        rows += _group(RUN_A, step, P1, answers, "296", gold)
        rows += _group(RUN_A, step, P2, ["4"] * G, "4")
        rows += _group(RUN_A, step, P3, ["90", "90", "45", "90"], "40")  # no golden answer
    for step in (1, 2):
        rows += _group(RUN_B, step, P1, ["296", "296", "296", "286"], "296", gold)
    db["rollouts"].insert_all(rows)
    steps = []
    for s in P1_STEPS:  # as store.record_step writes them: every metric in metrics_json, most in a column
        metrics = {"reward_mean": 0.3 + s / 20, "all_wrong_frac": 0.5, "golden_injections": 1,
                   "completion_tokens_mean": 20.0 + s, "tokens_per_s": 100.0 * s, "clip_frac": 0.01 * s,
                   "ratio_max": 1.0 + s / 100, "optimizer_updates": 1}
        steps.append({"run_id": RUN_A, "step": s, **metrics, "created_at": now, "metrics_json": json.dumps(
            {**metrics, "sampler_logp_abs_diff": 0.001 * s})})  # this one has no column
    db["steps"].insert_all(steps)
    db["evaluations"].insert({"id": EVAL, "model": "tiny-model", "run_id": RUN_A, "run_step": 6,
                              "set_name": "demo", "params_json": "{}", "metrics_json": '{"avg@4": 0.5}',
                              "status": "finished", "created_at": now, "updated_at": now})
    ev = []
    for pid, answers, truth in ((P1, ["296", "286", "296", "286"], "296"), (P2, ["4"] * 4, "4"),
                                (P3, ["90"] * 4, "40")):
        for i, a in enumerate(answers):
            ev.append({"evaluation_id": EVAL, "problem_id": pid, "sample_index": i, "completion": f"= {a}",
                       "extracted_answer": a, "correct": int(a == truth), "completion_tokens": 5, "truncated": 0,
                       "created_at": now})
    db["eval_results"].insert_all(ev)
    # evaluation.evaluate_golden's check of the grader on the golden answers themselves
    db["evaluations"].insert({"id": "01goldcheck00004", "model": "golden", "set_name": "demo",
                              "params_json": '{"golden": true}', "status": "completed", "created_at": now})
    db["eval_results"].insert_all([
        {"evaluation_id": "01goldcheck00004", "problem_id": P1, "sample_index": 0, "completion": gold,
         "extracted_answer": "296", "correct": 1, "created_at": now},
        {"evaluation_id": "01goldcheck00004", "problem_id": P3, "sample_index": 0, "completion": "? 41",
         "extracted_answer": "41", "correct": 0, "created_at": now}])


@pytest.fixture
def story(db):
    build(db)
    return db


def inspect(runner, *args, columns=80):
    return runner.invoke(app, ["inspect", *args], env={"COLUMNS": str(columns), "NO_COLOR": "1"})


def ok(result):
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_fits(text, width=80):
    wide = [line for line in text.splitlines() if len(line) > width]
    assert not wide, f"{len(wide)} lines wider than {width}: {wide[:3]}"


def one_line_error(result):
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ----------------------------------------------------------------------------- problem view
def test_problem_view_tells_the_story(story, runner):
    out = ok(inspect(runner, "--problem", P1))
    assert "What is 37 * 8?" in out and "answer: 296" in out
    assert "verified" in out and "human" in out  # golden answer and where it came from
    assert "golden injected at steps 1-2, 5" in out
    assert "graduated at step 3" in out
    assert "regressed at steps 5" in out
    assert "solved from its first appearance (step 1)" in out  # run B
    # k of G sparkline for run A: 0,0,2,4,0,1 of 4 -> ·, ·, half, full, ·, quarter; events line
    assert "··▄█·▂" in out
    assert "6 appearances, steps 1-6, G=4" in out  # the golden row is no sample (issue 26: G=5)
    assert "last 1 of 4" in out
    assert re.search(r"events\s+GG\^ x", out)
    # wrong answers over training (286 x13, 306 x5, 12 x1: displaced rows are the model's answers
    # too) and evaluation (286 x2)
    counts = re.findall(r"^\s*(\d+)\s+(\S+)\s*$", out.split("Most common wrong answers")[1], re.M)[:3]
    assert counts == [("15", "286"), ("5", "306"), ("1", "12")]
    assert re.search(rf"{EVAL[:12]}.*2/4\s+partial", out)
    assert "A wrong completion" in out and "answer 286" in out
    assert f"Latest correct completion: run {RUN_B} step 2" in out
    assert_fits(out)


def test_problem_json_has_the_whole_history(story, runner):
    h = json.loads(ok(inspect(runner, "--problem", P1, "--json")))
    assert set(h) >= {"problem", "golden_answers", "runs", "evaluations", "wrong_answers",
                      "wrong_example", "latest_correct"}
    assert h["problem"]["sets"] == ["demo"]
    assert h["golden_answers"][0]["verified"] is True
    a, b = h["runs"]
    assert a["run_id"] == RUN_A and b["run_id"] == RUN_B
    assert [(s["step"], s["k"], s["n"], s["golden"]) for s in a["steps"]] == [
        (1, 0, 4, True), (2, 0, 4, True), (3, 2, 4, False),
        (4, 4, 4, False), (5, 0, 4, True), (6, 1, 4, False)]
    assert a["golden_steps"] == [1, 2, 5]
    assert a["graduated_step"] == 3 and a["first_solved_step"] == 3
    assert a["regressed_steps"] == [5]
    assert a["pass_rate"] == round(7 / 24, 4)  # golden rollouts are not the model's samples
    assert b["graduated_step"] is None and b["first_solved_step"] == 1
    assert h["wrong_answers"][:2] == [{"answer": "286", "count": 15}, {"answer": "306", "count": 5}]
    model_evals = [e for e in h["evaluations"] if not e["golden_check"]]
    assert model_evals == [{**model_evals[0], "k": 2, "n": 4, "verdict": "partial"}]
    assert [e["verdict"] for e in h["evaluations"] if e["golden_check"]] == ["solved"]
    assert h["latest_correct"]["run_id"] == RUN_B and h["latest_correct"]["step"] == 2
    assert h["wrong_example"]["extracted_answer"] == "286"
    assert "completions" not in h


def test_problem_limited_to_one_run_and_full(story, runner):
    h = json.loads(ok(inspect(runner, "--problem", P1, "--run", "01runa", "--json", "--full")))
    assert [r["run_id"] for r in h["runs"]] == [RUN_A]
    assert len(h["completions"]) == 6 * G + 3 and sum(c["is_golden"] for c in h["completions"]) == 3
    assert len(h["eval_completions"]) == 4
    out = ok(inspect(runner, "--problem", P1, "--run", RUN_A, "--full"))
    assert out.count("sample ") >= 6 * G + 3 + 4  # every completion has its own header
    assert out.count(": GOLDEN, answer 296") == 3
    assert_fits(out)


def test_never_solved_problem_without_golden(story, runner):
    out = ok(inspect(runner, "--problem", P3))
    assert "never solved" in out and "nothing to inject" in out
    assert re.search(r"0/4\s+failed", out)
    assert "Latest correct completion: none" in out
    # the golden-answer check is a grader check: shown, but its "41" is no model's wrong answer
    assert re.search(r"\(golden check\)\s+-\s+demo\s+0/1\s+failed", out)
    h = json.loads(ok(inspect(runner, "--problem", P3, "--json")))
    assert [a["answer"] for a in h["wrong_answers"]] == ["90", "45"]


def test_problem_resolution_prefix_source_id_and_search(story, runner):
    def pid(ref):
        return json.loads(ok(inspect(runner, "--problem", ref, "--json")))["problem"]["id"]

    assert pid("a1b2c") == P1  # unambiguous prefix
    assert pid("demo-2") == P3  # the id the source file gave it
    assert pid("37 * 8") == P1  # full text; FTS syntax characters are harmless
    assert pid("train miles speed") == P3


@pytest.mark.parametrize("args, words", [
    (["--problem", "a1b2"], ["ambiguous problem", P1, P2]),
    (["--problem", "What is"], ["ambiguous problem", P1]),
    (["--problem", "zebra"], ["unknown problem 'zebra'"]),
    (["--run", "01run"], ["ambiguous run", RUN_A, RUN_B]),
    (["--run", "nope"], ["unknown run 'nope'; recent: ", RUN_B, RUN_A]),
    (["--problem", "a very long search phrase that matches nothing at all"], ["unknown problem 'a very"]),
    (["--set", "nope"], ["unknown set 'nope'", "demo"]),
    (["--problem", P1, "--set", "demo"], ["not both"]),
    (["--json"], ["--json needs a target"]),
])
def test_bad_targets_fail_in_one_line(story, runner, args, words):
    line = one_line_error(inspect(runner, *args))
    assert line.startswith("error: ")
    assert all(w in line for w in words), line
    assert len(line) <= 80


def test_missing_database_is_an_error_and_creates_nothing(runner, tmp_path):
    r = inspect(runner, "--problem", "x", "--db", str(tmp_path / "nope.db"))
    assert r.exit_code == 1 and r.stderr.startswith("error: no database at ")
    assert not (tmp_path / "nope.db").exists()


def test_no_target_without_terminal_says_what_to_pass(story, runner):
    line = one_line_error(inspect(runner))
    assert "--problem" in line and "--run" in line and "--set" in line


# ----------------------------------------------------------------------------- run and set views
def test_run_view_lists_what_the_run_learned(story, runner):
    out = ok(inspect(runner, "--run", "01runa"))
    assert RUN_A in out and "group_size=4" in out and "optim.lr=1e-05" in out
    for label in ("reward mean", "all-wrong share", "golden-answer rate", "completion length", "tokens/s"):
        assert re.search(rf"{label}\s+[▁▂▃▄▅▆▇█]{{6}}", out), label
    # the heading wraps between its parts at 80 columns
    assert re.search(r"3 seen · 1 solved from the start · 1 graduated · 1 never solved"
                     r"( ·|\n)\s*1 regressed", out)
    assert re.search(rf"{P1}\s+3\s+3\s+6", out)  # graduated at 3, 3 golden injections, 6 seen
    assert re.search(rf"{P3}\s+6\s+0", out)  # never solved: 6 appearances, nothing injected
    assert re.search(rf"{P1}\s+3\s+5\s+1/4", out)  # regressed: solved 3, all wrong at 5, last 1/4
    assert re.search(rf"{EVAL}\s+6\s+demo\s+6/12\s+50%", out)
    assert_fits(out)


def test_run_json(story, runner):
    h = json.loads(ok(inspect(runner, "--run", RUN_A, "--json")))
    assert h["run"]["recipe_json"]["group_size"] == G
    assert [s["step"] for s in h["steps"]] == list(range(1, 7))
    assert h["steps"][0]["golden_rate"] == round(1 / 3, 4) and h["steps"][2]["golden_rate"] == 0
    assert h["steps"][0]["reward_mean"] == pytest.approx(0.35)  # the trainer's figure wins
    # every metric a step recorded at one level, whether or not it has a column of its own
    assert h["steps"][1]["sampler_logp_abs_diff"] == pytest.approx(0.002)
    assert not any("metrics_json" in s for s in h["steps"])
    ps = h["problems"]
    assert ps["seen"] == 3 and ps["solved_from_start"] == [P2]
    assert [(a["problem_id"], a["graduated_step"]) for a in ps["graduated"]] == [(P1, 3)]
    assert [a["problem_id"] for a in ps["never_solved"]] == [P3]
    assert [(a["problem_id"], a["regressed_steps"]) for a in ps["regressed"]] == [(P1, [5])]
    assert h["evaluations"][0]["k"] == 6 and h["evaluations"][0]["n"] == 12


def test_set_view_difficulty_and_golden_needs(story, runner):
    h = json.loads(ok(inspect(runner, "--set", "demo", "--json")))
    assert h["set"]["problems"] == 4 and h["measured"] == 3 and h["unseen"] == 1
    assert h["golden_coverage"] == {"verified": 1, "unverified_only": 0, "none": 3}
    by = {(d["kind"], d["id"]): d for d in h["distribution"]}
    assert set(by) == {("run", RUN_A), ("run", RUN_B), ("evaluation", EVAL), ("all runs", None)}
    assert by[("run", RUN_A)]["buckets"] == {"0%": 1, "<25%": 0, "<50%": 1, "<75%": 0, "<100%": 0, "100%": 1}
    assert by[("run", RUN_B)]["buckets"]["<100%"] == 1  # 6 of 8
    assert by[("evaluation", EVAL)]["buckets"] == {
        "0%": 1, "<25%": 0, "<50%": 0, "<75%": 1, "<100%": 0, "100%": 1}
    # c0ffee00 came back all wrong 6 times with nothing to inject; a1b2c3d4 has a verified GA.
    assert [(a["problem_id"], a["all_wrong"], a["wasted"], a["golden"]) for a in h["need_golden"]] == [
        (P3, 6, 6, "none")]
    out = ok(inspect(runner, "--set", "dem"))
    assert "4 problems · 3 measured · 1 never sampled" in out
    assert re.search(rf"{P3}\s+0%\s+0%\s+6\s+6\s+none", out)
    assert re.search(r"all runs\s+3\s+1\s+0\s+1", out)
    assert_fits(out)


def test_set_view_limited_to_one_run(story, runner):
    h = json.loads(ok(inspect(runner, "--set", "demo", "--run", RUN_B, "--json")))
    assert [d["kind"] for d in h["distribution"]] == ["run", "all runs"] and h["measured"] == 1


# ----------------------------------------------------------------------------- readability
@pytest.mark.parametrize("args", [["--problem", P1, "--full"], ["--run", RUN_A, "--full"], ["--set", "demo"]])
def test_fits_narrow_terminals_without_colour(story, runner, args):
    for cols in (80, 64):
        r = runner.invoke(app, ["inspect", *args], env={"COLUMNS": str(cols), "NO_COLOR": "1",
                                                        "FORCE_COLOR": "1"})
        out = ok(r)
        assert not re.search(r"\x1b\[[0-9;]*(3[0-7]|38;|9[0-7])[;m]", out), "colour codes despite NO_COLOR"
        assert_fits(re.sub(r"\x1b\[[0-9;]*m", "", out), cols)


def test_legend_explains_the_marks(story, runner):
    out = ok(inspect(runner, "--problem", P1))
    assert "G golden injected, ^ graduated, x regressed" in out and "· none correct" in out


# ----------------------------------------------------------------------------- plot
def test_plot_writes_png_or_says_how_to_install(story, runner, tmp_path):
    target = tmp_path / "p.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        line = one_line_error(inspect(runner, "--problem", P1, "--plot", str(target)))
        assert "pip install" in line and "matplotlib" in line and not target.exists()
        return
    ok(inspect(runner, "--problem", P1, "--plot", str(target)))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_png = tmp_path / "r.png"
    r = inspect(runner, "--run", RUN_A, "--plot", str(run_png), "--json")
    assert json.loads(ok(r))["run"]["id"] == RUN_A  # stdout stays pure JSON
    assert run_png.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_names_the_extra(story, runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    line = one_line_error(inspect(runner, "--run", RUN_A, "--plot", str(tmp_path / "r.png")))
    assert "pip install 'gcpo-cli[plot]'" in line and "pip install matplotlib" in line
    assert not list(tmp_path.glob("*r.png*"))


def test_plot_needs_a_curve_target(story, runner, tmp_path):
    line = one_line_error(inspect(runner, "--set", "demo", "--plot", str(tmp_path / "s.png")))
    assert "--problem or --run" in line


# ----------------------------------------------------------------------------- picker
def test_picker_walks_a_runs_problems(story, runner, monkeypatch):
    monkeypatch.setattr(cmd_inspect, "_interactive", lambda: True)
    # pick run A (listed second: newest first), then next, next, previous, #3, an id prefix, quit
    r = runner.invoke(app, ["inspect"], input="2\nn\nn\np\n3\nc0ff\nq\n", env={"COLUMNS": "80"})
    out = ok(r)
    assert "Runs, newest first" in out and RUN_B in out
    shown = re.findall(r"problem (\d) of 3 · ([^─]+?)\s*─", out)
    assert shown == [("1", "regressed x1"), ("2", "never solved"), ("1", "regressed x1"),
                     ("3", "solved"), ("2", "never solved")]
    assert "graduated at step 3" in out and "What is 2 + 2?" in out
    # Typed answers are not echoed here, so output follows the prompt on its line: drop prompts.
    assert_fits(re.sub(r"^(Run|Problem) \([^)]*\): ", "", out, flags=re.M))


def test_picker_survives_bad_input_and_eof(story, runner, monkeypatch):
    monkeypatch.setattr(cmd_inspect, "_interactive", lambda: True)
    out = ok(runner.invoke(app, ["inspect"], input="zzz\n1\nnot-a-problem\nr\n", env={"COLUMNS": "80"}))
    assert "error: unknown run 'zzz'" in out and "error: unknown problem 'not-a-problem'" in out


# ----------------------------------------------------------------------------- concurrency
def test_reads_while_another_connection_writes(story, runner, gcpo_home):
    path = gcpo_home / "gcpo.db"
    writer = sqlite3.connect(path, isolation_level=None, timeout=1)
    writer.execute("BEGIN IMMEDIATE")  # a trainer in the middle of writing step 7
    writer.executemany(
        "INSERT INTO rollouts (run_id, step, problem_id, sample_index, correct, is_golden)"
        " VALUES (?,?,?,?,?,?)",
        [(RUN_A, 7, P1, i, 1, 0) for i in range(G)])
    result: dict = {}

    def read():
        t0 = time.perf_counter()
        result["r"] = inspect(runner, "--problem", P1, "--run", RUN_A, "--json")
        result["s"] = time.perf_counter() - t0

    t = threading.Thread(target=read)
    t.start()
    t.join(20)
    assert not t.is_alive(), "inspect blocked behind the writer"
    assert result["s"] < 5
    h = json.loads(ok(result["r"]))
    assert h["runs"][0]["last_step"] == 6  # the uncommitted step is not visible
    # And a reader in the middle of a view never blocks the writer's commit (timeout=1 above).
    from gcpo_cli.store import history

    reader = open_db(path)
    with store.snapshot(reader):
        before = history.problem_history(reader, P1, RUN_A)
        writer.execute("COMMIT")
        again = history.problem_history(reader, P1, RUN_A)  # one snapshot for the whole view
    reader.close()
    writer.close()
    assert before["runs"][0]["last_step"] == again["runs"][0]["last_step"] == 6
    h = json.loads(ok(inspect(runner, "--problem", P1, "--run", RUN_A, "--json")))
    assert h["runs"][0]["last_step"] == 7


def test_migration_adds_covering_indexes(tmp_path):
    db = open_db(tmp_path / "x.db")
    cols = {tuple(i.columns) for i in db["rollouts"].indexes}
    assert ("problem_id", "run_id", "step", "is_golden", "correct") in cols
    assert ("run_id", "problem_id", "step", "is_golden", "correct") in cols
    assert ("source_id",) in {tuple(i.columns) for i in db["set_problems"].indexes}
    plan = " ".join(r[3] for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT run_id, step, count(*), sum(correct) FROM rollouts"
        " WHERE problem_id = ? GROUP BY run_id, step", ["x"]))
    assert "COVERING INDEX" in plan and "TEMP B-TREE" not in plan


def test_run_started_but_nothing_written_yet(story, runner):
    story["runs"].insert({"id": "01fresh000000000", "algorithm": "gcpo", "status": "running",
                          "recipe_json": "not json", "created_at": "2025-03-01T00:00:00Z"})
    out = ok(inspect(runner, "--run", "01fresh"))
    assert "Per step: nothing recorded yet" in out and "0 seen" in out
    h = json.loads(ok(inspect(runner, "--run", "01fresh", "--json")))
    assert h["steps"] == [] and h["problems"]["graduated"] == [] and h["run"]["recipe_json"] == "not json"


def test_many_candidates_still_fit_one_line(story, runner):
    story["problems"].insert_all([{"id": f"ee{i:06d}", "text": f"Count the eggs in basket {i}.",
                                   "answer": "1"} for i in range(30)])
    for ref in ("ee", "eggs basket"):
        line = one_line_error(inspect(runner, "--problem", ref))
        assert line.startswith(f"error: ambiguous problem '{ref}': 20+ match: ee0000")
        assert re.search(r"\+\d+ more$", line) and len(line) <= 80


def test_arc_and_sparkline_helpers():
    from gcpo_cli.store.history import arc
    from gcpo_cli.render import pass_sparkline, sparkline, step_list

    # steps may start at 0; a problem solved at its first appearance never "graduates"
    a = arc([(0, 0, 4, 1), (1, 2, 4, 0), (2, 0, 4, 0), (3, 4, 4, 0)])
    assert (a["graduated_step"], a["golden_steps"], a["regressed_steps"]) == (1, [0], [2])
    b = arc([(0, 1, 4, 0), (5, 0, 4, 1)])
    assert (b["graduated_step"], b["first_solved_step"], b["regressed_steps"]) == (None, 0, [5])
    assert step_list([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert step_list(list(range(0, 40, 2)), 3) == "0, 2, 4 (+17 more)"
    # 1,000 appearances squeezed into 10 columns: every column is an average, none is lost
    assert len(pass_sparkline([0] * 500 + [8] * 500, [8] * 1000, 10)) == 10
    assert pass_sparkline([0] * 500 + [8] * 500, [8] * 1000, 10) == "·····█████"
    assert sparkline([1, 2, 3, None, 5], 5) == "▁▃▅ █"  # min..max onto 8 blocks; gaps blank


# ----------------------------------------------------------------------------- issue 26 section 5
def test_a_run_whose_process_died_shows_died_and_a_live_one_running(story, runner, gcpo_home):
    """A run marked running whose lock no process holds died (kill -9): inspect says so in the run
    view, the problem view and the picker, as gcpo runs does; one that is held says running."""
    from gcpo_cli import checkpoints

    dead, live = gcpo_home / "runs" / RUN_A, gcpo_home / "runs" / RUN_B
    dead.mkdir(parents=True)
    (dead / "run.lock").write_text('{"pid": 999999}')  # left behind by a killed process
    with story.conn:
        story.execute("UPDATE runs SET status = 'running', out_dir = ? WHERE id = ?", [str(dead), RUN_A])
        story.execute("UPDATE runs SET status = 'running', out_dir = ? WHERE id = ?", [str(live), RUN_B])
    lock = checkpoints.lock(live, RUN_B)  # this process trains run B
    try:
        assert json.loads(ok(inspect(runner, "--run", RUN_A, "--json")))["run"]["status"] == "died"
        assert json.loads(ok(inspect(runner, "--run", RUN_B, "--json")))["run"]["status"] == "running"
        assert f"Run {RUN_A}  gcpo · died · step 6 of 6" in ok(inspect(runner, "--run", RUN_A))
        runs = json.loads(ok(inspect(runner, "--problem", P1, "--json")))["runs"]
        assert [(r["run_id"], r["status"]) for r in runs] == [(RUN_A, "died"), (RUN_B, "running")]
        listed = ok(inspect(runner, "--problem", P1))
        assert f"run {RUN_A}  gcpo · died ·" in listed and f"run {RUN_B}  grpo · running ·" in listed
        from gcpo_cli import cmd_inspect as ci

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ci, "_interactive", lambda: True)
            picker = ok(runner.invoke(app, ["inspect"], input="q\n", env={"COLUMNS": "80"}))
        assert re.search(rf"2\s+{RUN_A}\s+gcpo\s+6/6\s+died", picker), picker
        assert re.search(rf"1\s+{RUN_B}\s+grpo\s+6/6\s+running", picker), picker
    finally:
        lock.close()
    assert json.loads(ok(inspect(runner, "--run", RUN_B, "--json")))["run"]["status"] == "died"


def _svg(runner, tmp_path, name, *args):
    """`inspect ... --plot NAME.svg` with text kept as text, so a test can read the chart's words."""
    import matplotlib

    path = tmp_path / f"{name}.svg"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(matplotlib.rcParams, "svg.fonttype", "none")
        ok(inspect(runner, *args, "--plot", str(path)))
    return path.read_text()


def test_plot_run_panels_read_metrics_the_terminal_shows(story, runner, tmp_path):
    """sampler |Δ log p| lives in metrics_json only: the terminal showed it, the chart said no data."""
    pytest.importorskip("matplotlib")
    out = ok(inspect(runner, "--run", RUN_A))
    assert re.search(r"sampler \|Δ log p\|\s+[▁▂▃▄▅▆▇█]{6}\s+0\.001 -> 0\.006", out), out
    svg = _svg(runner, tmp_path, "run", "--run", RUN_A)
    assert "sampler |Δ log p|" in svg and "no data" not in svg


def test_plot_of_a_problem_seen_once_has_whole_step_ticks(story, runner, tmp_path):
    """One appearance at step 3 gave ticks 2.85, 2.90 ... 3.15; steps are whole numbers."""
    pytest.importorskip("matplotlib")
    story["rollouts"].insert_all(_group(RUN_B, 3, P4, ["6", "5", "6", "6"], "6"))
    svg = _svg(runner, tmp_path, "once", "--problem", P4)
    ticks = re.findall(r'<g id="xtick_\d+">.*?<text[^>]*>([^<]*)</text>', svg, re.S)
    assert ticks and all(t.strip().lstrip("\u2212-").isdigit() for t in ticks), ticks
    assert "3" in ticks


def test_a_problem_given_by_its_exact_text_wins_over_other_matches(story, runner):
    """Issue 26: `--problem "What is 9 + 3?"` said ambiguous (20+ full-text matches)."""
    story["problems"].insert_all([{"id": f"ab{i:06d}", "text": f"What is 9 + 3 + {i}?", "answer": str(12 + i)}
                                  for i in range(25)] + [{"id": "fe000000", "text": "What is 9 + 3?", "answer": "12"}])
    for ref in ("What is 9 + 3?", "  What is 9 + 3?\n"):
        assert json.loads(ok(inspect(runner, "--problem", ref, "--json")))["problem"]["id"] == "fe000000"
    line = one_line_error(inspect(runner, "--problem", "What is 9 + 3"))  # words only: still ambiguous
    assert line.startswith("error: ambiguous problem")


# ----------------------------------------------------------------------------- help
COMMANDS = [["ingest"], ["sets"], ["problems"], ["inspect"], ["train"], ["runs"], ["export"], ["eval"],
            ["evals"], ["golden"], *[["golden", c] for c in ("generate", "import", "list", "show", "report")], []]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gcpo")
def test_help_shows_no_type_placeholders_for_flags(runner, command):
    """Typer 0.29 labels every option with its Python type: `--json <bool>`, `--run <str>`."""
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    assert not re.findall(r"<(bool|str|int|float|path)[^>]*>", r.output), r.output
    assert not re.search(r"│ +(\*  )?--\S+ +(-\w +)?(file|dir|path) ", r.output), r.output  # FILE, DIR, PATH
    assert re.search(r"--help\s+Show this message", r.output)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gcpo")
def test_help_paragraphs_fill_80_columns(runner, command):
    """A docstring wrapped by hand at 100 columns reflowed at 80 into long and short lines in turn:
    each prose line of a paragraph is as full as the next word allows."""
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
    lines = [line.rstrip() for line in r.output.split("\n╭")[0].splitlines()]
    for line, after in zip(lines, lines[1:]):
        if re.match(r" \S", line) and re.match(r" \S", after) and not line.startswith(" Usage:"):
            assert len(line) + len(after.split()[0]) >= 79, f"short line: {line!r} before {after!r}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gcpo")
def test_help_examples_fit_80_columns_whole(runner, command):
    """An example command longer than the terminal wrapped at 80 columns into a fragment that
    reads as prose (`--report-to wandb` alone at the margin): each example is one line that fits,
    or continues with a shell backslash."""
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
    lines = [line.rstrip() for line in r.output.split("\n╭")[0].splitlines()]
    for line, after in zip(lines, lines[1:]):
        if re.match(r" +(gcpo|torchrun|accelerate|python) ", line):
            assert not re.match(r" \S", after) or line.endswith("\\"), f"wrapped example: {line!r} / {after!r}"
