"""`gcpo golden` (issue 15): teacher generation verified by the training grader, resumable;
imports matched by id or text; the recipe's golden_origin choosing what training injects; the
report's too-long count. Offline: the teachers are a tiny model wired to answer "\\boxed{4}", a
stand-in OpenAI-compatible server on 127.0.0.1, and (slow) the embedded model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from sqlite_utils import Database

from conftest import SHARED_DATA, JsonHandler, LocalServer
from gcpo_cli import golden as gold
from gcpo_cli import recipe_load as recipes
from gcpo_cli import train as training
from gcpo_cli.cli import app
from gcpo_cli.ingest import ingest_rows
from gcpo_cli.store import open_db

FOUR = "\\boxed{4}"  # what the wired teacher always answers


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def build_wired_teacher(out, start: str, text: str):
    """A tiny Llama that, after the token `start`, writes `text` and then ends its turn, whatever
    came before: its layers add nothing to the residual stream (zero output projections), so each
    next token depends on the current token alone, and lm_head maps each token of the chain to
    the next. The chain's characters must be distinct. Saved as a normal model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gcpo_cli.model import tiny_tokenizer

    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    chain = tok(start + text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert len(set(chain)) == len(chain)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        emb = model.model.embed_tokens.weight
        for a, b in zip(chain, chain[1:]):  # logit 80 for the next token of the chain, |x| < 40 for others
            model.lm_head.weight[b] += 10 * emb[a] / emb[a].norm()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def wired(tmp_path_factory) -> str:
    """Answers FOUR to any raw prompt (the raw preset ends with "Solution:")."""
    return build_wired_teacher(tmp_path_factory.mktemp("wired") / "model", ":", FOUR)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from gcpo_cli.model import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


def _set(db, name: str, rows: list[dict]) -> dict[str, str]:
    """Ingest rows {id, problem, answer[, solution]}; returns file id -> gcpo problem id."""
    ingest_rows(db, [{"solution": "", **r} for r in rows], name, problem="problem", solution="solution",
                answer="answer", id="id")
    return {r["source_id"]: r["problem_id"] for r in db.query(
        "SELECT sp.source_id, sp.problem_id FROM set_problems sp JOIN problem_sets s ON s.id = sp.set_id"
        " WHERE s.name = ?", [name])}


def _golden(db, origin: str | None = None) -> list[dict]:
    where = "WHERE origin = ?" if origin else ""
    return list(db.query(f"SELECT * FROM golden_answers {where} ORDER BY problem_id, text", [origin] if origin else []))


def _generate(runner, *args):
    return _json(runner.invoke(app, ["golden", "generate", *args, "--json"]))


# --------------------------------------------------------------------------------- generation

def test_only_answers_the_grader_verifies_are_stored(runner, db, wired):
    ids = _set(db, "pair", [dict(id="a", problem="What is 2 + 2?", answer="4"),
                            dict(id="b", problem="What is 1 + 2?", answer="3")])
    out = _generate(runner, "--set", "pair", "--teacher", wired, "--k", "3", "--temperature", "1",
                    "--prompt", "raw", "--max-new-tokens", "16")
    # The teacher says 4 to both: right on a (3 of 3 samples), wrong on b (0 of 3).
    assert (out["problems"], out["samples"], out["correct"], out["problems_solved"]) == (2, 6, 3, 1)
    assert out["correct_per_problem"] == [1, 0, 0, 1]
    assert out["coverage_before"]["teacher"] == 0 and out["coverage_after"] == dict(problems=2, dataset=0, teacher=1,
                                                                                      any=1)
    rows = _golden(db)
    # Three correct samples of one text are one candidate: the stored count is the distinct correct texts.
    assert out["candidates"] == len(rows) == 1
    g = rows[0]
    assert (g["problem_id"], g["text"], g["final_answer"], g["verified"], g["active"]) == (ids["a"], FOUR, "4", 1, 1)
    # The teacher is its model; a generated answer was read from no file.
    assert g["origin"] == "teacher" and g["model"] == wired and g["source_file"] is None
    assert g["completion_tokens"] == len(FOUR) + 1  # a byte tokenizer: its characters, then end of turn
    params = json.loads(g["params_json"])
    assert (params["k"], params["temperature"], params["max_new_tokens"], params["prompt"]) == (3, 1.0, 16, "raw")
    assert params["generation_id"] == out["generation_id"] and g["generation_id"] == out["generation_id"]
    attempts = {r["problem_id"]: (r["samples"], r["correct"]) for r in db["golden_attempts"].rows}
    assert attempts == {ids["a"]: (3, 3), ids["b"]: (3, 0)}
    # The same problem cut at the token limit is graded wrong: nothing more is stored.
    cut = _generate(runner, "--set", "pair", "--teacher", wired, "--k", "2", "--prompt", "raw",
                    "--max-new-tokens", "5")
    assert cut["correct"] == 0 and cut["candidates"] == 0 and len(_golden(db)) == 1


def test_only_missing_leaves_existing_golden_answers_alone(runner, db, wired):
    ids = _set(db, "mixed", [dict(id="a", problem="What is 2 + 2?", answer="4", solution="2 + 2 = \\boxed{4}"),
                             dict(id="c", problem="What is 3 + 1?", answer="4")])
    before = _golden(db)
    out = _generate(runner, "--set", "mixed", "--teacher", wired, "--k", "2", "--prompt", "raw",
                    "--max-new-tokens", "16", "--only-missing")
    assert out["problems"] == 1 and [r["problem_id"] for r in db["golden_attempts"].rows] == [ids["c"]]
    assert _golden(db, "dataset") == before  # untouched, still the one training injects for a
    assert [r["problem_id"] for r in _golden(db, "teacher")] == [ids["c"]]
    assert out["coverage_before"] == dict(problems=2, dataset=1, teacher=0, any=1)
    assert out["coverage_after"] == dict(problems=2, dataset=1, teacher=1, any=2)
    sets = {s["name"]: s for s in _json(runner.invoke(app, ["sets", "--json"]))}
    assert sets["mixed"]["coverage"] == dict(dataset=1, teacher=1, any=2)
    # Again: nothing is missing now, so nothing is tried; the summary says so.
    again = runner.invoke(app, ["golden", "generate", "--set", "mixed", "--teacher", wired, "--k", "2", "--prompt",
                                "raw", "--max-new-tokens", "16", "--only-missing"])
    assert again.exit_code == 0, again.output
    assert re.search(r"^problems tried +0 *$", again.output, re.M) and "1 -> 1 of 2 (50%)" in again.output
    assert db["golden_attempts"].count == 1


class Interrupting:
    """The wired teacher, with Ctrl-C arriving during its `fail_at`-th batch."""

    def __init__(self, inner, fail_at: int):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.label, self.server = inner.label, inner.server

    def check(self, prompt, text):
        self.inner.check(prompt, text)

    def seeded(self, seed):
        return self.inner.seeded(seed)

    def sample(self, texts, prompt, sampling, seed):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner.sample(texts, prompt, sampling, seed)


def test_an_interrupted_generation_resumes_without_duplicates(db, wired):
    from gcpo_cli.prompts import PRESETS

    ids = _set(db, "three", [dict(id=str(i), problem=f"What is {i} + {4 - i}?", answer="4") for i in range(3)])
    teacher = gold.ModelTeacher(wired)
    kw = dict(k=2, temperature=1.0, max_new_tokens=16, prompt=PRESETS["raw"], batch_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        gold.generate_golden(db, "three", Interrupting(teacher, fail_at=2), **kw)  # one problem a batch
    first = list(db["golden_generations"].rows)
    assert [g["status"] for g in first] == ["interrupted"] and db["golden_attempts"].count == 1
    assert len(_golden(db)) == 1  # the finished batch was kept
    out = gold.generate_golden(db, "three", teacher, **kw)
    assert out["generation_id"] == first[0]["id"] and out["resumed"] == 1
    assert (out["problems"], out["samples"], out["correct"], out["candidates"]) == (3, 6, 6, 3)
    assert [g["status"] for g in db["golden_generations"].rows] == ["completed"]
    assert sorted(r["problem_id"] for r in db["golden_attempts"].rows) == sorted(ids.values())
    assert sorted(g["problem_id"] for g in _golden(db)) == sorted(ids.values())  # one each, none twice
    # A finished generation is not resumed: the same command samples again, and the same texts
    # are still one candidate each.
    again = gold.generate_golden(db, "three", teacher, **kw)
    assert again["generation_id"] != out["generation_id"] and again["resumed"] == 0 and len(_golden(db)) == 3


def test_bad_invocations_end_in_one_line(runner, db, tmp_path):
    _set(db, "s", [dict(id="a", problem="What is 2 + 2?", answer="4")])
    r = runner.invoke(app, ["golden", "generate", "--set", "s"])
    assert r.exit_code == 1 and "name the teacher" in r.output
    r = runner.invoke(app, ["golden", "generate", "--set", "nope", "--teacher", "tiny"])
    assert r.exit_code == 1 and "unknown set 'nope'" in r.output
    r = runner.invoke(app, ["golden", "generate", "--set", "s", "--teacher-server", "http://127.0.0.1:1"])
    assert r.exit_code == 1 and "cannot reach the teacher server http://127.0.0.1:1" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "note": "no solution here"}) + "\n")
    r = runner.invoke(app, ["golden", "import", str(bad), "--set", "s"])
    assert r.exit_code == 1 and "no solution field" in r.output and "Traceback" not in r.output


