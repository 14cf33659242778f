"""How `gcpo train` starts (issue 26 section 3, issue 27 items 8 and 13): quiet (no library
warnings on stderr), every path and name checked before anything loads, the recipe as a short
diff from its defaults, and a hub model that cannot be reached refused in seconds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gcpo_cli import recipe_load as recipes
from gcpo_cli.cli import app

# Makes bitsandbytes believe the CPU has AVX512-BF16, as the machine in issue 26 had: importing
# its CPU backend then asks the `kernels` package for a hub kernel, which logs a trust-check
# warning (offline) and bitsandbytes a "Failed to load CPU gemm_4bit_forward" one. Any CPU
# reproduces the noise this way.
AVX512_BF16 = '''
import importlib.abc, sys

class _Bf16Cpu(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "bitsandbytes.backends.cpu.ops":
            import bitsandbytes.functional as F
            F.has_avx512bf16 = lambda: True
        return None

sys.meta_path.insert(0, _Bf16Cpu())
'''
NOISE = ("warning", "failed to load", "trust check", "lr_scheduler", "it/s]", "traceback")


def gcpo(home: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "GCPO_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "100", **(env or {})}
    return subprocess.run([sys.executable, *args], env=full, capture_output=True, text=True, timeout=timeout)


def test_a_normal_run_prints_no_library_warnings(gcpo_home, tmp_path):
    """bitsandbytes, the kernels trust check and torch's lr_scheduler warning (a step whose groups
    all have zero variance makes no optimiser update: golden=off on the random tiny model) all
    printed on stderr before gcpo's own lines."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(AVX512_BF16)
    r = gcpo(gcpo_home, "-m", "gcpo_cli", "train", "--recipe", "tiny", "-o", "steps=1", "-o", "golden=off",
             env={"PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    noisy = [line for line in r.stderr.splitlines() if any(n in line.lower() for n in NOISE)]
    assert noisy == [], r.stderr
    assert "run " in r.stderr and "step   1" in r.stderr  # gcpo's own lines are there


BEFORE_LOADING = {  # issue 27 item 8: each took 12-17 s (torch, transformers) and printed the recipe first
    "db is a folder": (["--db", "{tmp}"], "is not a file"),
    "unknown set": (["--set", "nope"], "unknown set 'nope'"),
    "unknown recipe key": (["-o", "lrr=3"], "unknown recipe key 'lrr'"),
    "no such model folder": (["--model", "{tmp}/none"], "is not a folder, a .gguf file"),
    "not a model folder": (["--model", "{tmp}"], "is not a model folder (no config.json)"),
    "gguf missing": (["--model", "{tmp}/x.gguf"], "GGUF file not found"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_LOADING))
def test_paths_and_names_are_checked_before_anything_loads(case, gcpo_home, tmp_path):
    args, says = BEFORE_LOADING[case]
    r = gcpo(gcpo_home, "-X", "importtime", "-m", "gcpo_cli", "train", "--recipe", "tiny",
             *[a.replace("{tmp}", str(tmp_path)) for a in args], env={"HF_HUB_OFFLINE": "1"})
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    said = [line for line in r.stderr.splitlines() if not line.startswith("import time:") and line.strip()]
    assert r.returncode == 1 and len(said) == 1 and said[0].startswith("error: ") and says in said[0], said
    assert r.stdout == ""
    assert not {"torch", "transformers", "peft"} & imported  # refused before any of them loaded


def test_the_recipe_is_shown_as_its_changes_and_print_config_gives_all_of_it(runner, tmp_path):
    r = runner.invoke(app, ["train", "--recipe", "tiny", "-o", "lr=2e-4", "--steps", "7", "--print-config"])
    assert r.exit_code == 0, r.output
    full = yaml.safe_load(r.stdout)
    # every key, resolved (as JSON would store it: lists, not tuples)
    assert full == json.loads(json.dumps(recipes.to_dict(recipes.load("tiny", ["lr=2e-4", "steps=7"]))))
    (tmp_path / "mine.yaml").write_text(r.stdout)
    assert recipes.load(str(tmp_path / "mine.yaml")) == recipes.load("tiny", ["lr=2e-4", "steps=7"])  # a recipe file

    from gcpo_cli.cmd_train import recipe_changes

    text = recipe_changes(recipes.load("tiny", ["lr=2e-4", "steps=7"]))
    assert text.startswith("recipe tiny:") and "\n" not in text and len(text) < 400  # not ~85 lines of JSON
    for change in ("lr=0.0002", "steps=7", "model.name=tiny", "lora.r=4", "samples_per_problem=4"):
        assert change in text, text
    assert "eps_low" not in text and "top_p" not in text  # left at their defaults: not shown
    assert "--print-config" in text


class _Silent:
    """A TCP port that accepts connections and never answers: a Hub behind a dead proxy."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.sock.close()


def test_an_unreachable_hub_model_fails_in_seconds_and_says_how_to_use_a_folder(gcpo_home, tmp_path):
    """It spent ~56 s on retries before its error; the Hub is asked once, with a short timeout."""
    hub = _Silent()
    try:
        t0 = time.monotonic()
        r = gcpo(gcpo_home, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--model", "someone/some-model",
                 env={"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.url,
                      "HF_HOME": str(tmp_path / "hf")})
        took = time.monotonic() - t0
    finally:
        hub.close()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"cannot reach {hub.url}" in lines[0] and "someone/some-model" in lines[0]
    assert "--model PATH" in lines[0]  # how to use a local folder instead
    assert took < 60, took  # the probe's timeout is 5 s; the start-up around it a few more


def test_offline_a_hub_model_not_in_the_cache_is_one_line(gcpo_home, tmp_path):
    r = gcpo(gcpo_home, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--model", "someone/some-model",
             env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "not in the local Hugging Face cache" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert "--model PATH" in lines[0]


@pytest.mark.slow
def test_the_embedded_models_one_off_conversion_is_labelled_and_shows_no_raw_bar(gcpo_home):
    r = gcpo(gcpo_home, "-m", "gcpo_cli", "train", "--recipe", "smollm2-cpu", "--steps", "1", "-o", "eval.holdout=0",
             "-o", "problems_per_step=1", "-o", "samples_per_problem=2", "-o", "max_new_tokens=4",
             env={"HF_HUB_OFFLINE": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "converting the embedded model once (~25 s)" in r.stderr
    assert "GGUF tensors" not in r.stderr and "it/s" not in r.stderr
