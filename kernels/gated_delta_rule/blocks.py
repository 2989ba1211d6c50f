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

from kernels.triton_utils import interpreting

MIN_DOT = 16 if interpreting() else 64


def dot_block(n: int) -> int:
    """The tile for a head dim of ``n``: a power of two >= n, never below ``MIN_DOT``."""
    return max(MIN_DOT, triton.next_power_of_2(n))


def prune_bv(configs, named_args, **kwargs):
    """Autotune pruning: drop configs whose V tile is wider than the (padded) head dim needs."""
    widest = dot_block(named_args["V"])
    kept = [c for c in configs if c.kwargs.get("BV", 0) <= widest]
    return kept or configs[:1]


def prune_state_pass(configs, named_args, **kwargs):
    """``prune_bv``, then the pipeline depth of the state passes (chunk_h): their loop loads
    [BT, K] tiles of k, w (and q) per stage, so at K = 256 three stages need 254-328 KB of shared
    memory, over the H100's 227 KB (``python -m kernels.sm90_check gated_delta_rule --K 256``);
    two stages need 180-221 KB. K <= 128 keeps the three-stage configs."""
    stages = 3 if named_args["K"] <= 128 else 2
    kept = [c for c in prune_bv(configs, named_args) if c.num_stages == stages]
    return kept or configs[:1]


@triton.jit
def load_chunk_gamma(gamma, bos, i_h, i_t, T, H: tl.constexpr, BT: tl.constexpr):
    """``gamma`` (the in-chunk cumulative log decay, [B, T, H] fp32) over chunk ``i_t``, as [BT].

    Rows past T repeat the chunk's last gamma instead of reading as 0: gamma only falls along a
    chunk, so every causal exp(gamma_r - gamma_j), r >= j, then stays <= 1. A zero there makes
    exp(0 - gamma_j) overflow to inf once a chunk's decays sum below -88 (T not a multiple of the
    chunk, strong gates), and inf * 0 in a padded row turns the whole tile NaN."""
    rows = tl.minimum(i_t * BT + tl.arange(0, BT), T - 1)
    return tl.load(gamma + (bos + rows) * H + i_h)