# ----------------------------------------------------------------------- a teacher server


class StandIn(JsonHandler):
    """An OpenAI-compatible server that knows the answers: each request gets, in order, a long
    correct solution, a wrong one, a short correct one, and a correct one cut at the limit."""

    requests: list = []
    answers = {"What is 2 + 2?": "4", "What is 5 + 5?": "10"}

    def do_GET(self):
        self.send(200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        answer = next(a for q, a in self.answers.items() if q in text)
        sols = [(f"Adding the numbers step by step gives \\boxed{{{answer}}}.", "stop"), ("\\boxed{7}", "stop"),
                (f"\\boxed{{{answer}}}", "stop"), (f"The answer is \\boxed{{{answer}}}", "length")]
        chat = "messages" in body
        self.send(200, {"choices": [dict(index=i, finish_reason=why, **({"message": {"role": "assistant", "content": s}}
                                                                      if chat else {"text": s}))
                                 for i, (s, why) in enumerate(sols[: body.get("n", 1)])]})


@pytest.fixture
def server():
    StandIn.requests = []
    local = LocalServer(StandIn)
    yield local.url
    local.close()


def test_a_teacher_server_is_sampled_graded_and_recorded(runner, db, server):
    ids = _set(db, "srv", [dict(id="a", problem="What is 2 + 2?", answer="4"),
                           dict(id="b", problem="What is 5 + 5?", answer="10")])
    out = _generate(runner, "--set", "srv", "--teacher-server", server, "--k", "4", "--max-new-tokens", "64",
                    "--seed", "7")
    assert out["teacher"] == "stand-in"  # the server's first model, as /v1/models lists it
    assert (out["samples"], out["correct"], out["candidates"]) == (8, 4, 4)  # the wrong and the cut one: no
    paths = [p for p, _ in StandIn.requests]
    assert paths == ["/v1/chat/completions"] * 2  # boxed is a chat preset: the server applies the template
    body = StandIn.requests[0][1]
    assert (body["model"], body["n"], body["max_tokens"], body["temperature"], body["seed"]) == ("stand-in", 4, 64,
                                                                                                 0.7, 7)
    assert body["messages"][-1]["content"].endswith("Put the final answer in \\boxed{}.")
    rows = _golden(db)
    assert {(g["problem_id"], g["verified"], g["origin"], g["model"]) for g in rows} == {
        (ids["a"], 1, "teacher", "stand-in"), (ids["b"], 1, "teacher", "stand-in")}
    # Per problem the shortest verified candidate is the active one.
    assert {g["problem_id"]: g["text"] for g in rows if g["active"]} == {ids["a"]: "\\boxed{4}",
                                                                           ids["b"]: "\\boxed{10}"}
    assert json.loads(rows[0]["params_json"])["server"] == server
    # A raw prompt goes to the completions endpoint, with the model named.
    StandIn.requests = []
    raw = _generate(runner, "--set", "srv", "--teacher-server", server + "/v1", "--teacher", "stand-in", "--k", "2",
                    "--prompt", "raw", "--limit", "1")
    assert raw["correct"] == 1 and [p for p, _ in StandIn.requests] == ["/v1/completions"]
    assert StandIn.requests[0][1]["prompt"] == "Problem:\nWhat is 2 + 2?\n\nSolution:"


# -------------------------------------------------------------------------------------- import

def test_import_matches_by_id_and_by_text_and_verifies(runner, db, tmp_path, tiny_dir):
    ids = _set(db, "imp", [dict(id="q1", problem="What is 2 + 2?", answer="4"),
                           dict(id="q2", problem="What is 1 + 2?", answer="3")])
    f = tmp_path / "solutions.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"id": "q1", "solution": "Two and two make \\boxed{4}."},  # the set file's own id
        {"problem": "What is  1 + 2?", "solution": "\\boxed{5}"},  # the text (spacing aside); wrong
        {"problem": "What is 9 + 9?", "solution": "\\boxed{18}"},  # not in the set
    ]) + "\n")
    out = _json(runner.invoke(app, ["golden", "import", str(f), "--set", "imp", "--teacher", "gpt-x", "--json"]))
    assert (out["matched"], out["verified"], out["unverified"], out["unmatched"], out["added"]) == (2, 1, 1, 1, 2)
    assert out["coverage_after"] == dict(problems=2, dataset=0, teacher=1, any=1)
    rows = {g["problem_id"]: g for g in _golden(db)}
    assert (rows[ids["q1"]]["verified"], rows[ids["q1"]]["active"], rows[ids["q1"]]["origin"]) == (1, 1, "teacher")
    assert (rows[ids["q2"]]["verified"], rows[ids["q2"]]["active"]) == (0, 0)  # kept, marked, never injected
    assert rows[ids["q1"]]["source_file"] == "solutions.jsonl" and rows[ids["q1"]]["model"] == "gpt-x"
    again = _json(runner.invoke(app, ["golden", "import", str(f), "--set", "imp", "--json"]))
    assert again["added"] == 0 and len(_golden(db)) == 2
    # Also by gcpo's own id.
    f2 = tmp_path / "more.jsonl"
    f2.write_text(json.dumps({"problem_id": ids["q2"], "solution": "1 + 2 = \\boxed{3}"}) + "\n")
    assert _json(runner.invoke(app, ["golden", "import", str(f2), "--set", "imp", "--json"]))["verified"] == 1
    listed = _json(runner.invoke(app, ["golden", "list", "--set", "imp", "--active", "--tokenizer", tiny_dir,
                                       "--json"]))
    assert {g["problem_id"]: (g["text"], g["tokens"]) for g in listed["golden_answers"]} == {
        ids["q1"]: ("Two and two make \\boxed{4}.", 28), ids["q2"]: ("1 + 2 = \\boxed{3}", 18)}  # bytes + end
    table = runner.invoke(app, ["golden", "list", "--set", "imp"])
    assert table.exit_code == 0 and "Golden answers of imp: 3" in table.output
    assert table.output.count("active") == 2 and "UNVERIFIED" in table.output and "gpt-x" in table.output
    shown = runner.invoke(app, ["golden", "show", "q2", "--set", "imp"])
    assert shown.exit_code == 0 and "UNVERIFIED" in shown.output
    assert re.search(r"source file +more\.jsonl", shown.output)  # the file it was read from


