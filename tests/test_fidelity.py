"""GCPO as the algorithm doc builds it (issue 9), on the tiny model: the PPO schedule makes the
sequence ratio and its clip act, log-probs are at the sampling temperature, and each baseline's
denominator is its own."""

from __future__ import annotations

import math

import pytest
import torch

from gcpo_cli import curriculum, learner
from gcpo_cli import recipe_load as recipes
from gcpo_cli import groups
from gcpo_cli import train as training
from gcpo_cli.logprobs import completion_logprobs
from gcpo_cli.model import build_tiny
from gcpo_cli.records import Problem, Rollout


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


def setup(db, tiny_dir, *overrides):
    r = recipes.load("tiny", [f"model.name={tiny_dir}", "model.autocast=none", "model.sampler_dtype=float32",
                              *overrides])
    return training.setup(db, r, None, None, None, training.NullDisplay())


TEXTS = ["1 + 1 = 2, so \\boxed{2}", "I think it is 7", "\\boxed{5}", "no idea at all, none"]


def batch(ctx, advantages):
    """Two groups of four rollouts with the given advantages (the same texts in each group)."""
    out = []
    for g, p in enumerate(ctx.pool[:2]):
        prompt = training.prompt(ctx, p.id)[1]
        for j, text in enumerate(TEXTS):
            ids = ctx.tok(text, add_special_tokens=False).input_ids + [ctx.tok.eos_token_id]
            out.append(Rollout(problem_id=p.id, sample_index=j, prompt_ids=prompt, completion_ids=ids,
                               completion=text, extracted_answer=None, truncated=False, reward=0.0,
                               correct=False, advantage=advantages[g * 4 + j]))
    return out


def lora(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def grads(model):
    return {k: v.grad.detach().clone() for k, v in model.named_parameters() if "lora_" in k and v.grad is not None}


ADV = [1.5, -0.5, -0.5, -0.5, 1.0, 1.0, -1.0, -1.0]


def test_one_update_is_the_on_policy_gradient_at_the_sampling_temperature(db, tiny_dir):
    """mini_batches = ppo_epochs = 1: the gradient is -(1/N) sum_i A_i grad mean_t log pi_T(y_t),
    with pi_T the policy at the sampling temperature, computed here by hand."""
    ctx = setup(db, tiny_dir, "temperature=0.6", "max_grad_norm=1e9", "lr=1e-12")
    rollouts = batch(ctx, ADV)
    stats = learner.update(ctx.policy, [(0, rollouts)], ctx.recipe)
    got = grads(ctx.model)
    assert stats.optimizer_updates == 1 and stats.ratio_min == stats.ratio_max == 1.0
    assert stats.loss == pytest.approx(-sum(ADV) / 8, abs=1e-6)  # s_i = 1: L = -(1/N) sum A_i
    ctx.policy.optimizer.zero_grad(set_to_none=True)
    logits = []
    for x in rollouts:  # the plain way: full sequence, logits / T, log-softmax, gather
        ids = torch.tensor([x.prompt_ids + x.completion_ids])
        out = ctx.model(input_ids=ids).logits[0, len(x.prompt_ids) - 1:-1] / 0.6
        lp = torch.log_softmax(out.float(), -1).gather(-1, torch.tensor(x.completion_ids)[:, None])
        logits.append(lp.mean())
    (-(torch.tensor(ADV) * torch.stack(logits)).sum() / 8).backward()
    want = grads(ctx.model)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6, rtol=1e-4), k
    # and at T = 1 the gradient is another one: the temperature is really applied
    with torch.no_grad():
        t1, _ = completion_logprobs(ctx.model, ctx.tok, [rollouts[0].prompt_ids], [rollouts[0].completion_ids])
        t06, _ = completion_logprobs(ctx.model, ctx.tok, [rollouts[0].prompt_ids], [rollouts[0].completion_ids],
                                     temperature=0.6)
    assert not torch.allclose(t1, t06, atol=1e-3)


