"""Training on the tiny random model: offline, seeded, a few seconds per run."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from gcpo_cli import recipe_load as recipes
from gcpo_cli import learner, rollout, store
from gcpo_cli import groups
from gcpo_cli import train as training
from gcpo_cli.grader import Grader, Score
from gcpo_cli.logprobs import completion_logprobs
from gcpo_cli.model import autocast_context, build_tiny
from gcpo_cli import curriculum
from gcpo_cli.records import Rollout
from gcpo_cli.resumable import StopFlag


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A random tiny model saved to a folder, loaded through the real loading code."""
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


def tiny_recipe(tiny_dir, *overrides):
    return recipes.load("tiny", [f"model.name={tiny_dir}", *overrides])


def make_rollout(pid, j, prompt, ids, text, extracted=None, reward=0.0, correct=False):
    return Rollout(problem_id=pid, sample_index=j, prompt_ids=prompt, completion_ids=ids, completion=text,
                   extracted_answer=extracted, truncated=False, reward=reward, correct=correct)


def rollouts(db, run_id):
    return list(db.query("SELECT * FROM rollouts WHERE run_id = ? ORDER BY step, problem_id, sample_index", [run_id]))


def test_gcpo_run_records_every_rollout_and_goes_gold_only_in_all_wrong_groups(db, tiny_dir):
    summary = training.train(db, tiny_recipe(tiny_dir))
    assert summary["status"] == "completed" and summary["last_step"] == 3
    rows = rollouts(db, summary["run_id"])
    sampled = [r for r in rows if not r["is_golden"]]
    assert len(sampled) == 3 * 2 * 4  # steps x B x G: every sampled rollout, displaced ones too
    keys = {(r["step"], r["problem_id"], r["sample_index"]) for r in rows}
    assert len(keys) == len(rows)
    groups = {}
    for r in rows:
        groups.setdefault((r["step"], r["problem_id"]), []).append(r)
    # Seeded: the random tiny model never answers right, so every group is all wrong and every
    # one of them must go gold (this asserts the injections happen, not only their shape).
    assert all(not r["correct"] for r in sampled)
    assert all(any(r["is_golden"] for r in g) for g in groups.values()) and len(groups) == 3 * 2
    for group in groups.values():
        golden = [r for r in group if r["is_golden"]]
        others = [r for r in group if not r["is_golden"]]
        assert sorted(r["sample_index"] for r in others) == [0, 1, 2, 3]
        if golden:  # exactly one replacement (of the last), only when every sample is wrong
            assert len(golden) == 1 and golden[0]["sample_index"] == 4  # recorded as an extra row
            assert golden[0]["correct"] == 1 and golden[0]["reward"] == 1.0
            assert not any(r["correct"] for r in others)
            displaced = [r for r in others if r["advantage"] is None]
            assert [r["sample_index"] for r in displaced] == [3]  # kept in the record, not in the loss
            assert golden[0]["advantage"] > 0 and all(r["advantage"] < 0 for r in others if r is not displaced[0])
            assert "\\boxed{" in golden[0]["completion"]
    steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [summary["run_id"]]))
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        n_golden = sum(1 for (st, _), g in groups.items() if st == s["step"] and any(r["is_golden"] for r in g))
        assert s["golden_injections"] == n_golden
        assert s["gen_s"] > 0 and s["tokens_per_s"] > 0 and s["grad_norm"] >= 0
        assert json.loads(s["metrics_json"])["groups"] == 2
    run = db["runs"].get(summary["run_id"])
    assert json.loads(run["recipe_json"])["algorithm"] == "gcpo" and run["status"] == "completed"


def _lora_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def _base_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" not in k}


