"""Forward kernels of the chunked SSD (Mamba-2) in Triton: chunk states, then chunk outputs; or
both in one walk over the chunks (ssd_fwd_fused_kernel, where the (batch, head) pairs fill the GPU).

Per (batch, head) and chunk of Q tokens, with a_t = dt_t A, cs the chunk-local inclusive cumsum
of a, h_c the state entering chunk c and v_s = dt_s x_s:

    h_{c+1} = exp(cs_end) h_c + sum_s exp(cs_end - cs_s) v_s B_s^T              ssd_fwd_h_kernel
    y_l     = exp(cs_l) h_c C_l + sum_{s<=l} (C_l . B_s) exp(cs_l - cs_s) v_s + D x_l   ssd_fwd_o_kernel

Every exp takes a difference of cumsums that is <= 0 (or cs itself, <= 0): nothing overflows.

Traffic per token (bf16 inputs, H heads of P channels, G groups of N): the state kernel reads x
(2 H P bytes), B (2 G N) and dt (4 H) and writes the entering states (2 H P N / Q bytes, bf16)
and the cumsum (4 H); the output kernel reads x, B, C, dt, cs and the states again and writes y
(2 H P). At H=64, P=64, N=128: ~26 KB + 2 x 2 H P N / Q, i.e. 34 KB at Q=256, 59 KB at Q=64
(the floor, x + B + C + dt in and y out, is 17 KB).
FLOPs per token: 2 H P N (states) + 2 H P N (C h) + H Q' N (C B^T over the row blocks' causal
source blocks, recomputed per head; Q' = (Q + BL) / 2) + H Q' P (scores x v).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import autotune_configs, cdiv, interpreting, next_power_of_2


@triton.autotune(
    configs=autotune_configs([
        # H100, P 64, N 128, BT 64, B*T 32k, bf16 (scratch sweep of 16 configs, 2026-11-23): 4 warps
        # and 2 stages win at every tile, 64 x 64 best (0.34 ms against 0.52 for 64 x 32 at 8
        # warps); the small tiles stay for few (batch, head) pairs (SMALL_GRID)
        triton.Config({"BP": 64, "BN": 64}, num_warps=4, num_stages=2),
        triton.Config({"BP": 64, "BN": 128}, num_warps=4, num_stages=2),
        triton.Config({"BP": 32, "BN": 32}, num_warps=4, num_stages=2),
        triton.Config({"BP": 32, "BN": 64}, num_warps=4, num_stages=2),
    ]),
    key=["SMALL_GRID", "P", "N", "BT"], cache_results=True,
)
@triton.jit
def ssd_fwd_h_kernel(x, dt, A, Bm, h, h0, ht, cs, T, NT, SMALL_GRID,
                     H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                     BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_H: tl.constexpr,
                     PREC: tl.constexpr):
    """Sequential over chunks, parallel over (P tile, N tile, batch * head): writes the state
    entering every chunk (h: [B, NT, H, P, N]), the final state and the chunk-local cumsum."""
    i_p, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    i_b64 = i_b.to(tl.int64)
    b_A = tl.load(A + i_h).to(tl.float32)
    o_t = tl.arange(0, BT)
    b_h = tl.zeros([BP, BN], dtype=tl.float32)  # [BP, BN] the running state, fp32 always
    if HAS_H0:
        p_h0 = tl.make_block_ptr(h0 + i_bh.to(tl.int64) * P * N, (P, N), (N, 1), (i_p * BP, i_n * BN), (BP, BN), (1, 0))
        b_h = tl.load(p_h0, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    first = (i_p == 0) & (i_n == 0)  # one program per (b, h) writes the cumsum
    for i_t in range(NT):
        if STORE_H:
            p_h = tl.make_block_ptr(h + ((i_b64 * NT + i_t) * H + i_h) * P * N, (P, N), (N, 1),
                                    (i_p * BP, i_n * BN), (BP, BN), (1, 0))
            tl.store(p_h, b_h.to(p_h.dtype.element_ty), boundary_check=(0, 1))
        o_tok = i_t * BT + o_t
        m_t = o_tok < T
        b_dt = tl.load(dt + (i_b64 * T + o_tok) * H + i_h, mask=m_t, other=0.).to(tl.float32)  # [BT]
        b_cs = tl.cumsum(b_dt * b_A, 0)  # [BT]; padded tokens add 0, so cs[BT-1] is the chunk total
        tl.store(cs + i_bh.to(tl.int64) * T + o_tok, b_cs, mask=m_t & first)
        b_last = tl.sum(tl.where(o_t == BT - 1, b_cs, 0.), 0)
        p_x = tl.make_block_ptr(x + (i_b64 * T * H + i_h) * P, (T, P), (H * P, 1), (i_t * BT, i_p * BP), (BT, BP), (1, 0))
        p_B = tl.make_block_ptr(Bm + (i_b64 * T * G + i_g) * N, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
        b_x = tl.load(p_x, boundary_check=(0, 1), padding_option="zero")  # [BT, BP]
        b_B = tl.load(p_B, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
        b_w = b_dt * tl.exp(b_last - b_cs)  # [BT] input weight decayed to the chunk end, exponent <= 0
        b_xw = (b_x.to(tl.float32) * b_w[:, None]).to(b_x.dtype)
        b_h = b_h * tl.exp(b_last) + tl.dot(tl.trans(b_xw), b_B, input_precision=PREC)
    if STORE_HT:
        p_ht = tl.make_block_ptr(ht + i_bh.to(tl.int64) * P * N, (P, N), (N, 1), (i_p * BP, i_n * BN), (BP, BN), (1, 0))
        tl.store(p_ht, b_h, boundary_check=(0, 1))


@triton.autotune(
    configs=autotune_configs([
        # first: the interpreter's, so tests see BL < BT. H100, BT 64 (sweep of 12): BLM 64 at 4
        # warps, 1 stage 0.48 ms, against 0.69 for BLM 32 and 0.79-1.37 at 8 warps (ptxas reports
        # a small spill at 4 warps; the sweep says it costs less than the lost occupancy)
        triton.Config({"BLM": 32}, num_warps=4, num_stages=2),
        triton.Config({"BLM": 64}, num_warps=4, num_stages=1),
        triton.Config({"BLM": 64}, num_warps=8, num_stages=2),
    ]),
    key=["P", "N", "BT"], cache_results=True,
)
@triton.jit
def ssd_fwd_o_kernel(x, dt, Bm, Cm, D, h, cs, y, T, NT,
                     H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                     BT: tl.constexpr, BLM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     HAS_D: tl.constexpr, PREC: tl.constexpr):
    """Parallel over (row block, chunk, batch * head): one row block of BL tokens of one chunk
    reads its entering state once and loops over the source blocks s <= l of its chunk."""
    BL: tl.constexpr = BLM if BLM < BT else BT  # noqa: FURB136 - a constexpr expression Triton compiles
    i_l, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    i_b64 = i_b.to(tl.int64)
    r0 = i_t * BT + i_l * BL  # first row token
    o_l = r0 + tl.arange(0, BL)
    m_l = o_l < T
    b_csl = tl.load(cs + i_bh.to(tl.int64) * T + o_l, mask=m_l, other=0.)  # [BL]
    x_base = x + (i_b64 * T * H + i_h) * P
    bc_off = (i_b64 * T * G + i_g) * N
    p_C = tl.make_block_ptr(Cm + bc_off, (T, N), (G * N, 1), (r0, 0), (BL, BN), (1, 0))
    b_C = tl.load(p_C, boundary_check=(0, 1), padding_option="zero")  # [BL, BN], whole d_state
    # state -> output: exp(cs_l) C_l h_c^T, h read as its transpose [N, P]
    p_hT = tl.make_block_ptr(h + ((i_b64 * NT + i_t) * H + i_h) * P * N, (N, P), (1, N), (0, 0), (BN, BP), (0, 1))
    b_hT = tl.load(p_hT, boundary_check=(0, 1), padding_option="zero").to(b_C.dtype)  # [BN, BP]
    b_acc = tl.dot(b_C, b_hT, input_precision=PREC) * tl.exp(b_csl)[:, None]  # [BL, BP]
    # diagonal block: causal (C B^T) * exp(cs_l - cs_s) @ (dt x), source blocks of this chunk up to the row block
    for j in range(i_l + 1):
        s0 = i_t * BT + j * BL
        o_s = s0 + tl.arange(0, BL)
        m_s = o_s < T
        b_css = tl.load(cs + i_bh.to(tl.int64) * T + o_s, mask=m_s, other=0.)  # [BL]
        b_dts = tl.load(dt + (i_b64 * T + o_s) * H + i_h, mask=m_s, other=0.).to(tl.float32)
        p_B = tl.make_block_ptr(Bm + bc_off, (T, N), (G * N, 1), (s0, 0), (BL, BN), (1, 0))
        p_xs = tl.make_block_ptr(x_base, (T, P), (H * P, 1), (s0, 0), (BL, BP), (1, 0))
        b_B = tl.load(p_B, boundary_check=(0, 1), padding_option="zero")  # [BL, BN]
        b_xs = tl.load(p_xs, boundary_check=(0, 1), padding_option="zero")  # [BL, BP]
        b_CB = tl.dot(b_C, tl.trans(b_B), input_precision=PREC)  # [BL, BL]
        m_c = (o_l[:, None] >= o_s[None, :]) & m_s[None, :]
        b_L = tl.exp(tl.where(m_c, b_csl[:, None] - b_css[None, :], float("-inf")))  # exponent <= 0
        b_v = (b_xs.to(tl.float32) * b_dts[:, None]).to(b_xs.dtype)
        b_acc += tl.dot((b_CB * b_L).to(b_xs.dtype), b_v, input_precision=PREC)
    p_x = tl.make_block_ptr(x_base, (T, P), (H * P, 1), (r0, 0), (BL, BP), (1, 0))
    if HAS_D:
        b_acc += tl.load(D + i_h).to(tl.float32) * tl.load(p_x, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    p_y = tl.make_block_ptr(y + (i_b64 * T * H + i_h) * P, (T, P), (H * P, 1), (r0, 0), (BL, BP), (1, 0))
    tl.store(p_y, b_acc.to(p_y.dtype.element_ty), boundary_check=(0, 1))


# Four tl.dot in one loop: on Hopper, Triton 3.6 miscompiles such kernels when a dot dimension is
# 16 or 32 (H100: an illegal memory access at BP = 16; kernels/gated_delta_rule/blocks.py has the
# Triton issues), so the P tile is 64 there (a smaller head is zero-padded); the interpreter keeps
# small tiles for fast tests. H100, P 64, N 128, chunk 64, T 8k, B 4 (sweep): 4 warps 0.60-0.62 ms
# at 2-3 stages, 0.70 at 1; 8 warps 1.10-1.45.
@triton.autotune(
    configs=autotune_configs([triton.Config({"BP": 16 if interpreting() else 64}, num_warps=4, num_stages=3),
                              triton.Config({"BP": 64}, num_warps=4, num_stages=2)]),
    key=["P", "N", "BT"], cache_results=True,
)
@triton.jit
def ssd_fwd_fused_kernel(x, dt, A, Bm, Cm, D, y, h0, ht, T, NT,
                         H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                         BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                         HAS_D: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    """The whole forward in one walk over the chunks, per (P tile, batch * head): the running state
    [BP, N] stays in fp32 registers, so chunk states never reach HBM (the two-kernel path writes and
    re-reads 2 H P N / Q bytes per token). Per chunk: y = exp(cs) C h^T + causal (C B^T o L) (dt x)
    + D x, then h <- exp(cs_end) h + (dt x exp(cs_end - cs))^T B. The state feeds the dot in x's
    dtype, as the two-kernel path stores it."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    i_b64 = i_b.to(tl.int64)
    b_A = tl.load(A + i_h).to(tl.float32)
    o_t = tl.arange(0, BT)
    m_causal = o_t[:, None] >= o_t[None, :]
    b_h = tl.zeros([BP, BN], dtype=tl.float32)
    if HAS_H0:
        p_h0 = tl.make_block_ptr(h0 + i_bh.to(tl.int64) * P * N, (P, N), (N, 1), (i_p * BP, 0), (BP, BN), (1, 0))
        b_h = tl.load(p_h0, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    b_D = tl.load(D + i_h).to(tl.float32) if HAS_D else 0.
    x_base = x + (i_b64 * T * H + i_h) * P
    bc_off = (i_b64 * T * G + i_g) * N
    for i_t in range(NT):
        o_tok = i_t * BT + o_t
        m_t = o_tok < T
        b_dt = tl.load(dt + (i_b64 * T + o_tok) * H + i_h, mask=m_t, other=0.).to(tl.float32)  # [BT]
        b_cs = tl.cumsum(b_dt * b_A, 0)  # padded tokens add 0: cs[BT - 1] is the chunk total
        b_last = tl.sum(tl.where(o_t == BT - 1, b_cs, 0.), 0)
        p_x = tl.make_block_ptr(x_base, (T, P), (H * P, 1), (i_t * BT, i_p * BP), (BT, BP), (1, 0))
        p_B = tl.make_block_ptr(Bm + bc_off, (T, N), (G * N, 1), (i_t * BT, 0), (BT, BN), (1, 0))
        p_C = tl.make_block_ptr(Cm + bc_off, (T, N), (G * N, 1), (i_t * BT, 0), (BT, BN), (1, 0))
        b_x = tl.load(p_x, boundary_check=(0, 1), padding_option="zero")  # [BT, BP]
        b_B = tl.load(p_B, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
        b_C = tl.load(p_C, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
        b_xf = b_x.to(tl.float32)
        b_y = tl.dot(b_C, tl.trans(b_h.to(b_C.dtype)), input_precision=PREC) * tl.exp(b_cs)[:, None]  # [BT, BP]
        b_CB = tl.dot(b_C, tl.trans(b_B), input_precision=PREC)  # [BT, BT]
        b_L = tl.exp(tl.where(m_causal, b_cs[:, None] - b_cs[None, :], float("-inf")))  # exponent <= 0
        b_v = (b_xf * b_dt[:, None]).to(b_x.dtype)
        b_y += tl.dot((b_CB * b_L).to(b_x.dtype), b_v, input_precision=PREC)
        if HAS_D:
            b_y += b_D * b_xf
        p_y = tl.make_block_ptr(y + (i_b64 * T * H + i_h) * P, (T, P), (H * P, 1), (i_t * BT, i_p * BP),
                                (BT, BP), (1, 0))
        tl.store(p_y, b_y.to(p_y.dtype.element_ty), boundary_check=(0, 1))
        b_xw = (b_xf * (b_dt * tl.exp(b_last - b_cs))[:, None]).to(b_x.dtype)  # decayed to the chunk end
        b_h = b_h * tl.exp(b_last) + tl.dot(tl.trans(b_xw), b_B, input_precision=PREC)
    if STORE_HT:
        p_ht = tl.make_block_ptr(ht + i_bh.to(tl.int64) * P * N, (P, N), (N, 1), (i_p * BP, 0), (BP, BN), (1, 0))
        tl.store(p_ht, b_h, boundary_check=(0, 1))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative); 16-bit inputs ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def pow2(n: int) -> int:
    """The tile size covering n: a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, next_power_of_2(n))


def small_grid(n_sequences: int) -> int:
    """Autotune key of the sequential state kernels: few (batch, head) pairs want small tiles
    (more programs); one bucket boundary, so that a sweep over T at fixed B*T tunes twice, not per T."""
    return int(n_sequences < 256)


def fwd_states(x, dt, A, B, initial_state, BT: int, store_h: bool = True, store_final: bool = True):
    """Launch ssd_fwd_h_kernel. Returns (h entering each chunk [B, NT, H, P, N] in x.dtype or None,
    final state fp32 or None, chunk-local cumsum [B, H, T] fp32)."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    NT = cdiv(T, BT)
    h = x.new_empty(b, NT, H, P, N) if store_h else None
    ht = x.new_empty(b, H, P, N, dtype=torch.float32) if store_final else None
    cs = x.new_empty(b, H, T, dtype=torch.float32)
    grid = lambda meta: (cdiv(P, meta["BP"]), cdiv(N, meta["BN"]), b * H)
    ssd_fwd_h_kernel[grid](x, dt, A, B, h, initial_state, ht, cs, T, NT, small_grid(b * H), H=H, G=G, P=P, N=N, BT=BT,
                           HAS_H0=initial_state is not None, STORE_HT=store_final, STORE_H=store_h,
                           PREC=dot_precision(x.dtype))
    return h, ht, cs


def fwd_output(x, dt, B, C, D, h, cs, BT: int):
    """Launch ssd_fwd_o_kernel: y [B, T, H, P] in x.dtype."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    NT = cdiv(T, BT)
    y = torch.empty_like(x)
    grid = lambda meta: (cdiv(BT, min(meta["BLM"], BT)), NT, b * H)
    ssd_fwd_o_kernel[grid](x, dt, B, C, D, h, cs, y, T, NT, H=H, G=G, P=P, N=N, BT=BT, BP=pow2(P), BN=pow2(N),
                           HAS_D=D is not None, PREC=dot_precision(x.dtype))
    return y


def fwd_fused(x, dt, A, B, C, D, initial_state, BT: int, store_final: bool = True):
    """Launch ssd_fwd_fused_kernel: (y [B, T, H, P] in x.dtype, final state fp32 or None)."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    y = torch.empty_like(x)
    ht = x.new_empty(b, H, P, N, dtype=torch.float32) if store_final else None
    grid = lambda meta: (cdiv(P, meta["BP"]), b * H)
    ssd_fwd_fused_kernel[grid](x, dt, A, B, C, D, y, initial_state, ht, T, cdiv(T, BT), H=H, G=G, P=P, N=N,
                               BT=BT, BN=pow2(N), HAS_D=D is not None, HAS_H0=initial_state is not None,
                               STORE_HT=store_final, PREC=dot_precision(x.dtype))
    return y, ht
