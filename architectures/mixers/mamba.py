"""Mamba-1 (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"):
the block of mamba_ssm's ``modules/mamba_simple.py`` around the selective scan
(``kernels/selective_scan``).

    x, z     = in_proj(u)                       each d_inner = expand * d_model wide
    x        = silu(causal_conv1d(x))           depthwise, width d_conv, with bias
    dt, B, C = x_proj(x)                        dt_rank, d_state, d_state: input-dependent
    delta    = softplus(dt_proj(dt))            dt_proj: dt_rank -> d_inner, its bias inside softplus
    A        = -exp(A_log)                      [d_inner, d_state], S4D-real init A[d, n] = -(n + 1)
    y        = scan(x, delta, A, B, C) + D x    h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t, y_t = h_t C_t
    out      = out_proj(y * silu(z))

The D skip and the silu(z) gate run inside the op, as in mamba_ssm's ``selective_scan_fn``.
Parameter names and shapes follow mamba_ssm (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``,
``A_log``, ``D``, ``out_proj``), so its checkpoints load with ``load_state_dict``.
State: ``{"conv": [B, d_inner, d_conv - 1], "ssm": [B, d_inner, d_state]}`` (mamba_ssm keeps
d_conv inputs in its conv buffer; the last d_conv - 1 are all the next token needs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from architectures.layers import dt_bias_init
from architectures.mixer import MIXERS, Mixer, MixerConfig, State, state_dtype
from kernels.selective_scan import naive_chunk_selective_scan, selective_scan_step
from kernels.short_conv import causal_conv1d, causal_conv1d_step


@MIXERS.register("mamba")
class Mamba(Mixer):
    @dataclass(kw_only=True)
    class Config(MixerConfig):
        # Defaults of mamba_ssm modules/mamba_simple.py, Mamba.__init__ (Gu & Dao 2023).
        d_state: int = 16
        d_conv: int = 4
        expand: float = 2  # d_inner = int(expand * d_model); must come out whole
        dt_rank: int | Literal["auto"] = "auto"  # "auto": ceil(d_model / 16)
        dt_min: float = 0.001  # delta at init ~ log-uniform(dt_min, dt_max), floored, via the bias
        dt_max: float = 0.1
        dt_init: Literal["random", "constant"] = "random"  # dt_proj.weight: uniform(+-s) or s,
        dt_scale: float = 1.0  # with s = dt_scale / sqrt(dt_rank)
        dt_init_floor: float = 1e-4
        conv_bias: bool = True
        bias: bool = False  # in_proj and out_proj
        # arena's chunked PyTorch scan (kernels/selective_scan/README.md); the Triton scan keeps its
        # own 16-token blocks, which fit its registers on an H100 (64 spills: 2.7x slower fwd+bwd)
        chunk_size: int = 64

    IMPLS = ("reference", "triton")
    REFERENCE_OPS = {"conv": causal_conv1d, "conv_step": causal_conv1d_step,
                     "scan": naive_chunk_selective_scan, "step": selective_scan_step}
    TRITON_OPS = {  # the kernels of impl="triton", imported on first use by Mixer.op
        "conv": "kernels.short_conv.conv:causal_conv1d_triton",
        "conv_step": "kernels.short_conv.recurrent:causal_conv1d_step_triton",
        "scan": "kernels.selective_scan.scan:selective_scan",
        "step": "kernels.selective_scan.recurrent:fused_selective_scan_step",
    }

    def __init__(self, d_model: int, cfg: Config, layer_idx: int = 0, impl: str = "auto"):
        super().__init__(d_model, cfg, layer_idx, impl)
        self._validate(cfg)
        self.d_inner = int(cfg.expand * d_model)
        self.d_state = cfg.d_state
        self.dt_rank = math.ceil(d_model / 16) if cfg.dt_rank == "auto" else cfg.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=cfg.bias)
        # nn.Conv1d only to hold the weight [d_inner, 1, d_conv] with PyTorch's default init and
        # mamba_ssm's parameter names; the causal conv itself is kernels.short_conv.
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, cfg.d_conv, groups=self.d_inner,
                                bias=cfg.conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self._init_dt_proj(cfg)
        # S4D-real (Gu et al. 2022): A[d, n] = -(n + 1), kept as its log so that A stays negative
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=cfg.bias)
        for p in (self.A_log, self.D):
            p._no_weight_decay = True  # as mamba_ssm: optimisers that read the flag skip them

    def _validate(self, cfg: Config) -> None:
        for key in ("d_state", "d_conv", "chunk_size"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"mamba: {key}={getattr(cfg, key)} must be >= 1")
        d_inner = cfg.expand * self.d_model
        if d_inner < 1 or d_inner != int(d_inner):
            raise ValueError(
                f"mamba: d_inner = expand * d_model = {cfg.expand} * {self.d_model} = {d_inner} must be a "
                f"positive whole number; pick an expand that makes it one (e.g. expand=2)"
            )
        if cfg.dt_rank != "auto" and cfg.dt_rank < 1:
            raise ValueError(f"mamba: dt_rank={cfg.dt_rank} must be >= 1 or 'auto' (ceil(d_model / 16))")
        if not 0 < cfg.dt_min <= cfg.dt_max:
            raise ValueError(f"mamba: need 0 < dt_min <= dt_max, got {cfg.dt_min} and {cfg.dt_max}")
        if cfg.dt_init_floor <= 0:
            raise ValueError(f"mamba: dt_init_floor={cfg.dt_init_floor} must be > 0 (softplus^-1 of it)")

    @torch.no_grad()
    def _init_dt_proj(self, cfg: Config) -> None:
        """mamba_ssm's dt init: the weight keeps delta's variance at init; the bias is
        softplus^-1 of delta ~ log-uniform(dt_min, dt_max), floored at dt_init_floor."""
        s = self.dt_rank ** -0.5 * cfg.dt_scale
        if cfg.dt_init == "constant":
            self.dt_proj.weight.fill_(s)
        else:
            self.dt_proj.weight.uniform_(-s, s)
        self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.dt_proj.bias._no_reinit = True  # as mamba_ssm: a model-wide bias reset must skip it

    # -- pieces shared by forward and step ---------------------------------------------------------
    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Conv output ``x [..., d_inner]`` -> raw delta ``[..., d_inner]`` (dt_proj without its
        bias: the op adds it inside the softplus, in fp32), A ``[d_inner, d_state]`` in the state
        dtype, B and C ``[..., d_state]``."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt @ self.dt_proj.weight.t()
        A = -torch.exp(self.A_log.to(state_dtype(x.dtype)))  # in fp32 at least, as mamba_ssm
        return delta, A, B, C

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight.squeeze(1)  # [d_inner, d_conv]

    # -- the contract -----------------------------------------------------------------------------
    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``x: [B, T, d_model]`` -> ``(y: [B, T, d_model], state)``, through the chunked scan."""
        self.check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs, conv_state = self.op("conv")(xs, self._conv_weight(), self.conv1d.bias, state["conv"], "silu")
        delta, A, B, C = self._ssm_inputs(xs)
        chunking = {"chunk_size": self.cfg.chunk_size} if self.impl == "reference" else {}
        y, ssm_state = self.op("scan")(xs, delta, A, B, C, self.D, z, delta_bias=self.dt_proj.bias,
                                       delta_softplus=True, initial_state=state["ssm"], **chunking)
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token ``x_t: [B, d_model]`` through the one-token scan step."""
        self.check_input(x_t, rank=2)
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)
        conv_step = self.op("conv_step")
        xs, conv_state = conv_step(xs, self._conv_weight(), self.conv1d.bias, state["conv"], "silu")
        delta, A, B, C = self._ssm_inputs(xs)
        y, ssm_state = self.op("step")(xs, delta, A, B, C, state["ssm"].to(A.dtype), self.D, z,
                                       delta_bias=self.dt_proj.bias, delta_softplus=True)
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        sdt = state_dtype(dtype)
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.cfg.d_conv - 1, device=device, dtype=sdt),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=sdt),
        }

    def state_size(self, seq_len: int) -> int:
        """Constant in ``seq_len``: the conv's last d_conv - 1 inputs plus the d_inner x d_state state."""
        return self.d_inner * (self.cfg.d_conv - 1) + self.d_inner * self.d_state

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs of the recurrence (a multiply-add is 2), per token: in_proj
        ``4 d_model d_inner``, conv ``2 d_conv d_inner``, x_proj ``2 d_inner (R + 2 N)``, dt_proj
        ``2 R d_inner``, out_proj ``2 d_inner d_model``, and per (channel, state) pair ``6``:
        delta A, (delta u) B, the state update (a multiply-add) and the readout h C (a
        multiply-add). The chunked form also rescans all but the last chunk (another ``4 N
        d_inner`` per token there): not counted. Elementwise work (softplus, exp, silu, the D
        skip and the gate) is left out."""
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        per_token = 4 * self.d_model * E + 2 * self.cfg.d_conv * E + 2 * E * (R + 2 * N) + 2 * R * E
        per_token += 2 * E * self.d_model + 6 * E * N
        return seq_len * per_token
