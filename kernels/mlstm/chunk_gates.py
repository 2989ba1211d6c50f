"""The per-token scalar work of the chunkwise mLSTM backward (``chunk_bwd.py`` does the matrices).

* ``mlstm_bwd_prep_kernel`` (grid ``[N, B*H]``), before the reverse state pass: ``dh . h``, then
  ``dden = -(dh.h) / d * sign(den)`` where ``|den|`` won ``max(|den|, exp(-m))`` (else 0) and the
  stabiliser's own gradient ``x_t = -eps (dh.h) / d`` (+ the final state's ``dm_T - <dC_T, C_T> -
  <dn_T, n_T>`` at the last token). Reads h and dh once (``4 V`` bytes per token and head).
* ``_stabiliser_path`` (inside the reverse state pass, one program per head): routes ``x`` back
  along the argmax branches of ``m_t = max(log f_t + m_{t-1}, i_t)``:
  ``G_t = x_t + [f branch at t + 1] G_{t+1}``, then ``i`` gets ``G`` where the i branch won, ``log f``
  (and ``m_0`` at t = 0) where the f branch did. In a chunk ``G`` is a masked ``[BT, BT]`` sum over
  the segments between i-branch tokens; the carry crosses chunks with the reverse loop.
* ``mlstm_bwd_gates_kernel`` (grid ``[N, B*H]``), last: ``dlog f_t`` = the reverse cumsum of
  ``r_l`` (the in-chunk pairs ``s < l`` of ``dP * q k^T``, row share minus column share, plus the
  inter-chunk ``q.dq``) + ``dg_c`` (the decayed entering state) + the exclusive cumsum of the
  state-write share of ``k.dk``; ``di = k.dk``; both plus the stabiliser path,
  ``df = dlog f * sigmoid(-f)``, written in the gates' ``[B, T, H]`` layout. No term is a
  difference of large numbers: the textbook ``revcumsum(q.dq - k.dk) + <C_{c+1}, dC_{c+1}>``
  cancels the diagonal and the chunk's own writes, which dominate when f ~ 0 (df lost to rounding).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.mlstm.chunk_fwd import _logsigmoid


@triton.jit
def mlstm_bwd_prep_kernel(h, dh, m_tok, d_tok, den_tok, fin, dden, x_m, eps, T,
                          H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                          HAS_FIN: tl.constexpr):
    """``dden, x_m: [B*H, T]`` fp32; ``fin: [B*H]`` the final state's term."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    v_base = (i_b.to(tl.int64) * T * H + i_h) * V
    b_dhh = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        p_h = tl.make_block_ptr(h + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        p_dh = tl.make_block_ptr(dh + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        b_h = tl.load(p_h, boundary_check=(0, 1), padding_option="zero").to(tl.float32)     # [BT, BV]
        b_dh = tl.load(p_dh, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
        b_dhh += tl.sum(b_h * b_dh, 1)
    o_tok = i_bh.to(tl.int64) * T + o_t
    b_m = tl.load(m_tok + o_tok, mask=m_t, other=0.0)
    b_d = tl.load(d_tok + o_tok, mask=m_t, other=1.0)
    b_den = tl.load(den_tok + o_tok, mask=m_t, other=0.0)
    b_sign = tl.where(b_den > 0, 1.0, tl.where(b_den < 0, -1.0, 0.0))
    b_live = tl.abs(b_den) >= tl.exp(-b_m)
    tl.store(dden + o_tok, tl.where(b_live, -b_dhh / b_d * b_sign, 0.0), mask=m_t)
    b_x = -eps * b_dhh / b_d
    if HAS_FIN:
        b_x += tl.where(o_t == T - 1, tl.load(fin + i_bh), 0.0)
    tl.store(x_m + o_tok, b_x, mask=m_t)


@triton.jit
def _stabiliser_path(f, x_m, m_tok, Gi, Gf, b_i, m_c, b_carry, i_b, i_h, i_bh, i_c, T,
                     H: tl.constexpr, BT: tl.constexpr):
    """One chunk of the reverse scan (see the module docstring); ``b_i [BT]`` the chunk's input
    gates (-inf on padding), ``m_c`` the m entering it, ``b_carry`` = ``[f branch at the next
    chunk's first token] G`` there. Stores ``Gi, Gf: [B*H, T]``; returns the carry for chunk c-1
    and where the chunk's last segment starts (its last i-branch token; -1 if none: then the whole
    chunk is one segment, and the carry passes through it). The carry reaches the last segment alone."""
    o_l = tl.arange(0, BT)
    o_t = i_c * BT + o_l
    m_t = o_t < T
    o_tok = i_bh.to(tl.int64) * T + o_t
    b_f = tl.load(f + (i_b.to(tl.int64) * T + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_lf = _logsigmoid(b_f)
    b_mp = tl.load(m_tok + o_tok - 1, mask=m_t & (o_l > 0), other=0.0)
    b_mp = tl.where(o_l == 0, m_c, b_mp)                           # m_{t-1}
    b_e = b_i > b_lf + b_mp                                         # the i branch won at t
    b_z = tl.cumsum(b_e.to(tl.int32), 0)                            # segment ids
    b_x = tl.load(x_m + o_tok, mask=m_t, other=0.0)
    b_x += tl.where(o_l == BT - 1, b_carry, 0.0)                    # padding passes it through
    same = (o_l[None, :] >= o_l[:, None]) & (b_z[None, :] == b_z[:, None])   # [BT, BT]
    b_G = tl.sum(tl.where(same, b_x[None, :], 0.0), 1)              # [BT]
    tl.store(Gi + o_tok, tl.where(b_e, b_G, 0.0), mask=m_t)
    tl.store(Gf + o_tok, tl.where(b_e, 0.0, b_G), mask=m_t)
    return tl.sum(tl.where((o_l == 0) & (~b_e), b_G, 0.0), 0), tl.max(tl.where(b_e & m_t, o_l, -1), 0)


@triton.jit
def mlstm_bwd_gates_kernel(f, qdq, kdk, kdw, dg, Gi, Gf, di, df, T, NT, H: tl.constexpr,
                           BT: tl.constexpr, NK: tl.constexpr, NKV: tl.constexpr):
    """``di, df: [B, T, H]`` in the gates' dtypes; ``qdq, kdk, kdw: [NK, B*H, T]``,
    ``dg: [NKV, B*H, N]`` partial sums; ``Gi, Gf: [B*H, T]`` the stabiliser path."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    BH = tl.num_programs(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_l = tl.arange(0, BT)
    o_t = i_c * BT + o_l
    m_t = o_t < T
    m_p = m_t & (o_l > 0)                                          # t - 1 inside the chunk
    b_r = tl.zeros([BT], dtype=tl.float32)
    b_kdk = tl.zeros([BT], dtype=tl.float32)
    b_wp = tl.zeros([BT], dtype=tl.float32)                        # the write share at t - 1
    for j in range(NK):
        o_p = (j * BH + i_bh).to(tl.int64) * T + o_t
        b_r += tl.load(qdq + o_p, mask=m_t, other=0.0)
        b_kdk += tl.load(kdk + o_p, mask=m_t, other=0.0)
        b_wp += tl.load(kdw + o_p - 1, mask=m_p, other=0.0)
    b_dg = tl.full([], 0.0, tl.float32)
    for j in range(NKV):
        b_dg += tl.load(dg + (j * BH + i_bh).to(tl.int64) * NT + i_c)
    o_tok = i_bh.to(tl.int64) * T + o_t
    # log f_t scales the in-chunk pairs s < t <= l (reverse cumsum of r), the inter-chunk part of
    # every l >= t (in r too), the decayed state (dg) and the writes s < t (exclusive cumsum)
    b_dlf = tl.cumsum(b_r, 0, reverse=True) + b_dg + tl.cumsum(b_wp, 0)
    b_dlf += tl.load(Gf + o_tok, mask=m_t, other=0.0)
    b_di = b_kdk + tl.load(Gi + o_tok, mask=m_t, other=0.0)
    o_g = (i_b.to(tl.int64) * T + o_t) * H + i_h
    b_f = tl.load(f + o_g, mask=m_t, other=0.0).to(tl.float32)
    b_df = b_dlf * tl.sigmoid(-b_f)
    tl.store(di + o_g, b_di.to(di.dtype.element_ty), mask=m_t)
    tl.store(df + o_g, b_df.to(df.dtype.element_ty), mask=m_t)
