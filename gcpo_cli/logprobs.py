"""The policy's per-token log-probs of completions: log softmax(logits / T)[token], the quantity
the update, pi_old and the sampler/trainer mismatch are all made of.

Only completion positions go through the LM head, never the prompt's full-vocabulary logits, and
those go through it in chunks (`head_logprobs`), so memory does not hold B x L x V logits.
"""

from __future__ import annotations

import torch


def completion_logprobs(model, tok, prompts: list[list[int]], completions: list[list[int]],
                        share_prompts: bool = True, temperature: float = 1.0):
    """Log-probs of each completion token under `model` sampling at `temperature`:
    log softmax(logits / T).  Returns logp, mask: [N, L].

    With share_prompts, each distinct prompt (a group's G members share one) is run once and its
    KV cache fanned out to its completions; gradients flow back through the shared prefix, so
    this is exact, with far fewer tokens than padding every sequence."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()  # LoRA lives inside both
    device = next(model.parameters()).device
    comp = tok.pad({"input_ids": completions}, padding_side="right", return_tensors="pt")
    comp_ids, cmask = comp["input_ids"], comp["attention_mask"]  # [N, L]
    if share_prompts:
        distinct: dict[tuple, int] = {}
        row = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts])
        pr = tok.pad({"input_ids": [list(p) for p in distinct]}, padding_side="left", return_tensors="pt")
        pids, pmask = pr["input_ids"], pr["attention_mask"]  # [P, W]
        out = decoder(input_ids=pids.to(device), attention_mask=pmask.to(device),
                      position_ids=((pmask.cumsum(1) - 1).clamp(min=0)).to(device), use_cache=True)
        cache = out.past_key_values
        cache.batch_select_indices(row.to(device))  # [P] prompts -> [N] rows, differentiable
        attn = torch.cat([pmask[row], cmask], 1)
        pos = pmask[row].sum(1, keepdim=True) + torch.arange(comp_ids.shape[1])[None]
        out2 = decoder(input_ids=comp_ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
                       past_key_values=cache, use_cache=True)
        # the prompt's last position predicts completion token 0; completion t predicts t+1
        hidden = torch.cat([out.last_hidden_state[row.to(device), -1:], out2.last_hidden_state[:, :-1]], 1)
    else:
        pr = tok.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
        width = pr["input_ids"].shape[1]
        ids = torch.cat([pr["input_ids"], comp_ids], 1)
        attn = torch.cat([pr["attention_mask"], cmask], 1)
        out = decoder(input_ids=ids.to(device), attention_mask=attn.to(device),
                      position_ids=((attn.cumsum(1) - 1).clamp(min=0)).to(device), use_cache=False)
        hidden = out.last_hidden_state[:, width - 1:-1]  # position W-1+t predicts completion token t
    mask = cmask.to(device).float()
    return head_logprobs(hidden, head, comp_ids.to(device), temperature) * mask, mask  # [N, L]


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                  temperature: float = 1.0, max_elements: int = 2**27) -> torch.Tensor:
    """token_logprobs(head(hidden) / temperature, targets) without holding every position's
    logits at once: the policy's log-probs at the sampling temperature (TRL and verl divide the
    logits the same way).  hidden: [N, L, H], targets: [N, L] -> [N, L].

    Positions go through the LM head in chunks of at most `max_elements` logits (~0.5 GB in
    fp32); each chunk is checkpointed, so its logits are recomputed in the backward instead of
    kept. With a 152k vocabulary and 3k-token completions that is the difference between ~1 GB
    and ~20 GB (GPU recipe); a small batch fits in one chunk and pays nothing extra."""
    from torch.utils.checkpoint import checkpoint

    n, length, width = hidden.shape
    rows = max(1, max_elements // head.weight.shape[0])

    def logits(h):
        return head(h) if temperature == 1.0 else head(h) / temperature

    if rows >= n * length:
        return token_logprobs(logits(hidden), targets)
    flat_h, flat_t = hidden.reshape(n * length, width), targets.reshape(n * length)

    def chunk(h, t):
        return token_logprobs(logits(h)[None], t[None])[0]

    parts = [checkpoint(chunk, flat_h[i:i + rows], flat_t[i:i + rows], use_reentrant=False)
             for i in range(0, n * length, rows)]
    return torch.cat(parts).view(n, length)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target].  logits: [N, L, V], targets: [N, L] -> [N, L].

    cross_entropy's fused log-softmax is several times faster on CPU than gather minus
    logsumexp over a [N, L, 49152] tensor, forward and backward (bench/RESULTS.md)."""
    n, length, vocab = logits.shape
    return -torch.nn.functional.cross_entropy(
        logits.float().reshape(n * length, vocab), targets.reshape(n * length), reduction="none"
    ).view(n, length)
