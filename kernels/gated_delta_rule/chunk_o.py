"""The chunk-parallel output passes of the chunked gated delta rule (Triton), one program per
(V tile or chunk, chunk, batch * head), with D[r, j] = exp(gamma_r - gamma_j) for j <= r:

    fwd_o:        O  = scale ((Q exp(gamma)) h_n + (Q K^T * D) v_new)
    bwd_dv_local: dv_local = scale (Q K^T * D)^T dO                 (dO's path through v_new)
    bwd_dqkwg:    dq = scale (exp(gamma) dO h^T + (dO v_new^T * D) K)
                  dk = exp(gamma_C - gamma) v_new dh^T + scale (dO v_new^T * D)^T Q
                  dW = -du h^T;  dgamma = q.dq - k.dk (+ the chunk-end term at row C)

HBM per token and head (d = dot-dtype bytes, i = input bytes): fwd_o reads 2 K i + V d + K V / BT d,
writes V i; dv_local reads 2 K + V, writes V fp32; dqkwg reads 2 K + 3 V + 2 K V / BT, writes
3 K + 1. FLOPs per token and head: fwd_o 2 K V + 2 BT (K + V); bwd 8 K V + 6 BT (K + V).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.gated_delta_rule.blocks import causal_decay, load_chunk_gamma, prune_bv_fp32, prune_dqkwg
from kernels.triton_utils import autotune_configs

# Two configs each, no dot dimension below 64: on Hopper, Triton 3.6 miscompiles kernels holding
# several tl.dot when a dot dimension is 16 or 32 (illegal shared-memory access or silent garbage,
# seen under repeated launches; triton-lang/triton#10486, #10573, #11366). BV > V is pruned.
_CONFIGS_V = autotune_configs([triton.Config({"BV": 64}, num_warps=4), triton.Config({"BV": 128}, num_warps=8)])
_CONFIGS = autotune_configs([triton.Config({"BV": 64}, num_warps=4), triton.Config({"BV": 64}, num_warps=8)])
_TUNE = dict(key=["H", "K", "V", "BT"], prune_configs_by={"early_config_prune": prune_bv_fp32},
             cache_results=True)


@triton.jit
def _causal_decay_t(b_gam, BT: tl.constexpr):
    """The transpose of ``causal_decay``, built directly ([j, r] = exp(gamma_r - gamma_j), r >= j)."""
    o_t = tl.arange(0, BT)
    return tl.exp(tl.where(o_t[None, :] >= o_t[:, None], b_gam[None, :] - b_gam[:, None], float("-inf")))


@triton.autotune(configs=_CONFIGS_V, **_TUNE)
@triton.jit
def gated_delta_rule_fwd_o_kernel(q, k, v_new, h, gamma, o, scale, T, H: tl.constexpr, K: tl.constexpr,
                                  V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                                  PREC: tl.constexpr):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    DT = h.dtype.element_ty
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_h = tl.make_block_ptr(h + ((i_b.to(tl.int64) * NT + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero").to(DT)                        # [BT, BK]
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(DT)                        # [BT, BK]
        b_o += tl.dot(b_q, tl.load(p_h, boundary_check=(0, 1), padding_option="zero"), input_precision=PREC)
        b_s += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
    b_s = b_s * causal_decay(b_gam, BT)
    p_vn = tl.make_block_ptr(v_new + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    b_vn = tl.load(p_vn, boundary_check=(0, 1), padding_option="zero")                                 # [BT, BV]
    b_o = (b_o * tl.exp(b_gam)[:, None] + tl.dot(b_s.to(DT), b_vn, input_precision=PREC)) * scale
    p_o = tl.make_block_ptr(o + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    tl.store(p_o, b_o.to(o.dtype.element_ty), boundary_check=(0, 1))


@triton.autotune(configs=_CONFIGS_V, **_TUNE)
@triton.jit
def gated_delta_rule_bwd_dv_local_kernel(q, k, gamma, do, dv_local, scale, T, H: tl.constexpr, K: tl.constexpr,
                                         V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                                         DOT_DT, PREC: tl.constexpr):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    DT = DOT_DT.dtype.element_ty
    b_s = tl.zeros([BT, BT], dtype=tl.float32)                                   # (Q K^T)^T [j, r]
    for i_k in range(tl.cdiv(K, BK)):
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero").to(DT)
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(DT)
        b_s += tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
    b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
    b_s = b_s * _causal_decay_t(b_gam, BT) * scale
    p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    b_dv = tl.dot(b_s.to(DT), tl.load(p_do, boundary_check=(0, 1), padding_option="zero").to(DT), input_precision=PREC)
    p_dv = tl.make_block_ptr(dv_local + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    tl.store(p_dv, b_dv, boundary_check=(0, 1))


@triton.jit
def _chunk_du_ht(h, du, i_hn, bos, i_h, i_t, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """du h^T over one chunk, [BT, BK] fp32, in a loop of its own. As a fifth dot inside
    bwd_dqkwg's V loop it was miscompiled on an H100 by Triton 3.6 at 8 warps and 3 stages: wrong
    dw at T = 1 (dk, dbeta 0.28 relative in bf16) and run-to-run different dw at T = 512, K = 128.
    Alone in its loop it is right and bitwise repeatable at every config tried (4 / 8 warps,
    1 / 3 stages; kernels/README.md). h and du come back from L2."""
    DT = h.dtype.element_ty
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        p_h = tl.make_block_ptr(h + i_hn, (V, K), (1, V), (i_v * BV, 0), (BV, BK), (0, 1))     # h^T
        p_du = tl.make_block_ptr(du + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_du = tl.load(p_du, boundary_check=(0, 1), padding_option="zero").to(DT)
        b_dw += tl.dot(b_du, tl.load(p_h, boundary_check=(0, 1), padding_option="zero"), input_precision=PREC)
    return b_dw


@triton.autotune(configs=_CONFIGS, **{**_TUNE, "prune_configs_by": {"early_config_prune": prune_dqkwg}})
@triton.jit
def gated_delta_rule_bwd_dqkwg_kernel(q, k, v_new, h, dh, do, du, gamma, dq, dk, dw, dgam, scale, T,
                                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                                      BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    DT = h.dtype.element_ty
    o_t = tl.arange(0, BT)
    i_hn = ((i_b.to(tl.int64) * NT + i_t) * H + i_h) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)                                  # dO v_new^T   [r, j]
    b_dst = tl.zeros([BT, BT], dtype=tl.float32)                                 # v_new dO^T   [j, r]
    b_hdh = tl.zeros([BV, BK], dtype=tl.float32)                                 # h * dh, summed at the end
    for i_v in range(tl.cdiv(V, BV)):
        p_h = tl.make_block_ptr(h + i_hn, (V, K), (1, V), (i_v * BV, 0), (BV, BK), (0, 1))     # h^T
        p_dh = tl.make_block_ptr(dh + i_hn, (V, K), (1, V), (i_v * BV, 0), (BV, BK), (0, 1))   # dh^T
        p_vn = tl.make_block_ptr(v_new + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_h = tl.load(p_h, boundary_check=(0, 1), padding_option="zero")                                # [BV, BK]
        b_dh = tl.load(p_dh, boundary_check=(0, 1), padding_option="zero")                              # [BV, BK]
        b_vn = tl.load(p_vn, boundary_check=(0, 1), padding_option="zero")                              # [BT, BV]
        b_do = tl.load(p_do, boundary_check=(0, 1), padding_option="zero").to(DT)
        b_hdh += b_h.to(tl.float32) * b_dh.to(tl.float32)
        b_ds += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dst += tl.dot(b_vn, tl.trans(b_do), input_precision=PREC)
        b_dq += tl.dot(b_do, b_h, input_precision=PREC)
        b_dk += tl.dot(b_vn, b_dh, input_precision=PREC)
    b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
    i_last = tl.minimum((i_t + 1) * BT, T) - 1
    b_gl = tl.load(gamma + (bos + i_last) * H + i_h)
    m_t = i_t * BT + o_t < T
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    b_dq = b_dq * (scale * tl.exp(b_gam))[:, None]
    b_dk = b_dk * tl.exp(tl.where(m_t, b_gl - b_gam, float("-inf")))[:, None]   # state-update path
    # d gamma_C: exp(gamma_C) <h, dh> + sum_j k_j . dk_state_j
    b_dgl = tl.sum(tl.sum(b_hdh, 1), 0) * tl.exp(b_gl) + tl.sum(tl.sum(b_k * b_dk, 1), 0)
    # ds^T comes from its own dot: tl.trans of a dot accumulator fed to another dot is miscompiled
    # on Hopper by Triton 3.4 - 3.6 (wrong dk, dg; fla-org/flash-linear-attention#640)
    b_ds = b_ds * causal_decay(b_gam, BT) * scale                              # [BT, BT]
    b_dst = b_dst * _causal_decay_t(b_gam, BT) * scale                          # [BT, BT]
    b_dq += tl.dot(b_ds.to(DT), b_k.to(DT), input_precision=PREC)
    b_dk += tl.dot(b_dst.to(DT), b_q.to(DT), input_precision=PREC)
    b_dg = tl.sum(b_q * b_dq, 1) - tl.sum(b_k * b_dk, 1) + tl.where(o_t == i_last - i_t * BT, b_dgl, 0.)
    p_dq = tl.make_block_ptr(dq + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dk = tl.make_block_ptr(dk + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dw = tl.make_block_ptr(dw + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dg = tl.make_block_ptr(dgam + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    tl.store(p_dq, b_dq.to(dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dk, b_dk, boundary_check=(0, 1))
    tl.store(p_dg, b_dg, boundary_check=(0,))
    b_dw = _chunk_du_ht(h, du, i_hn, bos, i_h, i_t, T, H, K, V, BT, BK, BV, PREC)
    tl.store(p_dw, -b_dw, boundary_check=(0, 1))
