"""Prompts and batched sampling of n completions per prompt (training rollouts and evaluation).

Prompts are length-bucketed (sorted by token length, then batched) so that padding stays small;
results come back in the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DEFAULT_TEMPLATE = "{problem} Put the final answer in \\boxed{{}}."


@dataclass
class Completion:
    token_ids: list[int]  # the completion's tokens, EOS included when the model stopped
    text: str  # decoded without special tokens
    truncated: bool  # hit max_new_tokens without EOS

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


def render_prompt(tokenizer, problem: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The chat-formatted prompt text, exactly as training and evaluation feed it."""
    user = template.format(problem=problem)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )


def response_ids(tokenizer, text: str) -> list[int]:
    """A written response (a golden answer) tokenised as the model would emit it: its text
    tokens, then the end-of-turn token that generation stops on."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return list(ids) + [tokenizer.eos_token_id]


def _stop_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return {i for i in ids if i is not None}


def generate(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Completion]]:
    """n completions for each prompt (temperature 0 = greedy). Uses the global torch RNG: seed
    it first for reproducible samples. `on_batch(k)` is called after each batch of k prompts."""
    import torch

    device = next(model.parameters()).device
    stop = _stop_ids(model, tokenizer)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    per_batch = max(1, batch_size // n)
    results: list[list[Completion] | None] = [None] * len(prompts)
    greedy = temperature <= 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: every prompt ends where sampling starts
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            kwargs = dict(do_sample=not greedy, max_new_tokens=max_new_tokens, pad_token_id=pad,
                          eos_token_id=sorted(stop), num_return_sequences=1 if greedy else n)
            if not greedy:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            gen = out[:, width:].tolist()
            reps = 1 if greedy else n
            for row, i in enumerate(idx):
                comps = []
                for j in range(reps):
                    seq = gen[row * reps + j]
                    cut = next((t + 1 for t, tok in enumerate(seq) if tok in stop), None)
                    toks = seq[:cut] if cut is not None else seq
                    comps.append(Completion(toks, tokenizer.decode(toks, skip_special_tokens=True),
                                            truncated=cut is None))
                if greedy:  # greedy samples are identical: decode once, share
                    comps = [Completion(list(comps[0].token_ids), comps[0].text, comps[0].truncated) for _ in range(n)]
                results[i] = comps
            if on_batch:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
