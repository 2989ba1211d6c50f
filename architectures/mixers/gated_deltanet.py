"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2
with Delta Rule", arXiv:2412.06464), laid out as fla's ``fla/layers/gated_deltanet.py``:

    q, k, v = SiLU(causal_conv(W_q x)), SiLU(causal_conv(W_k x)), SiLU(causal_conv(W_v x))
    q, k    = l2norm(q), l2norm(k) per head;  beta = sigmoid(W_b x);
    g       = -exp(A_log) * softplus(W_a x + dt_bias)                  (log decay, alpha = e^g)
    S_t     = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t / sqrt(K)
    y       = W_o (RMSNorm_head(o) * SiLU(W_z x))

The state dict: ``{"conv": [B, 2 * key_dim + value_dim, conv_size - 1], "ssm": [B, H, K, V]}``.
``conv`` is the rolling buffer of the last ``conv_size - 1`` projected inputs of the one
depthwise convolution over the concatenation ``[q | k | v]`` (channels in that order; fla runs
three convolutions with the same math, and fuses them this way when it has no cache); ``ssm`` is
the delta-rule memory, key-by-value per head, in fp32 (fp64 for fp64 activations).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from architectures.layers import GatedRMSNorm, dt_bias_init
from architectures.mixer import MIXERS, Mixer, MixerConfig, State, state_dtype
from kernels.gated_delta_rule import gated_delta_rule_step, naive_chunk_gated_delta_rule
from kernels.short_conv import causal_conv1d, causal_conv1d_step

# fla's l2norm (fla/modules/l2norm.py): x / sqrt(sum x^2 + eps), eps = 1e-6.
L2_EPS = 1e-6


def l2norm(x: Tensor) -> Tensor:
    """Unit vectors over the last dim, returned in the state dtype (fp32 for bf16 inputs, as fla
    normalises inside its kernel): a bf16 rounding after the norm would undo it."""
    x = x.to(state_dtype(x.dtype))
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + L2_EPS)