def test_mini_batches_make_the_ratio_move_after_the_first_update(db, tiny_dir):
    ctx = setup(db, tiny_dir, "mini_batches=2", "lr=5e-2", "eps_low=0.2", "eps_high=0.2")
    rollouts = batch(ctx, ADV)
    stats = learner.update(ctx.policy, [(0, rollouts)], ctx.recipe)
    assert stats.optimizer_updates == 2
    first, second = rollouts[:4], rollouts[4:]
    assert all(abs(x.seq_ratio - 1) < 1e-5 for x in first)  # pi_old is the policy before any update
    assert all(abs(x.seq_ratio - 1) > 1e-4 for x in second)  # the first update moved the policy
    assert stats.ratio_max > stats.ratio_min


def test_ppo_epochs_pass_over_the_batch_again_and_the_gspo_clip_acts(db, tiny_dir):
    ctx = setup(db, tiny_dir, "ppo_epochs=3", "lr=5e-2")  # gcpo: sequence ratio, clip 3e-4 / 4e-4
    stats = learner.update(ctx.policy, [(0, batch(ctx, ADV))], ctx.recipe)
    assert stats.optimizer_updates == 3
    assert stats.clip_frac > 0  # once the policy moved, sequences leave the narrow range


def test_token_and_sequence_ratios_differ_once_the_policy_moves(db, tiny_dir):
    after = {}
    for level in ("sequence", "token"):
        for mini_batches in (1, 2):
            ctx = setup(db, tiny_dir, f"ratio_level={level}", f"mini_batches={mini_batches}", "lr=5e-2",
                        "eps_low=0.2", "eps_high=0.2")
            learner.update(ctx.policy, [(0, batch(ctx, ADV))], ctx.recipe)
            after[level, mini_batches] = lora(ctx.model)
    same = all(torch.allclose(after["sequence", 1][k], after["token", 1][k], atol=1e-6) for k in after["token", 1])
    assert same  # on-policy (one update) the two are the same gradient
    differ = any(not torch.allclose(after["sequence", 2][k], after["token", 2][k], atol=1e-6)
                 for k in after["token", 2])
    assert differ


def test_grpo_counts_zero_variance_groups_in_its_denominator(db, tiny_dir):
    """GRPO (zero_variance: keep) divides by every kept sequence, a zero-advantage group
    included: its gradient is half of the same batch without that group."""
    got = {}
    for keep in (False, True):
        ctx = setup(db, tiny_dir, "algorithm=grpo", "max_grad_norm=1e9", "lr=1e-12")
        rollouts = batch(ctx, ADV[:4] + [0.0] * 4)
        kept = rollouts if keep else rollouts[:4]
        learner.update(ctx.policy, [(0, kept)], ctx.recipe)
        got[keep] = grads(ctx.model)
    for k in got[False]:
        assert torch.allclose(got[True][k], got[False][k] / 2, atol=1e-7, rtol=1e-4)


def test_dapo_sums_tokens_over_the_batch_after_overlong_shaping(db, tiny_dir):
    ctx = setup(db, tiny_dir, "algorithm=dapo", "max_new_tokens=40", "overlong_buffer=20")
    rollouts = batch(ctx, [0.0] * 8)
    for x, reward in zip(rollouts, [1, 0, 0, 1, 0, 0, 0, 0]):
        x.reward = float(reward)
        x.correct = bool(reward)
    lengths = [len(x.completion_ids) for x in rollouts]
    assert max(lengths) > 40 - 20  # some completions fall into the overlong buffer
    kept = groups.assign_advantages(ctx.recipe, [rollouts[:4], rollouts[4:]])
    assert len(kept) == 2  # shaping gave the all-wrong group variance by length
    shaped = [x.reward for x in rollouts]
    assert shaped != [1, 0, 0, 1, 0, 0, 0, 0] and all(r <= 1 for r in shaped)
    flat = [x for g in kept for x in g]
    stats = learner.update(ctx.policy, [(0, flat)], ctx.recipe)
    # on-policy token ratios are 1: each token's objective is its sequence's advantage
    want = -sum(x.advantage * len(x.completion_ids) for x in flat) / sum(lengths)
    assert stats.loss == pytest.approx(want, abs=1e-5)


