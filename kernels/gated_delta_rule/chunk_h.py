"""The sequential-over-chunks state passes of the chunked gated delta rule (Triton). One program
per (V tile, batch * head) walks the chunks in order, the [K, BV] state tile in fp32 registers:

    forward  (fwd_h):  store h_n (the state entering chunk n);  v_new = U - W h_n;
                       h_{n+1} = exp(gamma_C) h_n + (K exp(gamma_C - gamma))^T v_new
    backward (bwd_dh): store dh_n (gradient of h_{n+1});  dv = dv_local + (K exp(gamma_C - gamma)) dh;
                       dh <- exp(gamma_C) dh + scale (Q exp(gamma))^T dO - W^T dv

The per-chunk states h_n are stored in the dot dtype (bf16 for bf16 inputs: the output kernel
feeds them to a bf16 tensor-core dot anyway, and it halves the largest intermediate, K V / BT
elements per token; fp32 for fp32 inputs). The running state itself always stays fp32.

HBM per token and head (d = dot-dtype bytes): fwd reads K + V + K (k, u, w) d, writes V d (v_new)
+ K V / BT d (h); bwd reads 3 K + 2 V (+ dv_local fp32), writes V fp32 + K V / BT d.
FLOPs per token and head: fwd 4 K V, bwd 6 K V.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.gated_delta_rule.blocks import (
    causal_decay,
    initial_state_tile,
    load_chunk_gamma,
    prune_fused_walk,
    prune_state_pass,
)
from kernels.triton_utils import autotune_configs

# V tiles of 64 (no 32-wide dot: see blocks.py); the [K, 64] fp32 state tile wants 4 warps at
# K <= 128, 8 at K = 256. Three pipeline stages, or fewer where the K-wide tiles are wide or fp32
# (shared memory: blocks.state_pass_stages); BV > V is pruned.
_CONFIGS = autotune_configs([triton.Config({"BV": 64}, num_warps=w) for w in (4, 8)])  # stages: pruning
_TUNE = dict(key=["H", "K", "V", "BT"], prune_configs_by={"early_config_prune": prune_state_pass},
             cache_results=True)


@triton.autotune(configs=_CONFIGS, **_TUNE)
@triton.jit
def gated_delta_rule_fwd_h_kernel(k, u, w, gamma, h, v_new, h0, ht, T, H: tl.constexpr, K: tl.constexpr,
                                  V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                                  USE_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    DT = h.dtype.element_ty
    o_t = tl.arange(0, BT)
    b_h = initial_state_tile(h0, i_bh, i_v, K, V, BK, BV, USE_H0)                 # the state tile
    for i_t in range(NT):
        p_h = tl.make_block_ptr(h + ((i_b.to(tl.int64) * NT + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_h, b_h.to(DT), boundary_check=(0, 1))
        p_w = tl.make_block_ptr(w + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_vn = tl.make_block_ptr(v_new + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_w = tl.load(p_w, boundary_check=(0, 1), padding_option="zero")                                  # [BT, BK]
        b_vn = tl.load(p_u, boundary_check=(0, 1), padding_option="zero").to(tl.float32) \
            - tl.dot(b_w, b_h.to(DT), input_precision=PREC)                       # [BT, BV]
        tl.store(p_vn, b_vn.to(DT), boundary_check=(0, 1))
        i_last = tl.minimum((i_t + 1) * BT, T) - 1
        b_gl = tl.load(gamma + (bos + i_last) * H + i_h)
        b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
        m_t = i_t * BT + o_t < T
        b_vd = b_vn * tl.exp(tl.where(m_t, b_gl - b_gam, float("-inf")))[:, None]  # decay to chunk end
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(DT)                         # [BT, BK]
        b_h = b_h * tl.exp(b_gl) + tl.dot(tl.trans(b_k), b_vd.to(DT), input_precision=PREC)
    if STORE_HT:
        p_ht = tl.make_block_ptr(ht + i_bh.to(tl.int64) * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_ht, b_h, boundary_check=(0, 1))


# H100, H16 K=V=128, T 1k-32k: BV 64 at 4 warps won every T (stages: prune_fused_walk).
_CONFIGS_HO = autotune_configs([triton.Config({"BV": 64}, num_warps=4), triton.Config({"BV": 64}, num_warps=8)])


@triton.autotune(configs=_CONFIGS_HO, **{**_TUNE, "prune_configs_by": {"early_config_prune": prune_fused_walk}})
@triton.jit
def gated_delta_rule_fwd_ho_kernel(q, k, u, w, gamma, o, h0, ht, scale, T, H: tl.constexpr, K: tl.constexpr,
                                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                                   USE_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    """fwd_h and fwd_o in one walk over the chunks, for the forward alone (the backward recomputes
    h and v_new with fwd_h): h_n and v_new stay on chip, so neither reaches HBM (K V / BT + V
    dot-dtype elements per token and head, written and read back, by the two-kernel path). Same
    products and roundings as that path: h and v_new enter the dots in the dot dtype."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    DT = w.dtype.element_ty
    o_t = tl.arange(0, BT)
    b_h = initial_state_tile(h0, i_bh, i_v, K, V, BK, BV, USE_H0)                 # the state tile
    for i_t in range(NT):
        p_w = tl.make_block_ptr(w + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_hd = b_h.to(DT)
        b_vn = tl.load(p_u, boundary_check=(0, 1), padding_option="zero").to(tl.float32) \
            - tl.dot(tl.load(p_w, boundary_check=(0, 1), padding_option="zero"), b_hd, input_precision=PREC)
        b_vnd = b_vn.to(DT)                                                      # [BT, BV] v_new
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero").to(DT)   # [BT, BK]
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(DT)   # [BT, BK]
        b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * causal_decay(b_gam, BT)
        b_o = (tl.dot(b_q, b_hd, input_precision=PREC) * tl.exp(b_gam)[:, None]
               + tl.dot(b_s.to(DT), b_vnd, input_precision=PREC)) * scale
        p_o = tl.make_block_ptr(o + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_o, b_o.to(o.dtype.element_ty), boundary_check=(0, 1))
        i_last = tl.minimum((i_t + 1) * BT, T) - 1
        b_gl = tl.load(gamma + (bos + i_last) * H + i_h)
        m_t = i_t * BT + o_t < T
        b_vd = b_vn * tl.exp(tl.where(m_t, b_gl - b_gam, float("-inf")))[:, None]  # decay to chunk end
        b_h = b_h * tl.exp(b_gl) + tl.dot(tl.trans(b_k), b_vd.to(DT), input_precision=PREC)
    if STORE_HT:
        p_ht = tl.make_block_ptr(ht + i_bh.to(tl.int64) * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_ht, b_h, boundary_check=(0, 1))


@triton.autotune(configs=_CONFIGS, **_TUNE)
@triton.jit
def gated_delta_rule_bwd_dh_kernel(q, k, w, gamma, do, dv_local, dv, dh, dht, dh0, scale, T, H: tl.constexpr,
                                   K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                                   BV: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                                   PREC: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    DT = dh.dtype.element_ty
    o_t = tl.arange(0, BT)
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)                                  # grad of the state
    if USE_DHT:
        p_dht = tl.make_block_ptr(dht + i_bh.to(tl.int64) * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        b_dh += tl.load(p_dht, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    for i_s in range(NT):
        i_t = NT - 1 - i_s
        p_dh = tl.make_block_ptr(dh + ((i_b.to(tl.int64) * NT + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                 (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh, b_dh.to(DT), boundary_check=(0, 1))
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_w = tl.make_block_ptr(w + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dvl = tl.make_block_ptr(dv_local + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dv = tl.make_block_ptr(dv + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        i_last = tl.minimum((i_t + 1) * BT, T) - 1
        b_gl = tl.load(gamma + (bos + i_last) * H + i_h)
        b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
        m_t = i_t * BT + o_t < T
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
        b_kd = b_k * tl.exp(tl.where(m_t, b_gl - b_gam, float("-inf")))[:, None]  # [BT, BK]
        b_dv = tl.load(p_dvl, boundary_check=(0, 1), padding_option="zero") + tl.dot(b_kd.to(DT), b_dh.to(DT), input_precision=PREC)
        tl.store(p_dv, b_dv, boundary_check=(0, 1))                               # [BT, BV] fp32
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero").to(tl.float32) * (scale * tl.exp(b_gam))[:, None]
        b_do = tl.load(p_do, boundary_check=(0, 1), padding_option="zero").to(DT)
        b_w = tl.load(p_w, boundary_check=(0, 1), padding_option="zero")
        b_dh = b_dh * tl.exp(b_gl) + tl.dot(tl.trans(b_q.to(DT)), b_do, input_precision=PREC) \
            - tl.dot(tl.trans(b_w), b_dv.to(DT), input_precision=PREC)
    if STORE_DH0:
        p_dh0 = tl.make_block_ptr(dh0 + i_bh.to(tl.int64) * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh0, b_dh.to(dh0.dtype.element_ty), boundary_check=(0, 1))