# ---------------------------------------------------------------------- golden_origin, report

TEACHER_TEXT = "\\boxed{4}"
DATASET_TEXT = "We add: 2 + 2 = \\boxed{4}."


def _both(db, tmp_path, runner) -> dict[str, str]:
    """Four problems, each with a dataset golden answer and an imported (teacher) one."""
    rows = [dict(id=f"p{i}", problem=f"What is {i} + {4 - i}?", answer="4", solution=DATASET_TEXT) for i in range(4)]
    ids = _set(db, "both", rows)
    f = tmp_path / "teacher.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "solution": TEACHER_TEXT}) + "\n" for i in range(4)))
    assert _json(runner.invoke(app, ["golden", "import", str(f), "--set", "both", "--json"]))["verified"] == 4
    return ids


# The old key golden_source (issue 21 item 5: one name, origin, for recipe key, column and flag) still works.
@pytest.mark.parametrize("key, source, text", [("golden_origin", "teacher", TEACHER_TEXT),
                                               ("golden_origin", "dataset", DATASET_TEXT),
                                               ("golden_source", "teacher", TEACHER_TEXT)])
def test_golden_origin_chooses_which_golden_answers_training_injects(runner, db, tmp_path, tiny_dir, key, source,
                                                                     text):
    ids = _both(db, tmp_path, runner)
    r = recipes.load("tiny", [f"model.name={tiny_dir}", "set_name=both", f"{key}={source}"])
    assert r.golden.origin == source
    summary = training.train(db, r)
    injected = list(db.query("SELECT problem_id, completion FROM rollouts WHERE run_id = ? AND is_golden = 1",
                             [summary["run_id"]]))
    assert injected and {x["completion"] for x in injected} == {text}  # the random tiny model is always wrong
    pid = injected[0]["problem_id"]
    h = _json(runner.invoke(app, ["inspect", "--problem", pid, "--full", "--json"]))
    assert {c["completion"] for c in h["completions"] if c["is_golden"]} == {text}
    listed = _json(runner.invoke(app, ["golden", "list", "--set", "both", "--json"]))
    used = {g["origin"]: g["injections"] for g in listed["golden_answers"] if g["problem_id"] == pid}
    assert used == {source: sum(x["problem_id"] == pid for x in injected), ({"teacher", "dataset"} - {source}).pop(): 0}
    assert sorted(ids.values()) == sorted({g["problem_id"] for g in listed["golden_answers"]})


