"""Backward kernels of the chunked SSD (Mamba-2) in Triton. The entering states h_c are recomputed
(ssd_fwd_h_kernel) rather than kept from the forward; then, with dh_{c+1} the gradient reaching
the state that leaves chunk c, v = dt x, L_ls = exp(cs_l - cs_s) for s <= l and
M = (dY V^T) o L:

    dh_c  = exp(cs_end) dh_{c+1} + sum_l exp(cs_l) dy_l C_l^T                ssd_bwd_dh_kernel
    dV    = (C B^T o L)^T dY + exp(cs_end - cs) B dh_{c+1}^T                 ssd_bwd_dv_kernel
    dx    = dt dV + D dy,   ddt = x . dV + A da,   dA = sum dt da,   dD = sum dy . x
    d cs  = dy . (y_strict + exp(cs) C h_c^T) - v . dV_strict - [s < end] v . dV_state
            + at the chunk end: sum_{s < end} v . dV_state + exp(cs_end) <h_c, dh_{c+1}>
    da    = reverse cumsum of d cs inside the chunk
    dC    = exp(cs) dY h_c + M B,   dB = M^T C + exp(cs_end - cs) V dh_{c+1}  ssd_bwd_dbc_kernel

d cs is formed from [Q, P] products only (rowsum_l of (C B^T o M) is dy_l . y_l), with the
strictly causal part: the l = s terms, and the last token's state term, enter d cs with + and -
the same number, so they are left out exactly and rounding cannot swamp dA when decays are fast
(naive.py explains).

The dB/dC kernel runs per (N tile, chunk, group) and loops over the group's heads, so B and C
are loaded once per group and dB/dC accumulate in registers (split over head ranges, summed
afterwards, only when the grid would otherwise be too small).

Traffic per token (bf16, H heads of P, G groups of N, backward chunk Qb, S = 2 H P N / Qb bytes
of bf16 states): recompute of the states (x, B read; S written), dh pass (dy, C read; S
written), dv pass (x, dy, B, C, h, dh read: 2 S; dx, ddt written), dB/dC pass (x, dy, h, dh:
2 S; B, C once per group; dB, dC written): ~ 60 KB + 6 S per token at H=64, P=64, N=128 (S = 16
KB at Qb = 64). FLOPs per token and head: 12 P N + 6 Qb (N + P).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.ssd.chunk_fwd import dot_precision, fwd_states, pow2, small_grid
from kernels.triton_utils import autotune_configs, cdiv


@triton.autotune(
    configs=autotune_configs([
        # H100, P 64, N 128, BT 64 (sweep of 16): 4 warps, 2 stages, 64 x 128 or 64 x 64 (0.33 /
        # 0.34 ms against 0.45 for 64 x 32 at 8 warps); small tiles for SMALL_GRID
        triton.Config({"BP": 64, "BN": 64}, num_warps=4, num_stages=2),
        triton.Config({"BP": 64, "BN": 128}, num_warps=4, num_stages=2),
        triton.Config({"BP": 32, "BN": 32}, num_warps=4, num_stages=2),
        triton.Config({"BP": 32, "BN": 64}, num_warps=4, num_stages=2),
    ]),
    key=["SMALL_GRID", "P", "N", "BT"], cache_results=True,
)
@triton.jit
def ssd_bwd_dh_kernel(dy, Cm, cs, dht, dh, dh0, T, NT, SMALL_GRID,
                      H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                      BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    """Reverse state passing, sequential over chunks from the last: dh[:, c] is the gradient of
    the state leaving chunk c; dh0 the gradient of the initial state."""
    i_p, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    i_b64 = i_b.to(tl.int64)
    o_t = tl.arange(0, BT)
    b_dh = tl.zeros([BP, BN], dtype=tl.float32)  # [BP, BN]
    if HAS_DHT:
        p_dht = tl.make_block_ptr(dht + i_bh.to(tl.int64) * P * N, (P, N), (N, 1), (i_p * BP, i_n * BN), (BP, BN), (1, 0))
        b_dh = tl.load(p_dht, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    for i_t in range(NT - 1, -1, -1):
        p_dh = tl.make_block_ptr(dh + ((i_b64 * NT + i_t) * H + i_h) * P * N, (P, N), (N, 1),
                                 (i_p * BP, i_n * BN), (BP, BN), (1, 0))
        tl.store(p_dh, b_dh.to(p_dh.dtype.element_ty), boundary_check=(0, 1))
        o_tok = i_t * BT + o_t
        b_cs = tl.load(cs + i_bh.to(tl.int64) * T + o_tok, mask=o_tok < T, other=0.)  # [BT]
        b_last = tl.load(cs + i_bh.to(tl.int64) * T + tl.minimum(i_t * BT + BT, T) - 1)
        p_dy = tl.make_block_ptr(dy + (i_b64 * T * H + i_h) * P, (T, P), (H * P, 1), (i_t * BT, i_p * BP), (BT, BP), (1, 0))
        p_C = tl.make_block_ptr(Cm + (i_b64 * T * G + i_g) * N, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
        b_dy = tl.load(p_dy, boundary_check=(0, 1), padding_option="zero")  # [BT, BP]
        b_C = tl.load(p_C, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
        b_dyw = (b_dy.to(tl.float32) * tl.exp(b_cs)[:, None]).to(b_C.dtype)
        b_dh = b_dh * tl.exp(b_last) + tl.dot(tl.trans(b_dyw), b_C, input_precision=PREC)
    if STORE_DH0:
        p_dh0 = tl.make_block_ptr(dh0 + i_bh.to(tl.int64) * P * N, (P, N), (N, 1), (i_p * BP, i_n * BN), (BP, BN), (1, 0))
        tl.store(p_dh0, b_dh, boundary_check=(0, 1))


@triton.autotune(
    configs=autotune_configs([
        # BT = 64, P = 64, N = 128, H100 (sweep of 12): 4 warps with 3 stages 1.09 ms (BN 32) and
        # 1.13 (BN 64) against 1.70-2.27 at 8 warps, although ptxas reports KBs of spills at 4
        triton.Config({"BN": 32}, num_warps=4, num_stages=3),
        triton.Config({"BN": 64}, num_warps=4, num_stages=3),
        triton.Config({"BN": 32}, num_warps=8, num_stages=3),
    ]),
    key=["P", "N", "BT"], cache_results=True,
)
@triton.jit
def ssd_bwd_dv_kernel(x, dt, A, Bm, Cm, D, dy, cs, h, dh, dx, ddt, dA, dD, T, NT,
                      H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                      BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      HAS_D: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, batch * head): dx, ddt (x . dV + A da), and per-chunk dA and dD partials.
    d cs needs only [BT, P] products: rowsum(CB o M, strict) = dy . y_strict and
    colsum(...) = v . dV_strict, so the whole log-decay gradient is formed here."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    i_b64 = i_b.to(tl.int64)
    o_t = tl.arange(0, BT)
    o_tok = i_t * BT + o_t
    m_t = o_tok < T
    n_valid = tl.minimum(BT, T - i_t * BT)
    b_cs = tl.load(cs + i_bh.to(tl.int64) * T + o_tok, mask=m_t, other=0.)  # [BT]
    b_last = tl.load(cs + i_bh.to(tl.int64) * T + i_t * BT + n_valid - 1)
    b_dt = tl.load(dt + (i_b64 * T + o_tok) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    bc_off = (i_b64 * T * G + i_g) * N
    xy_off = (i_b64 * T * H + i_h) * P
    st_off = ((i_b64 * NT + i_t) * H + i_h) * P * N
    p_x = tl.make_block_ptr(x + xy_off, (T, P), (H * P, 1), (i_t * BT, 0), (BT, BP), (1, 0))
    p_dy = tl.make_block_ptr(dy + xy_off, (T, P), (H * P, 1), (i_t * BT, 0), (BT, BP), (1, 0))
    b_dy = tl.load(p_dy, boundary_check=(0, 1), padding_option="zero")  # [BT, BP]
    b_xf = tl.load(p_x, boundary_check=(0, 1), padding_option="zero").to(tl.float32)  # [BT, BP]
    b_vf = b_xf * b_dt[:, None]  # v = dt x, fp32 for the d cs row sums
    b_v = b_vf.to(b_dy.dtype)
    b_BC = tl.zeros([BT, BT], dtype=tl.float32)  # [s, l] B_s . C_l
    b_Bdh = tl.zeros([BT, BP], dtype=tl.float32)  # B dh^T
    b_Ch = tl.zeros([BT, BP], dtype=tl.float32)  # C h^T
    b_diag = tl.zeros([BT], dtype=tl.float32)  # B_s . C_s
    b_hdh = tl.zeros([BP], dtype=tl.float32)
    for i_n in range(tl.cdiv(N, BN)):
        p_B = tl.make_block_ptr(Bm + bc_off, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
        p_C = tl.make_block_ptr(Cm + bc_off, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
        p_hT = tl.make_block_ptr(h + st_off, (N, P), (1, N), (i_n * BN, 0), (BN, BP), (0, 1))
        p_dhT = tl.make_block_ptr(dh + st_off, (N, P), (1, N), (i_n * BN, 0), (BN, BP), (0, 1))
        b_B = tl.load(p_B, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
        b_C = tl.load(p_C, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
        b_hT = tl.load(p_hT, boundary_check=(0, 1), padding_option="zero")  # [BN, BP]
        b_dhT = tl.load(p_dhT, boundary_check=(0, 1), padding_option="zero")  # [BN, BP]
        b_BC += tl.dot(b_B, tl.trans(b_C), input_precision=PREC)
        b_Bdh += tl.dot(b_B, b_dhT.to(b_B.dtype), input_precision=PREC)
        b_Ch += tl.dot(b_C, b_hT.to(b_C.dtype), input_precision=PREC)
        b_diag += tl.sum(b_B.to(tl.float32) * b_C.to(tl.float32), 1)
        b_hdh += tl.sum(b_hT.to(tl.float32) * b_dhT.to(tl.float32), 0)
    # strictly causal scores [s, l]: the l = s terms enter d cs with + and -, so they stay out
    m_s = (o_t[:, None] < o_t[None, :]) & m_t[None, :]
    b_S = b_BC * tl.exp(tl.where(m_s, b_cs[None, :] - b_cs[:, None], float("-inf")))
    b_dvs = tl.dot(b_S.to(b_dy.dtype), b_dy, input_precision=PREC)  # [BT, BP] dV, strict part
    b_ys = tl.dot(tl.trans(b_S).to(b_v.dtype), b_v, input_precision=PREC)  # [BT, BP] y, strict part
    b_dvst = b_Bdh * tl.exp(b_last - b_cs)[:, None]  # dV through the state leaving the chunk
    b_dyf = b_dy.to(tl.float32)
    b_dv = b_dvs + b_dvst + b_diag[:, None] * b_dyf
    b_dx = b_dv * b_dt[:, None]
    if HAS_D:
        b_dx += tl.load(D + i_h).to(tl.float32) * b_dyf
        tl.store(dD + (i_b64 * NT + i_t) * H + i_h, tl.sum(tl.sum(b_dyf * b_xf, 1), 0))
    p_dx = tl.make_block_ptr(dx + xy_off, (T, P), (H * P, 1), (i_t * BT, 0), (BT, BP), (1, 0))
    tl.store(p_dx, b_dx.to(p_dx.dtype.element_ty), boundary_check=(0, 1))
    # d cs: intra (strict) + inter (dy . y_inter) - state (s < end) + at the end the chunk decay's
    b_W = tl.where(o_t < n_valid - 1, tl.sum(b_vf * b_dvst, 1), 0.)  # [BT]
    b_dg = tl.sum(b_dyf * (b_ys + b_Ch * tl.exp(b_cs)[:, None]), 1) - tl.sum(b_vf * b_dvs, 1) - b_W
    b_dG = tl.sum(b_W, 0) + tl.exp(b_last) * tl.sum(b_hdh, 0)
    b_dg += tl.where(o_t == n_valid - 1, b_dG, 0.)
    b_da = tl.cumsum(b_dg, 0, reverse=True)  # [BT] d a_t = sum_{l >= t} d cs_l
    b_ddt = tl.sum(b_dv * b_xf, 1) + tl.load(A + i_h).to(tl.float32) * b_da
    tl.store(ddt + (i_b64 * T + o_tok) * H + i_h, b_ddt.to(ddt.dtype.element_ty), mask=m_t)
    tl.store(dA + (i_b64 * NT + i_t) * H + i_h, tl.sum(tl.where(m_t, b_dt * b_da, 0.), 0))


@triton.autotune(
    configs=autotune_configs([
        # BT = 64, BN = 64, H100 (sweep of BN 64 / 128, 1-4 head splits, 4 / 8 warps, 1 / 2
        # stages): 4 warps, 2 stages, no split 0.82 ms against 1.98 at 8 warps (4 warps spill ~2 KB)
        triton.Config({}, num_warps=4, num_stages=2),
        triton.Config({}, num_warps=4, num_stages=1),
        triton.Config({}, num_warps=8, num_stages=2),
    ]),
    key=["P", "N", "BT", "BN", "RS"], cache_results=True,
)
@triton.jit
def ssd_bwd_dbc_kernel(x, dt, Bm, Cm, dy, cs, h, dh, dB, dC, T, NT, BATCH,
                       H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                       BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr,
                       RS: tl.constexpr, PREC: tl.constexpr):
    """Per (N tile, chunk, batch * group * head split): dB and dC of one N tile, summed over RS
    heads in registers (B and C are loaded once for the group's heads)."""
    i_n, i_t, i_bgs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_g, i_s = i_bgs // (G * NS), (i_bgs // NS) % G, i_bgs % NS
    i_b64 = i_b.to(tl.int64)
    o_t = tl.arange(0, BT)
    o_tok = i_t * BT + o_t
    m_t = o_tok < T
    n_valid = tl.minimum(BT, T - i_t * BT)
    bc_off = (i_b64 * T * G + i_g) * N
    p_B = tl.make_block_ptr(Bm + bc_off, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
    p_C = tl.make_block_ptr(Cm + bc_off, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
    b_B = tl.load(p_B, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
    b_C = tl.load(p_C, boundary_check=(0, 1), padding_option="zero")  # [BT, BN]
    m_causal = (o_t[:, None] >= o_t[None, :]) & m_t[:, None]
    b_dB = tl.zeros([BT, BN], dtype=tl.float32)
    b_dC = tl.zeros([BT, BN], dtype=tl.float32)
    for i_r in range(RS):
        i_h = i_g * (H // G) + i_s * RS + i_r
        i_bh = i_b64 * H + i_h
        b_cs = tl.load(cs + i_bh * T + o_tok, mask=m_t, other=0.)  # [BT]
        b_last = tl.load(cs + i_bh * T + i_t * BT + n_valid - 1)
        b_dt = tl.load(dt + (i_b64 * T + o_tok) * H + i_h, mask=m_t, other=0.).to(tl.float32)
        xy_off = (i_b64 * T * H + i_h) * P
        p_x = tl.make_block_ptr(x + xy_off, (T, P), (H * P, 1), (i_t * BT, 0), (BT, BP), (1, 0))
        p_dy = tl.make_block_ptr(dy + xy_off, (T, P), (H * P, 1), (i_t * BT, 0), (BT, BP), (1, 0))
        st_off = ((i_b64 * NT + i_t) * H + i_h) * P * N
        p_h = tl.make_block_ptr(h + st_off, (P, N), (N, 1), (0, i_n * BN), (BP, BN), (1, 0))
        p_dh = tl.make_block_ptr(dh + st_off, (P, N), (N, 1), (0, i_n * BN), (BP, BN), (1, 0))
        b_x = tl.load(p_x, boundary_check=(0, 1), padding_option="zero")  # [BT, BP]
        b_dy = tl.load(p_dy, boundary_check=(0, 1), padding_option="zero")  # [BT, BP]
        b_v = (b_x.to(tl.float32) * b_dt[:, None]).to(b_x.dtype)
        b_L = tl.exp(tl.where(m_causal, b_cs[:, None] - b_cs[None, :], float("-inf")))  # [l, s], exponent <= 0
        b_M = (tl.dot(b_dy, tl.trans(b_v), input_precision=PREC) * b_L).to(b_B.dtype)  # [l, s] (dy_l . v_s) L
        # row scales go on the left operands, so every product accumulates in place (acc=)
        b_dyw = (b_dy.to(tl.float32) * tl.exp(b_cs)[:, None]).to(b_dy.dtype)
        b_vw = (b_x.to(tl.float32) * (b_dt * tl.exp(b_last - b_cs))[:, None]).to(b_x.dtype)
        b_h = tl.load(p_h, boundary_check=(0, 1), padding_option="zero").to(b_dy.dtype)  # [BP, BN]
        b_dC = tl.dot(b_dyw, b_h, acc=b_dC, input_precision=PREC)
        b_dC = tl.dot(b_M, b_B, acc=b_dC, input_precision=PREC)
        b_dh = tl.load(p_dh, boundary_check=(0, 1), padding_option="zero").to(b_v.dtype)  # [BP, BN]
        b_dB = tl.dot(b_vw, b_dh, acc=b_dB, input_precision=PREC)
        b_dB = tl.dot(tl.trans(b_M), b_C, acc=b_dB, input_precision=PREC)
    d_off = ((i_s.to(tl.int64) * BATCH + i_b64) * T * G + i_g) * N  # dB, dC: [NS, B, T, G, N]
    p_dB = tl.make_block_ptr(dB + d_off, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
    p_dC = tl.make_block_ptr(dC + d_off, (T, N), (G * N, 1), (i_t * BT, i_n * BN), (BT, BN), (1, 0))
    tl.store(p_dB, b_dB.to(p_dB.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dC, b_dC.to(p_dC.dtype.element_ty), boundary_check=(0, 1))


def head_split(n_programs: int, R: int) -> int:
    """How many head ranges the dB/dC kernel splits a group into: enough programs to fill an
    H100 (~4 per SM) without making every program's head loop trivially short."""
    ns = 1
    while n_programs * ns < 528 and ns * 2 <= R and R % (ns * 2) == 0 and R // (ns * 2) >= 4:
        ns *= 2
    return ns


# The backward runs on chunks of at most BWD_CHUNK tokens whatever the forward's chunk size (the
# gradients do not depend on it): its kernels hold [Q, Q] and [Q, N] tiles whole, which spill past
# 64 on an H100. Larger means fewer recomputed / passed states (2 H P N / Q bytes per token each).
BWD_CHUNK = 64
# N tile of the dB / dC kernel (halves its registers at N = 128).
BWD_BN = 64


def bwd(x, dt, A, B, C, D, initial_state, dy, dht, chunk_size: int):
    """All gradients of chunk_ssd: (dx, ddt, dA, dB, dC, dD, dh0)."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    BT = min(chunk_size, BWD_CHUNK)
    NT = cdiv(T, BT)
    prec = dot_precision(x.dtype)
    h, _, cs = fwd_states(x, dt, A, B, initial_state, BT, store_h=True, store_final=False)
    dh = x.new_empty(b, NT, H, P, N)
    dh0 = x.new_empty(b, H, P, N, dtype=torch.float32) if initial_state is not None else None
    grid = lambda meta: (cdiv(P, meta["BP"]), cdiv(N, meta["BN"]), b * H)
    ssd_bwd_dh_kernel[grid](dy, C, cs, dht, dh, dh0, T, NT, small_grid(b * H), H=H, G=G, P=P, N=N, BT=BT,
                            HAS_DHT=dht is not None, STORE_DH0=dh0 is not None, PREC=prec)
    dx = torch.empty_like(x)
    ddt = torch.empty_like(dt)
    dA = x.new_empty(b, NT, H, dtype=torch.float32)
    dD = x.new_empty(b, NT, H, dtype=torch.float32) if D is not None else None
    ssd_bwd_dv_kernel[(NT, b * H)](x, dt, A, B, C, D, dy, cs, h, dh, dx, ddt, dA, dD, T, NT, H=H, G=G, P=P, N=N,
                                   BT=BT, BP=pow2(P), HAS_D=D is not None, PREC=prec)
    R = H // G
    BN = min(pow2(N), BWD_BN)
    NNT = cdiv(N, BN)
    NS = head_split(NNT * NT * b * G, R)
    part = torch.float32 if NS > 1 else B.dtype
    dB = B.new_empty(NS, b, T, G, N, dtype=part)
    dC = C.new_empty(NS, b, T, G, N, dtype=part)
    ssd_bwd_dbc_kernel[(NNT, NT, b * G * NS)](x, dt, B, C, dy, cs, h, dh, dB, dC, T, NT, b, H=H, G=G, P=P, N=N,
                                              BT=BT, BP=pow2(P), BN=BN, NS=NS, RS=R // NS, PREC=prec)
    dB, dC = (dB[0], dC[0]) if NS == 1 else (dB.sum(0).to(B.dtype), dC.sum(0).to(C.dtype))
    dA = dA.sum((0, 1)).to(A.dtype)
    dD = dD.sum((0, 1)).to(D.dtype) if D is not None else None
    return dx, ddt, dA, dB, dC, dD, dh0
