"""Mamba-2 (Dao & Gu, 2024, "Transformers are SSMs"): the block of mamba_ssm's
``modules/mamba2.py`` around the SSD op (``kernels/ssd``).

    z, xBC, dt = in_proj(u)                  z: d_inner, xBC: d_inner + 2 G N, dt: H
    x, B, C    = silu(causal_conv1d(xBC))    depthwise, width d_conv, one conv over all three
    dt         = softplus(dt + dt_bias);  A = -exp(A_log)   (one scalar decay per head)
    y          = SSD(x, dt, A, B, C) + D x   h_t = exp(dt A) h_{t-1} + dt x_t B_t^T,  y_t = h_t C_t
    out        = out_proj(GatedRMSNorm(y, z))     norm(y * silu(z)), per group of d_inner / G

Parameter names and shapes follow mamba_ssm (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``,
``D``, ``norm.weight``, ``out_proj``), so its checkpoints load with ``load_state_dict``.
State: ``{"conv": [B, conv_dim, d_conv - 1], "ssm": [B, nheads, headdim, d_state]}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from architectures.layers import GatedRMSNorm, dt_bias_init
from architectures.mixer import MIXERS, Mixer, MixerConfig, State, state_dtype
from kernels.short_conv import causal_conv1d, causal_conv1d_step
from kernels.ssd import naive_chunk_ssd, ssd_step


@MIXERS.register("mamba2")
class Mamba2(Mixer):
    @dataclass(kw_only=True)
    class Config(MixerConfig):
        # Defaults of mamba_ssm modules/mamba2.py, Mamba2.__init__ (Dao & Gu 2024).
        d_state: int = 128
        d_conv: int = 4
        expand: int = 2
        headdim: int = 64
        ngroups: int = 1
        chunk_size: int = 256
        A_init_range: tuple[float, float] = (1.0, 16.0)  # A = -uniform(1, 16), stored as log
        dt_min: float = 0.001  # dt ~ log-uniform(dt_min, dt_max), floored, stored as softplus^-1
        dt_max: float = 0.1
        dt_init_floor: float = 1e-4
        conv_bias: bool = True
        bias: bool = False  # in_proj and out_proj
        norm_eps: float = 1e-5

    IMPLS = ("reference", "triton")
    REFERENCE_OPS = {"conv": causal_conv1d, "conv_step": causal_conv1d_step,
                     "chunk": naive_chunk_ssd, "step": ssd_step}
    TRITON_OPS = {  # the kernels of impl="triton", imported on first use by Mixer.op
        "conv": "kernels.short_conv.conv:causal_conv1d_triton",
        "chunk": "kernels.ssd.chunk:chunk_ssd",
        "conv_step": "kernels.short_conv.recurrent:causal_conv1d_step_triton",
        "step": "kernels.ssd.recurrent:fused_ssd_step",
    }

    def __init__(self, d_model: int, cfg: Config, layer_idx: int = 0, impl: str = "auto"):
        super().__init__(d_model, cfg, layer_idx, impl)
        self._validate(cfg)
        self.d_inner = cfg.expand * d_model
        self.nheads, self.headdim = self.d_inner // cfg.headdim, cfg.headdim
        self.ngroups, self.d_state = cfg.ngroups, cfg.d_state
        self.conv_dim = self.d_inner + 2 * cfg.ngroups * cfg.d_state  # x, B and C share the conv
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=cfg.bias)
        # nn.Conv1d only to hold the weight [conv_dim, 1, d_conv] with PyTorch's default init and
        # mamba_ssm's parameter names; the causal conv itself is kernels.short_conv.
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(self._init_dt_bias(cfg))
        lo, hi = cfg.A_init_range
        self.A_log = nn.Parameter(torch.empty(self.nheads).uniform_(lo, hi).log())
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // cfg.ngroups, eps=cfg.norm_eps,
                                 norm_before_gate=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=cfg.bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # as mamba_ssm: optimisers that read the flag skip them

    def _validate(self, cfg: Config) -> None:
        d_inner = cfg.expand * self.d_model
        for key in ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"mamba2: {key}={getattr(cfg, key)} must be >= 1")
        if d_inner % cfg.headdim:
            raise ValueError(
                f"mamba2: d_inner = expand * d_model = {cfg.expand} * {self.d_model} = {d_inner} is not "
                f"divisible by headdim={cfg.headdim}; pick a headdim that divides {d_inner} "
                f"(e.g. headdim={math.gcd(d_inner, cfg.headdim)}) or change d_model / expand"
            )
        if (d_inner // cfg.headdim) % cfg.ngroups:
            raise ValueError(
                f"mamba2: nheads = {d_inner // cfg.headdim} is not divisible by ngroups={cfg.ngroups}; "
                f"pick ngroups dividing the number of heads"
            )
        lo, hi = cfg.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"mamba2: A_init_range={cfg.A_init_range} needs 0 < low <= high")
        if not 0 < cfg.dt_min <= cfg.dt_max:
            raise ValueError(f"mamba2: need 0 < dt_min <= dt_max, got {cfg.dt_min} and {cfg.dt_max}")

    def _init_dt_bias(self, cfg: Config) -> Tensor:
        """softplus^-1 of dt ~ log-uniform(dt_min, dt_max) floored at dt_init_floor (mamba_ssm)."""
        return dt_bias_init(self.nheads, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)

    # -- pieces shared by forward and step ---------------------------------------------------------
    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _ssm_inputs(self, xBC: Tensor, dt: Tensor) -> tuple[Tensor, ...]:
        """Conv output ``[..., conv_dim]`` and raw ``dt [..., H]`` -> x ``[..., H, P]``,
        dt ``[..., H]``, A ``[H]``, B and C ``[..., G, N]``; dt and A in the state dtype."""
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        cdt = state_dtype(xBC.dtype)
        dt = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt))
        A = -torch.exp(self.A_log.to(cdt))  # in fp32 at least: a bf16 A_log would round A coarsely
        return (x.unflatten(-1, (self.nheads, self.headdim)), dt, A,
                B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)))

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight.squeeze(1)  # [conv_dim, d_conv]

    # -- the contract -----------------------------------------------------------------------------
    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``x: [B, T, d_model]`` -> ``(y: [B, T, d_model], state)``, through the chunked SSD."""
        self.check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        conv = self.op("conv")
        ssd = self.op("chunk")
        z, xBC, dt = self._split(self.in_proj(x))
        xBC, conv_state = conv(xBC, self._conv_weight(), self.conv1d.bias, state["conv"], "silu")
        xs, dt, A, B, C = self._ssm_inputs(xBC, dt)
        y, ssm_state = ssd(xs, dt, A, B, C, self.D, chunk_size=self.cfg.chunk_size,
                           initial_state=state["ssm"])
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token ``x_t: [B, d_model]`` through the one-token SSD recurrence."""
        self.check_input(x_t, rank=2)
        conv_step = self.op("conv_step")
        ssd_step_fn = self.op("step")
        z, xBC, dt = self._split(self.in_proj(x_t))
        xBC, conv_state = conv_step(xBC, self._conv_weight(), self.conv1d.bias, state["conv"], "silu")
        xs, dt, A, B, C = self._ssm_inputs(xBC, dt)
        y, ssm_state = ssd_step_fn(xs, dt, A, B, C, state["ssm"], self.D)
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        sdt = state_dtype(dtype)
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.cfg.d_conv - 1, device=device, dtype=sdt),
            "ssm": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=sdt),
        }

    def state_size(self, seq_len: int) -> int:
        """Constant in ``seq_len``: the conv's last d_conv - 1 inputs plus the H x P x N SSM state."""
        return self.conv_dim * (self.cfg.d_conv - 1) + self.nheads * self.headdim * self.d_state

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs of the chunked algorithm as ``forward`` runs it (a multiply-add is 2):
        in_proj, conv, out_proj, and per chunk of q tokens (Q = min(chunk_size, T) and a ragged
        tail, both counted over the full q x q block as computed):
        C B^T ``2 q^2 G N``, diagonal blocks ``2 q^2 H P``, chunk states ``2 q H P N``,
        inter-chunk step ``2 H P N``, state -> output ``2 q H P N``. Elementwise work (softplus,
        exp, norm, gating, D skip) is left out."""
        T = seq_len
        proj = 2 * T * self.d_model * (self.in_proj.out_features + self.d_inner)
        conv = 2 * T * self.conv_dim * self.cfg.d_conv
        Q = max(1, min(self.cfg.chunk_size, T))
        return proj + conv + (T // Q) * self._chunk_flops(Q) + self._chunk_flops(T % Q)

    def _chunk_flops(self, q: int) -> int:
        if q == 0:
            return 0
        H, P, N, G = self.nheads, self.headdim, self.d_state, self.ngroups
        return 2 * q * q * (G * N + H * P) + 4 * q * H * P * N + 2 * H * P * N
