"""Data-parallel training (issue 12) as users launch it: real processes started by torchrun over
gloo on CPU, the tiny model, fp32 throughout (autocast off, an fp32 sampler) so that two ranks and
one process compute the same numbers.

The set is built so that every case shows up in the first three steps: the curriculum (uniform,
4 problems a step, 12 problems) gives rank 0 the first two groups of a step and rank 1 the last
two; the random tiny model never answers right, so a group goes gold when its problem has a
short golden answer and has zero advantage (golden_too_long) when its golden answer is long.
Step 1: rank 0 two golden groups, rank 1 none (every sequence of rank 1 has zero advantage).
Step 2: one golden group on rank 0, two on rank 1. Step 3: one on each rank.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gcpo_cli import curriculum, store
from gcpo_cli import recipe_load as recipes
from gcpo_cli import train as training
from gcpo_cli.ingest import ingest_rows
from gcpo_cli.model import build_tiny
from gcpo_cli.learner import MiniBatch, plan_mini_batches

N_PROBLEMS, B, G, STEPS, SEED = 12, 4, 4, 8, 0
SET = "dist-sums"
KEYS = ("step", "problem_id", "sample_index", "completion", "extracted_answer", "reward", "correct",
        "completion_tokens", "truncated", "is_golden")


def picks(step: int) -> list[int]:
    """The set positions the uniform curriculum picks at `step` (rank 0: [:2], rank 1: [2:])."""
    return curriculum.uniform(list(range(N_PROBLEMS)), step - 1, B, SEED)


def golden_positions() -> set[int]:
    return {*picks(1)[:2], picks(2)[0], *picks(2)[2:], picks(3)[1], picks(3)[2]}


def rows() -> list[dict]:
    gold = golden_positions()
    out = []
    for i in range(N_PROBLEMS):
        a, b = 11 + i, 30 + 2 * i
        short = f"{a}+{b}={a + b}, \\boxed{{{a + b}}}"  # fits max_new_tokens (40): injected
        long = f"Add {a} and {b}: " + "ones first, then tens, carrying where needed; " * 3 + f"\\boxed{{{a + b}}}"
        out.append(dict(id=f"p{i}", problem=f"What is {a} + {b}?", answer=str(a + b),
                        solution=short if i in gold else long))
    return out


def overrides(tiny: str, *extra: str) -> list[str]:
    return [f"model.name={tiny}", f"set_name={SET}", f"problems_per_step={B}", f"samples_per_problem={G}",
            f"steps={STEPS}", "save_every=1", "model.autocast=none", "model.sampler_dtype=float32", "threads=1",
            *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(home: Path, db_path: Path, args: list[str], n: int = 2, accelerate: bool = False) -> subprocess.Popen:
    """`torchrun --nproc-per-node n -m gcpo_cli train ARGS` (or the same through `accelerate
    launch`) on the shared database; its output goes to files (a full pipe would stall it while
    the test does something else)."""
    launcher = (["accelerate.commands.launch", "--multi_gpu", f"--num_processes={n}", "--num_machines=1",
                 "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={free_port()}"] if accelerate
                else ["torch.distributed.run", "--standalone", f"--nproc-per-node={n}"])
    cmd = [sys.executable, "-m", *launcher, "-m", "gcpo_cli", "train", *args, "--db", str(db_path), "--json"]
    env = {**os.environ, "GCPO_HOME": str(home), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    logs = home / f"torchrun-{time.monotonic_ns()}"
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:  # the child keeps its own copies
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
    proc.logs = logs
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    return Path(f"{proc.logs}.out").read_text(), Path(f"{proc.logs}.err").read_text()


def finish(proc: subprocess.Popen, timeout: int = 300) -> dict:
    proc.wait(timeout=timeout)
    out, err = output(proc)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out[out.index("{"):])


def run_rows(db_path: Path, run_id: str) -> list[dict]:
    with sqlite3.connect(db_path) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM rollouts WHERE run_id = ? ORDER BY step, problem_id,"
                                           " sample_index, is_golden", [run_id])]


def run_steps(db_path: Path, run_id: str) -> list[dict]:
    with sqlite3.connect(db_path) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [run_id])]


def adapter(out_dir: str, step: int) -> dict:
    return load_file(str(Path(out_dir) / "checkpoints" / f"step-{step}" / "adapter" / "adapter_model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:  # fp32 on both sides; only the order of float additions differs
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-6, msg=k)


@dataclass
class Cluster:
    home: Path
    db_path: Path
    tiny: str
    single: dict  # one process, in this one
    ranks: dict  # two ranks, torchrun
    runs: set  # every run in the database once both finished


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    home = tmp_path_factory.mktemp("dist-home")
    tiny = str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))
    db_path = home / "gcpo.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCPO_HOME", str(home))
        db = store.open_db(db_path)
        ingest_rows(db, rows(), SET, source="test:distributed")
        proc = torchrun(home, db_path, ["--recipe", "tiny", *[a for o in overrides(tiny) for a in ("-o", o)]])
        single = training.train(db, recipes.load("tiny", overrides(tiny)))  # meanwhile, one process
        db.close()
    ranks = finish(proc)
    with sqlite3.connect(db_path) as c:
        runs = {r[0] for r in c.execute("SELECT id FROM runs")}
    return Cluster(home, db_path, tiny, single, ranks, runs)


def test_two_ranks_train_the_weights_one_process_trains(cluster):
    single, ranks = cluster.single["out_dir"], cluster.ranks["out_dir"]
    for step in (1, 3, STEPS):
        assert_same_weights(adapter(single, step), adapter(ranks, step))
    one, three = adapter(single, 1), adapter(single, 3)
    assert any(not torch.allclose(one[k], three[k]) for k in one)  # the weights moved between the two
    steps = run_steps(cluster.db_path, cluster.ranks["run_id"])
    assert [s["golden_injections"] for s in steps[:3]] == [2, 3, 2]  # golden answers in some groups only
    assert [s["golden_too_long"] for s in steps[:3]] == [2, 1, 2]
    for s1, s2 in zip(run_steps(cluster.db_path, cluster.single["run_id"]), steps):
        assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-5, abs=1e-6)  # ~0 on-policy: float noise
        assert s1["grad_norm"] == pytest.approx(s2["grad_norm"], rel=1e-5)


def test_one_writer_records_every_rollout_once_as_one_process_does(cluster):
    single = run_rows(cluster.db_path, cluster.single["run_id"])
    ranks = run_rows(cluster.db_path, cluster.ranks["run_id"])
    assert len(ranks) == len(single) == STEPS * B * G + sum(s["golden_injections"] for s in
                                                            run_steps(cluster.db_path, cluster.ranks["run_id"]))
    assert len({(r["step"], r["problem_id"], r["sample_index"]) for r in ranks}) == len(ranks)  # no duplicate
    assert [{k: r[k] for k in KEYS} for r in ranks] == [{k: r[k] for k in KEYS} for r in single]
    for a, b in zip(single, ranks):
        assert (a["advantage"] is None) == (b["advantage"] is None)
        assert b["advantage"] == pytest.approx(a["advantage"], abs=1e-9)
    steps = run_steps(cluster.db_path, cluster.ranks["run_id"])
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    metrics = json.loads(steps[0]["metrics_json"])
    assert metrics["world_size"] == 2 and metrics["comm_s"] >= 0 and metrics["groups"] == B
    assert cluster.runs == {cluster.single["run_id"], cluster.ranks["run_id"]}  # rank 1 made no run of its own
    with sqlite3.connect(cluster.db_path) as c:
        env = c.execute("SELECT environment_json FROM runs WHERE id = ?", [cluster.ranks["run_id"]]).fetchone()[0]
    assert json.loads(env)["world_size"] == 2
    assert cluster.ranks["status"] == "completed" and cluster.ranks["last_step"] == STEPS


def test_a_rank_whose_every_sequence_has_zero_advantage_does_not_hang(cluster):
    """Step 1: rank 1's two groups have no golden answer that fits, so it runs no forward or
    backward at all, while rank 0 updates; it still joins the gradient sum, and the step ends."""
    by_problem: dict = {}
    for r in run_rows(cluster.db_path, cluster.ranks["run_id"]):
        if r["step"] == 1:
            by_problem.setdefault(r["problem_id"], []).append(r)
    with sqlite3.connect(cluster.db_path) as c:  # problem ids are content hashes: find them by text
        ids = dict(c.execute("SELECT text, id FROM problems"))
    rank0, rank1 = ([ids[rows()[i]["problem"]] for i in picks(1)[:2]], [ids[rows()[i]["problem"]] for i in picks(1)[2:]])
    assert set(by_problem) == set(rank0 + rank1)
    for pid in rank1:
        assert all(r["advantage"] == 0.0 and not r["is_golden"] for r in by_problem[pid])
    for pid in rank0:
        assert sum(r["is_golden"] for r in by_problem[pid]) == 1 and any(r["advantage"] for r in by_problem[pid])
    first = run_steps(cluster.db_path, cluster.ranks["run_id"])[0]
    assert first["optimizer_updates"] == 1 and json.loads(first["metrics_json"])["sequences_in_loss"] == 2 * G


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker `rank` (its child with RANK=rank in its environment)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


def test_resume_with_two_ranks_after_a_rank_is_killed_continues_exactly(cluster):
    args = ["--recipe", "tiny", *[a for o in overrides(cluster.tiny, "save_every=2", "steps=60") for a in ("-o", o)]]
    with sqlite3.connect(cluster.db_path) as c:
        before = {r[0] for r in c.execute("SELECT id FROM runs")}
    proc = torchrun(cluster.home, cluster.db_path, args)
    try:
        run_id, deadline = None, time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            with sqlite3.connect(cluster.db_path) as c:
                new = [r for r in c.execute("SELECT id, last_step FROM runs") if r[0] not in before]
            if new and new[0][1] >= 3:
                run_id = new[0][0]
                break
        assert run_id and proc.poll() is None
        victim = _rank_pid(proc.pid, 1)
        assert victim
        os.kill(victim, signal.SIGKILL)  # rank 1 dies in the middle of a step
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    with sqlite3.connect(cluster.db_path) as c:
        status, error, last, ckpt = c.execute("SELECT status, error, last_step, checkpoint_step FROM runs WHERE id = ?",
                                              [run_id]).fetchone()
    # the job failed as a whole: rank 0 lost its peer at its next collective and said so
    assert status == "failed" and "lost contact with the other ranks" in error
    steps = run_steps(cluster.db_path, run_id)
    assert [s["step"] for s in steps] == list(range(1, last + 1)) and ckpt <= last < 60
    per_step = {}
    for r in run_rows(cluster.db_path, run_id):
        per_step[r["step"]] = per_step.get(r["step"], 0) + (not r["is_golden"])
    assert all(per_step[s] == B * G for s in range(1, last + 1))  # whole steps only
    resumed = finish(torchrun(cluster.home, cluster.db_path, ["--resume", run_id, "--steps", str(STEPS)]))
    assert resumed["status"] == "completed" and resumed["last_step"] == STEPS
    got, want = run_rows(cluster.db_path, run_id), run_rows(cluster.db_path, cluster.ranks["run_id"])
    assert [{k: r[k] for k in KEYS} for r in got] == [{k: r[k] for k in KEYS} for r in want]
    assert_same_weights(adapter(cluster.ranks["out_dir"], STEPS), adapter(resumed["out_dir"], STEPS))


def test_accelerate_launch_trains_as_torchrun_does(cluster):
    args = ["--recipe", "tiny", *[a for o in overrides(cluster.tiny, "steps=2") for a in ("-o", o)]]
    run = finish(torchrun(cluster.home, cluster.db_path, args, accelerate=True))
    assert run["status"] == "completed" and run["last_step"] == 2
    got = run_rows(cluster.db_path, run["run_id"])
    want = [r for r in run_rows(cluster.db_path, cluster.single["run_id"]) if r["step"] <= 2]
    assert [{k: r[k] for k in KEYS} for r in got] == [{k: r[k] for k in KEYS} for r in want]
    assert json.loads(run_steps(cluster.db_path, run["run_id"])[0]["metrics_json"])["world_size"] == 2
    assert_same_weights(adapter(cluster.single["out_dir"], 2), adapter(run["out_dir"], 2))


def test_mini_batches_are_cut_over_the_whole_step_whichever_rank_holds_a_group():
    # places 0..2 (rank 0 holds 0 and 1, rank 1 holds 2), four rollouts each; 3 mini-batches
    groups = [(2, [5, 5, 5, 5], [True] * 4), (0, [1, 2, 3, 4], [False] * 4), (1, [2, 2, 2, 2], [True, True, True, False])]
    plan, start = plan_mini_batches(groups, 3, token_sum=False)
    assert start == {0: 0, 1: 4, 2: 8}
    assert plan == [MiniBatch(0, 4, 4, False), MiniBatch(4, 8, 4, True), MiniBatch(8, 12, 4, True)]
    plan, _ = plan_mini_batches(groups, 2, token_sum=True)
    assert plan == [MiniBatch(0, 6, 1 + 2 + 3 + 4 + 2 + 2, True), MiniBatch(6, 12, 2 + 2 + 5 * 4, True)]


def test_train_help_shows_both_launchers_and_the_tracker_flag(runner):
    from gcpo_cli.cli import app

    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    text = " ".join(r.output.split()).replace(" \\ ", " ")  # an example continued on the next line
    assert "torchrun --nproc-per-node 4 -m gcpo_cli train" in text
    assert "accelerate launch --multi_gpu --num_processes 4 -m gcpo_cli train" in text
    assert "--report-to" in text and "tensorboard" in text and "wandb" in text
