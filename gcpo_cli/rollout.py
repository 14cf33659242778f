"""Prompt rendering (the presets live in prompts.py) and batched sampling of n completions per
prompt, for training rollouts and evaluation alike.

Prompts are length-bucketed (sorted by token length, then batched) so that padding stays small;
results come back in the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .prompts import BOXED_TEMPLATE as DEFAULT_TEMPLATE  # noqa: F401  (its old home; bench scripts)
from .decoding import growing_layer_class
from .prompts import Prompt, resolve
from .records import Sampling


@dataclass
class Completion:
    token_ids: list[int]  # the completion's tokens, EOS included when the model stopped
    text: str  # decoded without special tokens
    truncated: bool  # hit max_new_tokens without EOS
    # the sampler's log-prob of each token, at the sampling temperature within the top-p nucleus
    # (the probability it was drawn with); None when greedy (hf engine) or not reported
    logprobs: list[float] | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


def render_prompt(tokenizer, problem: str, prompt: Prompt | str = DEFAULT_TEMPLATE) -> str:
    """The prompt text, exactly as training and evaluation feed it: a preset (prompts.py), or a
    user-turn template with {problem} (the boxed preset with that user turn)."""
    if isinstance(prompt, str):
        prompt = resolve(template=prompt)
    return prompt.render(tokenizer, problem)


def response_ids(tokenizer, text: str) -> list[int]:
    """A written response (a golden answer) tokenised as the model would emit it: its text
    tokens, then the end-of-turn token that generation stops on."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return list(ids) + [tokenizer.eos_token_id]


def stop_ids(model, tokenizer, source: str | None = None) -> set[int]:
    """The tokens generation stops on: the tokenizer's EOS and the model's generation config's
    (read from `source`, a model folder or hub id, when there is no model object)."""
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    if config is None and source is not None:
        from transformers import GenerationConfig

        try:
            config = GenerationConfig.from_pretrained(source)
        except (OSError, ValueError):  # no generation_config.json: the tokenizer's EOS alone
            config = None
    gen_eos = getattr(config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return {i for i in ids if i is not None}


def sample_tokens(logits, sampling: Sampling, uniforms=None):
    """(next tokens, their log-probs) from [N, V] logits: argmax when greedy (log-probs
    None), else nucleus sampling; a token's log-prob is under the full softmax at the
    temperature, what the trainer's pi_old computes (issue 25), not renormalised over the
    nucleus: the sampler/trainer gap then measures engine error alone.
    `uniforms` ([N] in (0, 1]): each row's token by inverse CDF from its own number, instead of
    torch.multinomial, whose draws depend on every row of the batch."""
    import torch

    if sampling.greedy:
        return logits.argmax(-1), None
    top_p = sampling.nucleus
    full = torch.log_softmax(logits.float() / sampling.temperature, dim=-1)
    probs = full.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    if uniforms is None:
        tokens = torch.multinomial(probs, 1).squeeze(-1)
    else:
        cdf = probs.double().cumsum(-1)  # float64: no drift over a 150k vocabulary
        # the first token whose cumulative mass reaches u * total; u > 0 never lands on a zero-mass token
        target = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)
        tokens = torch.searchsorted(cdf, target).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    return tokens, full.gather(-1, tokens[:, None]).squeeze(-1)


