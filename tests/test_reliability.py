"""Hostile input and hard stops (issue 10): checkpoints that would run code, run folders a
database points elsewhere, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gcpo_cli import recipe_load as recipes
from gcpo_cli import train as training
from gcpo_cli.cli import app
from gcpo_cli.errors import GcpoError
from gcpo_cli.model import build_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


class Payload:
    """Unpickling this runs code: it creates the file named `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _trained(db, tiny_dir) -> dict:
    return training.train(db, recipes.load("tiny", [f"model.name={tiny_dir}", "steps=1"]))


def test_a_malicious_trainer_state_is_refused_and_runs_nothing(db, tiny_dir, tmp_path, runner):
    summary = _trained(db, tiny_dir)
    state = Path(summary["out_dir"]) / "checkpoints" / "step-1" / "trainer_state.pt"
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(str(marker)), "scheduler": {}, "step": 1}, state)
    r = runner.invoke(app, ["train", "--resume", summary["run_id"], "--steps", "2"])
    assert r.exit_code == 1 and "not a trainer state gcpo wrote" in r.output and "Traceback" not in r.output
    assert not marker.exists()
    run = db["runs"].get(summary["run_id"])
    assert run["status"] == "completed" and run["last_step"] == 1  # nothing changed


def test_a_run_folder_outside_gcpo_home_is_not_followed(db, tiny_dir, tmp_path, runner):
    summary = _trained(db, tiny_dir)
    elsewhere = tmp_path / "elsewhere"
    os.rename(summary["out_dir"], elsewhere)
    with db.conn:
        db.execute("UPDATE runs SET out_dir = ? WHERE id = ?", [str(elsewhere), summary["run_id"]])
    for args in (["train", "--resume", summary["run_id"], "--steps", "2"],
                 ["export", "--run", summary["run_id"], "--out", str(tmp_path / "x")],
                 ["eval", "--run", summary["run_id"], "--set", "arithmetic-l1-24", "--limit", "1"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "outside GCPO_HOME" in r.output and "Traceback" not in r.output, args
    with pytest.raises(GcpoError, match="outside GCPO_HOME"):
        training.train(db, resume_run=summary["run_id"], steps=2)


def test_sigterm_finishes_like_ctrl_c_saves_and_marks_the_run_interrupted(tiny_dir, gcpo_home, tmp_path):
    db_path = tmp_path / "term.db"
    env = {**os.environ, "GCPO_HOME": str(gcpo_home)}
    proc = subprocess.Popen([sys.executable, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--model", tiny_dir,
                             "--steps", "200", "--save-every", "50", "-o", "max_new_tokens=8", "--db", str(db_path),
                             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            with sqlite3.connect(db_path) as c:
                if (c.execute("SELECT MAX(step) FROM steps").fetchone()[0] or 0) >= 2:
                    break
        except sqlite3.OperationalError:
            continue
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130  # interrupted is not success (issue 26: `make demo` reported success)
    summary = json.loads(out[out.index("{"):])
    assert summary["status"] == "interrupted" and summary["checkpoint_step"] == summary["last_step"] >= 2
    with sqlite3.connect(db_path) as c:
        status, ckpt = c.execute("SELECT status, checkpoint_step FROM runs").fetchone()
    assert status == "interrupted" and ckpt == summary["last_step"]


def test_concurrent_writers_wait_their_turn_and_nothing_is_lost(tiny_dir, gcpo_home, tmp_path):
    """Two trainings, two ingests and an evaluation on one database at once, as real processes:
    every write transaction takes the lock up front (BEGIN IMMEDIATE) and waits for it."""
    db_path = tmp_path / "shared.db"
    env = {**os.environ, "GCPO_HOME": str(gcpo_home)}
    gcpo = [sys.executable, "-m", "gcpo_cli"]
    first = subprocess.run(gcpo + ["ingest", "synthetic:arithmetic", "--set", "sums", "--count", "24", "--levels",
                                   "1", "--db", str(db_path)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    procs = [subprocess.Popen(gcpo + ["train", "--recipe", "tiny", "--model", tiny_dir, "--set", "sums", "--steps",
                                      "3", "-o", "max_new_tokens=8", "-o", f"seed={seed}", "--db", str(db_path),
                                      "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    time.sleep(3)
    procs += [subprocess.Popen(gcpo + ["ingest", "synthetic:arithmetic", "--set", name, "--count", "300", "--seed",
                                       str(seed), "--db", str(db_path)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for seed, name in ((5, "more-a"), (6, "more-b"))]
    procs.append(subprocess.Popen(gcpo + ["eval", "--model", "golden", "--set", "sums", "--db", str(db_path), "--json"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-1500:]
    with sqlite3.connect(db_path) as c:
        runs = c.execute("SELECT status, last_step FROM runs").fetchall()
        steps = c.execute("SELECT run_id, COUNT(*) FROM steps GROUP BY run_id").fetchall()
        sets = dict(c.execute("SELECT s.name, COUNT(*) FROM problem_sets s JOIN set_problems sp ON sp.set_id = s.id"
                              " GROUP BY s.name"))
        evaluations = c.execute("SELECT status FROM evaluations").fetchall()
        integrity = c.execute("PRAGMA integrity_check").fetchone()[0]
    assert runs == [("completed", 3)] * 2 and [n for _, n in steps] == [3, 3]
    assert sets["more-a"] == 300 and sets["more-b"] == 300 and sets["sums"] == 24
    assert evaluations == [("completed",)] and integrity == "ok"


def test_a_database_from_a_newer_gcpo_is_refused(runner, tmp_path):
    from gcpo_cli.store import open_db

    path = tmp_path / "new.db"
    db = open_db(path)
    with db.conn:
        db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('gcpo', 'm999_x', '')")
    db.close()
    r = runner.invoke(app, ["sets", "--db", str(path)])
    assert r.exit_code == 1 and "written by a newer gcpo" in r.output and "Traceback" not in r.output


def test_a_missing_or_corrupt_checkpoint_is_one_clear_line(db, tiny_dir, runner):
    summary = _trained(db, tiny_dir)
    ckpt = Path(summary["out_dir"]) / "checkpoints" / "step-1"
    (ckpt / "trainer_state.pt").unlink()
    r = runner.invoke(app, ["train", "--resume", summary["run_id"], "--steps", "2"])
    assert r.exit_code == 1 and "trainer_state.pt is missing" in r.output and "Traceback" not in r.output
    (ckpt / "adapter" / "adapter_model.safetensors").write_bytes(b"garbage")
    for args in (["eval", "--run", summary["run_id"], "--set", "arithmetic-l1-24", "--limit", "1"],
                 ["export", "--run", summary["run_id"], "--merge", "--out", str(Path(summary["out_dir"]) / "m")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "cannot load the adapter" in r.output and "Traceback" not in r.output, r.output
    assert db["runs"].get(summary["run_id"])["status"] == "completed"


def test_terminal_escapes_in_data_never_reach_the_terminal_raw(db, runner):
    from gcpo_cli.ingest import ingest_rows

    evil = "What is 1 + 1?\x1b[2J\x1b]0;owned\x07 Say it."
    ingest_rows(db, [{"problem": evil, "answer": "2", "solution": "1 + 1 = 2\x1b[31m, \\boxed{2}"}], "evil")
    pid = next(db.query("SELECT id FROM problems"))["id"]
    for args in (["problems", "--set", "evil"], ["inspect", "--problem", pid], ["inspect", "--set", "evil"],
                 ["sets"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "\x1b" not in r.output and "\x07" not in r.output, args
    assert "\\x1b[2J" in runner.invoke(app, ["problems", "--set", "evil"]).output  # shown, not obeyed
    r = runner.invoke(app, ["inspect", "--problem", "\x1b[2Jnope"])
    assert r.exit_code == 1 and "\x1b" not in r.output


# ------------------------------------------------ issue 26 section 3, issue 27 items 6 and 12

def _wait_for_step(db_path: Path, step: int, proc: subprocess.Popen, seconds: int = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            with sqlite3.connect(db_path) as c:
                if (c.execute("SELECT MAX(step) FROM steps").fetchone()[0] or 0) >= step:
                    return
        except sqlite3.OperationalError:
            continue
    raise AssertionError(f"no step {step} recorded (exit code {proc.poll()})")


def test_ctrl_c_exits_130_with_the_resume_hint(tiny_dir, gcpo_home, tmp_path):
    db_path = tmp_path / "int.db"
    proc = subprocess.Popen([sys.executable, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--model", tiny_dir,
                             "--steps", "200", "-o", "max_new_tokens=8", "--db", str(db_path)],
                            env={**os.environ, "GCPO_HOME": str(gcpo_home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(db_path, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-1500:]
    with sqlite3.connect(db_path) as c:
        run_id, status = c.execute("SELECT id, status FROM runs").fetchone()
    assert status == "interrupted" and f"resume with: gcpo train --resume {run_id}" in out
    assert "Traceback" not in out + err


def test_a_closed_output_pipe_and_ctrl_c_end_interrupted_not_died(tiny_dir, gcpo_home, tmp_path):
    """`gcpo train 2>&1 | tee log` and Ctrl-C: tee dies with the terminal's Ctrl-C, the next
    progress line met a closed pipe, and the BrokenPipeError left the run marked running (then
    shown as died), with no checkpoint of its last steps."""
    db_path = tmp_path / "pipe.db"
    proc = subprocess.Popen([sys.executable, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--model", tiny_dir,
                             "--steps", "200", "--save-every", "100", "-o", "max_new_tokens=8", "--db", str(db_path)],
                            env={**os.environ, "GCPO_HOME": str(gcpo_home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    _wait_for_step(db_path, 2, proc)
    proc.stdout.close()  # the reader (tee) is gone
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    with sqlite3.connect(db_path) as c:
        status, last, checkpoint = c.execute("SELECT status, last_step, checkpoint_step FROM runs").fetchone()
    assert status == "interrupted" and checkpoint == last >= 2


def _rollouts(db_path: Path) -> list[tuple]:
    with sqlite3.connect(db_path) as c:
        return c.execute("SELECT step, problem_id, sample_index, completion FROM rollouts WHERE is_golden = 0"
                         " ORDER BY step, problem_id, sample_index").fetchall()


def test_the_first_run_in_a_fresh_home_matches_later_runs_with_the_same_seed(gcpo_home, runner, tmp_path):
    """Building the cached tiny model drew from the seeded torch RNG, so the first run's LoRA init
    (and from its first update on, its samples) differed from every later run's."""
    for name in ("first", "second"):
        r = runner.invoke(app, ["train", "--recipe", "tiny", "--steps", "3",
                                "-o", "lr=0.05", "--db", str(tmp_path / f"{name}.db"), "--json"])
        assert r.exit_code == 0, r.output
    first, second = _rollouts(tmp_path / "first.db"), _rollouts(tmp_path / "second.db")
    assert len(first) == 3 * 2 * 4 and first == second


def _on_a_small_disk(disk: Path, script: str) -> None:
    """Run the shell `script` with a 128 KiB tmpfs mounted on `disk`, in a private mount namespace
    (the mount goes with the process): `unshare -m` as root, `unshare -rm` as a user where user
    namespaces are allowed. Where neither works, a sitecustomize makes every safetensors write
    of the process fail as a full disk does (ENOSPC) instead."""
    disk.mkdir()
    mount = f"mount -t tmpfs -o size=128k tmpfs {disk}"
    for flags in ("-m", "-rm"):
        try:
            if subprocess.run(["unshare", flags, "sh", "-c", mount], capture_output=True).returncode == 0:
                subprocess.run(["unshare", flags, "sh", "-c", f"{mount} && {script}"], check=True, timeout=300)
                return
        except FileNotFoundError:  # no unshare
            break
    site = disk.parent / "enospc"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import errno, os, safetensors.torch as st\n"
        "def full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "st.save_file = full\n")
    subprocess.run(["sh", "-c", script], env={**os.environ, "PYTHONPATH": str(site)}, check=True, timeout=300)


def test_a_full_disk_while_building_the_model_cache_is_one_line_and_leaves_nothing(tmp_path):
    """Issue 27 item 6: a 211-line SafetensorError traceback while the first training in a fresh
    home wrote its model cache. The tiny model's cache is written by the same code as the
    embedded model's (model._atomic_folder), here on a filesystem too small for it."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    out.mkdir()
    _on_a_small_disk(disk, f"GCPO_HOME={disk / 'home'} {sys.executable} -m gcpo_cli train --recipe tiny --steps 1 "
                           f"--db {tmp_path / 'gcpo.db'} 2> {out / 'err'}; echo $? > {out / 'rc'}; "
                           f"ls -A {disk / 'home' / 'cache'} > {out / 'left'}")
    err = (out / "err").read_text()
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("recipe")]
    assert (out / "rc").read_text().strip() == "1" and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: cannot write the model cache") and "No space left on device" in lines[0]
    assert "point GCPO_HOME at a disk with room" in lines[0]
    assert (out / "left").read_text().split() == []  # nothing half-written left to be read next time
    with sqlite3.connect(tmp_path / "gcpo.db") as c:
        assert c.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0  # no run was started
