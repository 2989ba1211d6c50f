"""Attention for one new token against a KV cache (decode), the reference.

    o[b, h] = sum_{s < L_b} softmax_s(q[b, h] . k[b, g(h), s] / sqrt(D)) v[b, g(h), s]

with ``g(h) = h // (H / Hkv)`` (grouped-query attention: H query heads share Hkv cache heads)
and ``L_b = cache_len[b]`` valid cache rows; rows at and beyond ``L_b`` are never read (they
may hold anything, even NaN). Per token and query head: 4 S D FLOPs; the cache read,
2 Hkv S D elements per token, is the whole cost.
"""
from __future__ import annotations

import torch
from torch import Tensor


def attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_len: Tensor | int) -> Tensor:
    """``q [B, H, D]``, ``k_cache, v_cache [B, Hkv, S, D]``, ``cache_len [B]`` (ints) or an int
    -> ``o [B, H, D]`` in q's dtype, computed in fp32 (fp64 for fp64 inputs)."""
    B, H, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    if H % Hkv:
        raise ValueError(f"attention_decode: H = {H} must be a multiple of Hkv = {Hkv}")
    lens = torch.as_tensor(cache_len, device=q.device).expand(B)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = k_cache.to(ct).repeat_interleave(H // Hkv, dim=1)  # [B, H, S, D]
    v = v_cache.to(ct).repeat_interleave(H // Hkv, dim=1)
    valid = torch.arange(S, device=q.device)[None, :] < lens[:, None]  # [B, S]
    k = torch.where(valid[:, None, :, None], k, 0.)  # poisoned rows never reach the sums
    v = torch.where(valid[:, None, :, None], v, 0.)
    scores = torch.einsum("bhd,bhsd->bhs", q.to(ct), k) * D ** -0.5
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), v).to(q.dtype)
