"""Token-by-token SSD (Mamba-2) in Triton, forward only: prefill of short sequences and decode.

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t + D x_t      h: [P, N] per head

One kernel, ``ssd_fused_recurrent_kernel``: each program holds a [BP, N] tile of one head's state
in registers (fp32) and walks the tokens. Traffic per token: x, y (2 H P bytes each in bf16), B,
C (2 G N each), dt; the state is read once and written once per call (4 H P N bytes each), which
is what a decode step costs: at H=64, P=64, N=128 a step moves ~4 MB per sequence.
FLOPs per token ~ 6 H P N (decay, outer product, add, h C).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.ssd.chunk import INPUT_DTYPES, check_inputs
from kernels.triton_utils import cdiv, launch_ready, next_power_of_2


@triton.jit
def ssd_fused_recurrent_kernel(x, dt, A, Bm, Cm, D, h0, ht, y, T,
                               H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                               BP: tl.constexpr, BN: tl.constexpr,
                               HAS_D: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr):
    """Parallel over (P tile, batch * head), sequential over tokens. ``h0`` and ``ht`` may alias:
    each program reads its own tile before it writes it."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    i_b64 = i_b.to(tl.int64)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p, m_n = o_p < P, o_n < N
    m_h = m_p[:, None] & m_n[None, :]
    st_off = i_bh.to(tl.int64) * P * N + o_p[:, None] * N + o_n[None, :]  # [BP, BN]
    b_h = tl.zeros([BP, BN], dtype=tl.float32)
    if HAS_H0:
        b_h = tl.load(h0 + st_off, mask=m_h, other=0.).to(tl.float32)
    b_A = tl.load(A + i_h).to(tl.float32)
    b_D = tl.load(D + i_h).to(tl.float32) if HAS_D else 0.
    for t in range(T):
        o_tok = i_b64 * T + t
        b_x = tl.load(x + (o_tok * H + i_h) * P + o_p, mask=m_p, other=0.).to(tl.float32)  # [BP]
        b_dt = tl.load(dt + o_tok * H + i_h).to(tl.float32)
        b_B = tl.load(Bm + (o_tok * G + i_g) * N + o_n, mask=m_n, other=0.).to(tl.float32)  # [BN]
        b_C = tl.load(Cm + (o_tok * G + i_g) * N + o_n, mask=m_n, other=0.).to(tl.float32)
        b_h = b_h * tl.exp(b_dt * b_A) + (b_dt * b_x)[:, None] * b_B[None, :]
        b_y = tl.sum(b_h * b_C[None, :], 1) + b_D * b_x  # [BP]
        tl.store(y + (o_tok * H + i_h) * P + o_p, b_y.to(y.dtype.element_ty), mask=m_p)
    if STORE_HT:
        tl.store(ht + st_off, b_h, mask=m_h)


