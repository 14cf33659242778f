"""`gcpo export --push-to-hub`: the model card written from the database, and the upload through
huggingface_hub's own code path, against a stand-in for the Hub API on 127.0.0.1 (issue 13).

The stand-in implements only what HfApi.create_repo, create_branch and upload_folder call for
small files: repo create, branch create, README metadata validation, preupload (every file
"regular") and the NDJSON commit carrying each file base64-encoded. huggingface_hub reads
HF_ENDPOINT and offline mode at import, so pushes run the CLI in a subprocess with its own env;
nothing here reaches huggingface.co.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import JsonHandler, LocalServer
from gcpo_cli import publish, store
from gcpo_cli import recipe_load as recipes
from gcpo_cli import train as training
from gcpo_cli.cli import app
from gcpo_cli.model import build_tiny

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_standin_0123456789abcdef"
EVAL_METRICS = dict(n_problems=3, n_samples=12, k=4, mean_at_k=0.5, stderr=0.125, pass_at_k=2 / 3,
                    maj_at_k=1 / 3, completion_tokens_mean=87.25, truncation_rate=0.0, unextracted_rate=0.0)


class StandInHub:
    """The Hub API endpoints huggingface_hub calls to create a repo and upload a small folder."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.created: dict[str, dict] = {}
        self.branches: list[tuple[str, str]] = []
        self.validated: list[str] = []
        self.commits: list[dict] = []  # {repo, revision, summary, files: {path: bytes}}
        self.auth: set[str] = set()
        hub = self

        class Handler(JsonHandler):
            def do_GET(self):
                self.handle_request("GET")

            def do_POST(self):
                self.handle_request("POST")

            def handle_request(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/api/agent-harnesses"):  # optional; huggingface_hub ignores a 404
                    return self.send(404, {"error": "not served here"})
                hub.requests.append((method, self.path))
                hub.auth.add(self.headers.get("Authorization") or "")
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.send(401, {"error": "Invalid credentials in Authorization header"})
                if method == "POST" and self.path == "/api/repos/create":
                    p = json.loads(body)
                    repo = f"{p['organization']}/{p['name']}"
                    hub.created[repo] = p
                    return self.send(200, {"url": f"{hub.url}/{repo}"})
                if method == "POST" and self.path == "/api/validate-yaml":
                    hub.validated.append(json.loads(body)["content"])
                    return self.send(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/([^?]+)(\?.*)?", self.path)
                if method == "POST" and m:
                    repo, what, rev = m.group(1), m.group(2), m.group(3)
                    if what == "branch":
                        hub.branches.append((repo, rev))
                        return self.send(200, {})
                    if what == "preupload":
                        files = json.loads(body)["files"]
                        return self.send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                          "shouldIgnore": False, "oid": None} for f in files]})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    assert lines[0]["key"] == "header"
                    files = {}
                    for line in lines[1:]:
                        assert line["key"] == "file" and line["value"]["encoding"] == "base64"
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    hub.commits.append(dict(repo=repo, revision=rev, summary=lines[0]["value"]["summary"],
                                            files=files))
                    return self.send(200, {"commitUrl": f"{hub.url}/{repo}/commit/c0ffee", "commitOid": "c0ffee"})
                return self.send(404, {"error": f"the stand-in does not serve {method} {self.path}"})

        self.server = LocalServer(Handler)
        self.url = self.server.url

    def close(self):
        self.server.close()


