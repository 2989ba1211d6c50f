"""Backward kernels of the chunkwise mLSTM, every stabiliser m held at its forward value (the
gradient through the max-stabiliser path is added by ``chunk.py``, O(B T H) scalar work).

With ``dnum_l = dh_l / d_l`` and ``dden_l`` (per token, from ``chunk.py``):

1. ``mlstm_bwd_states_kernel`` (grid ``[K / BK, V / BV, B*H]``), reverse over chunks:
   ``dC_c = decay_c dC_{c+1} + sum_l alpha_l q_l dnum_l^T`` (``dn`` with ``dden``), every chunk's
   ``dC_{c+1}`` stored; also ``dg_c = decay_c (<C_c, dC_{c+1}> + <n_c, dn_{c+1}>)`` (the carried
   state's share of the chunk's log decay; the writes' share comes from k.dk), per-tile partials.
2. ``mlstm_bwd_dqk_kernel`` (grid ``[K / BK, N, B*H]``, a loop over V): ``dS = dNum V^T + dden``,
   ``dq = (dS * D) K + alpha (dNum C_c^T + dden n_c)``,
   ``dk = (dS * D)^T Q + w (V dC_{c+1}^T + dn_{c+1})``, ``w_s = exp(a_s - m_{c+1})``; and the
   per-token gate terms (``chunk_gates.py``): ``k.dk`` (di), the in-chunk pairs ``s < l`` of
   ``dP * Q K^T`` (one more ``[BT, BT]`` dot per K tile), the inter-chunk ``q.dq`` and the
   state-write ``k.dk``, kept apart so that dlog f never subtracts large terms.
3. ``mlstm_bwd_dv_kernel`` (grid ``[V / BV, N, B*H]``): ``dv = S^T dNum + w (K dC_{c+1})``.

Per token and head (bf16): reads q, k twice and v, dh about three times (``~2 (4K + 3V) + 8``
bytes), writes dq, dk, dv (``2 (2K + V)``), plus the states ``C`` and ``dC`` (``4 K V / L`` each,
read by 2 and 3, written by the forward and 1); ``dh . h`` reads the forward's fp32 copy of h for
bf16 / fp16 inputs (``4 V``). FLOPs ~ ``6 K V + 2 L (3K + 2V)`` + the P recompute (twice).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.mlstm.chunk_fwd import _chunk_gates, _configs, _intra_decay
from kernels.mlstm.chunk_gates import _stabiliser_path


@triton.autotune(configs=_configs(sequential=True), key=["K", "V", "BT", "BK", "BV"], cache_results=True)
@triton.jit
def mlstm_bwd_states_kernel(q, i, f, dh, ms, m_tok, d_tok, dden, x_m, Cs, ns, dCT, dnT, dCs, dns, dC0,
                            dg, Gi, Gf,
                            scale, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            HAS_DFINAL: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr):
    """``dCs: [B*H, N + 1, K, V]`` (Cs's dtype), ``dns: [B*H, N + 1, K]`` the total gradient of
    each state (index 0: the initial state, also in ``dC0 [B*H, K, V]`` fp32);
    ``dg: [NK * NV, B*H, N]`` partial ``dg_c``; program (0, 0) of each head also runs the
    stabiliser path (``chunk_gates._stabiliser_path``) into ``Gi, Gf: [B*H, T]``."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NV = tl.cdiv(V, BV)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    o_kv = o_k[:, None] * V + o_v[None, :]                       # [BK, BV]
    if HAS_DFINAL:
        b_dC = tl.load(dCT + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_dn = tl.load(dnT + i_bh * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)
    else:
        b_dC = tl.zeros([BK, BV], dtype=tl.float32)
        b_dn = tl.zeros([BK], dtype=tl.float32)
    s_base = i_bh.to(tl.int64) * (NT + 1)
    b_carry = tl.full([], 0.0, tl.float32)
    for i_r in range(NT):
        i_c = NT - 1 - i_r
        s_next = s_base + i_c + 1
        tl.store(dCs + s_next * K * V + o_kv, b_dC.to(dCs.dtype.element_ty), mask=m_kv)
        o_t, m_t, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
        m_c = tl.load(ms + s_next - 1)
        b_decay = tl.exp(b_g + m_c - tl.load(ms + s_next))
        # the decay's share of dg_c: decay (<C_c, dC_{c+1}> + <n_c, dn_{c+1}>). Not
        # <C_{c+1}, dC_{c+1}>: that also holds the chunk's own writes, which the gates pass would
        # have to cancel against k.dk (catastrophically when f ~ 0 and the writes dominate)
        b_Cc = tl.load(Cs + (s_next - 1) * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_dg = tl.sum(tl.sum(b_Cc * b_dC, 1), 0)
        if i_v == 0:
            tl.store(dns + s_next * K + o_k, b_dn, mask=o_k < K)
            b_dg += tl.sum(tl.load(ns + (s_next - 1) * K + o_k, mask=o_k < K, other=0.0) * b_dn, 0)
        tl.store(dg + ((i_k * NV + i_v) * tl.num_programs(2) + i_bh).to(tl.int64) * NT + i_c,
                 b_dg * b_decay)
        if (i_k == 0) & (i_v == 0):
            b_carry, _ = _stabiliser_path(f, x_m, m_tok, Gi, Gf, b_i, m_c, b_carry, i_b, i_h, i_bh,
                                          i_c, T, H, BT)
        b_upd, b_dnw = _chunk_dstate(q, dh, m_tok, d_tok, dden, b_b, m_c, o_t, m_t, i_b, i_h, i_bh, i_c,
                                     i_k, i_v, scale, T, H, K, V, BT, BK, BV, LOW, PREC)
        b_dC = b_dC * b_decay + b_upd
        b_dn = b_dn * b_decay + b_dnw
    tl.store(dC0 + i_bh.to(tl.int64) * K * V + o_kv, b_dC, mask=m_kv)
    if i_v == 0:
        tl.store(dns + s_base * K + o_k, b_dn, mask=o_k < K)


# Chunk-parallel reverse state pass (``parallel_states``; the forward's chunk_fwd.py says why):
# every chunk's own share of dC, dn (a dot each) and of the stabiliser path at once, then one
# elementwise reverse walk over the chunks, spread over the state's elements, which also takes the
# carried state's share of dg and routes the stabiliser path's carry across chunks.

@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV"], cache_results=True)
@triton.jit
def mlstm_bwd_local_kernel(q, i, f, dh, ms, m_tok, d_tok, dden, x_m, Us, dns, Gi, Gf, stats, scale, T, NT,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                           BK: tl.constexpr, BV: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr):
    """Grid ``[K/BK * V/BV, N, B*H]``: chunk c's ``(alpha q)^T dnum`` into slot c + 1 of ``Us`` (fp32,
    laid out as dCs), ``(alpha q)^T dden`` into slot c + 1 of ``dns``; program 0 of each chunk also
    its stabiliser path with no carry (``Gi, Gf``) and ``stats[b*h, c] = (decay_c, start of the last
    segment, carry out)`` for ``mlstm_bwd_pass_kernel``."""
    i_kv, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    s_next = i_bh.to(tl.int64) * (NT + 1) + i_c + 1
    o_t, m_t, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
    m_c = tl.load(ms + s_next - 1)
    if i_kv == 0:
        b_out, b_start = _stabiliser_path(f, x_m, m_tok, Gi, Gf, b_i, m_c, 0.0, i_b, i_h, i_bh, i_c, T, H, BT)
        o_st = (i_bh.to(tl.int64) * NT + i_c) * 3
        tl.store(stats + o_st, tl.exp(b_g + m_c - tl.load(ms + s_next)))
        tl.store(stats + o_st + 1, b_start.to(tl.float32))
        tl.store(stats + o_st + 2, b_out)
    b_upd, b_dnw = _chunk_dstate(q, dh, m_tok, d_tok, dden, b_b, m_c, o_t, m_t, i_b, i_h, i_bh, i_c,
                                 i_k, i_v, scale, T, H, K, V, BT, BK, BV, LOW, PREC)
    tl.store(Us + s_next * K * V + o_k[:, None] * V + o_v[None, :], b_upd,
             mask=(o_k[:, None] < K) & (o_v[None, :] < V))
    if i_v == 0:
        tl.store(dns + s_next * K + o_k, b_dnw, mask=o_k < K)


@triton.jit
def _reverse_chunks(U, dS, S, dg, stats, b_x, o_x, m_x, s_base, st_base, dg_row, NT, N_EL: tl.constexpr):
    """Walk ``N_EL``-element state gradients back through the chunks: slot c + 1 of ``dS`` gets
    ``x_{c+1}`` (the gradient of the state entering chunk c + 1; ``b_x`` the final one), ``dg`` row
    ``dg_row`` gets ``decay_c <S_c, x_{c+1}>`` over these elements (``S``: the forward's states),
    and ``x_c = decay_c x_{c+1} + u_c``, ``u_c`` chunk c's own share from slot c + 1 of ``U`` (fp32;
    U may be dS). Returns ``x_0``."""
    for i_r in tl.range(NT, num_stages=4):      # loads ahead of the chain, as the forward pass
        i_c = NT - 1 - i_r
        b_decay = tl.load(stats + (st_base + i_c) * 3)
        o_slot = (s_base + i_c + 1) * N_EL + o_x
        b_u = tl.load(U + o_slot, mask=m_x, other=0.0)
        b_s = tl.load(S + o_slot - N_EL, mask=m_x, other=0.0).to(tl.float32)
        tl.store(dS + o_slot, b_x.to(dS.dtype.element_ty), mask=m_x)
        tl.store(dg + dg_row * NT + i_c, b_decay * tl.sum(b_s * b_x, 0))
        b_x = b_x * b_decay + b_u
    return b_x


@triton.jit
def _carry_stabiliser_path(Gi, Gf, stats, i_bh, st_base, T, NT, BT: tl.constexpr):
    """The stabiliser path's carry across chunks, last to first: chunk c's last segment (from its
    last i-branch token on; the whole chunk if it has none) gains the carry from chunk c + 1 (in
    Gi at that token, in Gf after it), and passes ``carry out + [no i branch] carry`` to chunk c - 1."""
    o_l = tl.arange(0, BT)
    b_carry = tl.full([], 0.0, tl.float32)
    for i_r in tl.range(NT, num_stages=4):
        i_c = NT - 1 - i_r
        b_start = tl.load(stats + (st_base + i_c) * 3 + 1).to(tl.int32)
        b_out = tl.load(stats + (st_base + i_c) * 3 + 2)
        o_t = i_c * BT + o_l
        m_last = (o_t < T) & (o_l >= b_start)
        o_tok = i_bh.to(tl.int64) * T + o_t
        m_i = m_last & (o_l == b_start)
        tl.store(Gi + o_tok, tl.load(Gi + o_tok, mask=m_i, other=0.0) + b_carry, mask=m_i)
        m_f = m_last & (o_l != b_start)
        tl.store(Gf + o_tok, tl.load(Gf + o_tok, mask=m_f, other=0.0) + b_carry, mask=m_f)
        b_carry = b_out + tl.where(b_start < 0, b_carry, 0.0)


@triton.jit
def mlstm_bwd_pass_kernel(Cs, ns, Us, dCs, dns, dCT, dnT, dC0, dg, stats, Gi, Gf, T, NT, K: tl.constexpr,
                          V: tl.constexpr, BT: tl.constexpr, BLK: tl.constexpr, BKN: tl.constexpr,
                          HAS_DFINAL: tl.constexpr):
    """Grid ``[cdiv(K V, BLK) + 2, B*H]``, after ``mlstm_bwd_local_kernel``: what
    ``mlstm_bwd_states_kernel`` writes (``dCs, dns`` slots 1..N, ``dns`` slot 0, ``dC0``, ``Gi, Gf``),
    ``dg: [cdiv(K V, BLK) + 1, B*H, N]`` partials. Programs below the last two walk BLK elements
    of C each; the next walks n; the last carries the stabiliser path. Not autotuned: it updates
    in place (dns, Gi, Gf; dCs where it is Us)."""
    i_x, i_bh = tl.program_id(0), tl.program_id(1)
    NC = tl.cdiv(K * V, BLK)
    s_base = i_bh.to(tl.int64) * (NT + 1)
    st_base = i_bh.to(tl.int64) * NT
    dg_row = (i_x * tl.num_programs(1) + i_bh).to(tl.int64)
    if i_x < NC:                           # (each branch names its own tiles: they differ in shape)
        o_e = i_x * BLK + tl.arange(0, BLK)
        m_e = o_e < K * V
        b_dC = tl.zeros([BLK], dtype=tl.float32)
        if HAS_DFINAL:
            b_dC = tl.load(dCT + i_bh.to(tl.int64) * K * V + o_e, mask=m_e, other=0.0).to(tl.float32)
        b_dC = _reverse_chunks(Us, dCs, Cs, dg, stats, b_dC, o_e, m_e, s_base, st_base, dg_row, NT, K * V)
        tl.store(dC0 + i_bh.to(tl.int64) * K * V + o_e, b_dC, mask=m_e)
    elif i_x == NC:
        o_k = tl.arange(0, BKN)
        m_k = o_k < K
        b_dn = tl.zeros([BKN], dtype=tl.float32)
        if HAS_DFINAL:
            b_dn = tl.load(dnT + i_bh.to(tl.int64) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_dn = _reverse_chunks(dns, dns, ns, dg, stats, b_dn, o_k, m_k, s_base, st_base, dg_row, NT, K)
        tl.store(dns + s_base * K + o_k, b_dn, mask=m_k)
    else:
        _carry_stabiliser_path(Gi, Gf, stats, i_bh, st_base, T, NT, BT)


@triton.jit
def _chunk_dstate(q, dh, m_tok, d_tok, dden, b_b, m_c, o_t, m_t, i_b, i_h, i_bh, i_c, i_k, i_v, scale, T,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr):
    """Chunk c's own share of the gradient of the state entering it: ``(alpha q)^T dnum``
    ``[BK, BV]`` (K tile i_k, V tile i_v) and ``(alpha q)^T dden`` ``[BK]``."""
    o_tok = i_bh.to(tl.int64) * T + o_t
    b_m = tl.load(m_tok + o_tok, mask=m_t, other=0.0)
    b_d = tl.load(d_tok + o_tok, mask=m_t, other=1.0)
    b_dden = tl.load(dden + o_tok, mask=m_t, other=0.0)
    b_alpha = tl.where(m_t, scale * tl.exp(b_b + m_c - b_m), 0.0)   # [BT]
    qk_base = (i_b.to(tl.int64) * T * H + i_h) * K
    v_base = (i_b.to(tl.int64) * T * H + i_h) * V
    p_q = tl.make_block_ptr(q + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
    p_dh = tl.make_block_ptr(dh + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    b_qa = tl.load(p_q, boundary_check=(0, 1), padding_option="zero").to(tl.float32) * b_alpha[:, None]
    b_dnum = tl.load(p_dh, boundary_check=(0, 1), padding_option="zero").to(tl.float32) / b_d[:, None]
    if LOW:
        b_upd = tl.dot(tl.trans(b_qa.to(dh.dtype.element_ty)), b_dnum.to(dh.dtype.element_ty))
    else:
        b_upd = tl.dot(tl.trans(b_qa), b_dnum, input_precision=PREC)
    return b_upd, tl.sum(b_qa * b_dden[:, None], 0)


@triton.jit
def _chunk_weights(i, f, ms, m_tok, i_b, i_h, i_bh, i_c, T, NT, H: tl.constexpr, BT: tl.constexpr):
    """Per chunk: rows' ``D [BT, BT]`` (exp(b_l - b_s + i_s - m_l), causal), ``alpha [BT]``
    (scale-free exp(b_l + m_c - m_l)) and the state-write weights ``w [BT]``."""
    o_t, m_t, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
    s_idx = i_bh.to(tl.int64) * (NT + 1) + i_c
    m_c = tl.load(ms + s_idx)
    m_n = tl.load(ms + s_idx + 1)
    b_m = tl.load(m_tok + i_bh.to(tl.int64) * T + o_t, mask=m_t, other=0.0)
    b_D = _intra_decay(b_b, b_i, b_m, o_t, BT)
    b_alpha = tl.where(m_t, tl.exp(b_b + m_c - b_m), 0.0)
    b_w = tl.exp(b_g - b_b + b_i - m_n)                            # 0 on padding (i = -inf)
    return o_t, m_t, b_D, b_alpha, b_w, s_idx


@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV"], cache_results=True)
@triton.jit
def mlstm_bwd_dqk_kernel(q, k, v, i, f, dh, ms, m_tok, d_tok, dden, Cs, ns, dCs, dns,
                         dq, dk, qdq, kdk, kdw, scale, T, NT, H: tl.constexpr, K: tl.constexpr,
                         V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         LOW: tl.constexpr, PREC: tl.constexpr):
    """``dq, dk: [B, T, H, K]``; ``qdq, kdk, kdw: [NK, B*H, T]`` fp32 per-K-tile partials: the
    gate term ``r`` (module docstring), ``k.dk`` and the state-write share of ``k.dk``."""
    i_k, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, m_t, b_D, b_alpha, b_w, s_idx = _chunk_weights(i, f, ms, m_tok, i_b, i_h, i_bh, i_c, T, NT, H, BT)
    qk_base = (i_b.to(tl.int64) * T * H + i_h) * K
    v_base = (i_b.to(tl.int64) * T * H + i_h) * V
    o_tok = i_bh.to(tl.int64) * T + o_t
    b_d = tl.load(d_tok + o_tok, mask=m_t, other=1.0)
    b_dden = tl.load(dden + o_tok, mask=m_t, other=0.0)
    o_k = i_k * BK + tl.arange(0, BK)
    b_dS = tl.zeros([BT, BT], dtype=tl.float32)
    b_dqi = tl.zeros([BT, BK], dtype=tl.float32)                   # dNum C_c^T
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)                   # V dC_{c+1}^T
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
        p_v = tl.make_block_ptr(v + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        p_dh = tl.make_block_ptr(dh + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")                 # [BT, BV]
        b_dnum = tl.load(p_dh, boundary_check=(0, 1), padding_option="zero").to(tl.float32) / b_d[:, None]
        o_kv = o_k[:, None] * V + o_v[None, :]
        b_C = tl.load(Cs + s_idx * K * V + o_kv, mask=m_kv, other=0.0)          # [BK, BV]
        b_dCn = tl.load(dCs + (s_idx + 1) * K * V + o_kv, mask=m_kv, other=0.0)  # [BK, BV]
        if LOW:
            b_dnl = b_dnum.to(b_v.dtype)
            b_dS += tl.dot(b_dnl, tl.trans(b_v))
            b_dqi += tl.dot(b_dnl, tl.trans(b_C.to(b_v.dtype)))
            b_dks += tl.dot(b_v, tl.trans(b_dCn.to(b_v.dtype)))
        else:
            b_vf = b_v.to(tl.float32)
            b_dS += tl.dot(b_dnum, tl.trans(b_vf), input_precision=PREC)
            b_dqi += tl.dot(b_dnum, tl.trans(b_C), input_precision=PREC)
            b_dks += tl.dot(b_vf, tl.trans(b_dCn), input_precision=PREC)
    b_n = tl.load(ns + s_idx * K + o_k, mask=o_k < K, other=0.0)
    b_dnn = tl.load(dns + (s_idx + 1) * K + o_k, mask=o_k < K, other=0.0)
    b_dqi += b_dden[:, None] * b_n[None, :]
    b_dks += b_dnn[None, :]
    b_dP = (b_dS + b_dden[:, None]) * b_D * scale                # [BT, BT], 0 above the diagonal
    p_q = tl.make_block_ptr(q + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")
    b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")
    if LOW:
        b_dq = tl.dot(b_dP.to(b_k.dtype), b_k)
        b_dk = tl.dot(tl.trans(b_dP.to(b_q.dtype)), b_q)
    else:
        b_dq = tl.dot(b_dP, b_k.to(tl.float32), input_precision=PREC)
        b_dk = tl.dot(tl.trans(b_dP), b_q.to(tl.float32), input_precision=PREC)
    b_dqi *= (scale * b_alpha)[:, None]                            # the inter-chunk dq
    b_dks *= b_w[:, None]                                          # the state-write dk
    b_dq += b_dqi
    b_dk += b_dks
    p_dq = tl.make_block_ptr(dq + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
    p_dk = tl.make_block_ptr(dk + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0, 1))
    # gate partials, none of them a difference of large terms: the in-chunk pairs s < l of
    # A = dP * (q k^T) (the diagonal, whose row and column shares cancel in q.dq - k.dk, left out),
    # the inter-chunk q.dq and the state-write k.dk apart; di takes the whole k.dk
    if LOW:
        b_P = tl.dot(b_q, tl.trans(b_k))
    else:
        b_P = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision=PREC)
    o_s = tl.arange(0, BT)
    b_A = tl.where((o_t % BT)[:, None] > o_s[None, :], b_dP * b_P, 0.0)   # [BT, BT]
    b_qf, b_kf = b_q.to(tl.float32), b_k.to(tl.float32)
    b_r = tl.sum(b_A, 1) - tl.sum(b_A, 0) + tl.sum(b_qf * b_dqi, 1)
    o_part = (i_k * tl.num_programs(2) + i_bh).to(tl.int64) * T + o_t
    tl.store(qdq + o_part, b_r, mask=m_t)
    tl.store(kdk + o_part, tl.sum(b_kf * b_dk, 1), mask=m_t)
    tl.store(kdw + o_part, tl.sum(b_kf * b_dks, 1), mask=m_t)


@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV"], cache_results=True)
@triton.jit
def mlstm_bwd_dv_kernel(q, k, i, f, dh, ms, m_tok, d_tok, dCs, dv, scale, T, NT,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr):
    """``dv: [B, T, H, V]``."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, m_t, b_D, b_alpha, b_w, s_idx = _chunk_weights(i, f, ms, m_tok, i_b, i_h, i_bh, i_c, T, NT, H, BT)
    qk_base = (i_b.to(tl.int64) * T * H + i_h) * K
    v_base = (i_b.to(tl.int64) * T * H + i_h) * V
    o_v = i_v * BV + tl.arange(0, BV)
    b_P = tl.zeros([BT, BT], dtype=tl.float32)
    b_kdC = tl.zeros([BT, BV], dtype=tl.float32)                   # K dC_{c+1}
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        p_q = tl.make_block_ptr(q + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")
        b_dCn = tl.load(dCs + (s_idx + 1) * K * V + o_k[:, None] * V + o_v[None, :],
                        mask=(o_k[:, None] < K) & (o_v[None, :] < V), other=0.0)  # [BK, BV]
        if LOW:
            b_P += tl.dot(b_q, tl.trans(b_k))
            b_kdC += tl.dot(b_k, b_dCn.to(b_k.dtype))
        else:
            b_P += tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision=PREC)
            b_kdC += tl.dot(b_k.to(tl.float32), b_dCn, input_precision=PREC)
    b_S = b_P * b_D * scale                                        # [BT, BT]
    b_d = tl.load(d_tok + i_bh.to(tl.int64) * T + o_t, mask=m_t, other=1.0)
    p_dh = tl.make_block_ptr(dh + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    b_dnum = tl.load(p_dh, boundary_check=(0, 1), padding_option="zero").to(tl.float32) / b_d[:, None]   # [BT, BV]
    if LOW:
        b_dv = tl.dot(tl.trans(b_S.to(dh.dtype.element_ty)), b_dnum.to(dh.dtype.element_ty))
    else:
        b_dv = tl.dot(tl.trans(b_S), b_dnum, input_precision=PREC)
    b_dv += b_w[:, None] * b_kdC
    p_dv = tl.make_block_ptr(dv + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0, 1))
