"""Small layers shared by mixers and the model: RMS norms, the SwiGLU MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dt_bias_init(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4) -> Tensor:
    """softplus^-1 of dt ~ log-uniform(dt_min, dt_max), floored at ``floor``: the time-step bias
    init of mamba_ssm (Mamba, Mamba-2) and fla (Gated DeltaNet), so softplus(bias) starts in range."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(n) * (hi - lo) + lo).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1, stable for small dt


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim, computed in fp32 (Zhang & Sennrich, 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm with a SiLU gate, applied per group of ``group_size`` channels.

    ``norm_before_gate=False`` is Mamba-2's ``RMSNormGated`` (``norm(x * silu(z))``);
    ``True`` is Gated DeltaNet's ``FusedRMSNormGated`` (``norm(x) * silu(z)``).
    """

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-5,
                 norm_before_gate: bool = False):
        super().__init__(dim, eps)
        self.group_size = group_size or dim
        self.norm_before_gate = norm_before_gate

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        gate = F.silu(z.to(x.dtype))
        if not self.norm_before_gate:
            x = x * gate
        groups = x.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        y = groups.flatten(-2) * self.weight
        if self.norm_before_gate:
            y = y * gate
        return y.to(dtype)


class SwiGLU(nn.Module):
    """``W2 (silu(W1 x) * W3 x)`` (Shazeer, 2020), hidden size 8/3 d rounded up to 64."""

    def __init__(self, d_model: int, hidden: int | None = None, multiple_of: int = 64):
        super().__init__()
        hidden = hidden or int(8 * d_model / 3)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.hidden = hidden
        self.w13 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)

    def flops(self, seq_len: int) -> int:
        return 2 * seq_len * (self.w13.weight.numel() + self.w2.weight.numel())