@pytest.fixture
def hub():
    h = StandInHub()
    yield h
    h.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny run (2 steps, 4 problems held out and graded before and after) with two more
    evaluations recorded as `gcpo eval --run` records them: one finished, one interrupted."""
    home = tmp_path_factory.mktemp("home")
    tiny = str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCPO_HOME", str(home))
        db = store.open_db()
        summary = training.train(db, recipes.load("tiny", [f"model.name={tiny}", "steps=2", "eval.holdout=4"]))
        rid = summary["run_id"]
        done, _ = store.open_evaluation(db, model=f"run:{rid}@2", set_name="gsm8k|mini", run_id=rid, run_step=2,
                                        params=dict(k=4, temperature=0.6, problems=3))
        store.finish_evaluation(db, done, EVAL_METRICS)
        store.open_evaluation(db, model=f"run:{rid}@1", set_name="never-finished", run_id=rid, run_step=1,
                              params=dict(k=1, temperature=0.0, problems=5))
        steps = list(db.query("SELECT step, reward_mean, golden_injections FROM steps WHERE run_id = ?", [rid]))
        db.close()
    return dict(home=home, tiny=tiny, run_id=rid, summary=summary, steps=steps)


@pytest.fixture
def home(trained, monkeypatch) -> Path:
    monkeypatch.setenv("GCPO_HOME", str(trained["home"]))
    return trained["home"]


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def section(body: str, title: str) -> str:
    return body.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def cli(hub_url: str, home: Path, tmp_path: Path, *args: str, token: str | None = TOKEN):
    """The CLI in a fresh process, pointed at the stand-in: huggingface_hub reads HF_ENDPOINT
    and offline mode when it is imported."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("HF_TOKEN",
                                                                                        "HUGGING_FACE_HUB_TOKEN")}
    env.update(GCPO_HOME=str(home), HF_ENDPOINT=hub_url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
               TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1", COLUMNS="300")
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "gcpo_cli", "export", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- the card
def test_card_holds_recipe_curve_held_out_and_evaluations(home, trained, runner, tmp_path):
    rid, out = trained["run_id"], tmp_path / "adapter"
    r = runner.invoke(app, ["export", rid, "--out", str(out), "--license", "mit"])
    assert r.exit_code == 0, r.output
    assert "model card: README.md" in r.output
    meta, body = split_card((out / "README.md").read_text())
    assert meta["library_name"] == "peft" and meta["license"] == "mit"
    assert {"gcpo", "grpo", "reinforcement-learning", "math", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # the tiny base lives in a local folder: no hub id to name
    assert f"`{rid}` (completed)" in section(body, "Training run") and "| steps | 2 of 2 |" in body

    curve = section(body, "Training curve")
    rewards = [s["reward_mean"] for s in sorted(trained["steps"], key=lambda s: s["step"])]
    golden = int(sum(s["golden_injections"] for s in trained["steps"]))
    assert golden > 0  # the random tiny model is always wrong: every group went gold
    assert "| steps recorded | 2 |" in curve
    assert f"| reward mean, first step | {rewards[0]:.3f} |" in curve
    assert f"| reward mean, last step | {rewards[-1]:.3f} |" in curve
    assert f"| golden answers injected | {golden} (in 2 steps) |" in curve

    before, after = trained["summary"]["before"], trained["summary"]["after"]
    held = section(body, "Held-out accuracy")
    assert f"| before | 0 | 4 | {before['mean_at_k']:.1%} |" in held
    assert f"| after | 2 | 4 | {after['mean_at_k']:.1%} |" in held
    assert "| gain |" in held

    table = section(body, "Evaluations")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| set ")]
    assert len(rows) == 3  # held out before and after, and the finished evaluation; never the unfinished one
    assert rows[0].startswith("| arithmetic-l1-24 (held out) | 0 | 4 | 1 | 0.0 |")
    assert rows[1].startswith("| arithmetic-l1-24 (held out) | 2 | 4 | 1 | 0.0 |")
    # a `|` in a set name cannot break the table
    assert rows[2].startswith("| gsm8k\\|mini | 2 | 3 | 4 | 0.6 | 50.0% | 12.5% | 66.7% | 33.3% | 87 | 0.0% |")
    assert "never-finished" not in body

    recipe = yaml.safe_load(section(body, "Recipe").split("```yaml\n", 1)[1].split("```", 1)[0])
    run = store.open_db()["runs"].get(rid)
    stored = json.loads(run["recipe_json"])
    # the resolved recipe, as the run stored it, but for the base: its folder's name, not this machine's path
    assert stored["model"]["name"] == trained["tiny"] and recipe["model"]["name"] == "model"
    assert recipe == {**stored, "model": {**stored["model"], "name": "model"}}
    assert recipes.from_dict(recipe).eval.holdout == 4  # and it loads back as a recipe
    # the adapter files are the checkpoint's; PEFT's template card is replaced by gcpo's
    ckpt = Path(run["out_dir"]) / "checkpoints" / "step-2" / "adapter"
    assert (out / "adapter_model.safetensors").read_bytes() == (ckpt / "adapter_model.safetensors").read_bytes()
    exported, saved = (json.loads((d / "adapter_config.json").read_text()) for d in (out, ckpt))
    assert saved["base_model_name_or_path"] == trained["tiny"]  # the path it trained from
    assert exported == {**saved, "base_model_name_or_path": "model"}  # the base's folder name, no local path


def test_card_loading_snippet_runs(home, trained, tmp_path):
    """The "How to use" code of an adapter card loads the adapter and generates."""
    db = store.open_db()
    run = store.resolve_run(db, trained["run_id"])
    out = tmp_path / "adapter"
    shutil.copytree(Path(run["out_dir"]) / "checkpoints" / "step-2" / "adapter", out)
    text = publish.render_card(publish.card_data(db, run, 2, merged=False), title="me/x", load_from=str(out),
                               base_from=trained["tiny"])
    code = section(split_card(text)[1], "How to use").split("```python\n", 1)[1].split("```", 1)[0]
    assert "Put the final answer in \\\\boxed{}" in code  # the training prompt, as a Python string
    scope: dict = {}
    exec(compile(code, "card-snippet", "exec"), scope)
    assert scope["out"].shape[1] > scope["inputs"]["input_ids"].shape[1]
    # the snippet's prompt is the text training fed the model
    from gcpo_cli.prompts import from_recipe

    recipe = json.loads(run["recipe_json"])
    assert scope["text"] == from_recipe(recipe).render(scope["tokenizer"], "What is 12 * 7?")


def test_known_base_gets_its_hub_id_license_and_adapter_config(tmp_path):
    assert publish.hub_base("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert publish.hub_base("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
    assert publish.hub_base(str(tmp_path)) is None and publish.hub_base("m.gguf") is None
    assert publish.hub_base("tiny") is None
    data = dict(run_id="r1", model="smollm2-135m", base=publish.hub_base("smollm2-135m"), algorithm="gcpo",
                base_name=publish.portable_base("smollm2-135m"), datasets=[],
                set_name="s", status="completed", last_step=5, steps_planned=5, step=5, merged=False,
                recipe={"prompt_template": "{problem}", "max_new_tokens": 64}, held_out=None, evaluations=[],
                curve=publish._curve([]))
    meta, body = split_card(publish.render_card(data, title="me/x", load_from="me/x"))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["base_model_relation"] == "adapter"
    assert 'base_id = "HuggingFaceTB/SmolLM2-135M-Instruct"' in body and "No training step was recorded" in body
    assert "No evaluation of this run is recorded yet" in body
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/me/.gcpo/x", "r": 4}))
    publish.write_card(tmp_path, "card", data["base"])
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 4}


# ----------------------------------------------------------------------------- the push
def test_push_uploads_card_and_adapter_through_huggingface_hub(home, trained, hub, tmp_path):
    rid = trained["run_id"]
    r = cli(hub.url, home, tmp_path, rid, "--push-to-hub", "me/gcpo-tiny", "--private", "--branch", "dev", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["url"] == f"{hub.url}/me/gcpo-tiny" and report["revision"] == "dev"
    assert report["commit_url"] == f"{hub.url}/me/gcpo-tiny/commit/c0ffee"
    assert report["repo_id"] == "me/gcpo-tiny" and report["private"] is True and report["step"] == 2
    assert TOKEN not in r.stdout + r.stderr and hub.auth == {f"Bearer {TOKEN}"}
    assert hub.created["me/gcpo-tiny"] == {"name": "gcpo-tiny", "organization": "me", "visibility": "private"}
    assert hub.branches == [("me/gcpo-tiny", "dev")]
    [commit] = hub.commits
    assert commit["repo"] == "me/gcpo-tiny" and commit["revision"] == "dev"
    assert commit["summary"] == f"gcpo: run {rid} step 2 (adapter)"
    # what was uploaded is the folder kept on disk: the card and the checkpoint's adapter files
    out = Path(report["out"])
    assert out.is_relative_to(home) and sorted(commit["files"]) == sorted(p.name for p in out.iterdir())
    assert sorted(commit["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    ckpt = Path(trained["summary"]["out_dir"]) / "checkpoints" / "step-2" / "adapter"
    assert commit["files"]["adapter_model.safetensors"] == (ckpt / "adapter_model.safetensors").read_bytes()
    card = commit["files"]["README.md"].decode()
    assert card == (out / "README.md").read_text() and hub.validated == [card]  # metadata checked by the Hub
    meta, body = split_card(card)
    assert meta["library_name"] == "peft" and "reinforcement-learning" in meta["tags"]
    assert body.startswith("\n# me/gcpo-tiny\n")
    assert 'PeftModel.from_pretrained(base, "me/gcpo-tiny")' in body and "| gsm8k\\|mini | 2 | 3 | 4 |" in body


def test_push_merged_model(home, trained, hub, tmp_path):
    r = cli(hub.url, home, tmp_path, "--run", trained["run_id"], "--merge", "--push-to-hub", "me/gcpo-merged",
            "--out", str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr
    assert f"pushed to {hub.url}/me/gcpo-merged (main)" in r.stdout
    [commit] = hub.commits
    assert commit["revision"] == "main" and "visibility" not in hub.created["me/gcpo-merged"]
    files = commit["files"]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer_config.json"} <= set(files)
    assert files["model.safetensors"] == (tmp_path / "merged" / "model.safetensors").read_bytes()
    meta, body = split_card(files["README.md"].decode())
    assert meta["library_name"] == "transformers" and "lora" not in meta["tags"]
    assert 'AutoModelForCausalLM.from_pretrained("me/gcpo-merged")' in body and "merged" in body


def test_refused_token_keeps_the_export_and_says_where(home, trained, hub, tmp_path):
    wrong = "hf_wrong_token_abcdef0123"
    r = cli(hub.url, home, tmp_path, trained["run_id"], "--push-to-hub", "me/gcpo-tiny", token=wrong)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and wrong not in r.stdout + r.stderr
    assert lines[0].startswith("error: push to me/gcpo-tiny failed: the Hub refused the token (401")
    kept = Path(re.search(r"the export is kept in (\S+) ", lines[0], re.I).group(1))
    assert sorted(p.name for p in kept.iterdir()) == ["README.md", "adapter_config.json",
                                                      "adapter_model.safetensors"]
    assert f"hf upload me/gcpo-tiny {kept}" in lines[0] and not hub.commits


def test_unreachable_hub_keeps_the_export(home, trained, tmp_path):
    out = tmp_path / "kept"
    # a port nothing listens on: the connection is refused at once
    r = cli("http://127.0.0.1:9", home, tmp_path, trained["run_id"], "--push-to-hub", "me/x", "--out", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "push to me/x failed: cannot reach http://127.0.0.1:9" in r.stderr
    assert f"kept in {out}" in r.stderr and (out / "adapter_model.safetensors").exists()
    assert (out / "README.md").read_text().startswith("---\n")


def test_push_needs_a_token_and_checks_before_exporting(home, trained, hub, tmp_path):
    r = cli(hub.url, home, tmp_path, trained["run_id"], "--push-to-hub", "me/x", "--out", str(tmp_path / "o"),
            token=None)
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: pushing needs a Hugging Face token with write access: set HF_TOKEN, or run `hf auth login`")
    assert not (tmp_path / "o").exists() and not hub.requests  # nothing exported, nothing sent


@pytest.mark.parametrize("args, message", [
    (["--push-to-hub", "not a repo"], "'not a repo' is not a hub repo id: give ORG/NAME"),
    (["--push-to-hub", "a/b/c"], "'a/b/c' is not a hub repo id"),
    (["--private"], "--private and --revision apply to --push-to-hub ORG/NAME"),
])
def test_bad_push_options_are_one_line(home, trained, runner, tmp_path, args, message):
    r = runner.invoke(app, ["export", trained["run_id"], "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_offline_mode_is_named(home, trained, runner, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = runner.invoke(app, ["export", trained["run_id"], "--push-to-hub", "me/x", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set" in r.output
    assert not (tmp_path / "o").exists()


def test_export_help_explains_publishing(runner):
    r = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for text in ("--push-to-hub", "ORG/NAME", "HF_TOKEN", "HF_ENDPOINT", "--private", "--revision", "--branch",
                 "--license", "model card", "hf upload"):
        assert text in " ".join(r.output.split()), text  # rich wraps paragraphs where the width falls
    # The positional RUN of 0.3 still works for old scripts but is no longer advertised: --run is the way.
    assert re.search(r"Usage: gcpo export \[OPTIONS\]\s*$", r.output, re.M), r.output[:300]


# ----------------------------------------------------------------------------- exports people can share
@pytest.fixture(scope="module")
def hub_run(tmp_path_factory) -> dict:
    """A run on a local base folder stored in bf16 (as the embedded model's hub original is), on a
    set ingested from a hub dataset (as `gcpo ingest hf:openai/gsm8k --subset main --split test`
    records it), 4 of its problems held out and graded before and after."""
    import torch
    from transformers import AutoModelForCausalLM

    from gcpo_cli.ingest import ingest_rows
    from gcpo_cli.model import tiny_tokenizer

    home = tmp_path_factory.mktemp("home16")
    base = tmp_path_factory.mktemp("bases") / "tiny-bf16"
    fp32 = build_tiny(tmp_path_factory.mktemp("tiny32") / "model")
    AutoModelForCausalLM.from_pretrained(fp32, dtype=torch.bfloat16).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCPO_HOME", str(home))
        db = store.open_db()
        rows = [{"problem": f"What is {a} + {a}?", "answer": str(2 * a), "solution": f"So \\boxed{{{2 * a}}}."}
                for a in range(12)]
        ingest_rows(db, rows, "gsm8k-test", source="hf:openai/gsm8k/main:test")
        summary = training.train(db, recipes.load("tiny", [f"model.name={base}", "set_name=gsm8k-test", "steps=1",
                                                          "eval.holdout=4"]))
        db.close()
    return dict(home=home, base=base, run_id=summary["run_id"], summary=summary)


def _tensor_dtypes(file: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def test_a_merged_export_keeps_the_bases_dtype_unless_told(hub_run, runner, tmp_path, monkeypatch):
    """Merged exports were fp32 (538 MB for a base that ships at ~270 MB in bf16)."""
    monkeypatch.setenv("GCPO_HOME", str(hub_run["home"]))
    rid = hub_run["run_id"]
    r = runner.invoke(app, ["export", "--run", rid, "--merge", "--out", str(tmp_path / "m16")])
    assert r.exit_code == 0, r.output
    assert _tensor_dtypes(tmp_path / "m16" / "model.safetensors") == {"BF16"}
    assert json.loads((tmp_path / "m16" / "config.json").read_text())["dtype"] == "bfloat16"
    r = runner.invoke(app, ["export", "--run", rid, "--merge", "--dtype", "float32", "--out", str(tmp_path / "m32")])
    assert r.exit_code == 0, r.output
    assert _tensor_dtypes(tmp_path / "m32" / "model.safetensors") == {"F32"}
    half, full = ((tmp_path / m / "model.safetensors").stat().st_size for m in ("m16", "m32"))
    assert half < 0.55 * full
    r = runner.invoke(app, ["export", "--run", rid, "--dtype", "bfloat16", "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and "--dtype applies to --merge" in r.output and not (tmp_path / "a").exists()
    # the embedded model ships in bf16 on the Hub; its gcpo cache is an fp32 copy of the GGUF
    assert publish.base_dtype("smollm2-135m") == "bfloat16"


LOAD_BOTH = """
import sys
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

merged = AutoModelForCausalLM.from_pretrained("merged")
adapter = AutoPeftModelForCausalLM.from_pretrained("adapter")  # its base: base_model_name_or_path
tok = AutoTokenizer.from_pretrained("merged")
ids = tok("What is 2 + 2?", return_tensors="pt")
for model in (merged, adapter):
    assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 2
print("loaded")
"""


def test_exports_are_readable_by_others_and_load_from_a_copy_elsewhere(hub_run, runner, tmp_path, monkeypatch):
    """Weight files were written 0600; the adapter config named the base by its absolute path and
    the card's "How to use" loaded the export from an absolute path."""
    monkeypatch.setenv("GCPO_HOME", str(hub_run["home"]))
    old = os.umask(0o022)
    try:
        for args in (["--out", str(tmp_path / "made" / "adapter")],
                     ["--merge", "--out", str(tmp_path / "made" / "merged")]):
            r = runner.invoke(app, ["export", "--run", hub_run["run_id"], *args])
            assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    made = tmp_path / "made"
    for file in made.rglob("*"):
        assert file.stat().st_mode & 0o044 == 0o044, file  # group and others may read it
        if file.is_file() and file.suffix in (".json", ".md", ".jinja"):
            text = file.read_text()
            assert str(hub_run["home"]) not in text and str(hub_run["base"]) not in text, file
    assert json.loads((made / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-bf16"
    card = (made / "adapter" / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "adapter")' in card and 'base_id = "tiny-bf16"' in card
    assert 'AutoModelForCausalLM.from_pretrained("merged")' in (made / "merged" / "README.md").read_text()
    # copied to another path, beside a copy of the base, with GCPO_HOME gone: both load offline
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(made, elsewhere)
    shutil.copytree(hub_run["base"], elsewhere / "tiny-bf16")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GCPO_HOME": str(tmp_path / "gone"), "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", LOAD_BOTH], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "loaded", r.stderr[-2000:]
    snippet = section(split_card(card)[1], "How to use").split("```python\n", 1)[1].split("```", 1)[0]
    r = subprocess.run([sys.executable, "-c", snippet], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]  # the card's own snippet runs there too


def test_the_card_is_a_hub_model_card_with_datasets_and_model_index(hub_run, runner, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("GCPO_HOME", str(hub_run["home"]))
    r = runner.invoke(app, ["export", "--run", hub_run["run_id"], "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert card.data.datasets == ["openai/gsm8k"] and card.data.library_name == "peft"
    after = hub_run["summary"]["after"]
    [result] = card.data.eval_results  # the exported checkpoint's own: not the base's, before training
    assert (result.dataset_type, result.dataset_name, result.dataset_config, result.dataset_split) == (
        "openai/gsm8k", "gsm8k-test", "main", "test")
    assert (result.task_type, result.metric_type, result.metric_name) == ("text-generation", "accuracy", "mean@1")
    assert result.metric_value == pytest.approx(after["mean_at_k"])
    assert card.data.model_name == "a"


def test_card_of_a_run_whose_process_died_says_died(home, trained):
    """A run still recorded `running` whose lock no process holds (killed with -9) is `died` on its
    card, as in `gcpo runs` and `inspect --run`, not `running`."""
    db = store.open_db()
    run = dict(store.resolve_run(db, trained["run_id"]), status="running")
    assert publish.card_data(db, run, 2, merged=False)["status"] == "died"