def test_report_counts_what_a_recipe_would_skip_as_too_long(runner, db, tmp_path, tiny_dir):
    _both(db, tmp_path, runner)
    # The tiny tokenizer is byte-level: a golden answer is its characters plus the end-of-turn token.
    limit = len(TEACHER_TEXT) + 1  # the teacher's fit exactly; the dataset's (longer) do not
    out = _json(runner.invoke(app, ["golden", "report", "--set", "both", "--recipe", "tiny", "-o",
                                    f"model.name={tiny_dir}", "-o", f"max_new_tokens={limit}", "--json"]))
    s = out["origins"]
    assert (s["dataset"]["covered"], s["dataset"]["too_long"], s["dataset"]["injectable"]) == (4, 4, 0)
    assert (s["teacher"]["covered"], s["teacher"]["too_long"], s["teacher"]["injectable"]) == (4, 0, 4)
    assert (s["any"]["covered"], s["any"]["too_long"]) == (4, 4)  # any prefers the dataset's
    assert s["dataset"]["lengths"]["p50"] == len(DATASET_TEXT) + 1 and s["teacher"]["lengths"]["max"] == limit
    assert s["teacher"]["lengths"]["histogram"]["<=100%"] == 4 and s["dataset"]["lengths"]["histogram"]["too long"] == 4
    assert out["coverage"] == dict(problems=4, dataset=4, teacher=4, any=4)
    sets = {x["name"]: x for x in _json(runner.invoke(app, ["sets", "--json"]))}
    assert sets["both"]["coverage"] == {k: out["origins"][k]["covered"] for k in ("dataset", "teacher", "any")}
    assert out["golden_origin"] == "any" and "golden_source" not in out and "sources" not in out
    # Training agrees: under that limit a recipe with the dataset's answers goes gold nowhere.
    r = recipes.load("tiny", [f"model.name={tiny_dir}", "set_name=both", "golden_origin=dataset",
                              f"max_new_tokens={limit}", "steps=1"])
    run = training.train(db, r)
    step = next(db.query("SELECT golden_injections, golden_too_long FROM steps WHERE run_id = ?", [run["run_id"]]))
    assert step["golden_injections"] == 0 and step["golden_too_long"] == r.generation.problems_per_step
    table = runner.invoke(app, ["golden", "report", "--set", "both", "--recipe", "tiny", "-o", f"model.name={tiny_dir}",
                                "-o", f"max_new_tokens={limit}"])
    assert table.exit_code == 0 and "<- this recipe" in table.output and "golden_origin" in table.output