def test_update_moves_lora_weights_only_and_raises_golden_answer_logprob(db, tiny_dir):
    ctx = training.setup(db, tiny_recipe(tiny_dir, "lr=5e-3"), None, None, None, training.NullDisplay())
    lora0, base0 = _lora_state(ctx.model), _base_state(ctx.model)
    pid = ctx.pool[0].id
    prompt = training.prompt(ctx, pid)[1]
    wrong = [ctx.tok("I do not know.", add_special_tokens=False).input_ids + [ctx.tok.eos_token_id]] * 3
    group = [make_rollout(pid, j, prompt, ids, "I do not know.") for j, ids in enumerate(wrong)]
    group.append(make_rollout(pid, 3, prompt, [], ""))
    assert groups.go_gold(ctx.recipe, ctx.by_id[group[0].problem_id], group, ctx.tok, None) == "injected"
    ga = group[3]
    assert ga.is_golden and ga.completion_ids[-1] == ctx.tok.eos_token_id
    kept = groups.assign_advantages(ctx.recipe, [group])
    assert len(kept) == 1

    amp = autocast_context(ctx.model, ctx.recipe.model.autocast)

    def golden_logp():
        with torch.no_grad(), amp():
            logp, mask = completion_logprobs(ctx.model, ctx.tok, [ga.prompt_ids], [ga.completion_ids])
        return float(logp.sum() / mask.sum())

    before = golden_logp()
    for _ in range(3):
        stats = learner.update(ctx.policy, [(0, group)], ctx.recipe)
    assert golden_logp() > before + 1e-3
    assert stats.grad_norm > 0
    lora1, base1 = _lora_state(ctx.model), _base_state(ctx.model)
    assert any(not torch.equal(lora0[k], lora1[k]) for k in lora0)
    assert all(torch.equal(base0[k], base1[k]) for k in base0)


def test_all_correct_groups_are_skipped_from_the_loss(db, tiny_dir):
    ctx = training.setup(db, tiny_recipe(tiny_dir), None, None, None, training.NullDisplay())
    pid = ctx.pool[0].id
    prompt = training.prompt(ctx, pid)[1]
    right = [make_rollout(pid, j, prompt, [5, 6], "x", "2", 1.0, True) for j in range(4)]
    assert groups.go_gold(ctx.recipe, ctx.by_id[right[0].problem_id], right, ctx.tok, None) is None
    assert groups.assign_advantages(ctx.recipe, [right]) == []
    stats = learner.update(ctx.policy, [(0, [])], ctx.recipe)
    assert stats.grad_norm == 0.0


def test_dapo_dynamic_sampling_refills_the_batch_with_mixed_groups(db, tiny_dir, monkeypatch):
    r = tiny_recipe(tiny_dir, "algorithm=dapo", "steps=1")
    ctx = training.setup(db, r, None, None, None, training.NullDisplay())
    first = set(curriculum.uniform([p.id for p in ctx.pool], 0, r.generation.problems_per_step, r.seed))

    def fake_scores(grader, items):  # the first batch is all wrong, any other problem mixed (sample 0 right)
        G = r.generation.samples_per_problem
        return [Score(float(ok), ok) for i, (p, *_) in enumerate(items) for ok in [p.id not in first and i % G == 0]]

    monkeypatch.setattr(Grader, "scores", fake_scores)
    with Grader() as g:
        seqs, m = training.train_step(ctx, 1, g, StopFlag())
    assert m.groups == 4 and m.groups_in_loss == 2  # two dropped, two refilled
    assert m.golden_injections == 0  # DAPO has no golden answers
    assert len({s.problem_id for s in seqs}) == 4 and len(seqs) == 16
    dropped = [s for s in seqs if s.problem_id in first]
    assert all(s.advantage == 0.0 for s in dropped)
    assert all(s.advantage != 0.0 for s in seqs if s.problem_id not in first)


