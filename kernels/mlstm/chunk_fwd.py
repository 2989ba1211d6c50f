"""Forward kernels of the chunkwise mLSTM (``chunk.py`` holds the autograd wrapper).

Two passes, as TFLA's "xl_chunk" (Beck et al. 2025) splits them:

1. ``mlstm_fwd_states_kernel`` (grid ``[K / BK, V / BV, B*H]``), sequential over the chunks of one
   head: the (C, n, m) entering every chunk and the final one, the stabiliser the recurrence's own
   (``m_{c+1} = max(g_c + m_c, max_s a_s)``). Writes ``(N + 1) (K V + K + 1)`` values per head.
2. ``mlstm_fwd_output_kernel`` (grid ``[V / BV, N, B*H]``), parallel over chunks: the causal
   in-chunk part with the log-gate matrix ``b_l - b_s + i_s`` and its row max, plus the inter-chunk
   part from the entering state; also saves per token ``m``, the denominator ``d`` and the raw ``den``
   for the backward.

Or pass 1 parallel over the chunks (``mlstm_fwd_local_kernel`` then ``mlstm_fwd_pass_kernel``: every
chunk's own write at once, then an elementwise walk over the chunks), for grids too small for 1.

Or both in one walk, ``mlstm_fwd_fused_kernel`` (grid ``[V / BV, B*H]``), where the (V tile, batch,
head) programs fill the GPU: the full-K ``[K, BV]`` C, n and m stay in fp32 registers, and per chunk
it computes h from the entering state exactly as pass 2 does (C enters the dot in bf16 for bf16
inputs, as pass 1 stores it), then updates the state exactly as pass 1 does. Under ``SAVE`` (a
gradient is wanted) it still writes the entering states and per-token values the backward reads.

Per token and head (bf16 activations, chunk L): HBM reads ``2 (2K + V)`` bytes of q, k, v (k, v
read twice: once per pass), writes ``2 V`` of h, plus ``2 K V / L`` bytes of C (bf16 for bf16
inputs, else fp32: ``4 K V / L``) written by pass 1 and read by pass 2. FLOPs: pass 1 ``2 K V``, pass 2
``2 L K + 2 L V`` (QK^T, SV, full blocks) ``+ 2 K V`` (qC) per token. The fused walk saves the
second read of k, v (``2 (K + V)`` bytes) and the Cs write and read, ``2 (2 K V / L)`` bytes at
bf16 (2 KB per token and head at K = 128, V = 256, L = 64; under ``SAVE`` the read alone).
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


@triton.jit
def _initial_state(C0, n0, m0, i_bh, o_k, o_kv, m_kv, K: tl.constexpr, V: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, HAS_INIT: tl.constexpr):
    """The fp32 (C [BK, BV], n [BK], m) a forward walk starts from: the initial state's tile, or zeros."""
    if HAS_INIT:
        b_C = tl.load(C0 + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_n = tl.load(n0 + i_bh * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)
        m_c = tl.load(m0 + i_bh).to(tl.float32)
    else:
        b_C = tl.zeros([BK, BV], dtype=tl.float32)
        b_n = tl.zeros([BK], dtype=tl.float32)
        m_c = tl.full([], 0.0, tl.float32)
    return b_C, b_n, m_c


@triton.jit
def _store_state(Cs, ns, ms, b_C, b_n, m_c, s_idx, o_k, o_kv, m_kv, i_k, i_v,
                 K: tl.constexpr, V: tl.constexpr):
    """Slot ``s_idx`` of Cs (in its dtype), ns, ms; n by the programs of the first V tile, m by one."""
    tl.store(Cs + s_idx * K * V + o_kv, b_C.to(Cs.dtype.element_ty), mask=m_kv)
    if i_v == 0:
        tl.store(ns + s_idx * K + o_k, b_n, mask=o_k < K)
        if i_k == 0:
            tl.store(ms + s_idx, m_c)


@triton.jit
def _chunk_kv(k, v, i_b, i_h, i_c, i_k, i_v, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Chunk ``i_c``'s ``[BT, BK]`` key tile ``i_k`` and ``[BT, BV]`` value tile ``i_v`` (zeros past T)."""
    p_k = tl.make_block_ptr(k + (i_b.to(tl.int64) * T * H + i_h) * K, (T, K), (H * K, 1),
                            (i_c * BT, i_k * BK), (BT, BK), (1, 0))
    p_v = tl.make_block_ptr(v + (i_b.to(tl.int64) * T * H + i_h) * V, (T, V), (H * V, 1),
                            (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    return (tl.load(p_k, boundary_check=(0, 1), padding_option="zero"),
            tl.load(p_v, boundary_check=(0, 1), padding_option="zero"))


@triton.jit
def _state_update(b_C, b_n, m_c, b_k, b_v, b_b, b_i, b_g, LOW: tl.constexpr, PREC: tl.constexpr):
    """The state after a chunk from the one entering it, ``b_k [BT, BK]``, ``b_v [BT, BV]`` its keys
    and values and its gates: ``m' = max(g + m, max_s a_s)``, ``a_s = g - b_s + i_s``,
    ``C' = exp(g + m - m') C + (k exp(a - m'))^T v``, n alike. Returns ``(C', n', m')``."""
    b_a = b_g - b_b + b_i                                         # [BT] log weight at chunk end
    m_n = tl.maximum(b_g + m_c, tl.max(b_a, 0))
    b_w = tl.exp(b_a - m_n)                                       # [BT], <= 1; 0 on padding
    b_kw = b_k.to(tl.float32) * b_w[:, None]
    b_decay = tl.exp(b_g + m_c - m_n)
    if LOW:   # bf16 / fp16 tensor-core operands, fp32 accumulation
        b_C = b_C * b_decay + tl.dot(tl.trans(b_kw.to(b_v.dtype)), b_v)
    else:
        b_C = b_C * b_decay + tl.dot(tl.trans(b_kw), b_v.to(tl.float32), input_precision=PREC)
    return b_C, b_n * b_decay + tl.sum(b_kw, 0), m_n


@triton.jit
def _qk_terms(b_q, b_k, b_C, b_n, LOW: tl.constexpr, PREC: tl.constexpr):
    """One K block's share of ``P = Q K^T [BT, BT]``, ``Q C [BT, BV]`` and ``Q n [BT]``. In LOW
    mode C enters the dot in bf16, as the two-pass path stores it (Cs)."""
    if LOW:
        b_P = tl.dot(b_q, tl.trans(b_k))
        b_qC = tl.dot(b_q, b_C.to(b_q.dtype))
    else:
        b_P = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision=PREC)
        b_qC = tl.dot(b_q.to(tl.float32), b_C.to(tl.float32), input_precision=PREC)
    return b_P, b_qC, tl.sum(b_q.to(tl.float32) * b_n[None, :], 1)


@triton.jit
def _chunk_h(b_P, b_qC, b_qn, b_v, b_b, b_i, b_m, m_c, o_t, scale, eps, BT: tl.constexpr,
             LOW: tl.constexpr, PREC: tl.constexpr):
    """A chunk's h ``[BT, BV]`` from its ``P, Q C, Q n`` (the entering state's), values ``b_v`` and
    row stabilisers ``b_m``: the causal in-chunk part plus the inter-chunk part. Returns
    ``(h, d, den)``, the last two ``[BT]`` (the backward's inputs)."""
    b_S = b_P * _intra_decay(b_b, b_i, b_m, o_t, BT) * scale      # [BT, BT]
    b_alpha = scale * tl.exp(b_b + m_c - b_m)                      # [BT], <= scale
    if LOW:
        b_num = b_alpha[:, None] * b_qC + tl.dot(b_S.to(b_v.dtype), b_v)
    else:
        b_num = b_alpha[:, None] * b_qC + tl.dot(b_S, b_v.to(tl.float32), input_precision=PREC)
    b_den = b_alpha * b_qn + tl.sum(b_S, 1)                       # [BT]
    b_d = tl.maximum(tl.abs(b_den), tl.exp(-b_m)) + eps
    return b_num / b_d[:, None], b_d, b_den


@triton.jit
def _store_h(h, h32, m_tok, d_tok, den_tok, b_h, b_m, b_d, b_den, v_base, i_bh, i_v, i_c, o_t, m_t,
             T, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
             SAVE_H32: tl.constexpr, SAVE_TOK: tl.constexpr):
    """A chunk's h tile (and its fp32 copy with ``SAVE_H32``); with ``SAVE_TOK`` the programs of the
    first V tile also store the per-token ``m, d, den`` (every V tile computes the same values)."""
    p_h = tl.make_block_ptr(h + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    tl.store(p_h, b_h.to(p_h.dtype.element_ty), boundary_check=(0, 1))
    if SAVE_H32:
        p_h32 = tl.make_block_ptr(h32 + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_h32, b_h, boundary_check=(0, 1))
    if SAVE_TOK:
        o_tok = i_bh.to(tl.int64) * T + o_t
        m_first = m_t & (i_v == 0)                                 # one V tile's programs write them
        tl.store(m_tok + o_tok, b_m, mask=m_first)
        tl.store(d_tok + o_tok, b_d, mask=m_first)
        tl.store(den_tok + o_tok, b_den, mask=m_first)


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
    b_C, b_n, m_c = _initial_state(C0, n0, m0, i_bh, o_k, o_kv, m_kv, K, V, BK, BV, HAS_INIT)
    s_base = i_bh.to(tl.int64) * (NT + 1)
    for i_c in range(NT):
        _store_state(Cs, ns, ms, b_C, b_n, m_c, s_base + i_c, o_k, o_kv, m_kv, i_k, i_v, K, V)
        _, _, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
        b_k, b_v = _chunk_kv(k, v, i_b, i_h, i_c, i_k, i_v, T, H, K, V, BT, BK, BV)
        b_C, b_n, m_c = _state_update(b_C, b_n, m_c, b_k, b_v, b_b, b_i, b_g, LOW, PREC)
    _store_state(Cs, ns, ms, b_C, b_n, m_c, s_base + NT, o_k, o_kv, m_kv, i_k, i_v, K, V)
    tl.store(CT + i_bh.to(tl.int64) * K * V + o_kv, b_C, mask=m_kv)


# Chunk-parallel state pass (mamba_ssm's chunk_state + state_passing split), for grids too small
# for the sequential walk above (the (K tile, V tile, batch, head) programs: 32 at B = 1 and
# xLSTM's 4 heads on a 132-SM GPU, each walking every chunk with a dot per chunk). Two launches:
# every chunk's own write in parallel (a dot each, no chain), then a walk whose step is one
# load, a scale-and-add and a store per state element, parallel over the state's elements.
# The writes stay fp32 (Ws: Cs itself for fp16 / fp32 inputs, else a scratch): rounded to bf16 they
# took the T = 65536 final state from the walk's 2.5e-4 to 1.7e-3 relative error (a CPU emulation
# with bf16 rounding in torch; in fp32 1.4e-4 - 2.5e-4). So the pass moves 2 (4 K V / L) bytes per
# token and head more than the walk.

@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV"], cache_results=True)
@triton.jit
def mlstm_fwd_local_kernel(k, v, i, f, Ws, ns, stats, T, NT, H: tl.constexpr, K: tl.constexpr,
                           V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                           LOW: tl.constexpr, PREC: tl.constexpr):
    """Grid ``[K/BK * V/BV, N, B*H]``: chunk c's own write, stabilised by its own max
    ``a*_c = max_s a_s``: ``C^w_c = (k exp(a - a*_c))^T v`` into slot c + 1 of ``Ws`` (fp32, laid out
    as Cs), ``n^w_c`` into slot c + 1 of ``ns``; ``stats[b*h, c] = (g_c, a*_c)``. Slot 0 is left to
    ``mlstm_fwd_pass_kernel``, which writes the state entering chunk c + 1 to slot c + 1 of Cs, ns."""
    i_kv, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    _, _, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
    b_k, b_v = _chunk_kv(k, v, i_b, i_h, i_c, i_k, i_v, T, H, K, V, BT, BK, BV)
    # _state_update from an empty state whose stabiliser is far below any gate (finite, so a chunk
    # whose every i is -inf gives weights exp(-inf) = 0, not -inf - -inf): returns the chunk's own
    # write, and as m' its a*_c (or ~-1e30 for such a chunk, which the pass then weighs 0)
    b_C, b_n, a_max = _state_update(tl.zeros([BK, BV], dtype=tl.float32), tl.zeros([BK], dtype=tl.float32),
                                    -1e30, b_k, b_v, b_b, b_i, b_g, LOW, PREC)
    s_idx = i_bh.to(tl.int64) * (NT + 1) + i_c + 1
    tl.store(Ws + s_idx * K * V + o_k[:, None] * V + o_v[None, :], b_C,
             mask=(o_k[:, None] < K) & (o_v[None, :] < V))
    if i_v == 0:
        tl.store(ns + s_idx * K + o_k, b_n, mask=o_k < K)
    if i_kv == 0:
        o_st = (i_bh.to(tl.int64) * NT + i_c) * 2
        tl.store(stats + o_st, b_g)
        tl.store(stats + o_st + 1, a_max)


@triton.jit
def _pass_chunks(W, S, ms, stats, b_x, m_c, o_x, m_x, s_base, st_base, NT, N_EL: tl.constexpr,
                 STORE_M: tl.constexpr):
    """Walk ``N_EL``-element states through the chunks: slot 0 of ``S`` gets ``b_x`` (fp32, the
    initial state's elements ``o_x``), and slot c + 1 gets ``exp(g_c + m_c - m') x_c +
    exp(a*_c - m') w_c``, ``w_c`` chunk c's own write from slot c + 1 of ``W`` (fp32; W may be S),
    with ``m' = max(g_c + m_c, a*_c)`` (the recurrence's stabiliser, as the sequential walk computes
    it). Returns the final fp32 state."""
    tl.store(S + s_base * N_EL + o_x, b_x.to(S.dtype.element_ty), mask=m_x)
    if STORE_M:
        tl.store(ms + s_base, m_c)
    # the loads of the next chunks do not wait on the state: pipelined (cp.async on sm_90), three in
    # flight ahead of the one being added, or each step would wait a full HBM latency
    for i_c in tl.range(NT, num_stages=4):
        b_g = tl.load(stats + (st_base + i_c) * 2)
        a_max = tl.load(stats + (st_base + i_c) * 2 + 1)
        m_n = tl.maximum(b_g + m_c, a_max)
        o_slot = (s_base + i_c + 1) * N_EL + o_x
        b_w = tl.load(W + o_slot, mask=m_x, other=0.0)
        b_x = b_x * tl.exp(b_g + m_c - m_n) + b_w * tl.exp(a_max - m_n)
        m_c = m_n
        tl.store(S + o_slot, b_x.to(S.dtype.element_ty), mask=m_x)
        if STORE_M:
            tl.store(ms + s_base + i_c + 1, m_c)
    return b_x


@triton.jit
def mlstm_fwd_pass_kernel(C0, n0, m0, Ws, Cs, ns, ms, stats, CT, NT, K: tl.constexpr, V: tl.constexpr,
                          BLK: tl.constexpr, BKN: tl.constexpr, HAS_INIT: tl.constexpr):
    """Grid ``[cdiv(K V, BLK) + 1, B*H]``, after ``mlstm_fwd_local_kernel``: the states entering every
    chunk from the chunks' own writes (``Ws``, ``ns``), as ``mlstm_fwd_states_kernel`` stores them
    (``Cs, ns, ms`` slots 0..N, ``CT`` the final C in fp32). Programs below the last walk BLK
    elements of C each; the last walks n and m. Not autotuned: it may update in place (ns always;
    Cs where it is Ws), so a second timing run would read states where it wants the writes."""
    i_x, i_bh = tl.program_id(0), tl.program_id(1)
    s_base = i_bh.to(tl.int64) * (NT + 1)
    st_base = i_bh.to(tl.int64) * NT
    m_c = tl.load(m0 + i_bh).to(tl.float32) if HAS_INIT else tl.full([], 0.0, tl.float32)
    if i_x < tl.cdiv(K * V, BLK):          # (each branch names its own tiles: they differ in shape)
        o_e = i_x * BLK + tl.arange(0, BLK)
        m_e = o_e < K * V
        b_C = tl.zeros([BLK], dtype=tl.float32)
        if HAS_INIT:
            b_C = tl.load(C0 + i_bh.to(tl.int64) * K * V + o_e, mask=m_e, other=0.0).to(tl.float32)
        b_C = _pass_chunks(Ws, Cs, ms, stats, b_C, m_c, o_e, m_e, s_base, st_base, NT, K * V, False)
        tl.store(CT + i_bh.to(tl.int64) * K * V + o_e, b_C, mask=m_e)
    else:
        o_k = tl.arange(0, BKN)
        m_k = o_k < K
        b_n = tl.zeros([BKN], dtype=tl.float32)
        if HAS_INIT:
            b_n = tl.load(n0 + i_bh.to(tl.int64) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        _pass_chunks(ns, ns, ms, stats, b_n, m_c, o_k, m_k, s_base, st_base, NT, K, True)


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
        b_dP, b_dqC, b_dqn = _qk_terms(b_q, b_k, b_C, b_n, LOW, PREC)
        b_P, b_qC, b_qn = b_P + b_dP, b_qC + b_dqC, b_qn + b_dqn
    p_v = tl.make_block_ptr(v + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
    b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")                     # [BT, BV]
    b_h, b_d, b_den = _chunk_h(b_P, b_qC, b_qn, b_v, b_b, b_i, b_m, m_c, o_t, scale, eps, BT, LOW, PREC)
    _store_h(h, h32, m_tok, d_tok, den_tok, b_h, b_m, b_d, b_den, v_base, i_bh, i_v, i_c, o_t, m_t,
             T, H, V, BT, BV, SAVE_H32, True)


# One pipeline stage of the fused walk holds a chunk's [BT, K] q and k tiles as the dots take them
# (bf16 in LOW mode, else fp32: fp16's tf32 dots too), beside the [K, BV] state as a dot operand and
# the [BT, BT] scores. Measured for sm_90 by `python -m kernels.sm90_check mlstm` (V 256; the H100
# allows 227 KB): 64 KB a stage (bf16 at K = 256, fp32 at K = 128, chunk 64) takes 188-205 KB at
# 3 stages; 128 KB (fp16 / fp32 at K = 256, or K = 128 and chunk 128; bf16 at K = 256 and chunk 128)
# 278-398 KB at 3 stages, 197-232 KB at 2; 256 KB (fp32, K = 256, chunk 128) 295 KB at 1: too big.
FUSED_MAX_STAGE_BYTES = 128 * 1024


def fused_stage_bytes(BT: int, BKF: int, LOW: bool) -> int:
    """Shared memory one pipeline stage of ``mlstm_fwd_fused_kernel`` takes for its q, k tiles."""
    return 2 * BT * BKF * (2 if LOW else 4)


def _prune_fused(configs, named_args, **kwargs):
    """The fused walk's pipeline depth: the configs as listed up to half of FUSED_MAX_STAGE_BYTES a
    stage, 2 stages beyond (the wrapper refuses more). fp32 inputs (not LOW, "ieee" dots: the
    checking path) keep 8 warps alone: at 4 each config took 3-6x as long to compile (15 against
    6 s at K = 128, chunk 64; 170-206 against 30 s at chunk 128)."""
    args = {**named_args, **kwargs}
    stage = fused_stage_bytes(args["BT"], args["BKF"], args["LOW"])
    depth = 3 if 2 * stage <= FUSED_MAX_STAGE_BYTES else 2
    kept = [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=min(c.num_stages, depth))
            for c in configs if args["LOW"] or args["PREC"] != "ieee" or c.num_warps == 8]
    return list({(c.num_warps, c.num_stages): c for c in kept}.values())


# A sequential walk, like the state pass: the next chunk's q, k, v loads do not wait on the
# carried state, so deeper pipelining hides the per-chunk latency; 8 warps halve the registers
# each thread spends on the [K, BV] fp32 state (64 KB at K = 256). Depth capped by _prune_fused.
_FUSED_CONFIGS = autotune_configs([triton.Config({}, num_warps=w, num_stages=s)
                                   for w, s in ((4, 3), (8, 3), (4, 2), (8, 2))])


@triton.autotune(configs=_FUSED_CONFIGS, key=["K", "V", "BT", "BV", "SAVE"],
                 prune_configs_by={"early_config_prune": _prune_fused}, cache_results=True)
@triton.jit
def mlstm_fwd_fused_kernel(q, k, v, i, f, C0, n0, m0, h, h32, Cs, ns, ms, CT, m_tok, d_tok, den_tok,
                           scale, eps, T, NT, NS, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                           BT: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
                           HAS_INIT: tl.constexpr, SAVE: tl.constexpr, SAVE_H32: tl.constexpr,
                           LOW: tl.constexpr, PREC: tl.constexpr):
    """Both passes in one walk over the chunks, per (V tile, batch * head); ``BKF >= K`` holds the
    whole key dim. ``h`` as the output pass; ``CT`` the final C (fp32); ``ns: [B*H, NS, K]``,
    ``ms: [B*H, NS]`` end with the final n, m. With ``SAVE`` (``NS = N + 1``) also everything the
    backward reads, as the two passes store it: the entering ``Cs, ns, ms`` of every chunk (not
    ``Cs[N]``, which it never reads), ``m_tok, d_tok, den_tok`` and, with ``SAVE_H32``, ``h32``."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BKF)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    o_kv = o_k[:, None] * V + o_v[None, :]                       # [BKF, BV]
    b_C, b_n, m_c = _initial_state(C0, n0, m0, i_bh, o_k, o_kv, m_kv, K, V, BKF, BV, HAS_INIT)
    s_base = i_bh.to(tl.int64) * NS
    qk_base = (i_b.to(tl.int64) * T * H + i_h) * K
    v_base = (i_b.to(tl.int64) * T * H + i_h) * V
    for i_c in range(NT):
        if SAVE:
            _store_state(Cs, ns, ms, b_C, b_n, m_c, s_base + i_c, o_k, o_kv, m_kv, 0, i_v, K, V)
        o_t, m_t, b_b, b_i, b_g = _chunk_gates(i, f, i_b, i_h, i_c, T, H, BT)
        b_m = _row_max(b_b, b_i, m_c, o_t, BT)                     # [BT]
        p_q = tl.make_block_ptr(q + qk_base, (T, K), (H * K, 1), (i_c * BT, 0), (BT, BKF), (1, 0))
        p_k = tl.make_block_ptr(k + qk_base, (T, K), (H * K, 1), (i_c * BT, 0), (BT, BKF), (1, 0))
        p_v = tl.make_block_ptr(v + v_base, (T, V), (H * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")                 # [BT, BKF]
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")                 # [BT, BKF]
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")                 # [BT, BV]
        b_P, b_qC, b_qn = _qk_terms(b_q, b_k, b_C, b_n, LOW, PREC)
        b_h, b_d, b_den = _chunk_h(b_P, b_qC, b_qn, b_v, b_b, b_i, b_m, m_c, o_t, scale, eps, BT, LOW, PREC)
        _store_h(h, h32, m_tok, d_tok, den_tok, b_h, b_m, b_d, b_den, v_base, i_bh, i_v, i_c, o_t, m_t,
                 T, H, V, BT, BV, SAVE_H32, SAVE)
        b_C, b_n, m_c = _state_update(b_C, b_n, m_c, b_k, b_v, b_b, b_i, b_g, LOW, PREC)
    tl.store(CT + i_bh.to(tl.int64) * K * V + o_kv, b_C, mask=m_kv)
    if i_v == 0:
        tl.store(ns + (s_base + NS - 1) * K + o_k, b_n, mask=o_k < K)
        tl.store(ms + s_base + NS - 1, m_c)
