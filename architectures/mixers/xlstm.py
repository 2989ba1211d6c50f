"""The mLSTM layer of xLSTM 7B (Beck et al. 2025, "xLSTM 7B: A Recurrent LLM for Fast and Efficient
Inference"): q, k, v, output-gate and per-head input/forget-gate projections of x, the mLSTM cell
(exponential input gate, sigmoid forget gate, max-stabilised matrix memory; kernels/mlstm), a
per-head LayerNorm, the sigmoid output gate, and the down projection. No convolution, no
up-projection block (the 7B dropped both).

Sources, cited once: NX-AI/xlstm ``xlstm/xlstm_large/model.py`` (``mLSTMLayer``: shapes, soft cap,
``MultiHeadLayerNorm``) and the 7B's training code NX-AI/xlstm-jax
(``models/xlstm_parallel/blocks/mlstm/layer_v1.py``, ``configs/model/mLSTMv1_default.yaml``,
``blocks/mlstm/cell.py``: the initialisation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from architectures.mixer import MIXERS, Mixer, MixerConfig, State, state_dtype
from kernels.mlstm import mlstm_step, naive_chunk_mlstm


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (Gemma 2's logit soft cap, applied by the 7B to the gate preactivations)."""
    return x if cap is None else cap * torch.tanh(x / cap)


