"""Forward Triton kernel of the Mamba-1 selective scan (shapes as in ``naive.py``).

One program per (block of BD channels, batch row) keeps its ``[BD, N]`` fp32 state in registers
and walks T in blocks of BT tokens: it loads ``u, delta, z: [BT, BD]`` and ``B, C: [BT, N]``,
forms the per-element affine maps ``h -> exp(dt A) h + dt u B`` on a ``[BT, BD, N]`` tile,
composes them with ``tl.associative_scan`` over the time axis (log-depth, no sequential
dependency inside the block), applies them to the carried state, reads ``y = sum_n C h``,
adds the D skip and the silu(z) gate and writes ``y``. With ``save_states`` it also writes the
state entering every block (fp32 ``[B, NT, D, N]``), the only thing the backward keeps.

Memory traffic per token (bf16 activations, Dch channels, N states): reads u, delta, z
(``3 * 2 Dch`` bytes) and B, C (``2 * 2 N``), writes y (``2 Dch``): ``8 Dch + 4 N`` bytes; the
saved states add ``4 Dch N / BT`` bytes per token. FLOPs per token ~``8 Dch N`` plus the scan's
``~4 Dch N``, and ``Dch N`` exponentials (``exp2``, one MUFU op each), which set the floor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import autotune_configs, cdiv, check_device, next_power_of_2

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x log2 e): one MUFU op


@triton.jit
def affine_combine(a1, b1, a2, b2):
    """(h -> a1 h + b1) then (h -> a2 h + b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def affine_excl_combine(a1, b1, x1, y1, a2, b2, x2, y2):
    """Totals compose as ``affine_combine``; (x, y) is the map of every element but the last, so
    an inclusive scan leaves the exclusive prefix in (x, y) without a shift of the tile."""
    return a1 * a2, a2 * b1 + b2, a1 * x2, x2 * b1 + y2


@triton.jit
def softplus(x):
    """log(1 + e^x) as torch (linear above 20), with log1p(e) = log(w) e / (w - 1) for small e."""
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + lp)