def test_length_stats_by_hand():
    s = gold.length_stats([10, 2, 8, 4, 12], limit=10)
    assert (s["n"], s["min"], s["p50"], s["p90"], s["max"], s["mean"]) == (5, 2, 8, 12, 12, 7.2)
    assert s["histogram"] == {"<=25%": 1, "<=50%": 1, "<=75%": 0, "<=100%": 2, "too long": 1}


# ------------------------------------------------- one name for the origin, the file a column (issue 21 item 5)

V0_1 = Path(__file__).resolve().parent / "data" / "v0.1"  # a database made by gcpo 0.1 (its make.sh)


def test_a_gcpo_0_1_database_names_the_file_each_golden_answer_was_read_from(tmp_path):
    shutil.copy(V0_1 / "gcpo.db", tmp_path / "gcpo.db")
    db = open_db(tmp_path / "gcpo.db")
    columns = [c.name for c in db["golden_answers"].columns]
    assert "source_file" in columns and "source" not in columns
    assert {(g["origin"], g["source_file"]) for g in db["golden_answers"].rows} == {
        ("dataset", "synthetic:arithmetic?count=24&seed=0&levels=1")}
    assert db["golden_answers"].count == 24


def test_golden_answers_of_every_origin_upgrade_in_place(tmp_path):
    """A database as migrations m001-m008 left it (teacher-generated, imported and dataset golden
    answers, a run whose recipe says golden_source) upgrades in place: `source` held
    "dataset:FILE", "import:FILE" or "teacher:MODEL" beside the origin and model columns."""
    from gcpo_cli.store.migrations import migrations

    path = tmp_path / "gcpo.db"
    old = Database(path)
    migrations.apply(old, stop_before="m009_golden_source_file")
    old["problems"].insert(dict(id="p1", text="What is 2 + 2?", answer="4", metadata_json="{}", created_at="t"))
    for gid, origin, source, model in [("g1", "dataset", "dataset:/data/gsm8k/test.jsonl", None),
                                       ("g2", "teacher", "import:solutions.jsonl", "gpt-x"),
                                       ("g3", "teacher", "teacher:Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B")]:
        old["golden_answers"].insert(dict(id=gid, problem_id="p1", text=gid, final_answer="4", source=source,
                                          verified=1, created_at="t", origin=origin, model=model))
    recipe = {"golden": "on", "golden_source": "teacher", "lr": 0.001}
    old["runs"].insert(dict(id="r1", recipe_json=json.dumps(recipe), status="completed", created_at="t"))
    old.close()
    db = open_db(path)
    assert {g["id"]: (g["origin"], g["source_file"], g["model"]) for g in db["golden_answers"].rows} == {
        "g1": ("dataset", "/data/gsm8k/test.jsonl", None), "g2": ("teacher", "solutions.jsonl", "gpt-x"),
        "g3": ("teacher", None, "Qwen/Qwen2.5-7B")}
    # m009 renamed the key, m011 moved it with the others into the recipe's sections
    assert json.loads(db["runs"].get("r1")["recipe_json"]) == {
        "golden": {"enabled": True, "origin": "teacher"}, "optimizer": {"lr": 0.001}, "generation": {}, "loss": {}}
    assert recipes.from_dict(recipe).golden.origin == "teacher"  # the old key, read from a file, too


