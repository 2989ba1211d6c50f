"""Forward kernels of the chunkwise mLSTM (``chunk.py`` holds the autograd wrapper).

Two passes, as TFLA's "xl_chunk" (Beck et al. 2025) splits them:

1. ``mlstm_fwd_states_kernel`` (grid ``[K / BK, V / BV, B*H]``), sequential over the chunks of one
   head: the (C, n, m) entering every chunk and the final one, the stabiliser the recurrence's own
   (``m_{c+1} = max(g_c + m_c, max_s a_s)``). Writes ``(N + 1) (K V + K + 1)`` values per head.
2. ``mlstm_fwd_output_kernel`` (grid ``[V / BV, N, B*H]``), parallel over chunks: the causal
   in-chunk part with the log-gate matrix ``b_l - b_s + i_s`` and its row max, plus the inter-chunk
   part from the entering state; also saves per token ``m``, the denominator ``d`` and the raw ``den``
   for the backward.

Per token and head (bf16 activations, chunk L): HBM reads ``2 (2K + V)`` bytes of q, k, v (k, v
read twice: once per pass), writes ``2 V`` of h, plus ``2 K V / L`` bytes of C (bf16 for bf16
inputs, else fp32: ``4 K V / L``) written by pass 1 and read by pass 2. FLOPs: pass 1 ``2 K V``, pass 2
``2 L K + 2 L V`` (QK^T, SV, full blocks) ``+ 2 K V`` (qC) per token.
Every exponential takes a non-positive argument (the stabiliser is subtracted first).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_utils import autotune_configs


@triton.jit
def _logsigmoid(x):
    """log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), log1p by its series where 1 + y rounds."""
    y = tl.exp(-tl.abs(x))
    return tl.minimum(x, 0.0) - tl.where(y < 1e-4, y * (1.0 - 0.5 * y), tl.log(1.0 + y))


@triton.jit
def _chunk_gates(i, f, i_b, i_h, i_c, T, H: tl.constexpr, BT: tl.constexpr):
    """The gates of chunk ``i_c`` of head ``(i_b, i_h)``; ``i, f: [B, T, H]``. Padding past T gets
    i = -inf (no write) and log f = 0 (no decay). Returns ``(o_t, m_t, b, log_i, g)``: ``b`` the
    in-chunk inclusive cumsum of log f ``[BT]``, ``g`` the chunk's total log decay."""
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    o_g = (i_b.to(tl.int64) * T + o_t) * H + i_h
    b_i = tl.load(i + o_g, mask=m_t, other=0.0).to(tl.float32)
    b_f = tl.load(f + o_g, mask=m_t, other=0.0).to(tl.float32)
    b_lf = tl.where(m_t, _logsigmoid(b_f), 0.0)
    b_b = tl.cumsum(b_lf, 0)
    b_i = tl.where(m_t, b_i, float("-inf"))
    return o_t, m_t, b_b, b_i, tl.sum(b_lf, 0)


@triton.jit
def _intra_decay(b_b, b_i, b_m, o_t, BT: tl.constexpr):
    """``D_ls = exp(b_l - b_s + i_s - m_l)`` for ``s <= l``, else 0 ``[BT, BT]``; ``b_m`` per row."""
    o_s = tl.arange(0, BT)
    causal = (o_t % BT)[:, None] >= o_s[None, :]
    b_logD = b_b[:, None] - b_b[None, :] + b_i[None, :]
    return tl.exp(tl.where(causal, b_logD - b_m[:, None], float("-inf")))


@triton.jit
def _row_max(b_b, b_i, m_c, o_t, BT: tl.constexpr):
    """The recurrence's m at every row: ``max(b_l + m_c, max_{s<=l} (b_l - b_s + i_s))`` ``[BT]``."""
    o_s = tl.arange(0, BT)
    causal = (o_t % BT)[:, None] >= o_s[None, :]
    b_logD = tl.where(causal, b_b[:, None] - b_b[None, :] + b_i[None, :], float("-inf"))
    return tl.maximum(b_b + m_c, tl.max(b_logD, 1))


