"""Where a reference step's time goes against its compute floor (issue 16).

Reads the JSON line of `bench/train_step.py` (its steps' token counts, timings and resolved
precision) and counts the step's matrix FLOPs from the model's shapes:
- generation: the 4 prompts prefilled once each, then one token per running row per decode step
  (the merged sampler: no LoRA matmuls), LM head on the last position only;
- update: the prompts once per group and every completion token in the loss, forward (base +
  LoRA + LM head on completion positions) and backward (input gradients of every matmul, LoRA
  weight gradients; the frozen base gets no weight gradients), attention forward x 3.
Each phase's matmuls are timed on this CPU at the phase's own shapes and dtype (decode runs
[rows x 576] by [576 x 1536]-like products, which are far below peak); floor = FLOPs / that rate.
Elementwise work (norms, softmax, activations, sampling) and Python are what the floor leaves out.

    python bench/train_step.py --steps 5 > step.json && python bench/compute_floor.py step.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def matmul_rate(m: int, k: int, n: int, dtype, seconds: float = 0.3) -> float:
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    t, reps = time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def phase_rate(rows: int, mats: list[tuple[int, int, float]], dtype) -> float:
    """FLOP/s of a phase whose matmuls are [rows x k] by [k x n], each weighted by its count."""
    flops = sum(2 * rows * k * n * c for k, n, c in mats)
    seconds = sum(2 * rows * k * n * c / matmul_rate(rows, k, n, dtype) for k, n, c in mats)
    return flops / seconds


def main() -> None:
    import torch
    from transformers import AutoConfig

    from gcpo_cli import recipe_load as recipes
    from gcpo_cli.model import load_tokenizer, resolve_model
    from gcpo_cli.prompts import from_recipe

    sys.path.insert(0, str(Path(__file__).parent))
    from train_step import trl_rows

    result = json.loads(Path(sys.argv[1]).read_text().strip().splitlines()[-1])
    env = result["environment"]
    torch.set_num_threads(env["threads"])
    r = recipes.load("smollm2-cpu")
    source = resolve_model(r.model.name)
    cfg = AutoConfig.from_pretrained(source, **({"gguf_file": Path(source).name} if source.endswith(".gguf") else {}))
    tok = load_tokenizer(source)
    h, f, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    rank = r.lora.r
    prompt = statistics.mean(len(tok(from_recipe(r).render(tok, x["problem"]), add_special_tokens=False).input_ids)
                             for x in trl_rows(64))
    steps = result["steps"][1:] or result["steps"]
    groups, group_size = r.generation.problems_per_step, r.generation.samples_per_problem
    completion = statistics.mean(s["tokens"] for s in steps)  # completion tokens per step (all rows)
    in_loss = statistics.mean(s["sequences_in_loss"] for s in steps) / (groups * group_size)

    # one token through the decoder's linears: q, k, v, o, gate, up, down; per layer
    base = [(h, h, 1), (h, kv, 2), (h, h, 1), (h, f, 2), (f, h, 1)]
    lin = 2 * layers * sum(k * n * c for k, n, c in base)
    lora = 2 * layers * rank * sum((k + n) * c for k, n, c in base)
    head = 2 * h * vocab
    attn = lambda ctx: 4 * layers * h * ctx  # QK^T and AV per token over ctx positions  # noqa: E731

    decode_steps = r.generation.max_new_tokens
    rows_mean = completion / decode_steps
    gen = dict(
        prefill=groups * prompt * (lin + attn(prompt / 2)) + groups * head,
        decode=completion * (lin + head + attn(prompt + decode_steps / 2)))
    t_loss = completion * in_loss  # completion tokens in the loss
    fwd_tokens = groups * prompt + t_loss
    fwd = fwd_tokens * (lin + lora + attn(prompt)) + t_loss * head
    bwd = fwd_tokens * (lin + 2 * lora + 2 * attn(prompt)) + t_loss * head
    upd = dict(forward=fwd, backward=bwd)

    sampler = torch.bfloat16 if env["sampler_dtype"] == "bfloat16" else torch.float32
    update = torch.bfloat16 if env["update_precision"] == "bfloat16" else torch.float32
    micro = min(r.optimizer.micro_batch, groups * group_size)
    update_rows = int(micro * (prompt / group_size + completion / (groups * group_size)))
    mats = [(k, n, c) for k, n, c in base]
    rates = dict(
        prefill=phase_rate(int(groups * prompt), mats + [(h, vocab, 0)], sampler),
        decode=phase_rate(max(1, round(rows_mean)), mats + [(h, vocab, 1 / layers)], sampler),
        update=phase_rate(update_rows, mats + [(h, vocab, 1 / layers)], update))
    floors = dict(generation=gen["prefill"] / rates["prefill"] + gen["decode"] / rates["decode"],
                  update=(upd["forward"] + upd["backward"]) / rates["update"])
    measured = dict(generation=statistics.median(s["gen_s"] for s in steps),
                    update=statistics.median(s["update_s"] for s in steps),
                    grading=statistics.median(s["score_s"] for s in steps))
    step_s = result["median_step_s_excl_first"]
    out = dict(
        machine=f"{env['cpu']}, {env['threads']} threads", precision=dict(sampler=str(sampler), update=str(update)),
        shapes=dict(prompt_tokens=round(prompt, 1), completion_tokens_per_step=round(completion),
                    mean_running_rows_per_decode_step=round(rows_mean, 1), update_rows_per_micro_batch=update_rows),
        gflop=dict(prefill=round(gen["prefill"] / 1e9, 1), decode=round(gen["decode"] / 1e9, 1),
                   update_forward=round(fwd / 1e9, 1), update_backward=round(bwd / 1e9, 1)),
        gflops_at_these_shapes={k: round(v / 1e9, 1) for k, v in rates.items()},
        floor_s={k: round(v, 2) for k, v in floors.items()},
        measured_s={k: round(v, 2) for k, v in measured.items()},
        ratio={k: round(measured[k] / floors[k], 2) for k in floors},
        step=dict(measured_s=step_s, floor_s=round(sum(floors.values()), 2),
                  ratio=round(step_s / sum(floors.values()), 2)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