def resolve_heads(d_model: int, num_heads: int | None, head_dim: int | None,
                  max_head_dim: int = 256) -> tuple[int, int]:
    """``(num_heads, head_dim)`` of the keys. fla's defaults (hidden 2048: 6 heads of 256) spend
    ``key_dim = num_heads * head_dim = 0.75 * d_model`` (fla's layer docstring), so a missing value
    is derived from that budget: heads of at most 256 channels, as few heads as fit. This gives
    6 x 256 at d_model 2048, 3 x 256 at 1024, 1 x 48 at 64 and 1 x 24 at 32."""
    key_dim = max(1, 3 * d_model // 4)
    if num_heads is None and head_dim is None:
        num_heads = math.ceil(key_dim / max_head_dim)
    if head_dim is None:
        head_dim = key_dim // num_heads
    if num_heads is None:
        num_heads = max(1, key_dim // head_dim)
    return num_heads, head_dim


@MIXERS.register("gated_deltanet")
class GatedDeltaNet(Mixer):
    @dataclass(kw_only=True)
    class Config(MixerConfig):
        # Defaults of fla's GatedDeltaNet layer (fla/layers/gated_deltanet.py, hidden_size 2048):
        # head_dim 256, num_heads 6, expand_v 2, conv_size 4, conv_bias False, norm_eps 1e-5.
        # Here num_heads / head_dim default to None: derived from d_model (see resolve_heads),
        # which reproduces 6 x 256 at d_model 2048 and still builds at d_model 32.
        num_heads: int | None = None
        head_dim: int | None = None   # key (and query) channels per head; values get expand_v x
        expand_v: float = 2.0
        conv_size: int = 4
        conv_bias: bool = False
        norm_eps: float = 1e-5
        allow_neg_eigval: bool = False  # beta in (0, 2) (Grazzi et al. 2024), fla's flag
        chunk_size: int = 64            # fla's chunk kernels use 64-token chunks

    IMPLS = ("reference", "triton")
    REFERENCE_OPS = {"conv": causal_conv1d, "conv_step": causal_conv1d_step,
                     "chunk": naive_chunk_gated_delta_rule, "step": gated_delta_rule_step}
    TRITON_OPS = {  # the kernels of impl="triton", imported on first use by Mixer.op
        "conv": "kernels.short_conv.conv:causal_conv1d_triton",
        "chunk": "kernels.gated_delta_rule.chunk:chunk_gated_delta_rule",
        "conv_step": "kernels.short_conv.recurrent:causal_conv1d_step_triton",
        "step": "kernels.gated_delta_rule.recurrent:fused_gated_delta_rule_step",
    }

    def __init__(self, d_model: int, cfg: Config, layer_idx: int = 0, impl: str = "auto"):
        super().__init__(d_model, cfg, layer_idx, impl)
        self._check_config(cfg)
        H, K = resolve_heads(d_model, cfg.num_heads, cfg.head_dim)
        if K < 1:
            raise ValueError(
                f"gated_deltanet: num_heads={H} leaves no key channels per head at d_model={d_model} "
                f"(key_dim = 3 * d_model // 4 = {max(1, 3 * d_model // 4)}); use num_heads <= that, "
                f"or set head_dim"
            )
        V = round(K * cfg.expand_v)
        if V < 1 or not math.isclose(K * cfg.expand_v, V):
            raise ValueError(
                f"gated_deltanet: head_dim={K} * expand_v={cfg.expand_v} = {K * cfg.expand_v} value channels "
                f"per head is not a positive integer; pick head_dim and expand_v whose product is whole"
            )
        self.num_heads, self.head_k_dim, self.head_v_dim = H, K, V
        self.key_dim, self.value_dim = H * K, H * V
        self.conv_dim = 2 * self.key_dim + self.value_dim
        # One input projection, split as [q | k | v | z (output gate) | a (decay) | b (beta)]:
        # the same weights as fla's q/k/v/g/a/b_proj (all bias-free, default nn.Linear init).
        self.in_proj = nn.Linear(d_model, self.conv_dim + self.value_dim + 2 * H, bias=False)
        # Depthwise conv weight [channels, width]; nn.Conv1d's default init, U(-1/sqrt(W), 1/sqrt(W)).
        bound = 1 / math.sqrt(cfg.conv_size)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, cfg.conv_size).uniform_(-bound, bound))
        self.conv_bias = (nn.Parameter(torch.empty(self.conv_dim).uniform_(-bound, bound))
                          if cfg.conv_bias else None)
        # fla: A ~ U(0, 16), A_log = log A; dt log-uniform in [1e-3, 1e-1] floored at 1e-4,
        # dt_bias = softplus^{-1}(dt) = dt + log(1 - exp(-dt)).
        self.A_log = nn.Parameter(torch.empty(H).uniform_(0, 16).log())
        self.dt_bias = nn.Parameter(dt_bias_init(H, dt_min=1e-3, dt_max=1e-1, floor=1e-4))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        # fla's FusedRMSNormGated(head_v_dim): per-head RMSNorm, weight shared by heads, then * silu(z).
        self.o_norm = GatedRMSNorm(V, eps=cfg.norm_eps, norm_before_gate=True)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    @staticmethod
    def _check_config(cfg: Config) -> None:
        for name in ("num_heads", "head_dim"):
            value = getattr(cfg, name)
            if value is not None and value < 1:
                raise ValueError(f"gated_deltanet: {name}={value} must be >= 1 (or None to derive it)")
        if cfg.conv_size < 1:
            raise ValueError(f"gated_deltanet: conv_size={cfg.conv_size} must be >= 1 (fla uses 4)")
        if cfg.chunk_size < 1:
            raise ValueError(f"gated_deltanet: chunk_size={cfg.chunk_size} must be >= 1 (fla uses 64)")
        if cfg.expand_v <= 0:
            raise ValueError(f"gated_deltanet: expand_v={cfg.expand_v} must be > 0 (fla uses 2)")

    # -- shared pieces of forward and step -------------------------------------------------------
    def _split(self, proj: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``proj: [..., in_proj.out_features]`` -> ``(qkv, z, a, b)`` (before the conv)."""
        H = self.num_heads
        return proj.split([self.conv_dim, self.value_dim, H, H], dim=-1)

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Conv output ``[..., conv_dim]`` -> l2-normalised ``q, k: [..., H, K]`` (state dtype) and
        ``v: [..., H, V]`` (activation dtype, which the op's output keeps)."""
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k = (l2norm(t.unflatten(-1, (self.num_heads, self.head_k_dim))) for t in (q, k))
        return q, k, v.unflatten(-1, (self.num_heads, self.head_v_dim))

    def _gates(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``a, b: [..., H]`` -> log decay ``g = -exp(A_log) softplus(a + dt_bias)`` and ``beta``,
        in the state dtype (the decay is a log: low precision here would bias every step)."""
        dt = state_dtype(a.dtype)
        g = -self.A_log.to(dt).exp() * F.softplus(a.to(dt) + self.dt_bias.to(dt))
        beta = torch.sigmoid(b.to(dt))
        return g, (2 * beta if self.cfg.allow_neg_eigval else beta)

    def _out(self, o: Tensor, z: Tensor) -> Tensor:
        """``o: [..., H, V]``, gate ``z: [..., value_dim]`` -> ``[..., d_model]``."""
        o = self.o_norm(o, z.unflatten(-1, (self.num_heads, self.head_v_dim)))
        return self.o_proj(o.flatten(-2))

    # -- the contract --------------------------------------------------------------------------
    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        self.check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        conv = self.op("conv")
        rule = self.op("chunk")
        qkv, z, a, b = self._split(self.in_proj(x))
        qkv, conv_state = conv(qkv, self.conv_weight, self.conv_bias, state["conv"], "silu")
        q, k, v = self._heads(qkv)
        if self.impl == "triton":  # the kernels' dots take q, k in v's dtype, as fla's layer feeds them
            q, k = q.to(v.dtype), k.to(v.dtype)
        g, beta = self._gates(a, b)
        o, ssm = rule(q, k, v, g, beta, chunk_size=self.cfg.chunk_size, initial_state=state["ssm"])
        return self._out(o, z), {"conv": conv_state, "ssm": ssm}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        self.check_input(x_t, rank=2)
        conv_step = self.op("conv_step")
        rule_step = self.op("step")
        qkv, z, a, b = self._split(self.in_proj(x_t))
        qkv, conv_state = conv_step(qkv, self.conv_weight, self.conv_bias, state["conv"], "silu")
        q, k, v = self._heads(qkv)
        g, beta = self._gates(a, b)
        o, ssm = rule_step(q, k, v, g, beta, state["ssm"])
        return self._out(o, z), {"conv": conv_state, "ssm": ssm}

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        conv = torch.zeros(batch_size, self.conv_dim, self.cfg.conv_size - 1, device=device,
                           dtype=dtype or torch.float32)
        ssm = torch.zeros(batch_size, self.num_heads, self.head_k_dim, self.head_v_dim, device=device,
                          dtype=state_dtype(dtype))
        return {"conv": conv, "ssm": ssm}

    def state_size(self, seq_len: int) -> int:
        """Conv buffer ``(2 H K + H V)(W - 1)`` plus the memory ``H K V``; independent of length."""
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        return self.conv_dim * (self.cfg.conv_size - 1) + H * K * V

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs of the CHUNKED algorithm (multiply-add = 2), matmuls and the conv only
        (norms, gates and elementwise decays are lower order). Per sequence of T tokens:

        - projections ``2 T d (2HK + 2HV + 2H)`` in, ``2 T HV d`` out; conv ``2 W (2HK + HV) T``;
        - per head and chunk of C = min(chunk_size, T) tokens (N = ceil(T / C) chunks, padded):
          ``beta K K^T`` and ``Q K^T``: 2 x 2C^2K; ``(I + A)^{-1}`` applied to ``[K | V]``: 2C^2(K + V);
          ``P U``: 2C^2V; state terms ``W S``, ``(K decay)^T U``, ``Q S``: 3 x 2CKV
          (the small block inverse of (I + A), O(C^2 * 16), is left out).
        """
        T, d, W = seq_len, self.d_model, self.cfg.conv_size
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        proj = 2 * T * d * (self.in_proj.out_features + self.value_dim)
        conv = 2 * W * self.conv_dim * T
        if T == 0:
            return proj + conv
        C = min(self.cfg.chunk_size, T)
        N = -(-T // C)
        per_chunk = 4 * C * C * K + 2 * C * C * (K + V) + 2 * C * C * V + 6 * C * K * V
        return proj + conv + H * N * per_chunk
