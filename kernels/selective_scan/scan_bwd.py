"""Backward Triton kernel of the Mamba-1 selective scan.

One program per (block of BD channels, batch row) walks the blocks of BT tokens from the last to
the first. For each block it reloads the block's inputs and the fp32 state the forward saved at
the block's start, and recomputes the block's states with one ``[BT, BD, N]`` associative scan
(the expanded states ``h [B, T, D, N]`` are never stored). Then, with ``g_t = dL/dh_t`` and
``q_t = a_t g_t`` (the gradient handed to ``h_{t-1}``, ``a_t = exp(dt_t A)``):

    g_t = dy_t C_t + q_{t+1},  q_t = a_t (dy_t C_t + q_{t+1})  (a reverse affine scan)

Both scans use ``affine_excl_combine``, which yields the exclusive prefix (``h_{t-1}`` forward,
``q_{t+1}`` in reverse) without shifting a tile. Per element then:

    dA += q h_{t-1} dt;   d(dt) = sum_n q h_{t-1} A + u sum_n g B;   du = dt sum_n g B + D dy;
    dB_t = sum_d g dt u;  dC_t = sum_d dy h_t

Reductions over channels (dB, dC) are written as fp32 partials per channel block
``[B, ND, T, N]``; over time and batch (dA, dD, d delta_bias) as per-(batch, channel) partials;
a torch ``sum`` finishes them (deterministic, no atomics).

Memory traffic per token (bf16): reads u, delta, z, dy (``8 Dch``), B, C (``4 N``), writes
du, ddelta, dz (``6 Dch``) and the fp32 dB/dC partials (``8 N ND`` with ``ND = Dch / BD``, read
again by the sum) plus the saved block states (``4 Dch N / BT``). Exponentials: ``Dch N`` per
token again (the recompute).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.selective_scan.scan_fwd import LOG2E, affine_excl_combine, block_offsets, load_block, step_sizes
from kernels.triton_utils import cdiv, next_power_of_2

BWD_WARPS = 8  # fixed, not autotuned: BD follows from it and the dB/dC partials' shape from BD


@triton.jit
def load_dy_state(dy, hc, i_b, i_t, NT, T, Dch, N: tl.constexpr, o_d, m_d, o_dn, m_dn, BT: tl.constexpr):
    """dy [BT, BD] (raw dtype) and the fp32 state saved at the start of block i_t [BD, BN]."""
    o_t = i_t * BT + tl.arange(0, BT)
    m_td = ((o_t >= 0) & (o_t < T))[:, None] & m_d[None, :]
    b_do = tl.load(dy + (i_b * T + o_t)[:, None] * Dch + o_d[None, :], mask=m_td, other=0.)
    return b_do, tl.load(hc + (i_b * NT + i_t) * Dch * N + o_dn, mask=m_dn & (i_t >= 0), other=0.)


@triton.jit
def selective_scan_bwd_kernel(u, delta, A, B, C, D, z, delta_bias, hc, dy, dht,
                              du, ddelta, dz, dB_part, dC_part, dA_part, dD_part, dbias_part, dh0,
                              T, Dch, N: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                              HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                              SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr, HAS_H0: tl.constexpr):
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    ND, NT = tl.num_programs(0), tl.cdiv(T, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < Dch, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    o_dn = o_d[:, None] * N + o_n[None, :]  # [BD, BN]
    b_Ae = tl.load(A + o_dn, mask=m_dn, other=0.).to(tl.float32)  # [BD, BN]
    b_A = b_Ae * LOG2E
    b_bias = tl.load(delta_bias + o_d, mask=m_d, other=0.).to(tl.float32) if HAS_BIAS else None
    b_D = tl.load(D + o_d, mask=m_d, other=0.).to(tl.float32) if HAS_D else None
    if HAS_DHT:  # q_{T}: the gradient entering the last block from the final state
        b_q = tl.load(dht + i_b * Dch * N + o_dn, mask=m_dn, other=0.).to(tl.float32)
    else:
        b_q = tl.zeros([BD, BN], dtype=tl.float32)
    b_dA = tl.zeros([BD, BN], dtype=tl.float32)
    b_dD = tl.zeros([BD], dtype=tl.float32)
    b_dbias = tl.zeros([BD], dtype=tl.float32)
    r_first = (tl.arange(0, BT) == 0)[:, None, None]
    # register double buffer: block i_t - 1 is loaded while block i_t is differentiated
    n_x, n_u, n_z, n_B, n_C = load_block(u, delta, z, B, C, i_b, NT - 1, T, Dch, N, o_d, m_d, o_n, m_n,
                                         BT, HAS_Z)
    n_do, n_hin = load_dy_state(dy, hc, i_b, NT - 1, NT, T, Dch, N, o_d, m_d, o_dn, m_dn, BT)
    for i in range(NT):
        i_t = NT - 1 - i
        o_t = i_t * BT + tl.arange(0, BT)
        o_td, m_td, _, m_tn = block_offsets(i_b, i_t, T, Dch, N, o_d, m_d, o_n, m_n, BT)
        b_x, b_u, b_z, b_B, b_C, b_do, b_hin = n_x, n_u, n_z, n_B, n_C, n_do, n_hin
        n_x, n_u, n_z, n_B, n_C = load_block(u, delta, z, B, C, i_b, i_t - 1, T, Dch, N, o_d, m_d, o_n, m_n,
                                             BT, HAS_Z)
        n_do, n_hin = load_dy_state(dy, hc, i_b, i_t - 1, NT, T, Dch, N, o_d, m_d, o_dn, m_dn, BT)
        b_dt, b_x = step_sizes(b_x, b_bias, m_td, HAS_BIAS, SOFTPLUS)  # [BT, BD]
        b_u = b_u.to(tl.float32)  # [BT, BD]
        b_do = b_do.to(tl.float32)  # [BT, BD]
        b_B = b_B.to(tl.float32)  # [BT, BN]
        b_C = b_C.to(tl.float32)  # [BT, BN]
        # 1. recompute the block's states: h_{t-1} from the exclusive scan, h_t from one step
        b_a = tl.exp2(b_dt[:, :, None] * b_A[None, :, :])  # [BT, BD, BN]
        b_b = (b_dt * b_u)[:, :, None] * b_B[:, None, :]  # [BT, BD, BN]
        b_one, b_zero = tl.full(b_a.shape, 1., tl.float32), tl.zeros(b_a.shape, tl.float32)
        _, _, b_xa, b_xb = tl.associative_scan((b_a, b_b, b_one, b_zero), 0, affine_excl_combine)
        b_hp = b_xa * b_hin[None, :, :] + b_xb  # [BT, BD, BN]: h_{t-1}
        b_hs = b_a * b_hp + b_b  # [BT, BD, BN]: h_t
        # 2. the epilogue's gradients: dy of the scan output, dz, dD, du's skip part
        b_dy = b_do
        if HAS_Z:
            b_z = b_z.to(tl.float32)
            b_sig = tl.sigmoid(b_z)
            b_yd = tl.sum(b_hs * b_C[:, None, :], 2)  # [BT, BD]
            if HAS_D:
                b_yd += b_D[None, :] * b_u
            tl.store(dz + o_td, (b_do * b_yd * b_sig * (1. + b_z * (1. - b_sig))).to(dz.dtype.element_ty),
                     mask=m_td)
            b_dy = b_do * b_z * b_sig
        # 3. reverse scan: q_t = a_t (dy_t C_t + q_{t+1}); g_t = dy_t C_t + q_{t+1}
        b_c = b_dy[:, :, None] * b_C[:, None, :]  # [BT, BD, BN]
        _, _, b_ra, b_rb = tl.associative_scan((b_a, b_a * b_c, b_one, b_zero), 0, affine_excl_combine,
                                               reverse=True)
        b_g = b_c + b_ra * b_q[None, :, :] + b_rb  # [BT, BD, BN]: dL/dh_t
        b_qs = b_a * b_g  # [BT, BD, BN]: dL/dh_{t-1} through the decay
        b_qh = b_qs * b_hp
        # 4. per-element gradients
        b_gB = tl.sum(b_g * b_B[:, None, :], 2)  # [BT, BD]
        b_ddt = tl.sum(b_qh * b_Ae[None, :, :], 2) + b_u * b_gB  # [BT, BD]
        b_du = b_dt * b_gB
        if HAS_D:
            b_du += b_D[None, :] * b_dy
            b_dD += tl.sum(tl.where(m_td, b_dy * b_u, 0.), 0)
        tl.store(du + o_td, b_du.to(du.dtype.element_ty), mask=m_td)
        if SOFTPLUS:
            b_ddt = b_ddt * tl.sigmoid(b_x)
        b_ddt = tl.where(m_td, b_ddt, 0.)
        tl.store(ddelta + o_td, b_ddt.to(ddelta.dtype.element_ty), mask=m_td)
        b_dbias += tl.sum(b_ddt, 0)
        b_dA += tl.sum(b_qh * b_dt[:, :, None], 0)
        o_p = ((i_b * ND + i_d) * T + o_t)[:, None] * N + o_n[None, :]  # [BT, BN] in [B, ND, T, N]
        tl.store(dB_part + o_p, tl.sum(b_g * (b_dt * b_u)[:, :, None], 1), mask=m_tn)
        tl.store(dC_part + o_p, tl.sum(b_hs * b_dy[:, :, None], 1), mask=m_tn)
        b_q = tl.sum(tl.where(r_first, b_qs, 0.), 0)  # q at the block's first token, for the block before
    o_bd = i_b * Dch + o_d
    tl.store(dA_part + i_b * Dch * N + o_dn, b_dA, mask=m_dn)
    if HAS_D:
        tl.store(dD_part + o_bd, b_dD, mask=m_d)
    if HAS_BIAS:
        tl.store(dbias_part + o_bd, b_dbias, mask=m_d)
    if HAS_H0:
        tl.store(dh0 + i_b * Dch * N + o_dn, b_q, mask=m_dn)


def selective_scan_bwd(dy, dht, u, delta, A, B, C, D, z, delta_bias, delta_softplus, hc, has_h0, chunk_size):
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0), each in its input's dtype (None if absent)."""
    b, T, Dch = u.shape
    N = A.shape[1]
    BT = chunk_size
    # threads are laid out over (BD, BN) and each holds a column of BT tokens: 32 * warps = BD * BN
    BD = max(1, min(next_power_of_2(Dch), 32 * BWD_WARPS // next_power_of_2(N)))
    ND = cdiv(Dch, BD)
    f32 = dict(dtype=torch.float32)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dB_part, dC_part = u.new_empty(b, ND, T, N, **f32), u.new_empty(b, ND, T, N, **f32)
    dA_part = u.new_empty(b, Dch, N, **f32)
    dD_part = u.new_empty(b, Dch, **f32) if D is not None else None
    dbias_part = u.new_empty(b, Dch, **f32) if delta_bias is not None else None
    dh0 = u.new_empty(b, Dch, N, **f32) if has_h0 else None
    selective_scan_bwd_kernel[(ND, b)](
        u, delta, A, B, C, D, z, delta_bias, hc, dy, dht, du, ddelta, dz, dB_part, dC_part, dA_part,
        dD_part, dbias_part, dh0, T, Dch, N=N, BN=next_power_of_2(N), BT=BT, BD=BD,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_DHT=dht is not None, HAS_H0=has_h0, num_warps=BWD_WARPS)
    dA = dA_part.sum(0).to(A.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB_part.sum(1).to(B.dtype), dC_part.sum(1).to(C.dtype), dD, dz, dbias, dh0