def test_nf4_base_with_bf16_compute_and_gradient_checkpointing_trains_lora_on_cpu(db, tiny_dir):
    """The 1.5b-qlora configuration on the tiny model: nf4 base, bf16 compute and autocast,
    gradient checkpointing, several mini-batch updates; a real optimiser step moves the adapter."""
    import bitsandbytes as bnb

    ctx = training.setup(db, tiny_recipe(tiny_dir, "model.quant=nf4", "model.dtype=bfloat16",
                                         "model.gradient_checkpointing=true", "model.autocast=bfloat16",
                                         "mini_batches=2", "lr=5e-3"), None, None, None, training.NullDisplay())
    assert ctx.model.is_gradient_checkpointing
    # no fp32 residual stream under a bf16 compute dtype: only the LoRA weights stay fp32
    fp32 = [k for k, v in ctx.model.named_parameters() if v.dtype == torch.float32 and "lora_" not in k]
    assert fp32 == []
    prompt = torch.tensor([training.prompt(ctx, ctx.pool[0].id)[1]])
    # as rollouts run it (rollout.generate): eval mode, where gradient checkpointing is off and
    # the model keeps a KV cache (transformers 5.19 returns none in train mode)
    ctx.model.eval()
    with torch.no_grad(), autocast_context(ctx.model, "bfloat16")():
        cache = ctx.model(input_ids=prompt, use_cache=True).past_key_values
    ctx.model.train()
    assert cache.layers[0].keys.dtype == torch.bfloat16  # the rollouts' KV cache is bf16
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in ctx.model.modules())
    lora0 = _lora_state(ctx.model)
    with Grader() as g:
        _, m = training.train_step(ctx, 1, g, StopFlag())
    assert m.golden_injections >= 1 and m.update.grad_norm > 0 and m.update.optimizer_updates == 2
    assert any(not torch.equal(lora0[k], v) for k, v in _lora_state(ctx.model).items())