def _configs(sequential: bool = False):
    """Autotune lists (<= 3 configs: the first call compiles each). The kernels sequential over
    chunks load the next chunk's tiles independently of the carried state, so deeper software
    pipelining (num_stages 3) hides their per-chunk latency; the parallel ones need little."""
    ws = ((4, 3), (8, 3), (4, 2)) if sequential else ((4, 2), (8, 2))
    return autotune_configs([triton.Config({}, num_warps=w, num_stages=s) for w, s in ws])


@triton.autotune(configs=_configs(sequential=True), key=["K", "V", "BT", "BK", "BV"], cache_results=True)
@triton.jit
def mlstm_fwd_states_kernel(k, v, i, f, C0, n0, m0, Cs, ns, ms, CT, T, NT,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                            BK: tl.constexpr, BV: tl.constexpr, HAS_INIT: tl.constexpr,
                            LOW: tl.constexpr, PREC: tl.constexpr):
    """``Cs: [B*H, N + 1, K, V]`` (bf16 for bf16 inputs: the output pass multiplies it in bf16
    anyway; else fp32), ``ns: [B*H, N + 1, K]``, ``ms: [B*H, N + 1]`` (fp32): the state entering
    chunk c at index c, the final state at N; ``CT: [B*H, K, V]`` the final C in fp32."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    o_kv = o_k[:, None] * V + o_v[None, :]                       # [BK, BV]
    if HAS_INIT:
        b_C = tl.load(C0 + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_n = tl.load(n0 + i_bh * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)
        b_m = tl.load(m0 + i_bh).to(tl.float32)
    else:
        b_C = tl.zeros([BK, BV], dtype=tl.float32)
        b_n = tl.zeros([BK], dtype=tl.float32)
        b_m = tl.full([], 0.0, tl.float32)
    s_base = i_bh.to(tl.int64) * (NT + 1)
    for i_c in range(NT):
        tl.store(Cs + (s_base + i_c) * K * V + o_kv, b_C.to(Cs.dtype.element_ty), mask=m_kv)
        if i_v == 0:
            tl.store(ns + (s_base + i_c) * K + o_k, b_n, mask=o_k < K)
            if i_k == 0:
                tl.store(ms + s_base + i_c, b_m)
        o_t, m_t, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
        b_a = b_g - b_b + b_i                                     # [BT] log weight at chunk end
        b_mn = tl.maximum(b_g + b_m, tl.max(b_a, 0))
        b_w = tl.exp(b_a - b_mn)                                  # [BT], <= 1
        p_k = tl.make_block_ptr(k + (i_b.to(tl.int64) * T * H + i_h) * K, (T, K), (H * K, 1),
                                (i_c * BT, i_k * BK), (BT, BK), (1, 0))
        p_v = tl.make_block_ptr(v + (i_b.to(tl.int64) * T * H + i_h) * V, (T, V), (H * V, 1),
                                (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")                 # [BT, BK]
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")                 # [BT, BV]
        b_kw = b_k.to(tl.float32) * b_w[:, None]
        b_decay = tl.exp(b_g + b_m - b_mn)
        if LOW:   # bf16 / fp16 tensor-core operands, fp32 accumulation
            b_C = b_C * b_decay + tl.dot(tl.trans(b_kw.to(b_v.dtype)), b_v)
        else:
            b_C = b_C * b_decay + tl.dot(tl.trans(b_kw), b_v.to(tl.float32), input_precision=PREC)
        b_n = b_n * b_decay + tl.sum(b_kw, 0)
        b_m = b_mn
    tl.store(Cs + (s_base + NT) * K * V + o_kv, b_C.to(Cs.dtype.element_ty), mask=m_kv)
    tl.store(CT + i_bh.to(tl.int64) * K * V + o_kv, b_C, mask=m_kv)
    if i_v == 0:
        tl.store(ns + (s_base + NT) * K + o_k, b_n, mask=o_k < K)
        if i_k == 0:
            tl.store(ms + s_base + NT, b_m)


@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV"], cache_results=True)
@triton.jit
def mlstm_fwd_output_kernel(q, k, v, i, f, Cs, ns, ms, h, h32, m_tok, d_tok, den_tok, scale, eps,
                            T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            LOW: tl.constexpr, PREC: tl.constexpr, SAVE_H32: tl.constexpr):
    """``h: [B, T, H, V]``; ``m_tok, d_tok, den_tok: [B*H, T]`` fp32 (the backward's inputs);
    with ``SAVE_H32`` also ``h32: [B, T, H, V]`` fp32, h unrounded for the backward's ``dh . h``
    (that sum cancels: on a bf16 / fp16 h its rounding, ~2^-9 / 2^-12 of |dh| |h|, can exceed it)."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, m_t, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
    s_idx = i_bh.to(tl.int64) * (NT + 1) + i_c
    m_c = tl.load(ms + s_idx)
    b_m = _row_max(b_b, b_i, m_c, o_t, BT)                         # [BT]
    qk_base = (i_b.to(tl.int64) * T * H + i_h) * K
    v_base = (i_b.to(tl.int64) * T * H + i_h) * V
    o_v = i_v * BV + tl.arange(0, BV)
    b_P = tl.zeros([BT, BT], dtype=tl.float32)
    b_qC = tl.zeros([BT, BV], dtype=tl.float32)
    b_qn = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        p_q = tl.make_block_ptr(q + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + qk_base, (T, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")                 # [BT, BK]
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")                 # [BT, BK]
        b_C = tl.load(Cs + s_idx * K * V + o_k[:, None] * V + o_v[None, :],
                      mask=(o_k[:, None] < K) & (o_v[None, :] < V), other=0.0)  # [BK, BV]
        b_n = tl.load(ns + s_idx * K + o_k, mask=o_k < K, other=0.0)             # [BK]
        if LOW:
            b_P += tl.dot(b_q, tl.trans(b_k))
            b_qC += tl.dot(b_q, b_C.to(b_q.dtype))
        else:
            b_P += tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision=PREC)
            b_qC += tl.dot(b_q.to(tl.float32), b_C, input_precision=PREC)
        b_qn += tl.sum(b_q.to(tl.float32) * b_n[None, :], 1)
    b_S = b_P * _intra_decay(b_b, b_i, b_m, o_t, BT) * scale      # [BT, BT]
    b_alpha = scale * tl.exp(b_b + m_c - b_m)                      # [BT], <= scale
    p_v = tl.make_block_ptr(v + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")                     # [BT, BV]
    if LOW:
        b_num = b_alpha[:, None] * b_qC + tl.dot(b_S.to(b_v.dtype), b_v)
    else:
        b_num = b_alpha[:, None] * b_qC + tl.dot(b_S, b_v.to(tl.float32), input_precision=PREC)
    b_den = b_alpha * b_qn + tl.sum(b_S, 1)                       # [BT]
    b_d = tl.maximum(tl.abs(b_den), tl.exp(-b_m)) + eps
    p_h = tl.make_block_ptr(h + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    b_h = b_num / b_d[:, None]                                     # [BT, BV]
    tl.store(p_h, b_h.to(p_h.dtype.element_ty), boundary_check=(0, 1))
    if SAVE_H32:
        p_h32 = tl.make_block_ptr(h32 + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_h32, b_h, boundary_check=(0, 1))
    if i_v == 0:
        o_tok = i_bh.to(tl.int64) * T + o_t
        tl.store(m_tok + o_tok, b_m, mask=m_t)
        tl.store(d_tok + o_tok, b_d, mask=m_t)
        tl.store(den_tok + o_tok, b_den, mask=m_t)
