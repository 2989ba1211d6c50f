"""Causal multi-head softmax attention with rotary position embeddings; the state is the KV cache,
which decoding grows in place (``architectures/kv_cache.py``), so a step reads it once.

Backends: flash-attn when installed (CUDA, fp16/bf16), else PyTorch SDPA, else explicit math.
``self.backend`` is the backend that runs for the current device and dtype; records read it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from architectures import kv_cache
from architectures.mixer import MIXERS, ImplUnavailableError, Mixer, MixerConfig, State

try:  # optional: benchmarks race it when installed; never required
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None

BACKENDS = ("auto", "flash_attn", "sdpa", "math")
# SDPA backends for queries that continue a KV cache (fewer queries than keys). cuDNN attention
# is left out: it builds a graph per sequence length, and decoding meets a new length at every
# token (an H200 decode step of this layer took ~36 ms at every context from 512 to 64k tokens;
# with these backends an H100 step takes 0.48-0.57 ms there, B 1, d_model 1024, bf16).
CACHE_STEP_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def rotary(x: Tensor, offset: int, base: float) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of ``x: [B, H, T, D]`` by position * base^(-2i/D)
    (RoFormer, Su et al. 2021; the GPT-NeoX half-split layout)."""
    T, D = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float64) / D)
    pos = torch.arange(offset, offset + T, device=x.device, dtype=torch.float64)
    angles = torch.outer(pos, inv_freq)  # [T, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@MIXERS.register("attention")
class Attention(Mixer):
    @dataclass(kw_only=True)
    class Config(MixerConfig):
        # Transformer++ (Llama) defaults: no biases, RoPE base 1e4 (Su et al. 2021);
        # heads of 64 channels (Vaswani et al. 2017), at least one head.
        num_heads: int | None = None  # None: max(1, d_model // 64)
        rope_base: float = 10000.0
        backend: Literal["auto", "flash_attn", "sdpa", "math"] = "auto"

    def __init__(self, d_model: int, cfg: Config, layer_idx: int = 0, impl: str = "auto"):
        super().__init__(d_model, cfg, layer_idx, impl)
        self.num_heads = cfg.num_heads or max(1, d_model // 64)
        if d_model % self.num_heads or (d_model // self.num_heads) % 2:
            raise ValueError(
                f"attention: d_model={d_model} must split into num_heads={self.num_heads} heads of "
                f"an even size; pick num_heads dividing d_model with an even quotient"
            )
        self.head_dim = d_model // self.num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    @property
    def backend(self) -> str:
        """The attention backend that runs for the current device and parameter dtype."""
        want, p = self.cfg.backend, self.qkv.weight
        flash_ok = flash_attn_func is not None and p.is_cuda and p.dtype in (torch.float16, torch.bfloat16)
        if want == "flash_attn" and not flash_ok:
            raise ImplUnavailableError(
                "attention backend='flash_attn' needs flash-attn installed and a CUDA fp16/bf16 model; "
                "use backend='auto' or 'sdpa'"
            )
        if want == "auto":
            return "flash_attn" if flash_ok else "sdpa"
        return want

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q: [B, H, T, D]``, ``k, v: [B, H, S, D]`` with the queries the last T of S positions."""
        T, S, backend = q.shape[2], k.shape[2], self.backend
        if backend == "flash_attn":  # bottom-right aligned causal mask, as a KV cache needs
            o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return o.transpose(1, 2)
        if backend == "sdpa" and T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        if backend == "sdpa":  # SDPA's is_causal aligns top-left; a cache needs bottom-right
            # one query (decoding) sees every key: no mask at all, so the flash kernel qualifies
            bias = None if T == 1 else causal_lower_right(T, S)
            with sdpa_kernel(CACHE_STEP_BACKENDS):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        self.check_input(x)
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        offset = state["k"].shape[2]
        q, k = rotary(q, offset, self.cfg.rope_base), rotary(k, offset, self.cfg.rope_base)
        k, v = kv_cache.append(state["k"], k), kv_cache.append(state["v"], v)
        o = self._attend(q, k, v).transpose(1, 2).reshape(B, T, self.d_model)
        return self.out_proj(o), {"k": k, "v": v}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        self.check_input(x_t, rank=2)
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        shape = (batch_size, self.num_heads, 0, self.head_dim)
        empty = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        return {"k": empty, "v": empty.clone()}

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model * seq_len  # keys and values of every past token

    def flops(self, seq_len: int) -> int:
        """Projections ``8 T d^2`` plus QK^T and AV over the causal half: ``2 d T (T + 1)``."""
        d, T = self.d_model, seq_len
        return 8 * T * d * d + 2 * d * T * (T + 1)
