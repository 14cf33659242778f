"""Custom rewards (issue 13): `reward: module:function` in a recipe, called in the grader's worker
with (problem, completion, gold). A raising, hanging or badly returning reward scores 0 and is
counted; it never hangs a step; going gold follows its "correct" flag (or reward == 1)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from gcpo_cli import recipe_load as recipes
from gcpo_cli import groups
from gcpo_cli import train as training
from gcpo_cli.grader import Grader, Score
from gcpo_cli.recipe_load import RecipeError
from gcpo_cli.records import Problem, Rollout
from gcpo_cli.resumable import StopFlag

MODULE = "gcpo_test_rewards"
REWARDS = textwrap.dedent('''
    import json, os, signal, sys, time

    def exact(problem, completion, gold):
        """Exact match of the completion's last word with the gold word; partial credit for
        the share of the gold's letters the completion uses (so rewards are not only 0)."""
        words = completion.strip().lower().split()
        said = words[-1].strip(".!") if words else ""
        letters = set(gold.lower())
        reward = 1.0 if said == gold.lower() else round(len(set(completion.lower()) & letters) / (2 * len(letters)), 4)
        with open(os.environ["GCPO_TEST_REWARD_LOG"], "a") as f:
            f.write(json.dumps(dict(problem=problem, completion=completion, gold=gold, reward=reward)) + "\\n")
        return {"reward": reward, "correct": said == gold.lower()}

    def boom(problem, completion, gold):
        raise ValueError("reward exploded")

    def sleeper(problem, completion, gold):
        time.sleep(10**6)

    def scripted(problem, completion, gold):
        """Returns what the completion asks for."""
        if completion == "sleep":
            time.sleep(10**6)
        if completion == "catch-all":  # swallows every Exception: the time limit is no Exception
            try:
                time.sleep(10**6)
            except Exception:
                return 1.0
        if completion == "stubborn":  # ignores the alarm: only the outer deadline stops it
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            time.sleep(10**6)
        if completion == "raise":
            raise ValueError("no")
        if completion == "exit":
            sys.exit(3)
        return {"half": 0.5, "full": 1.0, "one": 1, "true": True, "zero": 0.0, "almost": 0.99,
                "pair": (0.5, True), "pair-wrong": [1.0, False], "dict": {"reward": 0.25},
                "dict-correct": {"reward": 0.5, "correct": True}, "right": (0.5, True), "wrong": 0.0,
                "nan": float("nan"), "big": 1.5, "negative": -0.1, "text": "1", "none": None,
                "no-key": {"score": 1.0}, "triple": (1.0, True, 3), "bad-flag": (1.0, "yes")}[completion]

    NOT_CALLABLE = 3
''')

# A reward that prints, at import and in every call, to sys.stdout and to file descriptor 1.
PRINTING = textwrap.dedent('''
    import os, sys
    print("printed at import")
    os.write(1, b"written to fd 1 at import\\n")

    def talk(problem, completion, gold):
        print("printed in the reward", problem["id"])
        os.write(1, b"written to fd 1 in the reward\\n")
        sys.stdout.flush()
        with open(os.environ["GCPO_TEST_REWARD_LOG"], "a") as f:
            f.write("called\\n")
        return 0.5