def test_frontier_keeps_all_wrong_problems_with_a_golden_answer_until_hopeless():
    w = curriculum.frontier_weight
    assert w(0, 8, injections=1, golden=True) == curriculum.GOLDEN > w(0, 8, injections=1, golden=False)
    assert w(0, 8, injections=4, golden=True, hopeless_after=4) == w(0, 8) == curriculum.FLOOR
    assert w(4, 8, golden=True) == w(4, 8)  # a mixed problem weighs as before
    ids = [f"p{i}" for i in range(20)]
    rates = {pid: (0, 8, 1) for pid in ids}  # all seen, all wrong once, one injection each

    def share(golden):  # how often p3 and p7 are drawn over 100 steps of 2 problems
        picks = [pid for step in range(100) for pid in curriculum.frontier(rates, ids, step, 2, 0, golden=golden)]
        return (picks.count("p3") + picks.count("p7")) / len(picks)

    assert share(set()) < 0.2  # without golden answers they are as hopeless as the rest (2 of 20)
    assert share({"p3", "p7"}) > 0.3


def test_a_run_records_and_inspect_shows_the_ratio_clip_and_updates(db, tiny_dir, runner):
    import json

    from gcpo_cli.cli import app

    r = recipes.load("tiny", [f"model.name={tiny_dir}", "mini_batches=2", "steps=2", "lr=5e-2"])
    summary = training.train(db, r)
    steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [summary["run_id"]]))
    assert [s["optimizer_updates"] for s in steps] == [2, 2]
    assert all(s["ratio_min"] <= s["ratio_mean"] <= s["ratio_max"] and s["ratio_max"] != s["ratio_min"]
               for s in steps)
    shown = runner.invoke(app, ["inspect", "--run", summary["run_id"]])
    assert shown.exit_code == 0
    assert all(label in shown.output for label in ("clipped fraction", "ratio max", "optimiser updates"))
    h = json.loads(runner.invoke(app, ["inspect", "--run", summary["run_id"], "--json"]).stdout)
    assert [s["optimizer_updates"] for s in h["steps"]] == [2, 2]


def test_training_and_evaluation_grade_through_one_path():
    """MathQA's option letters: a boxed option value earns reward 1 in training as it counts as
    correct in evaluation; a truncated completion is wrong in both."""
    from gcpo_cli.grader import Grader

    problem = Problem("q", "What is 6 + 6? Options: a ) 10 , b ) 11 , c ) 12 , d ) 13", "c")
    samples = [("12", False), ("c", False), ("13", False), ("12", True)]
    with Grader() as g:
        in_training = g.scores([(problem, "", ext, cut) for ext, cut in samples])  # what train.roll_out calls
        in_eval = g.verdicts([(problem.text, "c", ext, cut) for ext, cut in samples])
    assert [s.reward for s in in_training] == [1.0, 1.0, 0.0, 0.0]
    assert in_eval == [s.correct for s in in_training]