@triton.jit
def load_step_sizes(delta, delta_bias, b_bias, o_td, m_td, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(dt, delta + bias) for a [BT, BD] tile; dt = 0 outside the tensor (decay 1, input 0)."""
    return step_sizes(tl.load(delta + o_td, mask=m_td, other=0.), b_bias, m_td, HAS_BIAS, SOFTPLUS)


@triton.jit
def step_sizes(b_x, b_bias, m_td, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(dt, delta + bias) from a loaded [BT, BD] delta tile; dt = 0 where masked."""
    b_x = b_x.to(tl.float32)
    if HAS_BIAS:
        b_x = b_x + b_bias[None, :]
    b_dt = softplus(b_x) if SOFTPLUS else b_x
    return tl.where(m_td, b_dt, 0.), b_x


@triton.jit
def block_offsets(i_b, i_t, T, Dch, N: tl.constexpr, o_d, m_d, o_n, m_n, BT: tl.constexpr):
    """Offsets and masks of block i_t: [BT, BD] channel tiles, [BT, BN] B/C tiles (int64)."""
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = (o_t >= 0) & (o_t < T)  # block -1 (the backward's prefetch past the start) is all masked
    o_td = (i_b * T + o_t)[:, None] * Dch + o_d[None, :]  # [BT, BD]
    o_tn = (i_b * T + o_t)[:, None] * N + o_n[None, :]  # [BT, BN]
    return o_td, m_t[:, None] & m_d[None, :], o_tn, m_t[:, None] & m_n[None, :]


@triton.jit
def load_block(u, delta, z, B, C, i_b, i_t, T, Dch, N: tl.constexpr, o_d, m_d, o_n, m_n,
               BT: tl.constexpr, HAS_Z: tl.constexpr):
    """Raw (input dtype) tiles of block i_t: delta, u, z [BT, BD]; B, C [BT, BN]; zeros past T."""
    o_td, m_td, o_tn, m_tn = block_offsets(i_b, i_t, T, Dch, N, o_d, m_d, o_n, m_n, BT)
    b_x = tl.load(delta + o_td, mask=m_td, other=0.)
    b_u = tl.load(u + o_td, mask=m_td, other=0.)
    b_z = tl.load(z + o_td, mask=m_td, other=0.) if HAS_Z else b_u
    return b_x, b_u, b_z, tl.load(B + o_tn, mask=m_tn, other=0.), tl.load(C + o_tn, mask=m_tn, other=0.)


@triton.jit
def scan_block(b_dt, b_u, b_B, b_C, b_A, b_h, BT: tl.constexpr, N_MAJOR: tl.constexpr):
    """Scan one block from state b_h: -> (y [BT, BD] before skip and gate, state after the block).
    Tiles are [BT, BD, BN] (b_A, b_h: [BD, BN]), or [BT, BN, BD] with N_MAJOR (b_A, b_h: [BN, BD]):
    Triton lays threads out from the last axis, so the order decides which of the N reduction
    (lanes: shuffles) or the channels (lanes: no shuffles, warps over N) the threads span. T stays
    in each thread's registers either way: the scan along it is sequential within a thread."""
    if N_MAJOR:
        b_a = tl.exp2(b_dt[:, None, :] * b_A[None, :, :])  # [BT, BN, BD]: decay exp(dt A)
        b_b = (b_dt * b_u)[:, None, :] * b_B[:, :, None]  # [BT, BN, BD]: input dt u B
    else:
        b_a = tl.exp2(b_dt[:, :, None] * b_A[None, :, :])  # [BT, BD, BN]
        b_b = (b_dt * b_u)[:, :, None] * b_B[:, None, :]  # [BT, BD, BN]
    b_ac, b_bc = tl.associative_scan((b_a, b_b), 0, affine_combine)
    b_hs = b_ac * b_h[None, :, :] + b_bc  # h_t for every token of the block
    if N_MAJOR:
        b_y = tl.sum(b_hs * b_C[:, :, None], 1)  # [BT, BD]
    else:
        b_y = tl.sum(b_hs * b_C[:, None, :], 2)  # [BT, BD]
    r_last = (tl.arange(0, BT) == BT - 1)[:, None, None]
    return b_y, tl.sum(tl.where(r_last, b_hs, 0.), 0)  # padded rows keep the state: the last row is it


# (BD, num_warps, N_MAJOR): with N = 16, 32 * num_warps threads cover BD * 16 (d, n) pairs, each
# thread holding one (d, n) (two in the last two) for BT tokens; N_MAJOR trades the 4-shuffle N
# reduction for a cross-warp one and puts lanes on channels. sm_90 registers per thread (ptxas):
# BT 16: 80 (one pair) / ~160 (two); BT 32: ~158 / ~243; BT 64: ~250, no spills.
FWD_CONFIGS = [(8, 4, False), (16, 8, True), (32, 8, True), (16, 4, False)]


@triton.autotune(configs=autotune_configs([triton.Config({"BD": bd, "N_MAJOR": nm}, num_warps=w)
                                           for bd, w, nm in FWD_CONFIGS]),
                 key=["Dch", "N", "BT", "SAVE_STATES"], cache_results=True)
@triton.jit
def selective_scan_fwd_kernel(u, delta, A, B, C, D, z, delta_bias, h0, y, ht, hc, T, Dch,
                              N: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                              HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                              SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
                              SAVE_STATES: tl.constexpr, N_MAJOR: tl.constexpr):
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    NT = tl.cdiv(T, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < Dch, o_n < N
    if N_MAJOR:  # the state tile and A as [BN, BD]
        m_dn = m_n[:, None] & m_d[None, :]
        o_dn = o_d[None, :] * N + o_n[:, None]
    else:  # as [BD, BN]
        m_dn = m_d[:, None] & m_n[None, :]
        o_dn = o_d[:, None] * N + o_n[None, :]
    b_A = tl.load(A + o_dn, mask=m_dn, other=0.).to(tl.float32) * LOG2E
    b_bias = tl.load(delta_bias + o_d, mask=m_d, other=0.).to(tl.float32) if HAS_BIAS else None
    b_D = tl.load(D + o_d, mask=m_d, other=0.).to(tl.float32) if HAS_D else None
    if HAS_H0:
        b_h = tl.load(h0 + i_b * Dch * N + o_dn, mask=m_dn, other=0.).to(tl.float32)
    else:
        b_h = tl.zeros(o_dn.shape, dtype=tl.float32)
    # register double buffer: block i_t + 1 is loaded while block i_t is scanned
    n_x, n_u, n_z, n_B, n_C = load_block(u, delta, z, B, C, i_b, 0, T, Dch, N, o_d, m_d, o_n, m_n, BT, HAS_Z)
    for i_t in range(NT):
        if SAVE_STATES:  # the state entering block i_t, for the backward's recompute
            tl.store(hc + (i_b * NT + i_t) * Dch * N + o_dn, b_h, mask=m_dn)
        o_td, m_td, _, _ = block_offsets(i_b, i_t, T, Dch, N, o_d, m_d, o_n, m_n, BT)
        b_x, b_u, b_z, b_B, b_C = n_x, n_u, n_z, n_B, n_C
        n_x, n_u, n_z, n_B, n_C = load_block(u, delta, z, B, C, i_b, i_t + 1, T, Dch, N, o_d, m_d, o_n, m_n,
                                             BT, HAS_Z)
        b_dt, _ = step_sizes(b_x, b_bias, m_td, HAS_BIAS, SOFTPLUS)  # [BT, BD]
        b_u = b_u.to(tl.float32)  # [BT, BD]
        b_y, b_h = scan_block(b_dt, b_u, b_B.to(tl.float32), b_C.to(tl.float32), b_A, b_h, BT, N_MAJOR)
        if HAS_D:
            b_y += b_D[None, :] * b_u
        if HAS_Z:
            b_z = b_z.to(tl.float32)
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(y + o_td, b_y.to(y.dtype.element_ty), mask=m_td)
    if STORE_FINAL:
        tl.store(ht + i_b * Dch * N + o_dn, b_h, mask=m_dn)


def check_inputs(op, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size) -> None:
    """One clear error per bad input."""
    check_device(op, u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.dim() != 3:
        raise ValueError(f"{op}: expected u, delta, z [B,T,D]; got u {tuple(u.shape)}")
    b, T, Dch = u.shape
    N = A.shape[-1] if A.dim() == 2 else -1
    if (delta.shape != u.shape or A.shape != (Dch, N) or B.shape != (b, T, N) or C.shape != B.shape
            or (z is not None and z.shape != u.shape)):
        raise ValueError(f"{op}: expected u, delta, z [B,T,D], A [D,N], B/C [B,T,N]; got u {tuple(u.shape)}, "
                         f"delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}"
                         f"{'' if z is None else f', z {tuple(z.shape)}'}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (Dch,):
            raise ValueError(f"{op}: expected {name} [D] = [{Dch}]; got {tuple(t.shape)}")
    if initial_state is not None and initial_state.shape != (b, Dch, N):
        raise ValueError(f"{op}: expected initial_state [B,D,N] = {(b, Dch, N)}; "
                         f"got {tuple(initial_state.shape)}")
    dtypes = {t.dtype for t in (u, delta, B, C, z) if t is not None}
    if len(dtypes) > 1 or u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: u, delta, B, C, z must share one dtype of float32/float16/bfloat16; got "
                        f"{sorted(str(d) for d in dtypes)} (cast them, or use naive_chunk_selective_scan "
                        f"for fp64)")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"{op}: chunk_size must be a power of two >= 16; got {chunk_size}")


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                       output_final_state: bool, save_states: bool, chunk_size: int):
    """-> (y [B,T,D] in u.dtype, final state fp32 [B,D,N] or None, block states [B,NT,D,N] or None)."""
    b, T, Dch = u.shape
    N = A.shape[1]
    NT = cdiv(T, chunk_size)
    y = torch.empty_like(u)
    ht = u.new_empty(b, Dch, N, dtype=torch.float32) if output_final_state else None
    hc = u.new_empty(b, NT, Dch, N, dtype=torch.float32) if save_states else None
    grid = lambda meta: (cdiv(Dch, meta["BD"]), b)
    selective_scan_fwd_kernel[grid](
        u, delta, A, B, C, D, z, delta_bias, initial_state, y, ht, hc, T, Dch,
        N=N, BN=next_power_of_2(N), BT=chunk_size, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_H0=initial_state is not None,
        STORE_FINAL=output_final_state, SAVE_STATES=save_states)
    return y, ht, hc