def test_resume_after_a_crash_continues_without_duplicates_and_matches_an_uninterrupted_run(db, tiny_dir, monkeypatch):
    reference = training.train(db, tiny_recipe(tiny_dir, "save_every=2"))
    real_save = training.save_checkpoint

    def crash_at_3(ctx, step):
        if step == 3:  # step 3 is in the database, its checkpoint never gets written
            raise KeyboardInterrupt
        return real_save(ctx, step)

    monkeypatch.setattr(training, "save_checkpoint", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        training.train(db, tiny_recipe(tiny_dir, "save_every=2"))
    crashed = db.execute("SELECT id FROM runs ORDER BY id DESC LIMIT 1").fetchone()[0]
    run = db["runs"].get(crashed)
    assert run["status"] == "interrupted" and run["last_step"] == 3 and run["checkpoint_step"] == 2
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    resumed = training.train(db, resume_run=crashed[:10])
    assert resumed["status"] == "completed" and resumed["last_step"] == 3
    rows = rollouts(db, crashed)
    assert len(rows) == len({(r["step"], r["problem_id"], r["sample_index"]) for r in rows})
    assert sum(1 for r in rows if not r["is_golden"]) == 24
    strip = lambda rs: [(r["step"], r["problem_id"], r["sample_index"], r["completion"], r["is_golden"]) for r in rs]
    assert strip(rows) == strip(rollouts(db, reference["run_id"]))


def test_ctrl_c_abandons_the_step_saves_and_marks_the_run_interrupted(db, tiny_dir, monkeypatch):
    real_generate = rollout.generate
    calls = []

    def generate_then_ctrl_c(*a, **kw):
        calls.append(1)
        out = real_generate(*a, **kw)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(rollout, "generate", generate_then_ctrl_c)
    summary = training.train(db, tiny_recipe(tiny_dir, "save_every=5"))
    assert summary["status"] == "interrupted" and summary["last_step"] == 1
    assert summary["checkpoint_step"] == 1  # saved on the way out
    assert [r[0] for r in db.execute("SELECT DISTINCT step FROM rollouts WHERE run_id = ?", [summary["run_id"]])] == [1]
    monkeypatch.setattr(rollout, "generate", real_generate)
    done = training.train(db, resume_run=summary["run_id"])
    assert done["status"] == "completed" and done["last_step"] == 3


def test_frontier_curriculum_prefers_problems_on_the_edge(db, tiny_dir):
    from gcpo_cli.curriculum import frontier, frontier_weight

    assert frontier_weight(4, 8) > frontier_weight(None, None) > frontier_weight(8, 8)
    assert frontier_weight(0, 8) == frontier_weight(8, 8) > 0
    summary = training.train(db, tiny_recipe(tiny_dir, "curriculum=frontier", "steps=2"))
    rates = store.pass_rates(db, summary["run_id"], 32)
    assert sum(n for _, n, _ in rates.values()) == 2 * 2 * 4  # steps x B x G sampled rollouts
    picks = frontier(rates, [p[0] for p in db.execute("SELECT id FROM problems")], 5, 2, 0)
    assert len(set(picks)) == 2


def test_cli_train_runs_and_export(runner, tiny_dir, tmp_path):
    from gcpo_cli.cli import app

    result = runner.invoke(app, ["train", "--recipe", "tiny", "--model", tiny_dir, "--steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["status"] == "completed" and summary["last_step"] == 2
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)
    assert listed[0]["id"] == summary["run_id"] and len(listed[0]["reward_mean_per_step"]) == 2
    table = runner.invoke(app, ["runs"], env={"COLUMNS": "80"})
    assert summary["run_id"] in table.output and "completed" in table.output  # ids are never squeezed
    assert max(len(line) for line in table.output.splitlines()) <= 80
    out = tmp_path / "adapter"
    assert runner.invoke(app, ["export", "--run", summary["run_id"][:12], "--out", str(out)]).exit_code == 0
    assert (out / "adapter_config.json").exists()
    merged = tmp_path / "merged"
    # the run as a positional argument: the old spelling, still accepted for a release
    assert runner.invoke(app, ["export", summary["run_id"], "--merge", "--out", str(merged)]).exit_code == 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the merged model is the policy that trained: greedy outputs match base + adapter
    merged_model = AutoModelForCausalLM.from_pretrained(merged)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(out))
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok("What is 2 + 3?", return_tensors="pt").input_ids
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(merged_model.generate(ids, **kw), adapted.generate(ids, **kw))
    base_sd = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert any(not torch.equal(v, base_sd[k]) for k, v in merged_model.state_dict().items())  # LoRA was merged
    bad = runner.invoke(app, ["export", "--run", "zzzz", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unknown run 'zzzz'" in bad.output
    missing = runner.invoke(app, ["train", "--recipe", "tiny", "--set", "nope"])
    assert missing.exit_code == 1 and "unknown set 'nope'" in missing.output


def test_shared_prompt_forward_and_merged_sampler_are_exact(db, tiny_dir):
    ctx = training.setup(db, tiny_recipe(tiny_dir, "lr=5e-2", "model.sampler_dtype=float32", "model.autocast=none"),
                         None, None, None, training.NullDisplay())
    seqs = []
    for p in ctx.pool[:2]:
        prompt = training.prompt(ctx, p.id)[1]
        for j, text in enumerate(["1 + 1 = 2", "no idea at all", "3"]):
            ids = ctx.tok(text, add_special_tokens=False).input_ids + [ctx.tok.eos_token_id]
            seqs.append(make_rollout(p.id, j, prompt, ids, text))
    prompts, completions = [s.prompt_ids for s in seqs], [s.completion_ids for s in seqs]
    with torch.no_grad():
        shared, m1 = completion_logprobs(ctx.model, ctx.tok, prompts, completions, share_prompts=True)
        plain, m2 = completion_logprobs(ctx.model, ctx.tok, prompts, completions, share_prompts=False)
    assert torch.equal(m1, m2) and torch.allclose(shared, plain, atol=1e-5)
    # after an update the merged sampler computes what the policy computes
    for s, a in zip(seqs, [1.0, -1.0, 0.5] * 2):
        s.advantage = a
    learner.update(ctx.policy, [(0, seqs)], ctx.recipe)
    ids = torch.tensor([seqs[0].prompt_ids + seqs[0].completion_ids])
    with torch.no_grad():
        want = ctx.model(input_ids=ids).logits
        got = ctx.engine.model(input_ids=ids).logits
    lora_b = [v for k, v in _lora_state(ctx.model).items() if "lora_B" in k]
    assert any(bool(v.abs().sum() > 0) for v in lora_b)  # the deltas being merged are not zero
    assert torch.allclose(want, got, atol=1e-4)


def test_bf16_sampler_tracks_the_policy(db, tiny_dir):
    ctx = training.setup(db, tiny_recipe(tiny_dir, "model.sampler_dtype=bfloat16"), None, None, None,
                         training.NullDisplay())
    ids = torch.tensor([training.prompt(ctx, ctx.pool[0].id)[1]])
    sampler = ctx.engine.model
    assert next(sampler.parameters()).dtype == torch.bfloat16
    with torch.no_grad(), autocast_context(ctx.model, ctx.recipe.model.autocast)():
        want = torch.log_softmax(ctx.model(input_ids=ids).logits.float(), -1)
        got = torch.log_softmax(sampler(input_ids=ids).logits.float(), -1)
    assert torch.allclose(want, got, atol=0.1)


def test_golden_answer_longer_than_the_limit_is_not_injected(db, tiny_dir):
    ctx = training.setup(db, tiny_recipe(tiny_dir, "max_new_tokens=10"), None, None, None, training.NullDisplay())
    with Grader() as g:
        seqs, m = training.train_step(ctx, 1, g, StopFlag())
    # counted, not injected: the all-wrong groups stay without contrast
    assert m.golden_too_long == 2 and m.golden_injections == 0 and not [s for s in seqs if s.is_golden]
    assert m.sequences_in_loss == 0
    # a cut golden answer (no end, usually no final answer) with reward 1 is no longer an option
    with pytest.raises(recipes.RecipeError, match="golden.too_long"):
        tiny_recipe(tiny_dir, "golden_too_long=truncate")


def test_kill_9_leaves_no_partial_step_and_resume_continues(tiny_dir, gcpo_home, tmp_path):
    """A real SIGKILL in the middle of training: only whole steps are in the database, and
    --resume picks up from the last checkpoint without recording any rollout twice."""
    import sqlite3
    import subprocess
    import sys
    import time

    db_path = tmp_path / "kill.db"
    cmd = [sys.executable, "-m", "gcpo_cli", "train", "--recipe", "tiny", "--model", tiny_dir,
           "--steps", "200", "--save-every", "2", "-o", "max_new_tokens=8", "--db", str(db_path), "--json"]
    env = {**os.environ, "GCPO_HOME": str(gcpo_home)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            if db_path.exists():
                try:
                    with sqlite3.connect(db_path) as c:
                        done = c.execute("SELECT MAX(step) FROM steps").fetchone()[0] or 0
                except sqlite3.OperationalError:
                    continue
                if done >= 3:
                    break
        # while it trains: listed as running, and a resume of it is refused, touching nothing
        listed = subprocess.run([sys.executable, "-m", "gcpo_cli", "runs", "--db", str(db_path), "--json"],
                                env=env, capture_output=True, text=True)
        assert json.loads(listed.stdout)[0]["status"] == "running"
        live_id = json.loads(listed.stdout)[0]["id"]
        refused = subprocess.run([sys.executable, "-m", "gcpo_cli", "train", "--resume", live_id, "--db",
                                  str(db_path)], env=env, capture_output=True, text=True)
        assert refused.returncode == 1 and "is being trained right now" in refused.stderr
        assert f"pid\": {proc.pid}" in refused.stderr and "Traceback" not in refused.stderr
        assert proc.poll() is None  # the live run goes on
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    with sqlite3.connect(db_path) as c:
        run_id, status, last, ckpt = c.execute("SELECT id, status, last_step, checkpoint_step FROM runs").fetchone()
        steps = [r[0] for r in c.execute("SELECT step FROM steps ORDER BY step")]
        per_step = dict(c.execute("SELECT step, COUNT(*) FROM rollouts WHERE is_golden = 0 GROUP BY step"))
    assert status == "running" and last >= 3  # killed: nobody could mark it
    assert steps == list(range(1, last + 1))
    assert all(per_step[s] == 2 * 4 for s in steps)  # whole steps only: B x G rollouts each
    assert ckpt >= last - 2
    listed = subprocess.run([sys.executable, "-m", "gcpo_cli", "runs", "--db", str(db_path), "--json"],
                            env=env, capture_output=True, text=True)
    assert json.loads(listed.stdout)[0]["status"] == "died"  # marked running, nobody holds it
    too_few = subprocess.run([sys.executable, "-m", "gcpo_cli", "train", "--resume", run_id, "--steps", str(ckpt),
                              "--db", str(db_path)], env=env, capture_output=True, text=True)
    assert too_few.returncode == 1 and "--steps must be more" in too_few.stderr
    resumed = subprocess.run([sys.executable, "-m", "gcpo_cli", "train", "--resume", run_id, "--steps",
                              str(last + 1), "--db", str(db_path), "--json"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout[resumed.stdout.index("{"):])["last_step"] == last + 1
    with sqlite3.connect(db_path) as c:
        keys = c.execute("SELECT step, problem_id, sample_index FROM rollouts").fetchall()
        steps = [r[0] for r in c.execute("SELECT step FROM steps ORDER BY step")]
    assert len(keys) == len(set(keys))
    with sqlite3.connect(db_path) as c:
        sampled = c.execute("SELECT COUNT(*) FROM rollouts WHERE is_golden = 0").fetchone()[0]
    assert sampled == (last + 1) * 8
    assert steps == list(range(1, last + 2))


def test_golden_template_renders_the_answer_as_the_model_would_write_it(db, tiny_dir):
    template = "{solution}\n</think>\n\nFinal: \\boxed{{{answer}}}"
    ctx = training.setup(db, tiny_recipe(tiny_dir, f"golden_template={json.dumps(template)}",
                                         "max_new_tokens=120"), None, None, None, training.NullDisplay())
    p = ctx.pool[0]
    group = [make_rollout(p.id, j, training.prompt(ctx, p.id)[1], [5], "x") for j in range(4)]
    assert groups.go_gold(ctx.recipe, ctx.by_id[group[0].problem_id], group, ctx.tok, None) == "injected"
    ga = group[3]
    assert ga.completion == f"{p.golden}\n</think>\n\nFinal: \\boxed{{{p.answer}}}"
    assert ga.extracted_answer == p.answer
    assert ctx.tok.decode(ga.completion_ids[:-1]) == ga.completion


def test_typed_flags_are_values_not_yaml_and_old_spellings_still_work(runner, tiny_dir):
    from gcpo_cli.cli import app

    made = runner.invoke(app, ["ingest", "synthetic:arithmetic", "--name", "007", "--count", "8", "--levels", "1"])
    assert made.exit_code == 0, made.output  # --name: the old spelling of --set
    for flag in ("--set", "--data"):  # --data: the old spelling
        r = runner.invoke(app, ["train", "--recipe", "tiny", "--model", tiny_dir, flag, "007", "--steps", "1",
                                "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout[r.stdout.index("{"):])["set_name"] == "007"  # not set 7
    for value, says in (("null", "unknown set 'null'"), ("on", "unknown set 'on'"), ("", "needs a name")):
        r = runner.invoke(app, ["train", "--recipe", "tiny", "--model", tiny_dir, "--set", value])
        assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--recipe", "tiny", "--set", "007", "--data", "008"])
    assert r.exit_code == 1 and "give --set once" in r.output


def test_an_nf4_qwen2_policy_trains_after_sampling_on_cpu(db, tmp_path):
    """The 1.5B recipe's architecture (Qwen2: biased q/k/v projections) as a tiny nf4 model with
    bf16 compute. On a CPU with AVX512-BF16, bitsandbytes repacked the 4-bit weights when the
    policy sampled (eval mode, no gradients) onto a path without backward, and the update then
    crashed on the biased layers; load_base turns that repacking off."""
    import bitsandbytes as bnb
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from gcpo_cli.model import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "qwen2")
    tok.save_pretrained(tmp_path / "qwen2")
    ctx = training.setup(db, tiny_recipe(str(tmp_path / "qwen2"), "model.quant=nf4", "model.dtype=bfloat16",
                                         "model.gradient_checkpointing=true", "lr=5e-3"),
                         None, None, None, training.NullDisplay())
    layers = [m for m in ctx.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    lora0 = _lora_state(ctx.model)
    with Grader() as g:
        _, m = training.train_step(ctx, 1, g, StopFlag())  # samples, then updates
    assert m.golden_injections >= 1 and m.update.grad_norm > 0
    assert all(not torch.equal(lora0[k], v) for k, v in _lora_state(ctx.model).items() if "lora_B" in k)


def test_benchmarks_are_evaluated_before_and_after_and_never_trained_on(runner, db, tiny_dir):
    """eval.benchmarks (issue 22): other sets, evaluated before and after training as the
    held-out tail is, reported per set; a problem they share with the training set is not
    trained on; a benchmark not in the database fails in one line before any model loads."""
    from gcpo_cli.cli import app
    from gcpo_cli.ingest import ingest_rows

    rows = [dict(problem=f"What is {i} + 1?", answer=str(i + 1), solution=f"{i} + 1 = \\boxed{{{i + 1}}}")
            for i in range(12)]
    ingest_rows(db, rows, "train-set")
    ingest_rows(db, rows[8:] + [dict(problem="What is 50 + 1?", answer="51")], "test-set")  # 4 shared
    r = tiny_recipe(tiny_dir, "set_name=train-set", "eval.benchmarks=test-set", "eval.limit=3", "steps=2")
    ctx = training.setup(db, r, None, None, None, training.NullDisplay())
    assert [len(ps) for ps in ctx.benchmarks.values()] == [3] and len(ctx.pool) == 12 - 3  # the first 3 left out
    summary = training.train(db, r)
    result = summary["benchmarks"]["test-set"]
    assert result["before"]["n_problems"] == result["after"]["n_problems"] == 3
    evaluated = {e["run_step"] for e in db.query("SELECT run_step FROM evaluations WHERE set_name = 'test-set'")}
    assert evaluated == {0, 2}
    out = runner.invoke(app, ["train", "--recipe", "tiny", "--model", tiny_dir, "-o", "set_name=train-set",
                              "-o", "eval.benchmarks=svamp", "--db", str(db.conn.execute("PRAGMA database_list")
                                                                           .fetchone()[2])])
    assert out.exit_code == 1 and "benchmark 'svamp' is not in the database" in out.output
    assert "Traceback" not in out.output


def test_the_smollm2_gsm8k_recipe_runs_on_tiny_shapes_with_its_own_knobs(db, tiny_dir, shared_data):
    """smollm2-gsm8k (issue 22) with only the model and the sizes made tiny: it trains on GSM8K
    training rows, goes gold with the solution rewritten as the model should answer (no
    <<calc>> annotations, no `#### N`, the boxed answer last), and reports GSM8K, SVAMP and
    MAWPS before and after, none of them trained on."""
    def first(name: str, n: int) -> list[dict]:
        with open(shared_data / name.removesuffix("-train") / ("train.jsonl" if "train" in name else "test.jsonl")) as f:
            return [json.loads(next(f)) for _ in range(n)]

    from gcpo_cli.ingest import ingest_rows

    rows = first("gsm8k-train", 6)
    assert all("<<" in r["answer"] and "####" in r["answer"] for r in rows[:2])  # the layout the template undoes
    ingest_rows(db, rows, "gsm8k-train")
    for name in ("gsm8k", "svamp", "mawps"):
        ingest_rows(db, first(name, 2), name)
    shipped = recipes.load("smollm2-gsm8k")
    assert shipped.set_name == "gsm8k-train" and shipped.generation.max_new_tokens >= 256
    assert set(shipped.eval.benchmarks) >= {"gsm8k", "svamp", "mawps"}
    r = recipes.load("smollm2-gsm8k", [f"model.name={tiny_dir}", "model.dtype=float32",
                                       "generation.problems_per_step=2", "generation.samples_per_problem=2",
                                       "steps=2", "eval.limit=2"])
    assert (r.generation.temperature, r.golden.template, r.optimizer.lr) == \
        (shipped.generation.temperature, shipped.golden.template, shipped.optimizer.lr)
    summary = training.train(db, r)
    assert summary["status"] == "completed"
    assert {s: sorted(v) for s, v in summary["benchmarks"].items()} == \
        {s: ["after", "before"] for s in ("gsm8k", "svamp", "mawps")}
    golden = [x for x in rollouts(db, summary["run_id"]) if x["is_golden"]]
    assert golden  # the random tiny model never answers right: every group goes gold
    for g in golden:
        assert "<<" not in g["completion"] and "####" not in g["completion"]
        assert g["completion"].endswith(f"The final answer is $\\boxed{{{g['extracted_answer']}}}$.")
    trained = {x["problem_id"] for x in rollouts(db, summary["run_id"])}
    in_train = {p.id for p in store.set_problems(db, "gsm8k-train")[1]}
    assert trained and trained <= in_train