def test_a_quantised_run_is_evaluated_on_its_nf4_base_with_the_adapter(db, tiny_dir, monkeypatch, runner):
    import bitsandbytes as bnb

    from gcpo_cli import eval_targets, model
    from gcpo_cli.cli import app

    summary = training.train(db, recipes.load("tiny", [f"model.name={tiny_dir}", "model.quant=nf4", "steps=1"]))
    target = eval_targets.run_target(db, summary["run_id"], None)
    assert (target.quant, target.dtype) == ("nf4", "float32")
    loaded = {}
    real = model.load_for_inference

    def spy(*a, **kw):
        loaded["model"], tok = real(*a, **kw)
        return loaded["model"], tok

    monkeypatch.setattr(model, "load_for_inference", spy)
    r = runner.invoke(app, ["eval", "--run", summary["run_id"], "--set", summary["set_name"], "--limit", "2",
                            "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    m = loaded["model"]
    assert any(isinstance(x, bnb.nn.Linear4bit) for x in m.modules())  # the 4-bit base, as trained
    assert any("lora_A" in k for k, _ in m.named_parameters())  # the adapter on top, unmerged


def test_micro_batches_are_capped_by_sequences_and_tokens_and_keep_similar_lengths_together():
    from gcpo_cli.learner import micro_batches

    def seq(n):
        return Rollout(problem_id="p", sample_index=0, completion="", extracted_answer=None, truncated=False,
                       reward=0.0, correct=False, prompt_ids=[1] * 10, completion_ids=[2] * n)

    xs = [seq(n) for n in (90, 10, 40, 30, 20, 190)]
    assert [[x.completion_tokens for x in c] for c in micro_batches(xs, 4)] == [[10, 20, 30, 40], [90, 190]]
    # at most 120 padded tokens: 20+30 (2 x 40 = 80) fit, a third (3 x 50) does not; 200 > 120 alone
    chunks = micro_batches(xs, 4, tokens=120)
    assert [[x.completion_tokens for x in c] for c in chunks] == [[10, 20, 30], [40], [90], [190]]


def test_the_token_cap_splits_micro_batches_without_changing_the_gradient(db, tiny_dir):
    """micro_batch_tokens is a memory knob: one chunk or one sequence per chunk, the same gradient."""
    got = {}
    for cap in (0, 1):
        ctx = setup(db, tiny_dir, f"micro_batch_tokens={cap}", "max_grad_norm=1e9", "lr=1e-12")
        learner.update(ctx.policy, [(0, batch(ctx, ADV))], ctx.recipe)
        got[cap] = grads(ctx.model)
    for k in got[0]:
        assert torch.allclose(got[0][k], got[1][k], atol=1e-7, rtol=1e-4), k


def test_a_missing_sampler_logprob_is_left_out_of_the_loss_and_counted(db, tiny_dir):
    """vLLM reports NaN for a token whose log-prob it could not give (issue 25): that token is
    treated as having no sampler log-prob, so the importance weights and the loss stay finite,
    and the step counts it."""
    ctx = setup(db, tiny_dir, "tis_cap=2", "max_grad_norm=1e9")
    rollouts = batch(ctx, ADV)
    for x in rollouts:
        x.sampler_logprobs = [-1.0] * x.completion_tokens
    rollouts[1].sampler_logprobs[2] = float("nan")
    stats = learner.update(ctx.policy, [(0, rollouts)], ctx.recipe)
    assert math.isfinite(stats.loss) and math.isfinite(stats.grad_norm) and math.isfinite(stats.tis_weight_mean)
    assert stats.sampler_nonfinite == 1
    assert stats.sampler_tokens == sum(x.completion_tokens for x in rollouts) - 1


def test_golden_answer_logprob_counts_every_golden_answer_of_the_step(db, tiny_dir):
    """golden_logp_mean is pi_old's mean token log-prob over all the step's golden answers, in
    every mini-batch (it counted only the first mini-batch's)."""
    ctx = setup(db, tiny_dir, "mini_batches=2", "lr=5e-2")
    rollouts = batch(ctx, ADV)
    rollouts[0].is_golden = rollouts[4].is_golden = True  # one in each mini-batch
    golden = [rollouts[0], rollouts[4]]
    with torch.no_grad():
        logp, mask = completion_logprobs(ctx.model, ctx.tok, [x.prompt_ids for x in golden],
                                         [x.completion_ids for x in golden])
    want = float(logp.sum() / mask.sum())
    stats = learner.update(ctx.policy, [(0, rollouts)], ctx.recipe)
    assert stats.golden_logp_mean == pytest.approx(want, abs=1e-5)


def test_lora_dropout_with_several_updates_a_step_is_refused():
    """With LoRA dropout, pi_old and each later log-prob see different dropout masks, so the PPO
    ratio is noise and GSPO's 3e-4 clip fires on it (issue 25): one clear error at load."""
    with pytest.raises(recipes.RecipeError, match="lora.dropout"):
        recipes.load("tiny", ["lora.dropout=0.1", "mini_batches=2"])
    with pytest.raises(recipes.RecipeError, match="lora.dropout"):
        recipes.load("tiny", ["lora.dropout=0.1", "ppo_epochs=2"])
    assert recipes.load("tiny", ["lora.dropout=0.1"]).lora.dropout == 0.1  # on-policy: one update, no ratio


def test_the_update_reports_the_policys_entropy_and_each_side_of_the_clip(db, tiny_dir):
    """What TRL users watch (issue 26): the mean token entropy of the sequences in the loss under
    pi_old, and the clipped share split into its low (ratio < 1 - eps, A < 0) and high side."""
    ctx = setup(db, tiny_dir, "mini_batches=2", "lr=5e-2", "eps_low=0.2", "eps_high=0.2", "temperature=0.6")
    rollouts = batch(ctx, ADV)
    with torch.no_grad():
        ent, n = 0.0, 0
        for x in rollouts:
            ids = torch.tensor([x.prompt_ids + x.completion_ids])
            logits = ctx.model(input_ids=ids).logits[0, len(x.prompt_ids) - 1:-1].float() / 0.6
            ls = torch.log_softmax(logits, -1)
            ent += float(-(ls.exp() * ls).sum())
            n += len(x.completion_ids)
    stats = learner.update(ctx.policy, [(0, rollouts)], ctx.recipe)
    assert stats.entropy == pytest.approx(ent / n, rel=1e-4)
    assert stats.clip_frac > 0 and stats.clip_low_frac + stats.clip_high_frac == pytest.approx(stats.clip_frac)


def test_step_metrics_report_the_reward_spread_trl_users_watch():
    """reward_std: the mean over groups of their reward's (population) std; frac_reward_zero_std:
    the share of groups whose rewards are all equal, the groups GRPO cannot learn from."""
    from gcpo_cli.learner import UpdateStats

    def group(*rewards):
        return [Rollout(problem_id="p", sample_index=j, completion="", extracted_answer=None, truncated=False,
                        reward=r, correct=r == 1.0, prompt_ids=[1], completion_ids=[2]) for j, r in enumerate(rewards)]

    r = recipes.load("tiny")  # G = 4
    groups_ = [group(1.0, 0.0, 0.0, 0.0), group(0.0, 0.0, 0.0, 0.0), group(1.0, 1.0, 1.0, 1.0)]
    timing = dict(tokens=12, gen_s=1.0, score_s=0.0, update_s=0.0)
    m = groups.step_metrics(r, groups_, [None] * 3, 1, 4, UpdateStats(), timing, 1e-3)
    assert m.reward_std == pytest.approx(math.sqrt(0.1875) / 3)
    assert m.frac_reward_zero_std == pytest.approx(2 / 3)


def test_clip_fraction_is_recorded_per_mini_batch(db, tiny_dir):
    """pi_old is the policy before the first update, so nothing clips in the first mini-batch;
    the per-update fractions add up to clip_frac, and the step records them (metrics_json)."""
    ctx = setup(db, tiny_dir, "mini_batches=2", "lr=5e-2")
    stats = learner.update(ctx.policy, [(0, batch(ctx, ADV))], ctx.recipe)
    first, second = stats.clip_frac_by_mini_batch
    assert first == 0.0 and second > 0 and (first + second) / 2 == pytest.approx(stats.clip_frac)
    summary = training.train(db, recipes.load("tiny", [f"model.name={tiny_dir}", "mini_batches=2", "steps=1"]))
    (m,) = db.execute("SELECT metrics_json FROM steps WHERE run_id = ?", [summary["run_id"]]).fetchone()
    assert len(__import__("json").loads(m)["clip_frac_by_mini_batch"]) == 2