def _decode_batch(model, tokenizer, prompts: list[list[int]], sampling: Sampling, stop: set[int],
                  streams: list | None = None) -> tuple[list[list[int]], list[list[float]] | None]:
    """sampling.draws continuations of each prompt with a KV cache. Each prompt is prefilled once and its
    cache fanned out to its n samples. Finished rows leave the batch once a quarter of it has
    finished (each compaction copies the cache), so late steps pay only for the rows still
    running. Returns [len(prompts) * n] token lists and their sampled log-probs (None when
    greedy). `streams`: one random.Random per output row, drawn once per token while the row runs."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    n, max_new_tokens = sampling.draws, sampling.max_new_tokens
    device = next(model.parameters()).device
    padded = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
    ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)  # [P, W]
    cache = DynamicCache(config=model.config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):  # full attention: preallocate
        growing = growing_layer_class()
        cache.layers = [growing(ids.shape[1] + max_new_tokens) for _ in cache.layers]
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    rows = torch.arange(len(prompts), device=device).repeat_interleave(n)
    cache = out.past_key_values
    cache.batch_select_indices(rows)
    logits = out.logits[rows, -1]  # [N, V]
    attn = mask[rows]
    pos = attn.sum(1)
    total = len(rows)
    alive = torch.arange(total, device=device)  # which output row each batch row is
    done = torch.zeros(total, dtype=torch.bool, device=device)  # batch rows that stopped, not yet compacted
    tokens = torch.zeros(total, max_new_tokens, dtype=torch.long)  # [N, T] filled as rows run
    logps = torch.zeros(total, max_new_tokens)
    length = torch.zeros(total, dtype=torch.long)  # tokens each output row produced
    stop_t = torch.tensor(sorted(stop), device=device)
    for t in range(max_new_tokens):
        u = None
        if streams is not None and not sampling.greedy:
            u = torch.tensor([1.0 - streams[r].random() if not d else 0.5
                              for r, d in zip(alive.tolist(), done.tolist())], dtype=torch.float64, device=device)
        nxt, lp = sample_tokens(logits, sampling, u)
        live = alive[~done].cpu()
        tokens[live, t] = nxt[~done].cpu()
        if lp is not None:
            logps[live, t] = lp[~done].float().cpu()
        length[live] += 1
        done = done | torch.isin(nxt, stop_t)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if int(done.sum()) * 4 >= len(done):  # compact: finished rows leave the batch
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, nxt, attn, pos, done = alive[keep], nxt[keep], attn[keep], pos[keep], done[keep]
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos[:, None],
                    past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        pos = pos + 1
    outputs = [tokens[r, : length[r]].tolist() for r in range(total)]
    return outputs, (None if sampling.greedy else [logps[r, : length[r]].tolist() for r in range(total)])


def generate(
    model,
    tokenizer,
    prompts: list[str],
    sampling: Sampling,
    seeds: list | None = None,
) -> list[list[Completion]]:
    """sampling.n completions for each prompt (greedy: one decode, shared by the n). Without
    `seeds` it uses the global torch RNG: seed it first for reproducible samples.

    `seeds` (one per prompt): sample j of prompt i draws its tokens from its own stream,
    random.Random(f"{seeds[i]}/{j}"), so what it samples depends on its prompt, its seed and the
    model alone, never on which other prompts share its batch (the data-parallel trainer splits
    a step's prompts over processes and must sample what one process would)."""
    import random

    import torch

    stop = stop_ids(model, tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # length bucketing
    n, reps = sampling.n, sampling.draws
    per_batch = max(1, sampling.batch_size // reps)
    results: list[list[Completion] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            streams = None if seeds is None else [random.Random(f"{seeds[i]}/{j}") for i in idx for j in range(reps)]
            with torch.inference_mode():
                seqs, logps = _decode_batch(model, tokenizer, [encoded[i] for i in idx], sampling, stop, streams)
            for row, i in enumerate(idx):
                comps = []
                for s in range(row * reps, (row + 1) * reps):
                    seq = seqs[s]
                    done = bool(seq) and seq[-1] in stop
                    comps.append(Completion(seq, tokenizer.decode(seq, skip_special_tokens=True), truncated=not done,
                                            logprobs=None if logps is None else logps[s]))
                if reps == 1 and n > 1:  # greedy samples are identical: decode once, share
                    comps = [Completion(list(comps[0].token_ids), comps[0].text, comps[0].truncated) for _ in range(n)]
                results[i] = comps
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
