"""Soak (issue 27): ingest, train, evaluate and inspect at once on one database for minutes, as
real processes, with random kills (SIGKILL, SIGTERM) and resumes; then the database must be whole.

Slow, not in the default run:  pytest -m slow tests/test_soak.py
GCPO_SOAK_SECONDS (default 240) sets how long the concurrent phase lasts, GCPO_SOAK_SEED its
random choices (printed, so a failure can be replayed as closely as timing allows).

What must hold at the end:
  - PRAGMA integrity_check says ok;
  - every run's steps are 1..last_step with none missing or twice, every rollout belongs to a
    recorded step, and no rollout (run, step, problem, sample) is stored twice;
  - no evaluation sample (evaluation, problem, sample) is stored twice; every evaluation is
    completed, or unfinished (interrupted or died, never "running" with no process) and the
    command that started it finishes it;
  - every set an ingest wrote holds all of its rows (an ingest is one transaction);
  - every run that was stopped resumes to completion;
  - every process that was not killed exited 0 (no "database is locked"), and none that was sent
    SIGTERM printed a traceback; reads (inspect, runs, evals, sets) answered valid JSON.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gcpo_cli.model import build_tiny

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("GCPO_SOAK_SECONDS", "240"))
STEPS = 12  # per run
SET = "sums"


@dataclass
class Outcome:
    args: list[str]
    sent: str | None  # the signal the soak sent, if any
    code: int
    stdout: str
    stderr: str


@dataclass
class Soak:
    home: Path
    db_path: Path
    model: Path
    rng: random.Random
    deadline: float
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failures: list[str] = field(default_factory=list)

    def env(self) -> dict:
        # One thread each: four streams of processes share the machine's cores.
        return {**os.environ, "GCPO_HOME": str(self.home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "NO_COLOR": "1"}

    def gcpo(self, *args: str, kill_after: float | None = None, how: int = signal.SIGKILL) -> Outcome:
        """Run `gcpo ARGS --db DB`; with `kill_after`, send `how` after that many seconds (SIGTERM is
        followed by SIGKILL if the process has not stopped within two minutes). Whatever still runs
        at the deadline is killed then, so the soak ends on work stopped midway."""
        left = self.deadline - time.time()
        if left < (kill_after if kill_after is not None else float("inf")):
            if kill_after is None:
                how = self.rng.choice([signal.SIGKILL, signal.SIGTERM])
            kill_after = max(left, 0.5)
        full = [sys.executable, "-m", "gcpo_cli", *args, "--db", str(self.db_path)]
        proc = subprocess.Popen(full, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sent = None
        try:
            out, err = proc.communicate(timeout=kill_after if kill_after is not None else 600)
        except subprocess.TimeoutExpired:
            sent = signal.Signals(how).name
            proc.send_signal(how)
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                self.fail(f"{' '.join(args)}: still running two minutes after {sent}")
        outcome = Outcome(list(args), sent, proc.returncode, out, err)
        with self.lock:
            self.outcomes.append(outcome)
        if sent is None and proc.returncode != 0:
            self.fail(f"{' '.join(args)}: exit {proc.returncode}: {err.strip()[-600:]}")
        if sent == "SIGTERM" and "Traceback" in err:
            self.fail(f"{' '.join(args)}: a traceback after SIGTERM: {err.strip()[-600:]}")
        return outcome

    def fail(self, why: str) -> None:
        with self.lock:
            self.failures.append(why)

    def running(self) -> bool:
        return time.time() < self.deadline and not self.failures

    def maybe_kill(self, rng: random.Random, lo: float, hi: float, chance: float = 0.6) -> dict:
        if rng.random() > chance:
            return {}
        return {"kill_after": rng.uniform(lo, hi), "how": rng.choice([signal.SIGKILL, signal.SIGTERM])}

    def query(self, sql: str, params=()) -> list[tuple]:
        """A read on its own connection (the soak's own look at the database, not gcpo's)."""
        for _ in range(50):
            try:
                with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as c:
                    return c.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                time.sleep(0.2)
        raise AssertionError(f"could not read the database: {sql}")


# ---------------------------------------------------------------------------------- the workers
def trainer(s: Soak, first_seed: int) -> None:
    """Trains one run at a time to STEPS, killed at random and resumed; a finished run is followed
    by a new one (seeds identify a worker's runs)."""
    rng = random.Random(s.rng.random())
    seed = first_seed
    while s.running():
        found = s.query("SELECT id, status FROM runs WHERE seed = ?", [seed])
        if found and found[0][1] == "completed":
            seed += 100
            continue
        args = (["train", "--resume", found[0][0]] if found else
                ["train", "--recipe", "tiny", "--model", str(s.model), "--set", SET, "--steps", str(STEPS),
                 "-o", "max_new_tokens=8", "-o", f"seed={seed}"])
        s.gcpo(*args, "--json", **s.maybe_kill(rng, 4, 40))


def evaluator(s: Soak, pending: dict) -> None:
    """Evaluates the tiny model, or a run's checkpoint, killed at random; a killed command goes
    into `pending` (the same command resumes it) until it finishes."""
    rng = random.Random(s.rng.random())
    while s.running():
        if pending and rng.random() < 0.5:
            args = rng.choice(sorted(pending))
        else:
            args = ("eval", "--model", str(s.model), "--set", SET, "--k", str(rng.choice([1, 2, 3])),
                    "--temperature", "0.7", "--max-new-tokens", "8", "--seed", str(rng.randrange(3)), "--json")
            ckpt = s.query("SELECT id, checkpoint_step FROM runs WHERE checkpoint_step > 0 ORDER BY id")
            if ckpt and rng.random() < 0.4:
                run_id, step = rng.choice(ckpt)
                args = ("eval", "--run", run_id, "--step", str(step), "--set", SET, "--max-new-tokens", "8",
                        "--json")
        out = s.gcpo(*args, **s.maybe_kill(rng, 2, 20))
        if out.sent:
            pending[args] = True
        else:
            pending.pop(args, None)


def ingester(s: Soak, sizes: dict) -> None:
    """Ingests new sets (a few thousand rows each), killed at random; a killed one is tried again."""
    rng = random.Random(s.rng.random())
    i = 0
    while s.running():
        sizes.setdefault(i, rng.randrange(2000, 12000))
        out = s.gcpo("ingest", "synthetic:arithmetic", "--set", f"extra-{i}", "--count", str(sizes[i]), "--seed",
                     str(i), "--json", **s.maybe_kill(rng, 1, 6, chance=0.5))
        if not out.sent:
            i += 1
        time.sleep(rng.uniform(0, 3))


def inspector(s: Soak) -> None:
    """Reads every view while the others write: each answers valid JSON, never 'locked'."""
    rng = random.Random(s.rng.random())
    while s.running():
        runs = s.query("SELECT id FROM runs")
        problems = s.query("SELECT problem_id FROM set_problems LIMIT 50")
        choices = [("runs", "--json"), ("evals", "--json"), ("sets", "--json"), ("inspect", "--set", SET, "--json")]
        if runs:
            choices.append(("inspect", "--run", rng.choice(runs)[0], "--json"))
        if problems:
            choices.append(("inspect", "--problem", rng.choice(problems)[0], "--json"))
        out = s.gcpo(*rng.choice(choices))
        if out.code == 0:
            try:
                json.loads(out.stdout)
            except ValueError:
                s.fail(f"{out.args}: not JSON: {out.stdout[:300]}")


# ---------------------------------------------------------------------------------- the soak
def test_soak_concurrent_work_with_random_kills_leaves_a_whole_database(tmp_path):
    seed = int(os.environ.get("GCPO_SOAK_SEED") or time.time())
    print(f"soak seed {seed} (GCPO_SOAK_SEED), {SECONDS:.0f} s")
    home = tmp_path / "home"
    s = Soak(home=home, db_path=home / "gcpo.db", model=build_tiny(tmp_path / "tiny"), rng=random.Random(seed),
             deadline=0.0)
    s.deadline = float("inf")
    s.gcpo("ingest", "synthetic:arithmetic", "--set", SET, "--count", "24", "--levels", "1", "--json")
    s.deadline = time.time() + SECONDS
    pending: dict = {}
    sizes: dict = {}
    workers = [threading.Thread(target=trainer, args=(s, 1)), threading.Thread(target=trainer, args=(s, 2)),
               threading.Thread(target=evaluator, args=(s, pending)),
               threading.Thread(target=ingester, args=(s, sizes)), threading.Thread(target=inspector, args=(s,))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not s.failures, "\n".join(s.failures)
    killed = [o for o in s.outcomes if o.sent]
    for command in ("ingest", "train", "eval", "inspect", "runs", "evals", "sets"):
        mine = [o for o in s.outcomes if o.args[0] == command]
        print(f"{command:>8}: {len(mine)} processes, {sum(o.sent == 'SIGKILL' for o in mine)} SIGKILL, "
              f"{sum(o.sent == 'SIGTERM' for o in mine)} SIGTERM")
    assert killed, "nothing was killed: the soak tested no stop"

    # Nothing runs now: no evaluation may say running; the unfinished ones are interrupted or died.
    s.deadline = float("inf")
    listed = json.loads(s.gcpo("evals", "--json", "--limit", "100000").stdout)
    assert {e["status"] for e in listed} <= {"completed", "interrupted", "died"}, listed
    unfinished = {e["id"] for e in listed if e["status"] != "completed"}

    # Every evaluation's command finishes it; every stopped run resumes to its last step.
    for args in sorted(pending):
        s.gcpo(*args)
    stopped = s.query("SELECT id, status, checkpoint_step FROM runs WHERE status != 'completed'")
    for run_id, status, checkpoint in stopped:
        summary = json.loads(s.gcpo("train", "--resume", run_id, "--json").stdout)
        assert summary["status"] == "completed" and summary["last_step"] == STEPS, summary
    print(f"then: {len(unfinished)} unfinished evaluations of {len(listed)}, finished by {len(pending)} commands; "
          f"{len(stopped)} stopped runs resumed ({', '.join(f'{st} at {c}' for _, st, c in stopped)})")
    assert not s.failures, "\n".join(s.failures)

    db = sqlite3.connect(s.db_path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    for run_id, last, status in db.execute("SELECT id, last_step, status FROM runs").fetchall():
        steps = [r[0] for r in db.execute("SELECT step FROM steps WHERE run_id = ? ORDER BY step", [run_id])]
        assert steps == list(range(1, last + 1)) and status == "completed" and last == STEPS, (run_id, steps)
        stray = db.execute("SELECT COUNT(*) FROM rollouts WHERE run_id = ? AND step NOT IN"
                           " (SELECT step FROM steps WHERE run_id = ?)", [run_id, run_id]).fetchone()[0]
        assert stray == 0, f"run {run_id}: {stray} rollouts of unrecorded steps"
    assert db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM rollouts GROUP BY run_id, step, problem_id, sample_index"
                      " HAVING COUNT(*) > 1)").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM eval_results GROUP BY evaluation_id, problem_id,"
                      " sample_index HAVING COUNT(*) > 1)").fetchone()[0] == 0
    statuses = dict(db.execute("SELECT id, status FROM evaluations").fetchall())
    assert all(statuses[e] == "completed" for e in unfinished), {e: statuses[e] for e in unfinished}
    for i, size in sizes.items():
        held = db.execute("SELECT COUNT(*) FROM set_problems sp JOIN problem_sets ps ON ps.id = sp.set_id"
                          " WHERE ps.name = ?", [f"extra-{i}"]).fetchone()[0]
        assert held in (0, size), f"set extra-{i}: {held} of {size} rows"
    db.close()
