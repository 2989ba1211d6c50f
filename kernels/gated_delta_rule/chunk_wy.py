"""The WY / UT-transform pieces of the chunked gated delta rule (Triton): per chunk of ``BT``
tokens (``gamma_r = sum_{s<=r} g_s`` chunk-locally, ``b = beta``):

    A  = tril(b K K^T * exp(gamma_r - gamma_j), -1)            [BT, BT]   (fwd_kkt)
    Ai = (I + A)^{-1}                                          [BT, BT]   (fwd_solve)
    W  = Ai (b exp(gamma) K),  U = Ai (b V)                    [BT, K], [BT, V]   (fwd_wu)

or all three in one program per chunk (fwd_prep, not yet the default: chunk.FUSED_PREPARE), and
the backward of all three in one kernel (bwd_wy). ``(I + A)^{-1}`` is built from 16 x 16 diagonal
blocks inverted by forward substitution (fwd_solve: one block after another; fwd_prep: all of them
together), merged row-block by row-block (``Ai_ij = -Ai_ii sum_{j<=m<i} A_im Ai_mj``) with fp32
("ieee") dots.

HBM per token and head (dot dtype d bytes, fp32 scratch 4 bytes): kkt reads K + 2 scalars, writes
gamma + BT fp32 of A; solve reads BT fp32, writes BT d; wu reads BT d + K + V, writes (K + V) d.
fwd_prep reads K + V + 2 scalars and writes gamma, BT d of Ai and (K + V) d of W, U; its A scratch
is written and read back by the same program (L1 / L2), as is Ai.
FLOPs per token and head: 2 BT K (K K^T) + 2 BT (K + V) (W, U) + ~BT * 16 (block inverses).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.gated_delta_rule.blocks import load_chunk_gamma, prune_fp32_warps
from kernels.triton_utils import autotune_configs

# Two configs each (warps only: the tiles follow from K, V, BT); the solve kernel's 16 x 16 fp32
# register work wants few warps (H100, H16 K128 BT64: 1 warp 0.26 ms, 2 warps 0.41, 4 warps 0.71),
# the [BT, K] dots more. Tuned configs persist on disk per key.
_WARPS = autotune_configs([triton.Config({}, num_warps=4), triton.Config({}, num_warps=8)])
_WARPS_SOLVE = autotune_configs([triton.Config({}, num_warps=1), triton.Config({}, num_warps=2)])


@triton.jit
def _chunk_kkt(k, g, beta, gamma, bos, i_h, i_t, T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """Chunk ``i_t``'s gamma (the chunk-local cumsum of g, stored: the later passes read it) and
    ``A`` (fp32 [BT, BT], strictly lower); K K^T runs on ``DT`` operands, accumulating in fp32.
    Returns ``(A, gamma, beta)`` of the chunk, fp32."""
    p_g = tl.make_block_ptr(g + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    p_b = tl.make_block_ptr(beta + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    p_gam = tl.make_block_ptr(gamma + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    b_gam = tl.cumsum(tl.load(p_g, boundary_check=(0,), padding_option="zero").to(tl.float32), axis=0)   # [BT]
    tl.store(p_gam, b_gam, boundary_check=(0,))
    b_beta = tl.load(p_b, boundary_check=(0,), padding_option="zero").to(tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(DT)         # [BT, BK]
        b_A += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    o_t = tl.arange(0, BT)
    # exp only of gamma_r - gamma_j <= 0 (the masked entries get exp(-inf) = 0)
    b_D = tl.exp(tl.where(o_t[:, None] > o_t[None, :], b_gam[:, None] - b_gam[None, :], float("-inf")))
    return b_A * b_D * b_beta[:, None], b_gam, b_beta


@triton.autotune(configs=_WARPS, key=["H", "K", "BT"], cache_results=True,
                  prune_configs_by={"early_config_prune": prune_fp32_warps})
@triton.jit
def gated_delta_rule_fwd_kkt_kernel(k, g, beta, gamma, A, Ai, T, H: tl.constexpr, K: tl.constexpr,
                                    BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """gamma and A (fp32 scratch) of one chunk; K K^T in the dot dtype (Ai's, only read for it)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T                                   # int64: B*T*H*K overflows int32
    b_A, _, _ = _chunk_kkt(k, g, beta, gamma, bos, i_h, i_t, T, H, K, BT, BK, Ai.dtype.element_ty, PREC)
    p_A = tl.make_block_ptr(A + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    tl.store(p_A, b_A, boundary_check=(0, 1))


@triton.jit
def _load16(A, T, H: tl.constexpr, BT: tl.constexpr, row, col):
    """The [16, 16] block of the fp32 A scratch at (row, col) (rows past T read as 0)."""
    p = tl.make_block_ptr(A, (T, BT), (H * BT, 1), (row, col), (16, 16), (1, 0))
    return tl.load(p, boundary_check=(0, 1), padding_option="zero")


@triton.jit
def _store16(Ai, T, H: tl.constexpr, BT: tl.constexpr, row, col, b_x):
    p = tl.make_block_ptr(Ai, (T, BT), (H * BT, 1), (row, col), (16, 16), (1, 0))
    tl.store(p, b_x.to(Ai.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _inv16(A, T, H: tl.constexpr, BT: tl.constexpr, row, col):
    """(I + tril(A_blk, -1))^{-1} of one diagonal [16, 16] block, by forward substitution:
    X = T - I solves X_i = N_i + sum_{j<i} N_ij X_j with N = -A (rows 0, 1 are N's)."""
    o_i = tl.arange(0, 16)
    b_N = -tl.where(o_i[:, None] > o_i[None, :], _load16(A, T, H, BT, row, col), 0.)
    b_X = b_N
    for i in range(2, 16):
        b_n = tl.sum(tl.where((o_i == i)[:, None], b_N, 0.), 0)               # row i of N  [16]
        b_x = b_n + tl.sum(b_n[:, None] * b_X, 0)                               # [16]
        b_X = tl.where((o_i == i)[:, None], b_x[None, :], b_X)
    return b_X + tl.where(o_i[:, None] == o_i[None, :], 1., 0.)


@triton.jit
def _diagonal_blocks(r0, T, H: tl.constexpr, BT: tl.constexpr):
    """Offsets and mask of the chunk's ``BT / 16`` diagonal [16, 16] blocks, as [BT / 16, 16, 16]."""
    o_d = tl.arange(0, BT // 16)[:, None, None]
    o_i = tl.arange(0, 16)[None, :, None]
    row = r0 + 16 * o_d + o_i
    return row * (H * BT) + 16 * o_d + tl.arange(0, 16)[None, None, :], row < T


@triton.jit
def _invert_diagonal(A, r0, T, H: tl.constexpr, BT: tl.constexpr):
    """(I + tril(A_dd, -1))^{-1} of every diagonal [16, 16] block at once, by forward substitution
    (X = inverse - I solves X_i = N_i + sum_{j<i} N_ij X_j, N = -A; rows 0, 1 are N's): the
    ``BT / 16`` independent substitutions advance together, row by row, [BT / 16, 16, 16] fp32."""
    offs, mask = _diagonal_blocks(r0, T, H, BT)
    o_i = tl.arange(0, 16)[None, :, None]
    o_j = tl.arange(0, 16)[None, None, :]
    b_N = -tl.where(o_i > o_j, tl.load(A + offs, mask=mask, other=0.), 0.)
    b_X = b_N
    for i in tl.static_range(2, 16):
        b_n = tl.sum(tl.where(o_i == i, b_N, 0.), 1)                  # row i of each block  [BT / 16, 16]
        b_x = b_n + tl.sum(b_n[:, :, None] * b_X, 1)
        b_X = tl.where(o_i == i, b_x[:, None, :], b_X)
    return b_X + tl.where(o_i == o_j, 1., 0.)


@triton.jit
def _mm(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _merge(A, Ai, r0, T, H: tl.constexpr, BT: tl.constexpr, b_00, b_11, b_22, b_33):
    """Stores Ai = (I + A)^{-1} of the chunk at row ``r0`` from its diagonal blocks' inverses
    ``b_dd`` (BT in {16, 32, 64}: 1, 2 or 4 of them; the unused ones are ignored), merging row-block
    by row-block with fp32 dots on A's off-diagonal blocks."""
    _store16(Ai, T, H, BT, r0, 0, b_00)
    if BT >= 32:
        b_10 = -_mm(b_11, _mm(_load16(A, T, H, BT, r0 + 16, 0), b_00))
        z = tl.zeros([16, 16], dtype=tl.float32)
        _store16(Ai, T, H, BT, r0, 16, z)
        _store16(Ai, T, H, BT, r0 + 16, 0, b_10)
        _store16(Ai, T, H, BT, r0 + 16, 16, b_11)
        if BT == 64:
            a_20, a_21 = _load16(A, T, H, BT, r0 + 32, 0), _load16(A, T, H, BT, r0 + 32, 16)
            a_30, a_31 = _load16(A, T, H, BT, r0 + 48, 0), _load16(A, T, H, BT, r0 + 48, 16)
            a_32 = _load16(A, T, H, BT, r0 + 48, 32)
            b_21 = -_mm(b_22, _mm(a_21, b_11))
            b_20 = -_mm(b_22, _mm(a_20, b_00) + _mm(a_21, b_10))
            b_32 = -_mm(b_33, _mm(a_32, b_22))
            b_31 = -_mm(b_33, _mm(a_31, b_11) + _mm(a_32, b_21))
            b_30 = -_mm(b_33, _mm(a_30, b_00) + _mm(a_31, b_10) + _mm(a_32, b_20))
            _store16(Ai, T, H, BT, r0, 32, z)
            _store16(Ai, T, H, BT, r0, 48, z)
            _store16(Ai, T, H, BT, r0 + 16, 32, z)
            _store16(Ai, T, H, BT, r0 + 16, 48, z)
            _store16(Ai, T, H, BT, r0 + 32, 48, z)
            _store16(Ai, T, H, BT, r0 + 32, 0, b_20)
            _store16(Ai, T, H, BT, r0 + 32, 16, b_21)
            _store16(Ai, T, H, BT, r0 + 32, 32, b_22)
            _store16(Ai, T, H, BT, r0 + 48, 0, b_30)
            _store16(Ai, T, H, BT, r0 + 48, 16, b_31)
            _store16(Ai, T, H, BT, r0 + 48, 32, b_32)
            _store16(Ai, T, H, BT, r0 + 48, 48, b_33)


@triton.autotune(configs=_WARPS_SOLVE, key=["H", "BT"], cache_results=True)
@triton.jit
def gated_delta_rule_fwd_solve_kernel(A, Ai, T, H: tl.constexpr, BT: tl.constexpr):
    """Ai = (I + A)^{-1} per chunk, the diagonal blocks one after another (``_inv16``)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    base = (i_b.to(tl.int64) * T * H + i_h) * BT
    A, Ai = A + base, Ai + base
    r0 = i_t * BT
    b_00 = _inv16(A, T, H, BT, r0, 0)
    b_11, b_22, b_33 = b_00, b_00, b_00                  # (unused below BT = 32, 64)
    if BT >= 32:
        b_11 = _inv16(A, T, H, BT, r0 + 16, 16)
    if BT == 64:
        b_22 = _inv16(A, T, H, BT, r0 + 32, 32)
        b_33 = _inv16(A, T, H, BT, r0 + 48, 48)
    _merge(A, Ai, r0, T, H, BT, b_00, b_11, b_22, b_33)


@triton.jit
def _solve_in_scratch(A, Ai, r0, T, H: tl.constexpr, BT: tl.constexpr):
    """fwd_prep's Ai = (I + A)^{-1} of the chunk at row ``r0``, A read from the fp32 scratch this
    program wrote: all diagonal inverses at once (``_invert_diagonal``), written over A's diagonal
    blocks (no longer needed) and read back from L1 as [16, 16] blocks for ``_merge``."""
    b_X = _invert_diagonal(A, r0, T, H, BT)
    offs, mask = _diagonal_blocks(r0, T, H, BT)
    tl.debug_barrier()                                   # every thread has read A's diagonal
    tl.store(A + offs, b_X, mask=mask)
    tl.debug_barrier()                                   # the inverses are visible to every thread
    b_00 = _load16(A, T, H, BT, r0, 0)
    b_11, b_22, b_33 = b_00, b_00, b_00                  # (unused below BT = 32, 64)
    if BT >= 32:
        b_11 = _load16(A, T, H, BT, r0 + 16, 16)
    if BT == 64:
        b_22, b_33 = _load16(A, T, H, BT, r0 + 32, 32), _load16(A, T, H, BT, r0 + 48, 48)
    _merge(A, Ai, r0, T, H, BT, b_00, b_11, b_22, b_33)


@triton.jit
def _chunk_wu(k, v, b_beta, b_gam, b_Ai, w, u, bos, i_h, i_t, T, H: tl.constexpr, K: tl.constexpr,
              V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """W = Ai (b exp(gamma) K), U = Ai (b V) of chunk ``i_t``, stored in the dot dtype (w's)."""
    DT = w.dtype.element_ty
    for i_k in range(tl.cdiv(K, BK)):
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_w = tl.make_block_ptr(w + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_kb = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(tl.float32) * (b_beta * tl.exp(b_gam))[:, None]
        b_w = tl.dot(b_Ai, b_kb.to(DT), input_precision=PREC)                 # [BT, BK]
        tl.store(p_w, b_w.to(DT), boundary_check=(0, 1))
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_vb = tl.load(p_v, boundary_check=(0, 1), padding_option="zero").to(tl.float32) * b_beta[:, None]
        b_u = tl.dot(b_Ai, b_vb.to(DT), input_precision=PREC)                 # [BT, BV]
        tl.store(p_u, b_u.to(DT), boundary_check=(0, 1))


@triton.autotune(configs=_WARPS, key=["H", "K", "V", "BT"], cache_results=True,
                  prune_configs_by={"early_config_prune": prune_fp32_warps})
@triton.jit
def gated_delta_rule_fwd_prep_kernel(k, v, g, beta, gamma, A, Ai, w, u, T, H: tl.constexpr, K: tl.constexpr,
                                     V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                                     PREC: tl.constexpr):
    """gamma, A, Ai = (I + A)^{-1}, W and U of one chunk in one program. A goes through the fp32
    scratch ``A`` (the solve reads it block by block) and comes back from L1 / L2, as Ai does for
    the W, U dots; k is read from HBM once for K K^T and W."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T                                   # int64: B*T*H*K overflows int32
    b_A, b_gam, b_beta = _chunk_kkt(k, g, beta, gamma, bos, i_h, i_t, T, H, K, BT, BK, w.dtype.element_ty,
                                    PREC)
    base = (bos * H + i_h) * BT
    p_A = tl.make_block_ptr(A + base, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    tl.store(p_A, b_A, boundary_check=(0, 1))
    tl.debug_barrier()                                   # A complete before any thread reads it back
    _solve_in_scratch(A + base, Ai + base, i_t * BT, T, H, BT)
    tl.debug_barrier()
    p_Ai = tl.make_block_ptr(Ai + base, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    b_Ai = tl.load(p_Ai, boundary_check=(0, 1), padding_option="zero")                  # [BT, BT]
    _chunk_wu(k, v, b_beta, b_gam, b_Ai, w, u, bos, i_h, i_t, T, H, K, V, BT, BK, BV, PREC)


@triton.autotune(configs=_WARPS, key=["H", "K", "V", "BT"], cache_results=True,
                  prune_configs_by={"early_config_prune": prune_fp32_warps})
@triton.jit
def gated_delta_rule_fwd_wu_kernel(k, v, beta, gamma, Ai, w, u, T, H: tl.constexpr, K: tl.constexpr,
                                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                                   PREC: tl.constexpr):
    """W and U from a stored Ai and gamma: the three-launch forward's third, and the backward's recompute."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    p_b = tl.make_block_ptr(beta + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    p_Ai = tl.make_block_ptr(Ai + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    b_beta = tl.load(p_b, boundary_check=(0,), padding_option="zero").to(tl.float32)
    b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
    b_Ai = tl.load(p_Ai, boundary_check=(0, 1), padding_option="zero")                  # [BT, BT]
    _chunk_wu(k, v, b_beta, b_gam, b_Ai, w, u, bos, i_h, i_t, T, H, K, V, BT, BK, BV, PREC)


@triton.autotune(configs=_WARPS, key=["H", "K", "V", "BT"], cache_results=True,
                  prune_configs_by={"early_config_prune": prune_fp32_warps})
@triton.jit
def gated_delta_rule_bwd_wy_kernel(k, v, beta, gamma, Ai, dw, du, dk_in, dgam_in, dk, dv, dbeta, dg, T,
                                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                                   BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Backward of W = Ai (b e^gamma K), U = Ai (b V), Ai = (I + A)^{-1}: with dAi = dW (b e^gamma K)^T
    + dU (b V)^T, dA = -Ai^T dAi Ai^T (strictly lower); adds dk_in, dgam_in (from dqkwg) and turns
    dgamma into dg by a reverse cumsum inside the chunk. One K tile (BK >= K), V in BV tiles."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos = i_b.to(tl.int64) * T
    DT = Ai.dtype.element_ty
    o_t = tl.arange(0, BT)
    p_b = tl.make_block_ptr(beta + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    p_Ai = tl.make_block_ptr(Ai + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dw = tl.make_block_ptr(dw + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    b_beta = tl.load(p_b, boundary_check=(0,), padding_option="zero").to(tl.float32)
    b_gam = load_chunk_gamma(gamma, bos, i_h, i_t, T, H, BT)
    b_Ai = tl.load(p_Ai, boundary_check=(0, 1), padding_option="zero")                                 # [BT, BT]
    b_AiT = tl.trans(b_Ai)
    b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(tl.float32)                    # [BT, BK]
    b_bg = b_beta * tl.exp(b_gam)
    b_kbg = b_k * b_bg[:, None]
    b_dw = tl.load(p_dw, boundary_check=(0, 1), padding_option="zero").to(DT)
    b_dAi = tl.dot(b_dw, tl.trans(b_kbg.to(DT)), input_precision=PREC)          # [BT, BT]
    b_dAit = tl.dot(b_kbg.to(DT), tl.trans(b_dw), input_precision=PREC)         # dAi^T, own dot (below)
    b_dkbg = tl.dot(b_AiT, b_dw, input_precision=PREC)                          # [BT, BK]
    b_dk = b_dkbg * b_bg[:, None]
    b_dbeta = tl.sum(b_dkbg * b_k, 1) * tl.exp(b_gam)
    b_dgam = tl.sum(b_dk * b_k, 1)
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_du = tl.make_block_ptr(du + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dv = tl.make_block_ptr(dv + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero").to(tl.float32)                # [BT, BV]
        b_du = tl.load(p_du, boundary_check=(0, 1), padding_option="zero").to(DT)
        b_vb = (b_v * b_beta[:, None]).to(DT)
        b_dAi += tl.dot(b_du, tl.trans(b_vb), input_precision=PREC)
        b_dAit += tl.dot(b_vb, tl.trans(b_du), input_precision=PREC)
        b_dvb = tl.dot(b_AiT, b_du, input_precision=PREC)                       # [BT, BV]
        tl.store(p_dv, (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), boundary_check=(0, 1))
        b_dbeta += tl.sum(b_dvb * b_v, 1)
    m_A = o_t[:, None] > o_t[None, :]
    b_dA = tl.dot(b_AiT, tl.dot(b_dAi.to(DT), b_AiT, input_precision=PREC).to(DT), input_precision=PREC)
    # dA^T = Ai dAi^T Ai from its own dots: tl.trans of a dot accumulator fed to another dot is
    # miscompiled on Hopper by Triton 3.4 - 3.6 (fla-org/flash-linear-attention#640)
    b_dAt = tl.dot(tl.dot(b_Ai, b_dAit.to(DT), input_precision=PREC).to(DT), b_Ai, input_precision=PREC)
    b_D = tl.exp(tl.where(m_A, b_gam[:, None] - b_gam[None, :], float("-inf")))
    b_Dt = tl.exp(tl.where(o_t[None, :] > o_t[:, None], b_gam[None, :] - b_gam[:, None], float("-inf")))
    b_dAD = -b_dA * b_D                                                          # dA * D, strictly lower
    b_dADt = -b_dAt * b_Dt                                                       # its transpose
    b_G = tl.dot(b_k.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)        # K K^T
    b_dk += tl.dot(b_dAD.to(DT), b_k.to(DT), input_precision=PREC) * b_beta[:, None]
    b_dk += tl.dot(b_dADt.to(DT), (b_k * b_beta[:, None]).to(DT), input_precision=PREC)
    b_dAG = b_dAD * b_G
    b_dbeta += tl.sum(b_dAG, 1)
    b_dAA = b_dAG * b_beta[:, None]                                             # dA * A
    b_dgam += tl.sum(b_dAA, 1) - tl.sum(b_dAA, 0)
    p_dgi = tl.make_block_ptr(dgam_in + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    b_dgam += tl.load(p_dgi, boundary_check=(0,), padding_option="zero")
    # dg_s = sum_{r >= s} dgamma_r inside the chunk
    b_dg = tl.sum(tl.where(o_t[None, :] >= o_t[:, None], b_dgam[None, :], 0.), 1)
    p_dki = tl.make_block_ptr(dk_in + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dk = tl.make_block_ptr(dk + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    b_dk += tl.load(p_dki, boundary_check=(0, 1), padding_option="zero")
    tl.store(p_dk, b_dk.to(dk.dtype.element_ty), boundary_check=(0, 1))
    p_db = tl.make_block_ptr(dbeta + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    p_dg = tl.make_block_ptr(dg + bos * H + i_h, (T,), (H,), (i_t * BT,), (BT,), (0,))
    tl.store(p_db, b_dbeta.to(dbeta.dtype.element_ty), boundary_check=(0,))
    tl.store(p_dg, b_dg.to(dg.dtype.element_ty), boundary_check=(0,))
