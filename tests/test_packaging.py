"""A wheel of gcpo works without the repository: recipes are package data, nothing looks for
files beside the checkout."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_in_a_fresh_venv_trains_the_tiny_recipe(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist)], check=True, cwd=tmp_path)
    wheel = next(dist.glob("gcpo_cli-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # The dependencies (torch, transformers, ...) come from this environment's site-packages,
    # added as a plain path: its .pth files (this checkout's editable install) are not run.
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = dict(os.environ, GCPO_HOME=str(tmp_path / "home"), PYTHONPATH="")
    where = subprocess.run([py, "-c", "import gcpo_cli; print(gcpo_cli.__file__)"], check=True, cwd=tmp_path,
                           env=env, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not this checkout
    run = subprocess.run([venv / "bin" / "gcpo", "train", "--recipe", "tiny", "--steps", "1", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert summary["status"] == "completed" and summary["recipe"] == "tiny" and summary["last_step"] == 1