# ------------------------------------------------------------------------------ embedded model

@pytest.mark.slow
def test_the_embedded_teacher_stores_only_what_the_grader_verifies(runner, db):
    from gcpo_cli.grader import Grader
    from gcpo_cli.ingest import ensure_synthetic_set

    # Level-1 sums: SmolLM2-135M states a right final answer in about one sample in ten (4 of these
    # 48 on the reference machine), and many wrong or unstated ones.
    name = ensure_synthetic_set(db, "syn", count=6, seed=0, levels=[1])
    out = _generate(runner, "--set", name, "--teacher", "smollm2-135m", "--k", "8", "--max-new-tokens", "64")
    rows = _golden(db, "teacher")
    attempts = {r["problem_id"]: r["correct"] for r in db["golden_attempts"].rows}
    assert out["samples"] == 48 and 0 < out["correct"] < 48 and sum(attempts.values()) == out["correct"]
    assert 0 < len(rows) == out["candidates"] <= out["correct"]
    assert all(attempts[g["problem_id"]] > 0 and g["verified"] == 1 for g in rows)
    answers = {p["id"]: p for p in db.query("SELECT id, text, answer FROM problems")}
    with Grader() as grader:
        from gcpo_cli.answers import extract_answer

        assert all(grader.verdicts([(answers[g["problem_id"]]["text"], answers[g["problem_id"]]["answer"],
                                     extract_answer(g["text"]), False) for g in rows]))


