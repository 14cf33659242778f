"""The decoding loop's KV cache and attention for sampling (rollout.generate): a cache allocated
once per generation, and a one-query attention that reads grouped-query caches in place.
A leaf module: torch and transformers only."""

from __future__ import annotations


def growing_layer_class():
    """A KV-cache layer that writes into a buffer allocated once for the whole generation
    (prompt + max_new_tokens) and hands attention a view of its filled part: no copy of the
    whole cache per token, as concatenation does (O(T^2) memory traffic over a generation; at
    256 new tokens the larger part of a decode step's time on CPU)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0

        def lazy_initialization(self, key_states, value_states) -> None:
            b, h, _, d = key_states.shape
            self.device = key_states.device
            self.keys = key_states.new_zeros(b, h, self.capacity, d)
            self.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.length + n > self.capacity:
                raise RuntimeError(f"KV cache of {self.capacity} positions is full")
            self.keys[:, :, self.length:self.length + n] = key_states
            self.values[:, :, self.length:self.length + n] = value_states
            self.length += n
            return self.keys[:, :, :self.length], self.values[:, :, :self.length]

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices) -> None:
            if self.is_initialized:
                self.keys, self.values = self.keys[indices], self.values[indices]

    return GrowingLayer


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for sampling ("gcpo_decode"): a one-query decode step attends with the query
    heads of each key/value head packed together, so grouped-query attention reads the cache in
    place instead of repeating it per query head (what eager attention copies every step);
    longer queries (the prefill) go to sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q_len, d = query.shape
    kv_heads = key.shape[1]
    if q_len != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q = query.reshape(b, kv_heads, heads // kv_heads, d)  # query head h reads key/value head h // groups
    scores = torch.matmul(q, key.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)  # [b, kv, g, T]
    if attention_mask is not None:  # sdpa's boolean mask [b, 1, 1, T] (True: attend)
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = scores.float().softmax(-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [b, kv, g, d]
    return out.reshape(b, heads, 1, d).transpose(1, 2), None


def register_decode_attention() -> str:
    """Register "gcpo_decode" with transformers (once); returns its name for set_attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if "gcpo_decode" not in AttentionInterface._global_mapping:
        AttentionInterface.register("gcpo_decode", decode_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register("gcpo_decode", sdpa_mask)
    return "gcpo_decode"