def _launch(x, dt, A, B, C, D, state, out_state, T):
    """``T`` tokens of ``x [B, T, H, P]``, ``B, C [B, T, G, N]`` (or ``[B, H, P]``, ``[B, G, N]`` at
    T = 1: the same memory), contiguous; returns y shaped like x. Block of P chosen so that the
    grid fills the GPU."""
    b, (H, P), (G, N) = x.shape[0], x.shape[-2:], B.shape[-2:]
    BN = max(16, next_power_of_2(N))
    BP = max(16, min(next_power_of_2(P), 64))
    while BP > 16 and b * H * cdiv(P, BP) < 264:  # ~2 programs per H100 SM
        BP //= 2
    BP = min(BP, max(16, 2048 // BN))  # [16, 128] fp32 tile: 96 registers; [32, 128]: 245; [64, 128] spills
    y = torch.empty_like(x)
    grid = (cdiv(P, BP), b * H)
    ssd_fused_recurrent_kernel[grid](x, dt, A, B, C, D, state, out_state, y, T, H=H, G=G, P=P, N=N,
                                     BP=BP, BN=BN, HAS_D=D is not None, HAS_H0=state is not None,
                                     STORE_HT=out_state is not None, num_warps=4)
    return y


def fused_recurrent_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                        initial_state: Tensor | None = None,
                        output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Forward-only SSD recurrence, one kernel. Shapes as ``chunk_ssd``; returns
    ``(y [B, T, H, P] in x.dtype, final state [B, H, P, N] fp32 or None)``."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dt, A, B, C, D, initial_state)):
        raise RuntimeError("fused_recurrent_ssd is forward only (no backward); use kernels.ssd.chunk.chunk_ssd "
                           "for training, or call it under torch.no_grad() / on detached tensors")
    check_inputs("fused_recurrent_ssd", x, dt, A, B, C, D, initial_state)
    b, T, H, P = x.shape
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    D = D.contiguous() if D is not None else None
    h0 = initial_state.contiguous() if initial_state is not None else None
    ht = x.new_empty(b, H, P, B.shape[-1], dtype=torch.float32) if output_final_state else None
    return _launch(x, dt, A, B, C, D, h0, ht, T), ht


def fused_ssd_step(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
                   D: Tensor | None = None, out_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One decode token: ``x_t [B, H, P]``, ``dt_t [B, H]``, ``B_t, C_t [B, G, N]``, ``state
    [B, H, P, N]`` fp32 -> ``(y_t [B, H, P], new state)``. The state is read once and written once,
    into ``out_state`` when given (``state`` itself for an in-place update), else a new tensor.
    Inputs the decode loop passes (``_launchable``) go straight to the launch: at small batch a
    step is bound by host time."""
    if not _launchable(x_t, dt_t, A, B_t, C_t, state, D, out_state):
        x_t, dt_t, A, B_t, C_t, D = _checked(x_t, dt_t, A, B_t, C_t, state, D, out_state)
    if out_state is None:
        out_state = torch.empty_like(state)
    return _launch(x_t, dt_t, A, B_t, C_t, D, state, out_state, 1), out_state


def _launchable(x_t, dt_t, A, B_t, C_t, state, D, out_state) -> bool:
    """True for what the decode loop passes: contiguous inputs of the step's shapes on one device,
    x, B, C of one kernel dtype, an fp32 state, ``out_state`` None or the state itself. Anything
    else takes ``_checked``, whose errors name the fix."""
    if x_t.dim() != 3 or B_t.dim() != 3 or (out_state is not None and out_state is not state):
        return False
    (b, H, P), (G, N) = x_t.shape, B_t.shape[1:]
    return H % G == 0 and P <= 256 and N <= 256 and x_t.dtype in INPUT_DTYPES \
        and B_t.dtype == C_t.dtype == x_t.dtype and state.dtype == torch.float32 \
        and all(t is None or t.is_floating_point() for t in (dt_t, A, D)) \
        and launch_ready((x_t, (b, H, P)), (dt_t, (b, H)), (A, (H,)), (B_t, (b, G, N)), (C_t, (b, G, N)),
                         (D, (H,)), (state, (b, H, P, N)))


def _checked(x_t, dt_t, A, B_t, C_t, state, D, out_state):
    """The inputs ``_launchable`` turned away: one clear error for a bad one, contiguous copies of
    the rest."""
    if x_t.dim() != 3 or B_t.dim() != 3:
        raise ValueError(f"fused_ssd_step: expected x_t [B,H,P], B_t/C_t [B,G,N]; got x_t "
                         f"{tuple(x_t.shape)}, B_t {tuple(B_t.shape)}")
    check_inputs("fused_ssd_step", x_t[:, None], dt_t[:, None], A, B_t[:, None], C_t[:, None], D, state)
    if out_state is not None and (out_state.shape != state.shape or out_state.dtype != torch.float32
                                  or not out_state.is_contiguous()):
        raise ValueError("fused_ssd_step: out_state must be a contiguous fp32 tensor shaped like the state")
    if not state.is_contiguous():
        raise ValueError("fused_ssd_step: the state must be contiguous (pass state.contiguous())")
    return tuple(t.contiguous() if t is not None else None for t in (x_t, dt_t, A, B_t, C_t, D))
