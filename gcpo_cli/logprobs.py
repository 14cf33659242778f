"""The policy's per-token log-probs of completions: log softmax(logits / T)[token], the quantity
the update, pi_old and the sampler/trainer mismatch are all made of.

Only completion positions go through the LM head, never the prompt's full-vocabulary logits, and
those go through it in chunks (`head_logprobs`), so memory does not hold B x L x V logits.
"""

from __future__ import annotations

import torch


def completion_logprobs(model, tok, prompts: list[list[int]], completions: list[list[int]],
                        share_prompts: bool = True, temperature: float = 1.0, entropy: bool = False):
    """Log-probs of each completion token under `model` sampling at `temperature`:
    log softmax(logits / T).  Returns logp, mask: [N, L] (and, with `entropy`, each position's
    entropy [N, L], without gradient).

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
    if entropy:
        logp, ent = head_logprobs(hidden, head, comp_ids.to(device), temperature, mask=mask, entropy=True)
        return logp, mask, ent
    return head_logprobs(hidden, head, comp_ids.to(device), temperature, mask=mask), mask  # [N, L]


CHUNK_ELEMENTS = 2**24  # logits per chunk of the LM head: 64 MiB in fp32


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                  temperature: float = 1.0, max_elements: int = CHUNK_ELEMENTS,
                  mask: torch.Tensor | None = None, entropy: bool = False):
    """log softmax(head(hidden) / temperature)[target]: the policy's log-probs at the sampling
    temperature (TRL and verl divide the logits the same way), without ever holding the logits
    of every position.  hidden: [N, L, H], targets: [N, L] -> [N, L] (and, with `entropy`, each
    position's entropy [N, L], without gradient).

    Only the positions where `mask` is 1 go through the head (padding costs nothing), in chunks
    of at most `max_elements` logits, forward and backward (HeadLogprob): with a 49k vocabulary
    and 512-token completions that is 64 MiB at a time instead of ~1.5 GiB of fp32 logits and as
    much again for their gradient. A head with an adapter on it (LoRA on lm_head) goes through
    the module itself, chunk by chunk, each chunk checkpointed."""
    n, length, width = hidden.shape
    keep = torch.ones(n, length, dtype=torch.bool, device=hidden.device) if mask is None else mask.bool()
    rows_h, rows_t = hidden[keep], targets[keep]  # [M, H], [M]
    rows = max(1, max_elements // head.weight.shape[0])
    if type(head) is torch.nn.Linear and head.bias is None:
        logp, ent = HeadLogprob.apply(rows_h, head.weight, rows_t, temperature, rows, entropy)
    else:
        logp, ent = _module_logprobs(rows_h, head, rows_t, temperature, rows, entropy)
    out = hidden.new_zeros(n, length, dtype=torch.float32).masked_scatter(keep, logp)
    if not entropy:
        return out
    return out, hidden.new_zeros(n, length, dtype=torch.float32).masked_scatter(keep, ent)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul of `x` in (x's own without autocast)."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class HeadLogprob(torch.autograd.Function):
    """Fused LM head + log-softmax + gather over rows of hidden states, in chunks: the idea of
    Liger's fused linear cross-entropy, in plain PyTorch (CPU and CUDA). The forward keeps no
    logits; the backward recomputes each chunk's log-softmax and turns the upstream gradient
    g = dL/dlogp into the hidden states' gradient directly:
        dL/dlogits = g * (onehot(target) - softmax) / T,   dL/dh = dL/dlogits @ W.
    The matmuls run in the autocast dtype where autocast is on (as the module would), the
    log-softmax in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, rows: int, entropy: bool):
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        ent = torch.empty_like(logp) if entropy else logp.new_zeros(0)
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, hidden.shape[0], rows):
                ls = torch.log_softmax((hidden[i:i + rows].to(dtype) @ w.T).float() / temperature, -1)  # [r, V]
                logp[i:i + rows] = ls.gather(-1, targets[i:i + rows, None]).squeeze(-1)
                if entropy:
                    ent[i:i + rows] = -(ls.exp() * ls).sum(-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.rows, ctx.dtype = temperature, rows, dtype
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        hidden, weight, targets = ctx.saved_tensors
        T, rows, dtype = ctx.temperature, ctx.rows, ctx.dtype
        w = weight.to(dtype)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, hidden.shape[0], rows):
                h, g = hidden[i:i + rows].to(dtype), grad_logp[i:i + rows].float()
                p = torch.softmax((h @ w.T).float() / T, -1)  # [r, V]
                p.mul_(-g[:, None] / T)  # -g * softmax / T
                p.scatter_add_(-1, targets[i:i + rows, None], (g / T)[:, None])  # + g * onehot / T
                d = p.to(dtype)
                if want_h:
                    grad_h[i:i + rows] = (d @ w).to(hidden.dtype)
                if want_w:
                    grad_w += (d.T @ h).float()
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def _module_logprobs(hidden, head, targets, temperature: float, rows: int, entropy: bool):
    """head_logprobs through the head module itself (an adapter on the head), chunk by chunk,
    each chunk checkpointed so that its logits are recomputed in the backward."""
    from torch.utils.checkpoint import checkpoint

    def chunk(h, t):
        ls = torch.log_softmax(head(h).float() / temperature, -1)
        return ls.gather(-1, t[:, None]).squeeze(-1), (-(ls.exp() * ls).sum(-1)).detach() if entropy else ls.new_zeros(0)

    parts = [checkpoint(chunk, hidden[i:i + rows], targets[i:i + rows], use_reentrant=False)
             for i in range(0, hidden.shape[0], rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target].  logits: [N, L, V], targets: [N, L] -> [N, L] (tests' reference)."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)
