"""Block sizes shared by the gated delta rule kernels, and the autotune pruning that keeps them safe.

Triton 3.6 on Hopper (sm_90) miscompiles kernels that hold two or more ``tl.dot`` when a dot
dimension is 16 or 32: an illegal shared-memory access or silently wrong tiles, most often under
repeated launches such as an autotune benchmark (triton-lang/triton#10486, #10573, #11366; helion
works around it the same way). So on a GPU every K / V tile is at least 64 wide (a head dim below
64 is zero-padded by the block pointers' boundary checks: same numerics, some wasted lanes). The
interpreter has no such bug, and there small tiles keep the CPU tests fast.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_utils import interpreting, next_power_of_2

MIN_DOT = 16 if interpreting() else 64


def dot_block(n: int) -> int:
    """The tile for a head dim of ``n``: a power of two >= n, never below ``MIN_DOT``."""
    return max(MIN_DOT, next_power_of_2(n))


def prune_bv(configs, named_args, **kwargs):
    """Autotune pruning: drop configs whose V tile is wider than the (padded) head dim needs."""
    widest = dot_block(named_args["V"])
    kept = [c for c in configs if c.kwargs.get("BV", 0) <= widest]
    return kept or configs[:1]


def prune_fp32_warps(configs, named_args, **kwargs):
    """fp32 inputs ("ieee" dots: no tensor cores) compile 3-5x slower at 4 warps than at 8
    (bwd_wy 121 s against 26 s, `python -m kernels.sm90_check gated_delta_rule --dtype fp32`),
    and fp32 is the checking path, not the fast one: it keeps the 8-warp configs alone."""
    if named_args.get("PREC", kwargs.get("PREC")) != "ieee":
        return configs
    return [c for c in configs if c.num_warps == 8] or configs[:1]


def state_pass_stages(named_args) -> int:
    """Pipeline depth of the state passes (chunk_h). Each stage holds one chunk's [BT, K] tiles of
    the K-wide inputs (fwd_h: k, w; bwd_dh: q, k, w), in their own dtypes. Measured for sm_90 by
    `python -m kernels.sm90_check gated_delta_rule`: bwd_dh at K = 128 takes 181 KB with 3 stages
    in bf16 but 246 KB with q, k in fp32 and 279 KB all fp32; at K = 256, 2 stages take 221 KB in
    bf16 and 287 KB with fp32 q, k (the H100's limit is 227 KB). So: up to 768 bytes of K-wide
    inputs per row, 3 stages; up to 1536, 2; beyond, 1."""
    row = _k_row_bytes(named_args)
    return 3 if row <= 768 else 2 if row <= 1536 else 1


def _k_row_bytes(named_args) -> int:
    """Bytes per token row of the K-wide inputs a walk loads (q, k, w, those it has), in their dtypes."""
    return named_args["K"] * sum(named_args[n].element_size() for n in ("q", "k", "w") if n in named_args)


def _with_stages(configs, stages: int) -> list:
    return [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages) for c in configs]


def prune_bv_fp32(configs, named_args, **kwargs):
    """``prune_bv``, then ``prune_fp32_warps``."""
    return prune_fp32_warps(prune_bv(configs, named_args), named_args, **kwargs)


def prune_state_pass(configs, named_args, **kwargs):
    """``prune_bv_fp32``, at the pipeline depth ``state_pass_stages``."""
    return _with_stages(prune_bv_fp32(configs, named_args, **kwargs), state_pass_stages(named_args))


def prune_fused_walk(configs, named_args, **kwargs):
    """``prune_bv_fp32`` with fwd_ho's pipeline depth: it holds bwd_dh's K-wide q, k, w plus the
    [BT, BT] scores, so it takes ~50 KB more than the state passes (sm90_check: 189 KB at K = 128,
    bf16, 3 stages; 246 KB at K = 256, bf16, 2 stages, over the H100's 227 KB). Up to 768 bytes of
    K-wide inputs per row, 3 stages; up to 1280 (q, k fp32 and w bf16 at K = 128), 2; beyond, 1."""
    row = _k_row_bytes(named_args)
    stages = 3 if row <= 768 else 2 if row <= 1280 else 1
    return _with_stages(prune_bv_fp32(configs, named_args, **kwargs), stages)


def prune_dqkwg(configs, named_args, **kwargs):
    """``prune_bv_fp32``; one pipeline stage where the [BV, K] tiles of h and dh are wide: bwd_dqkwg
    at three stages takes 180 KB at K = 256 in bf16 and 197 KB at K = 128 in fp32, but took 360 KB
    at K = 256 in fp32 (sm90_check), over the H100's 227 KB (164 KB at one stage)."""
    kept = prune_bv_fp32(configs, named_args, **kwargs)
    return kept if named_args["K"] * named_args["h"].element_size() <= 512 else _with_stages(kept, 1)


@triton.jit
def load_chunk_gamma(gamma, bos, i_h, i_t, T, H: tl.constexpr, BT: tl.constexpr):
    """``gamma`` (the in-chunk cumulative log decay, [B, T, H] fp32) over chunk ``i_t``, as [BT].

    Rows past T repeat the chunk's last gamma instead of reading as 0: gamma only falls along a
    chunk, so every causal exp(gamma_r - gamma_j), r >= j, then stays <= 1. A zero there makes
    exp(0 - gamma_j) overflow to inf once a chunk's decays sum below -88 (T not a multiple of the
    chunk, strong gates), and inf * 0 in a padded row turns the whole tile NaN."""
    rows = tl.minimum(i_t * BT + tl.arange(0, BT), T - 1)
    return tl.load(gamma + (bos + rows) * H + i_h)


@triton.jit
def causal_decay(b_gam, BT: tl.constexpr):
    """[BT, BT] exp(gamma_r - gamma_j) on and below the diagonal, 0 above (never exp of > 0)."""
    o_t = tl.arange(0, BT)
    return tl.exp(tl.where(o_t[:, None] >= o_t[None, :], b_gam[:, None] - b_gam[None, :], float("-inf")))


@triton.jit
def initial_state_tile(h0, i_bh, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       USE_H0: tl.constexpr):
    """The [BK, BV] fp32 state tile a forward walk starts from: h0's tile, or zeros."""
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        p_h0 = tl.make_block_ptr(h0 + i_bh.to(tl.int64) * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        b_h += tl.load(p_h0, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    return b_h