def test_golden_list_limit_applies_to_json_too(runner, db):
    """issue 26 section 5: `golden list --limit 3 --json` returned every row."""
    _set(db, "many", [dict(id=f"p{i}", problem=f"What is {i} + 1?", answer=str(i + 1),
                           solution=f"{i} + 1 = \\boxed{{{i + 1}}}") for i in range(5)])
    listed = _json(runner.invoke(app, ["golden", "list", "--set", "many", "--limit", "3", "--json"]))
    assert len(listed["golden_answers"]) == 3 and listed["total"] == 5
    everything = _json(runner.invoke(app, ["golden", "list", "--set", "many", "--json"]))
    assert len(everything["golden_answers"]) == 5 and everything["total"] == 5  # no --limit: all of them
    table = runner.invoke(app, ["golden", "list", "--set", "many", "--limit", "2"])
    assert table.exit_code == 0 and "Golden answers of many: 5" in table.output
    assert "… and 3 more" in table.output


def test_a_gsm8k_solution_is_written_as_reasoning_then_the_boxed_answer():
    """golden.template's {reasoning}: the worked solution without GSM8K's <<calc>> annotations
    and its `#### N` line, so the golden answer reads as the model should answer (issue 22)."""
    from gcpo_cli.answers import extract_answer
    from gcpo_cli.prompts import golden_response

    row = json.loads((SHARED_DATA / "gsm8k" / "train.jsonl").open().readline())  # Natalia's clips
    template = "{reasoning}\nThe final answer is $\\boxed{{{answer}}}$."
    text = golden_response(template, row["answer"], "72")
    assert text == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and "
                    "May.\nThe final answer is $\\boxed{72}$.")
    assert "<<" not in text and "####" not in text and extract_answer(text) == "72"
    assert golden_response("{solution}", row["answer"], "72") == row["answer"]  # as stored
    with pytest.raises(recipes.RecipeError, match="golden.template"):
        recipes.load("tiny", ["golden.template=no placeholder {answer}"])
    assert recipes.load("tiny", [f"golden.template={template}"]).golden.template == template