''')


@pytest.fixture(autouse=True)
def reward_module(tmp_path, monkeypatch):
    """The user's reward module, importable as `gcpo_test_rewards` (here and in the grader's
    worker, which a spawned process starts with this sys.path), logging its calls."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(REWARDS)
    (folder / "gcpo_test_broken.py").write_text("raise RuntimeError('broken at import')\n")
    (folder / f"{MODULE}_printing.py").write_text(PRINTING)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("GCPO_TEST_REWARD_LOG", str(tmp_path / "calls.jsonl"))
    sys.modules.pop(MODULE, None)
    yield folder
    sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from gcpo_cli.model import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


WORDS = [("The sky on a clear day is what colour?", "blue"), ("What animal says moo?", "cow"),
         ("What is frozen water called?", "ice"), ("Which planet do we live on?", "earth"),
         ("What colour is grass?", "green"), ("What do bees make?", "honey"),
         ("What is the opposite of hot?", "cold"), ("How many legs has a bird? Answer in a word.", "two")]


@pytest.fixture
def words(db) -> str:
    """An exact-match string task: the answers are words, the golden answers box them."""
    from gcpo_cli.ingest import ingest_rows

    ingest_rows(db, [{"problem": q, "solution": f"\\boxed{{{a}}}", "answer": a} for q, a in WORDS], "words",
                problem="problem", solution="solution", answer="answer")
    return "words"


def calls(tmp_path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rollout_rows(db, run_id):
    return list(db.query("SELECT * FROM rollouts WHERE run_id = ? ORDER BY step, problem_id, sample_index", [run_id]))


def step_metrics(db, run_id) -> list[dict]:
    return [json.loads(r["metrics_json"]) for r in db.query("SELECT metrics_json FROM steps WHERE run_id = ? "
                                                            "ORDER BY step", [run_id])]


# ----------------------------------------------------------------------------- training


def test_tiny_recipe_trains_on_an_exact_match_task_with_a_custom_reward(db, tiny_dir, words, tmp_path):
    r = recipes.load("tiny", [f"model.name={tiny_dir}", f"set_name={words}", f"reward={MODULE}:exact", "steps=2",
                              "max_new_tokens=120", "prompt_template={problem}"])
    assert r.reward == f"{MODULE}:exact"
    summary = training.train(db, r)
    assert summary["status"] == "completed" and summary["last_step"] == 2
    rows = rollout_rows(db, summary["run_id"])
    sampled = [x for x in rows if not x["is_golden"]]
    finished = [x for x in sampled if not x["truncated"]]
    assert len(sampled) == 2 * 2 * 4 and finished  # steps x B x G; some completions end before the limit
    # One call per finished completion, with the problem, the completion and the gold answer; the
    # recorded reward is what the function returned (partial credit included), correct its flag.
    logged = calls(tmp_path)
    answers = dict(WORDS)
    assert sorted((c["problem"]["id"], c["completion"]) for c in logged) == sorted(
        (x["problem_id"], x["completion"]) for x in finished)
    for c in logged:
        assert c["gold"] == c["problem"]["answer"] == answers[c["problem"]["text"]]
    by_completion = {(c["problem"]["id"], c["completion"]): c["reward"] for c in logged}
    for x in finished:
        assert x["reward"] == by_completion[(x["problem_id"], x["completion"])]
        assert x["correct"] == (x["reward"] == 1.0)
    assert any(0 < x["reward"] < 1 for x in finished)  # the custom reward's, not math-verify's 0/1
    assert all(x["reward"] == 0 and not x["correct"] for x in sampled if x["truncated"])  # never called
    # The random model never says the word: every group is all wrong by the reward's flag and goes gold.
    golden = [x for x in rows if x["is_golden"]]
    assert len(golden) == 2 * 2 and all(x["reward"] == 1.0 and x["correct"] for x in golden)
    assert [m["reward_failures"] for m in step_metrics(db, summary["run_id"])] == [0, 0]


def test_a_raising_reward_scores_0_and_is_counted_per_step(db, tiny_dir, words):
    summary = training.train(db, recipes.load("tiny", [f"model.name={tiny_dir}", f"set_name={words}", "steps=2",
                                                       f"reward={MODULE}:boom", "max_new_tokens=120"]))
    assert summary["status"] == "completed"
    rows = rollout_rows(db, summary["run_id"])
    sampled = [x for x in rows if not x["is_golden"]]
    assert all(x["reward"] == 0 and not x["correct"] for x in sampled)
    finished = [sum(1 for x in sampled if x["step"] == s and not x["truncated"]) for s in (1, 2)]
    assert sum(finished) > 0
    assert [m["reward_failures"] for m in step_metrics(db, summary["run_id"])] == finished


def test_a_reward_that_sleeps_forever_is_cut_off_and_the_step_goes_on(db, tiny_dir, words):
    ctx = training.setup(db, recipes.load("tiny", [f"model.name={tiny_dir}", f"set_name={words}",
                                                   f"reward={MODULE}:sleeper", "max_new_tokens=120"]),
                         None, None, None, training.NullDisplay())
    with Grader(reward=ctx.recipe.reward, timeout_s=1, seconds_per_item=10) as g:
        t = time.perf_counter()
        rollouts, m = training.train_step(ctx, 1, g, StopFlag())
        elapsed = time.perf_counter() - t
        assert g.restarts == 0  # the time limit stopped each call; the worker lived on
    finished = [x for x in rollouts if not x.is_golden and not x.truncated]
    assert finished and m.reward_failures == len(finished)
    assert all(x.reward == 0 and not x.correct for x in rollouts if not x.is_golden)
    assert m.golden_injections == 2  # all wrong, so both groups went gold
    assert elapsed < 60 + 2 * len(finished)


def test_going_gold_follows_the_correct_flag_or_a_reward_of_1(db, tiny_dir, words):
    ctx = training.setup(db, recipes.load("tiny", [f"model.name={tiny_dir}", f"set_name={words}",
                                                   f"reward={MODULE}:scripted"]), None, None, None,
                         training.NullDisplay())
    pid = ctx.pool[0].id
    prompt = training.prompt(ctx, pid)[1]

    def group(g, *texts):  # graded as train.roll_out grades them
        scores = g.scores([(ctx.by_id[pid], t, None, False) for t in texts])
        assert not any(s.failed for s in scores)
        return [Rollout(problem_id=pid, sample_index=j, prompt_ids=prompt, completion_ids=[5], completion=t,
                        extracted_answer=None, truncated=False, reward=float(s.reward), correct=bool(s.correct))
                for j, (t, s) in enumerate(zip(texts, scores))]

    with Grader(reward=ctx.recipe.reward) as g:
        flagged, full, almost = group(g, "right", "wrong", "wrong", "wrong"), group(g, "full", *["wrong"] * 3), \
            group(g, *["almost"] * 4)
    assert (flagged[0].reward, flagged[0].correct) == (0.5, True)  # correct by its flag at reward 0.5
    assert (full[0].reward, full[0].correct) == (1.0, True)  # no flag: reward 1 is correct
    assert [x.correct for x in almost] == [False] * 4 and almost[0].reward == 0.99
    assert groups.go_gold(ctx.recipe, ctx.by_id[flagged[0].problem_id], flagged, ctx.tok, None) is None
    assert groups.go_gold(ctx.recipe, ctx.by_id[full[0].problem_id], full, ctx.tok, None) is None
    assert groups.go_gold(ctx.recipe, ctx.by_id[almost[0].problem_id], almost, ctx.tok, None) == "injected" and almost[3].is_golden


# ----------------------------------------------------------------------------- the grader


def items(*completions, truncated=False):
    return [(Problem("p", "say a word", "word"), c, None, truncated)
            for c in completions]


def test_reward_values_and_bad_returns_through_the_grader():
    good = ["half", "full", "one", "true", "zero", "almost", "pair", "pair-wrong", "dict", "dict-correct"]
    bad = ["raise", "exit", "nan", "big", "negative", "text", "none", "no-key", "triple", "bad-flag"]
    with Grader(reward=f"{MODULE}:scripted", timeout_s=2) as g:
        got = g.scores(items(*good, *bad))
        assert g.scores(items("full", truncated=True)) == [Score(0.0, False, False)]  # truncated: not called
        assert g.restarts == 0
    assert got[:len(good)] == [Score(0.5, False), Score(1.0, True), Score(1.0, True), Score(1.0, True),
                               Score(0.0, False), Score(0.99, False), Score(0.5, True), Score(1.0, False),
                               Score(0.25, False), Score(0.5, True)]
    assert got[len(good):] == [Score(0.0, False, True)] * len(bad)  # scored 0, counted as failures


def test_hanging_rewards_are_cut_off_by_the_time_limits():
    with Grader(reward=f"{MODULE}:scripted", timeout_s=1, seconds_per_item=5) as g:
        g.scores(items("half"))  # start the worker outside the timing
        t = time.perf_counter()
        got = g.scores(items("sleep", "catch-all", "half", "stubborn", "full"))
        elapsed = time.perf_counter() - t
        # sleep and catch-all: the 1 s alarm; stubborn ignores it, so the 5 s deadline kills its
        # worker and a fresh one grades the rest
        assert g.restarts == 1
    assert got == [Score(0.0, False, True), Score(0.0, False, True), Score(0.5, False), Score(0.0, False, True),
                   Score(1.0, True)]
    assert elapsed < 60  # 1 + 1 + 5 s, plus a worker start on a busy machine


def test_without_a_custom_reward_scores_are_math_verify_verdicts():
    with Grader() as g:
        got = g.scores([(Problem("p", "2 + 3?", "5"), "so \\boxed{5}", "5", False),
                        (Problem("p", "2 + 3?", "5"), "so \\boxed{6}", "6", False),
                        (Problem("p", "2 + 3?", "5"), "so \\boxed{5}", "5", True)])
    assert got == [Score(1.0, True), Score(0.0, False), Score(0.0, False)]


def test_a_reward_file_path_works_and_is_stored_absolute(reward_module, monkeypatch, tmp_path):
    monkeypatch.chdir(reward_module.parent)
    r = recipes.load("tiny", [f"reward=user/{MODULE}.py:scripted"])
    assert r.reward == f"{(reward_module / MODULE).resolve()}.py:scripted"
    monkeypatch.chdir(tmp_path / "user")  # another folder: the stored path still finds it
    with Grader(reward=r.reward) as g:
        assert g.scores(items("pair")) == [Score(0.5, True)]


# ----------------------------------------------------------------------------- the recipe key


@pytest.mark.parametrize("value, says", [
    ("nocolon", "expected module:function"),
    (f"{MODULE}:", "expected module:function"),
    (":exact", "expected module:function"),
    ("not a module:f", "is not a module name"),
    ("gcpo_no_such_module_zz:exact", "no module named 'gcpo_no_such_module_zz'"),
    (f"{MODULE}:missing", "has no 'missing'"),
    (f"{MODULE}:NOT_CALLABLE", "is not callable"),
    ("gcpo_test_broken:f", "importing gcpo_test_broken failed: RuntimeError: broken at import"),
    ("no/such/file.py:f", "no file no/such/file.py"),
])
def test_a_bad_reward_is_one_recipe_error_naming_the_key(value, says):
    with pytest.raises(RecipeError) as e:
        recipes.load("tiny", [f"reward={value}"])
    assert str(e.value).startswith("recipe key 'reward': ") and says in str(e.value)


def test_a_bad_reward_on_the_command_line_is_one_clear_line(runner):
    from gcpo_cli.cli import app

    result = runner.invoke(app, ["train", "--recipe", "tiny", "-o", "reward=gcpo_no_such_module_zz:exact"])
    assert result.exit_code == 1
    assert "recipe key 'reward'" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- a reward that prints

def test_a_reward_that_prints_never_reaches_the_commands_stdout(tiny_dir, words, gcpo_home, tmp_path):
    """`gcpo train --json` prints one JSON document, whatever the reward prints (issue 27, item 2):
    the worker's stdout goes to stderr, and so does the reward module's import in the CLI."""
    import subprocess

    reward = tmp_path / "printing_reward.py"
    reward.write_text(PRINTING)
    env = {**os.environ, "GCPO_HOME": str(gcpo_home)}
    done = subprocess.run([sys.executable, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--model", tiny_dir,
                           "--set", words, "-o", "steps=1", "-o", "max_new_tokens=120", "-o", f"reward={reward}:talk",
                           "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)  # the whole of stdout: nothing before or after the JSON
    assert summary["status"] == "completed"
    assert calls_made(tmp_path) > 0  # the reward ran and printed
    assert "printed in the reward" in done.stderr and "written to fd 1 in the reward" in done.stderr
    assert "printed at import" in done.stderr


def test_the_grading_worker_writes_nothing_to_stdout(capfd):
    # capfd reads file descriptor 1 itself, which the spawned worker inherits
    with Grader(reward=f"{MODULE}_printing:talk") as g:
        assert g.scores(items("anything")) == [Score(0.5, False)]
    out, err = capfd.readouterr()
    assert out == "" and "printed in the reward" in err and "written to fd 1 at import" in err


def calls_made(tmp_path) -> int:
    path = tmp_path / "calls.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0
