"""One decode step of the Mamba-1 selective scan in Triton: ``fused_selective_scan_step``.

One program per (batch row, BD channels) reads its ``[BD, N]`` slice of the state once, applies
``h = exp(dt A) h + dt u B``, reads ``y = sum_n C h (+ D u) (* silu(z))`` and writes the state
once (in place when ``out_state is state``: every program reads its slice before writing it).

Memory traffic per step: the state read and written (``2 * 4 B D N`` bytes for fp32) dominates;
A (``4 D N``) and the ``[B, D]`` / ``[B, N]`` activations are small. ``B D N`` exps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.selective_scan.scan_fwd import LOG2E, check_inputs, softplus
from kernels.triton_utils import cdiv, check_device, launch_ready, next_power_of_2

# A decode step at small batch is bound by host time (B = 1, D 2048, N 16 on an H100: 66.9 us a step
# against a state of 0.26 MB), so the wrapper does little per call: the launch config comes from the
# grid's size instead of an autotuner (whose per-call key builds a dtype string per tensor), and
# ready inputs skip the full checks (`_launchable`: 4.9 us against 22.4 us for the checked path on a
# 2-core CPU, timeit of both functions on CPU tensors). Channel blocks shrink until the (batch,
# channel block) programs fill an H100's 132 SMs about twice.
_STEP_BLOCKS = ((128, 4), (64, 4), (32, 2), (16, 1))
_STEP_PROGRAMS = 256
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def step_block(batch: int, channels: int) -> tuple[int, int]:
    """(channels per program, warps) of the decode step for this batch and channel count."""
    for bd, warps in _STEP_BLOCKS:
        if batch * cdiv(channels, bd) >= _STEP_PROGRAMS:
            return bd, warps
    return _STEP_BLOCKS[-1]


def _launchable(u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias, out_state) -> bool:
    """True when every input already is what the kernel takes (the decode loop's case): contiguous,
    on u_t's device, of the shapes and dtypes ``check_inputs`` demands, ``out_state`` None or
    ``state``. Anything else takes the checked path, whose errors name the fix."""
    if u_t.dim() != 2 or A.dim() != 2 or u_t.dtype not in _DTYPES:
        return False
    (b, d), n = u_t.shape, A.shape[1]
    if out_state is not None and out_state is not state:
        return False
    return launch_ready((u_t, (b, d)), (delta_t, (b, d)), (z_t, (b, d)), (B_t, (b, n)), (C_t, (b, n)),
                        (A, (d, n)), (state, (b, d, n)), (D, (d,)), (delta_bias, (d,))) \
        and delta_t.dtype == B_t.dtype == C_t.dtype == u_t.dtype and (z_t is None or z_t.dtype == u_t.dtype)


@triton.jit
def selective_scan_step_kernel(u, delta, A, B, C, D, z, delta_bias, h, h_out, y, Dch,
                               N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                               HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                               SOFTPLUS: tl.constexpr):
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < Dch, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    o_dn = o_d[:, None] * N + o_n[None, :]  # [BD, BN]
    o_bd = i_b * Dch + o_d  # [BD]
    b_x = tl.load(delta + o_bd, mask=m_d, other=0.).to(tl.float32)
    if HAS_BIAS:
        b_x += tl.load(delta_bias + o_d, mask=m_d, other=0.).to(tl.float32)
    b_dt = softplus(b_x) if SOFTPLUS else b_x  # [BD]
    b_u = tl.load(u + o_bd, mask=m_d, other=0.).to(tl.float32)
    b_B = tl.load(B + i_b * N + o_n, mask=m_n, other=0.).to(tl.float32)  # [BN]
    b_C = tl.load(C + i_b * N + o_n, mask=m_n, other=0.).to(tl.float32)
    b_A = tl.load(A + o_dn, mask=m_dn, other=0.).to(tl.float32)  # [BD, BN]
    b_h = tl.load(h + i_b * Dch * N + o_dn, mask=m_dn, other=0.).to(tl.float32)
    b_h = tl.exp2(b_dt[:, None] * b_A * LOG2E) * b_h + (b_dt * b_u)[:, None] * b_B[None, :]
    tl.store(h_out + i_b * Dch * N + o_dn, b_h.to(h_out.dtype.element_ty), mask=m_dn)
    b_y = tl.sum(b_h * b_C[None, :], 1)  # [BD]
    if HAS_D:
        b_y += tl.load(D + o_d, mask=m_d, other=0.).to(tl.float32) * b_u
    if HAS_Z:
        b_z = tl.load(z + o_bd, mask=m_d, other=0.).to(tl.float32)
        b_y *= b_z * tl.sigmoid(b_z)
    tl.store(y + o_bd, b_y.to(y.dtype.element_ty), mask=m_d)


def fused_selective_scan_step(u_t, delta_t, A, B_t, C_t, state, D=None, z_t=None, delta_bias=None,
                              delta_softplus: bool = False, out_state=None):
    """One token, as ``selective_scan_step``: ``u_t, delta_t, z_t: [B, D]``, ``A: [D, N]``,
    ``B_t, C_t: [B, N]``, ``state: [B, D, N]`` (fp32) -> ``(y_t [B, D] in u_t.dtype, new state)``.
    The new state goes into ``out_state`` when given (``state`` itself is allowed), else into a
    fresh tensor of the state's dtype. Not differentiable (decode)."""
    if not _launchable(u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias, out_state):
        u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias = _checked(
            u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias, out_state)
    b, Dch = u_t.shape
    N = A.shape[-1]
    h_out = out_state if out_state is not None else torch.empty_like(state)
    y = torch.empty_like(u_t)
    BD, warps = step_block(b, Dch)
    selective_scan_step_kernel[(cdiv(Dch, BD), b)](
        u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, state, h_out, y, Dch, N=N,
        BN=next_power_of_2(N), BD=BD, HAS_D=D is not None, HAS_Z=z_t is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, num_warps=warps)
    return y, h_out


def _checked(u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias, out_state):
    """The inputs ``_launchable`` turned away: one clear error for a bad one, contiguous copies of
    the rest."""
    op = "fused_selective_scan_step"
    check_device(op, out_state)  # the inputs' devices: check_inputs below
    if u_t.dim() != 2:
        raise ValueError(f"{op}: expected u_t, delta_t, z_t [B,D]; got u_t {tuple(u_t.shape)}")
    # one token is a length-1 scan: the scan's checks, with state as its initial state
    one = lambda t: t[:, None] if t is not None else None  # noqa: E731
    check_inputs(op, one(u_t), one(delta_t), A, one(B_t), one(C_t), D, one(z_t), delta_bias, state, 16)
    if out_state is not None and (out_state.shape != state.shape or not out_state.is_contiguous()):
        raise ValueError(f"{op}: out_state must be a contiguous [B,D,N] = {tuple(state.shape)} tensor; "
                         f"got {tuple(out_state.shape)}")
    if out_state is state and not state.is_contiguous():
        raise ValueError(f"{op}: an in-place update needs a contiguous state; pass state.contiguous()")
    return tuple(t.contiguous() if t is not None else None
                 for t in (u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias))
