"""Causal depthwise short convolution (width W, typically 4), the reference.

Used by Mamba, Mamba-2 and Gated DeltaNet in front of their recurrences:

    y[b, t, c] = act( bias[c] + sum_{j=0}^{W-1} weight[c, j] * x[b, t - (W-1) + j, c] )

with x at negative times taken from the carried state: the last W-1 inputs of the previous
segment, ``state: [B, C, W-1]`` (zeros at the start). Per token: 2*W*C FLOPs, and the state is
(W-1)*C scalars. Inputs are ``[B, T, C]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _activate(y: Tensor, activation: str | None) -> Tensor:
    if activation in ("silu", "swish"):
        return F.silu(y)
    if activation is None:
        return y
    raise ValueError(f"unknown activation {activation!r}; valid: 'silu', None")


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, state: Tensor | None = None,
                  activation: str | None = "silu") -> tuple[Tensor, Tensor]:
    """``x: [B, T, C]``, ``weight: [C, W]``, ``state: [B, C, W-1]`` -> ``(y: [B, T, C], new state)``."""
    B, T, C = x.shape
    W = weight.shape[-1]
    if state is None:
        state = x.new_zeros(B, C, W - 1)
    xt = torch.cat([state.to(x.dtype), x.transpose(1, 2)], dim=-1)  # [B, C, W-1+T]
    y = F.conv1d(xt, weight.unsqueeze(1).to(x.dtype), bias.to(x.dtype) if bias is not None else None, groups=C)
    new_state = xt[..., xt.shape[-1] - (W - 1):]
    return _activate(y.transpose(1, 2), activation), new_state.to(state.dtype)


def causal_conv1d_step(x_t: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor,
                       activation: str | None = "silu") -> tuple[Tensor, Tensor]:
    """One token: ``x_t: [B, C]``, ``state: [B, C, W-1]`` (a rolling buffer of the last inputs)."""
    window = torch.cat([state.to(x_t.dtype), x_t.unsqueeze(-1)], dim=-1)  # [B, C, W]
    y = (window * weight.to(x_t.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x_t.dtype)
    return _activate(y, activation), window[..., 1:].to(state.dtype)