class MultiHeadLayerNorm(nn.Module):
    """LayerNorm over each head's channels, reductions in fp32, a weight and no bias
    (xlstm_large ``MultiHeadLayerNorm`` with ``use_bias=False``): ``[..., H, D] -> [..., H * D]``."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        y = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)
        return y.to(dtype).flatten(-2) * self.weight


@MIXERS.register("xlstm")
class XLSTM(Mixer):
    IMPLS = ("reference", "triton")
    REFERENCE_OPS = {"chunk": naive_chunk_mlstm, "step": mlstm_step}
    TRITON_OPS = {  # the kernels of impl="triton", imported on first use by Mixer.op
        "chunk": "kernels.mlstm.chunk:chunk_mlstm",
        "step": "kernels.mlstm.recurrent:fused_mlstm_step",
    }

    @dataclass(kw_only=True)
    class Config(MixerConfig):
        # 4 heads as xlstm-jax's mLSTMv1_default.yaml (its 165M and 1.3B models); the 7B sets 8
        # (mLSTMv1_7B.yaml). 4 keeps heads of >= 4 key channels at d_model = 32.
        num_heads: int = 4
        qk_dim_factor: float = 0.5      # q, k width = 0.5 d_model (xlstm_large xLSTMLargeConfig)
        v_dim_factor: float = 1.0       # v, output-gate width = d_model (same)
        gate_soft_cap: float | None = 15.0   # same; None switches the cap off
        igate_bias_init: float = -10.0  # mLSTMv1_default.yaml igate_bias_init_range (the 7B paper's
        #                                 "negative input gate bias initialisation")
        # forget-gate bias: linspace(start, end) over heads (cell.py fgate_bias_init_range)
        fgate_bias_init: tuple[float, float] = (3.0, 6.0)
        norm_eps: float = 1e-6          # MultiHeadLayerNorm eps (xLSTMLargeConfig.norm_eps)
        eps: float = 1e-6               # cell denominator eps (xLSTMLargeConfig.eps, mlstm_kernels)
        use_bias: bool = False          # no biases in q, k, v, o, out_proj (xLSTMLargeConfig.use_bias)
        chunk_size: int = 64            # xLSTMLargeConfig.chunk_size
        # out_proj gets the Wang init, std 2 / (num_blocks * sqrt(d_model)) (layer_v1.py
        # output_init_fn "wang"). A mixer does not know the model's depth: 32 is the 7B's.
        init_num_blocks: int = 32

    def __init__(self, d_model: int, cfg: Config, layer_idx: int = 0, impl: str = "auto"):
        super().__init__(d_model, cfg, layer_idx, impl)
        H = cfg.num_heads
        self.qk_dim, self.v_dim = int(d_model * cfg.qk_dim_factor), int(d_model * cfg.v_dim_factor)
        self._validate(H)
        self.num_heads, self.qk_head_dim, self.v_head_dim = H, self.qk_dim // H, self.v_dim // H
        bias = cfg.use_bias
        self.q = nn.Linear(d_model, self.qk_dim, bias=bias)
        self.k = nn.Linear(d_model, self.qk_dim, bias=bias)
        self.v = nn.Linear(d_model, self.v_dim, bias=bias)
        self.ogate_preact = nn.Linear(d_model, self.v_dim, bias=bias)
        self.igate_preact = nn.Linear(d_model, H, bias=True)
        self.fgate_preact = nn.Linear(d_model, H, bias=True)
        self.multihead_norm = MultiHeadLayerNorm(H, self.v_head_dim, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(self.v_dim, d_model, bias=bias)
        self.reset_parameters()

    def _validate(self, H: int) -> None:
        cfg, d = self.cfg, self.d_model
        if H < 1:
            raise ValueError(f"xlstm: num_heads must be >= 1, got {H}")
        for name, width in (("qk_dim_factor", self.qk_dim), ("v_dim_factor", self.v_dim)):
            if width < H or width % H:
                raise ValueError(
                    f"xlstm: int(d_model * {name}) = int({d} * {getattr(cfg, name)}) = {width} must be a "
                    f"positive multiple of num_heads={H}; pick num_heads dividing {width} or change {name}"
                )
        if cfg.chunk_size < 1:
            raise ValueError(f"xlstm: chunk_size must be >= 1, got {cfg.chunk_size}")
        if cfg.gate_soft_cap is not None and cfg.gate_soft_cap <= 0:
            raise ValueError(f"xlstm: gate_soft_cap must be > 0 or None (no cap), got {cfg.gate_soft_cap}")
        if len(cfg.fgate_bias_init) != 2:
            raise ValueError(f"xlstm: fgate_bias_init is a (start, end) pair, got {cfg.fgate_bias_init!r}")
        if cfg.init_num_blocks < 1:
            raise ValueError(f"xlstm: init_num_blocks must be >= 1, got {cfg.init_num_blocks}")

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """xlstm-jax layer_v1.py: q, k, v small init (std sqrt(2 / (5 d)), Nguyen & Salazar 2019);
        output-gate and gate weights zero; input-gate bias constant, forget-gate bias a linspace
        over heads; out_proj Wang init; biases zero; norm weight one."""
        d, cfg = self.d_model, self.cfg
        for lin in (self.q, self.k, self.v):
            nn.init.normal_(lin.weight, std=math.sqrt(2 / (5 * d)))
        for lin in (self.ogate_preact, self.igate_preact, self.fgate_preact):
            nn.init.zeros_(lin.weight)
        self.igate_preact.bias.fill_(cfg.igate_bias_init)
        self.fgate_preact.bias.copy_(torch.linspace(*cfg.fgate_bias_init, self.num_heads))
        nn.init.normal_(self.out_proj.weight, std=2 / (cfg.init_num_blocks * math.sqrt(d)))
        for lin in (self.q, self.k, self.v, self.ogate_preact, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.ones_(self.multihead_norm.weight)

    # -- shared by forward and step: x [..., d_model] ---------------------------------------------
    def _inputs(self, x: Tensor) -> tuple[Tensor, ...]:
        """-> ``q, k: [..., H, Dqk]``, ``v, o: [..., H, Dv]``, gate preactivations ``i, f: [..., H]``.
        The gates are computed in the state dtype (fp32 for bf16 models: xlstm-jax gate_dtype)."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # noqa: E731
        dt = state_dtype(x.dtype)
        gate = lambda lin: soft_cap(F.linear(x.to(dt), lin.weight.to(dt), lin.bias.to(dt)),  # noqa: E731
                                    self.cfg.gate_soft_cap)
        return (heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), self.ogate_preact(x),
                gate(self.igate_preact), gate(self.fgate_preact))

    def _output(self, h: Tensor, o: Tensor) -> Tensor:
        """``h: [..., H, Dv]`` (cell output), ``o: [..., v_dim]`` -> ``[..., d_model]``."""
        h = self.multihead_norm(h.to(o.dtype))
        return self.out_proj(torch.sigmoid(o) * h)

    @staticmethod
    def _cell_state(state: State | None):
        return None if state is None else (state["C"], state["n"], state["m"])

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        self.check_input(x)
        q, k, v, o, i, f = self._inputs(x)
        h, (C, n, m) = self.op("chunk")(q, k, v, i, f, eps=self.cfg.eps, chunk_size=self.cfg.chunk_size,
                                        initial_state=self._cell_state(state))
        return self._output(h, o), {"C": C, "n": n, "m": m}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        self.check_input(x_t, rank=2)
        q, k, v, o, i, f = self._inputs(x_t)
        h, (C, n, m) = self.op("step")(q, k, v, i, f, self._cell_state(state), eps=self.cfg.eps)
        return self._output(h, o), {"C": C, "n": n, "m": m}

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zeros, ``m`` included (mlstm_kernels starts every state at zero)."""
        z = dict(device=device, dtype=state_dtype(dtype))
        H, K, V = self.num_heads, self.qk_head_dim, self.v_head_dim
        return {"C": torch.zeros(batch_size, H, K, V, **z), "n": torch.zeros(batch_size, H, K, **z),
                "m": torch.zeros(batch_size, H, **z)}

    def state_size(self, seq_len: int) -> int:
        """Per head: the memory ``Dqk x Dv``, the normaliser ``Dqk`` and the stabiliser; no growth in T."""
        return self.num_heads * (self.qk_head_dim * self.v_head_dim + self.qk_head_dim + 1)

    def flops(self, seq_len: int) -> int:
        """Projections plus the dominant terms of the chunkwise algorithm (chunks of L, N = ceil(T / L),
        the tail padded): per head and chunk ``QK^T`` and ``S V`` over the full ``L x L`` block
        (``2 L^2 (Dqk + Dv)``), the carried-state read ``Q C`` and the chunk's write ``K^T V``
        (``4 L Dqk Dv``). Gates, norms and the inter-chunk scan (``O(N Dqk Dv)``) are left out."""
        T, d, H = seq_len, self.d_model, self.num_heads
        proj = 2 * T * d * (2 * self.qk_dim + 2 * self.v_dim + 2 * H) + 2 * T * self.v_dim * d
        L = self.cfg.chunk_size
        N = -(-T // L)
        K, V = self.qk_head_dim, self.v_head_dim
        return proj + H * N * (2 * L * L * (K + V) + 4 * L * K * V)
