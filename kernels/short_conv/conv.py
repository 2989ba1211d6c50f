"""Causal depthwise short convolution in Triton: forward and backward over a whole segment.

Math (``naive.causal_conv1d``), with ``xt = cat(state, x)`` along time (``W-1 + T`` rows,
combined row ``u``; x row ``t`` is ``u = t + W-1``):

    z[t] = bias + sum_{i<W} w_i xt[t+i],      y[t] = act(z[t]),      new_state[k] = xt[T+k]
    dz[t] = dy[t] act'(z[t])                                          (silu recomputed, not stored)
    dxt[u] = sum_{j<W} w_j dz[u-j]  (+ dnew_state[u-T] for u >= T)    rows u < W-1 -> dstate
    dw_j = sum_{b,t} dz[t] xt[t+j],   dbias = sum_{b,t} dz[t]

Memory per token and channel (bf16, W=4): forward reads x and writes y, 4 bytes (the W-1 halo
rows of a [BT, BC] tile are re-read from L2, a (W-1)/BT overhead); backward reads x and dy and
writes dx, 6 bytes, plus the fp32 dweight/dbias partials, ``n_split * B * (W+1) * C * 4``
bytes (~2 MB at the bench shapes, <0.5% of the rest). FLOPs per token and channel: forward 2W
(+4 for silu); backward recomputes z at the W rows each dz feeds (2W^2 + W silu derivatives)
+ 2W for dx + 2W for dw.

Tiles: forward grid (T-blocks, C-blocks, B), one [BT, BC] tile of y per program, the W shifted
x tiles loaded from memory (row u < W-1 from ``state``). Backward grid (splits, C-blocks, B),
each program walks ``ROWS`` combined rows in [BT, BC] tiles and keeps fp32 partial sums of dw
and dbias in registers; a torch ``sum`` over the splits finishes them (no atomics, so the
weight gradient is bitwise reproducible). x may be any strided view (the mixers pass a slice
of the projection output): no copy is made.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import autotune_configs, cdiv, check_device, next_power_of_2

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _load_xt(x, state, i_b, v0, o_v, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
             W: tl.constexpr, HAS_STATE: tl.constexpr):
    """Rows ``o_v = v0 + arange`` of ``xt = cat(state, x)`` -> [len(o_v), BC] fp32, zero outside
    [0, T+W-1). State values are rounded to x's dtype first, as the reference concatenates in
    x's dtype. Only tiles starting below row W-1 touch the state (a scalar branch: the state's
    channel stride is W-1, so its loads are scalar and not worth issuing predicated-off)."""
    m_x = (o_v >= W - 1) & (o_v < T + W - 1)
    p_x = x + i_b.to(tl.int64) * s_xb + (o_v - (W - 1)).to(tl.int64)[:, None] * s_xt + o_c[None, :] * s_xc
    b_x = tl.load(p_x, mask=m_x[:, None] & m_c[None, :], other=0.)
    if HAS_STATE:  # noqa: SIM102 - a constexpr guard around a runtime branch
        if v0 < W - 1:
            # one [BC] vector per state row: a 2D tile of the [B, C, W-1] layout would pull every
            # x tile into its (row-major) register layout through shared memory
            for k in tl.static_range(W - 1):
                b_s = tl.load(state + i_b.to(tl.int64) * s_sb + o_c * s_sc + k * s_sw, mask=m_c, other=0.)
                b_x = tl.where((o_v == k)[:, None], b_s.to(b_x.dtype)[None, :], b_x)
    return b_x.to(tl.float32)


@triton.jit
def short_conv_fwd_kernel(x, weight, bias, state, y, new_state, T, C,
                          s_xb, s_xt, s_xc, s_wc, s_ww, s_sb, s_sc, s_sw, s_nb, s_nc, s_nw,
                          W: tl.constexpr, WS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                          SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr):
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = i_c * BC + tl.arange(0, BC)
    m_t, m_c = o_t < T, o_c < C
    b_z = tl.zeros([BT, BC], dtype=tl.float32)
    if HAS_BIAS:
        b_z += tl.load(bias + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
    for i in tl.static_range(W):
        b_w = tl.load(weight + o_c * s_wc + i * s_ww, mask=m_c, other=0.).to(tl.float32)  # [BC]
        # y row t reads xt row t + i; the first W-1 rows of the segment come from the state
        b_z += b_w[None, :] * _load_xt(x, state, i_b, i_t * BT + i, o_t + i, o_c, m_c, T, s_xb, s_xt, s_xc,
                                       s_sb, s_sc, s_sw, W, HAS_STATE)  # [BT, BC]
    if SILU:
        b_z = b_z * tl.sigmoid(b_z)
    p_y = y + (i_b.to(tl.int64) * T + o_t.to(tl.int64))[:, None] * C + o_c[None, :]
    tl.store(p_y, b_z.to(y.dtype.element_ty), mask=m_t[:, None] & m_c[None, :])
    if i_t == tl.num_programs(0) - 1:
        # new_state[k] = xt[T + k]: the last W-1 inputs, reaching into the state when T < W-1
        o_k = tl.arange(0, WS)
        b_s = _load_xt(x, state, i_b, T, T + o_k, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                       W, HAS_STATE)  # [WS, BC]
        p_n = new_state + i_b.to(tl.int64) * s_nb + o_c[None, :] * s_nc + o_k[:, None] * s_nw
        tl.store(p_n, b_s.to(new_state.dtype.element_ty), mask=(o_k < W - 1)[:, None] & m_c[None, :])


@triton.jit
def _dz_rows(dy, i_b, o_r, o_c, m_c, T, s_yb, s_yt, s_yc, b_bias, b_w0, b_w1, b_w2, b_w3, b_xa, b_xb, b_xc, b_xd,
             W: tl.constexpr, SILU: tl.constexpr):
    """dz = dy * act'(z) at rows ``o_r``, z rebuilt from the tiles ``xt[o_r + i]`` (a, b, c, d
    for i = 0..3; only the first W used) -> [BT, BC] fp32, zero at rows outside [0, T)."""
    b_z = b_bias[None, :] + b_w0[None, :] * b_xa + b_w1[None, :] * b_xb
    if W > 2:
        b_z += b_w2[None, :] * b_xc
    if W > 3:
        b_z += b_w3[None, :] * b_xd
    m_r = (o_r >= 0) & (o_r < T)
    p_dy = dy + i_b.to(tl.int64) * s_yb + o_r.to(tl.int64)[:, None] * s_yt + o_c[None, :] * s_yc
    b_dz = tl.load(p_dy, mask=m_r[:, None] & m_c[None, :], other=0.).to(tl.float32)
    if SILU:
        b_sig = tl.sigmoid(b_z)
        b_dz = b_dz * b_sig * (1. + b_z * (1. - b_sig))
    return b_dz


@triton.jit
def _bwd_tile(x, state, dy, dns, dx, dstate, i_b, u0, o_c, m_c, T, C,
              s_xb, s_xt, s_xc, s_sb, s_sc, s_sw, s_yb, s_yt, s_yc, s_nb, s_nc, s_nw, s_db, s_dc, s_dw,
              b_bias, b_w0, b_w1, b_w2, b_w3, b_db, b_dw0, b_dw1, b_dw2, b_dw3,
              W: tl.constexpr, BT: tl.constexpr, SILU: tl.constexpr, HAS_STATE: tl.constexpr):
    """dx (and dstate) for the combined rows [u0, u0 + BT); returns the updated dbias and dw_j
    partial sums. HAS_STATE: this tile reads and writes state rows (only the first tile does)."""
    o_u = u0 + tl.arange(0, BT)  # combined rows of xt: dxt[u] = sum_j w_j dz[u - j]
    # the 2W-1 distinct shifted tiles xt[u + d], d in [-(W-1), W-1], each loaded once; z at
    # rows u - j needs xt[u - j + i] (the first load reads HBM, the shifted ones hit L1/L2)
    b_x0 = _load_xt(x, state, i_b, u0, o_u, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw, W, HAS_STATE)
    b_xm1 = _load_xt(x, state, i_b, u0 - 1, o_u - 1, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                     W, HAS_STATE)
    b_xp1 = _load_xt(x, state, i_b, u0 + 1, o_u + 1, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                     W, HAS_STATE)
    b_xm2, b_xm3, b_xp2, b_xp3 = b_x0, b_x0, b_x0, b_x0  # placeholders, unused for small W
    if W > 2:
        b_xm2 = _load_xt(x, state, i_b, u0 - 2, o_u - 2, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                         W, HAS_STATE)
        b_xp2 = _load_xt(x, state, i_b, u0 + 2, o_u + 2, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                         W, HAS_STATE)
    if W > 3:
        b_xm3 = _load_xt(x, state, i_b, u0 - 3, o_u - 3, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                         W, HAS_STATE)
        b_xp3 = _load_xt(x, state, i_b, u0 + 3, o_u + 3, o_c, m_c, T, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                         W, HAS_STATE)
    # dz at rows u - j; dw_j = sum_r dz[r] xt[r + j] = sum_u dz[u - j] xt[u] (each r once)
    b_dz = _dz_rows(dy, i_b, o_u, o_c, m_c, T, s_yb, s_yt, s_yc, b_bias, b_w0, b_w1, b_w2, b_w3,
                    b_x0, b_xp1, b_xp2, b_xp3, W, SILU)  # [BT, BC], j = 0
    b_db += b_dz
    b_dw0 += b_dz * b_x0
    b_dxt = b_w0[None, :] * b_dz
    b_dz = _dz_rows(dy, i_b, o_u - 1, o_c, m_c, T, s_yb, s_yt, s_yc, b_bias, b_w0, b_w1, b_w2, b_w3,
                    b_xm1, b_x0, b_xp1, b_xp2, W, SILU)  # j = 1
    b_dw1 += b_dz * b_x0
    b_dxt += b_w1[None, :] * b_dz
    if W > 2:
        b_dz = _dz_rows(dy, i_b, o_u - 2, o_c, m_c, T, s_yb, s_yt, s_yc, b_bias, b_w0, b_w1, b_w2, b_w3,
                        b_xm2, b_xm1, b_x0, b_xp1, W, SILU)  # j = 2
        b_dw2 += b_dz * b_x0
        b_dxt += b_w2[None, :] * b_dz
    if W > 3:
        b_dz = _dz_rows(dy, i_b, o_u - 3, o_c, m_c, T, s_yb, s_yt, s_yc, b_bias, b_w0, b_w1, b_w2, b_w3,
                        b_xm3, b_xm2, b_xm1, b_x0, W, SILU)  # j = 3
        b_dw3 += b_dz * b_x0
        b_dxt += b_w3[None, :] * b_dz
    if u0 + BT > T:
        # the final state is xt[T..T+W-2]: its gradient flows straight back to those rows (a
        # branch: the [B, C, W-1] layout costs a shuffle through shared memory, last tile only)
        for k in tl.static_range(W - 1):
            b_dn = tl.load(dns + i_b.to(tl.int64) * s_nb + o_c * s_nc + k * s_nw, mask=m_c, other=0.)  # [BC]
            b_dxt += tl.where((o_u == T + k)[:, None], b_dn.to(tl.float32)[None, :], 0.)
    m_x = (o_u >= W - 1) & (o_u < T + W - 1)
    p_dx = dx + (i_b.to(tl.int64) * T + (o_u - (W - 1)).to(tl.int64))[:, None] * C + o_c[None, :]
    tl.store(p_dx, b_dxt.to(dx.dtype.element_ty), mask=m_x[:, None] & m_c[None, :])
    if HAS_STATE:
        m_s = (o_u >= 0) & (o_u < W - 1)
        p_ds = dstate + i_b.to(tl.int64) * s_db + o_c[None, :] * s_dc + o_u[:, None] * s_dw
        tl.store(p_ds, b_dxt.to(dstate.dtype.element_ty), mask=m_s[:, None] & m_c[None, :])
    return b_db, b_dw0, b_dw1, b_dw2, b_dw3


@triton.jit
def short_conv_bwd_kernel(x, weight, bias, state, dy, dns, dx, dstate, dw_part, db_part, T, C, ROWS,
                          s_xb, s_xt, s_xc, s_wc, s_ww, s_sb, s_sc, s_sw, s_yb, s_yt, s_yc,
                          s_nb, s_nc, s_nw, s_db, s_dc, s_dw,
                          W: tl.constexpr, WP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                          SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr):
    i_s, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    b_bias = tl.zeros([BC], dtype=tl.float32)
    if HAS_BIAS:
        b_bias = tl.load(bias + o_c, mask=m_c, other=0.).to(tl.float32)
    # w_i for i >= W load as 0 and are never used (the constexpr W guards below)
    b_w0 = tl.load(weight + o_c * s_wc, mask=m_c, other=0.).to(tl.float32)
    b_w1 = tl.load(weight + o_c * s_wc + s_ww, mask=m_c, other=0.).to(tl.float32)
    b_w2 = tl.load(weight + o_c * s_wc + 2 * s_ww, mask=m_c & (W > 2), other=0.).to(tl.float32)
    b_w3 = tl.load(weight + o_c * s_wc + 3 * s_ww, mask=m_c & (W > 3), other=0.).to(tl.float32)
    # fp32 partial sums of dbias and dw_j, kept per element ([BT, BC]: no cross-warp reduction
    # and barrier per tile) and reduced over the rows once at the end
    b_db = tl.zeros([BT, BC], dtype=tl.float32)
    b_dw0, b_dw1, b_dw2, b_dw3 = b_db, b_db, b_db, b_db
    u_beg = i_s * ROWS
    u_end = tl.minimum(u_beg + ROWS, T + W - 1)
    if HAS_STATE:  # noqa: SIM102 - a constexpr guard around a runtime branch
        # only the first tile touches the state (BT >= 2(W-1)): peel it, so the steady-state loop
        # carries no scalar state loads and no branches
        if i_s == 0:
            b_db, b_dw0, b_dw1, b_dw2, b_dw3 = _bwd_tile(
                x, state, dy, dns, dx, dstate, i_b, u_beg, o_c, m_c, T, C, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
                s_yb, s_yt, s_yc, s_nb, s_nc, s_nw, s_db, s_dc, s_dw, b_bias, b_w0, b_w1, b_w2, b_w3,
                b_db, b_dw0, b_dw1, b_dw2, b_dw3, W, BT, SILU, True)
            u_beg += BT
    for u0 in range(u_beg, u_end, BT):
        b_db, b_dw0, b_dw1, b_dw2, b_dw3 = _bwd_tile(
            x, state, dy, dns, dx, dstate, i_b, u0, o_c, m_c, T, C, s_xb, s_xt, s_xc, s_sb, s_sc, s_sw,
            s_yb, s_yt, s_yc, s_nb, s_nc, s_nw, s_db, s_dc, s_dw, b_bias, b_w0, b_w1, b_w2, b_w3,
            b_db, b_dw0, b_dw1, b_dw2, b_dw3, W, BT, SILU, False)
    i_p = (i_b * tl.num_programs(0) + i_s).to(tl.int64)  # partial-sum row of this program
    p_pw = dw_part + i_p * WP * C + o_c
    tl.store(p_pw, tl.sum(b_dw0, axis=0), mask=m_c)
    tl.store(p_pw + C, tl.sum(b_dw1, axis=0), mask=m_c)
    if W > 2:
        tl.store(p_pw + 2 * C, tl.sum(b_dw2, axis=0), mask=m_c)
    if W > 3:
        tl.store(p_pw + 3 * C, tl.sum(b_dw3, axis=0), mask=m_c)
    tl.store(db_part + i_p * C + o_c, tl.sum(b_db, axis=0), mask=m_c)


_FWD_CONFIGS = [triton.Config({"BT": bt, "BC": bc}, num_warps=nw)
                for bt, bc, nw in [(32, 128, 4), (16, 256, 4), (64, 64, 4), (32, 256, 8)]]
_BWD_CONFIGS = [triton.Config({"BT": bt, "BC": bc}, num_warps=nw)
                for bt, bc, nw in [(16, 64, 4), (16, 128, 8), (32, 64, 8), (8, 128, 4)]]
_fwd_tuned = triton.autotune(autotune_configs(_FWD_CONFIGS), key=["C", "W", "SILU"], cache_results=True)(short_conv_fwd_kernel)
_bwd_tuned = triton.autotune(autotune_configs(_BWD_CONFIGS), key=["C", "W", "SILU"], cache_results=True)(short_conv_bwd_kernel)

_BWD_ROW_QUANTUM = 128  # split lengths are multiples of every BT in _BWD_CONFIGS
_BWD_TARGET_PROGRAMS = 1024  # ~8 resident programs per H100 SM at BC = 128


def _silu_flag(activation: str | None) -> bool:
    if activation in ("silu", "swish"):
        return True
    if activation is None:
        return False
    raise ValueError(f"unknown activation {activation!r}; valid: 'silu', None")


def check_conv_inputs(op: str, x, weight, bias, state, time_dim: bool = True) -> None:
    """One clear error per bad input: ranks, sizes, dtypes, width, device."""
    check_device(op, x, weight, bias, state)
    want = "[B, T, C]" if time_dim else "[B, C]"
    if x.dim() != (3 if time_dim else 2):
        raise ValueError(f"{op}: x must be {want}, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{op}: x is {x.dtype}; the Triton kernel takes fp16, bf16 or fp32 "
                        f"(use kernels.short_conv.naive for fp64)")
    B, C = x.shape[0], x.shape[-1]
    if weight.dim() != 2 or weight.shape[0] != C or not 2 <= weight.shape[1] <= 4:
        raise ValueError(f"{op}: weight must be [C={C}, W] with 2 <= W <= 4, got {tuple(weight.shape)}")
    W = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"{op}: bias must be [C={C}], got {tuple(bias.shape)}")
    if state is not None and tuple(state.shape) != (B, C, W - 1):
        raise ValueError(f"{op}: state must be [B, C, W-1] = {(B, C, W - 1)}, got {tuple(state.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("state", state)):
        if t is not None and t.dtype not in _DTYPES:
            raise TypeError(f"{op}: {name} is {t.dtype}; use fp16, bf16 or fp32")


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def short_conv_fwd(x, weight, bias, state, silu: bool, state_dtype: torch.dtype, blocks=None):
    """Launch the forward: ``(y [B, T, C] in x.dtype, new_state [B, C, W-1] in state_dtype)``.
    ``blocks=(BT, BC, num_warps)`` bypasses the autotuner (tests use it to vary the tiling)."""
    B, T, C = x.shape
    W = weight.shape[1]
    y = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
    new_state = torch.empty(B, C, W - 1, device=x.device, dtype=state_dtype)
    args = (x, weight, bias, state, y, new_state, T, C, *x.stride(), *weight.stride(), *_strides3(state),
            *new_state.stride())
    meta = {"W": W, "WS": next_power_of_2(W - 1), "SILU": silu, "HAS_BIAS": bias is not None,
            "HAS_STATE": state is not None}
    if blocks is None:
        grid = lambda m: (cdiv(T, m["BT"]), cdiv(C, m["BC"]), B)
        _fwd_tuned[grid](*args, **meta)
    else:
        bt, bc, nw = blocks
        short_conv_fwd_kernel[(cdiv(T, bt), cdiv(C, bc), B)](*args, **meta, BT=bt, BC=bc,
                                                                             num_warps=nw)
    return y, new_state


def short_conv_bwd(x, weight, bias, state, dy, dns, silu: bool, blocks=None, rows=None):
    """Launch the backward: ``(dx, dweight, dbias or None, dstate or None)``, each in its input's
    dtype. ``rows`` (a multiple of BT) is the number of combined rows one program walks."""
    B, T, C = x.shape
    W = weight.shape[1]
    U = T + W - 1  # combined rows: W-1 of state, T of x
    if rows is None:
        per_b = max(1, _BWD_TARGET_PROGRAMS // (B * cdiv(C, 128)))
        rows = cdiv(cdiv(U, per_b), _BWD_ROW_QUANTUM) * _BWD_ROW_QUANTUM
    n_split = cdiv(U, rows)
    WP = next_power_of_2(W)
    dx = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
    dstate = torch.empty_like(state) if state is not None else None
    dw_part = torch.empty(B * n_split, WP, C, device=x.device, dtype=torch.float32)
    db_part = torch.empty(B * n_split, C, device=x.device, dtype=torch.float32)
    args = (x, weight, bias, state, dy, dns, dx, dstate, dw_part, db_part, T, C, rows,
            *x.stride(), *weight.stride(), *_strides3(state), *dy.stride(), *dns.stride(), *_strides3(dstate))
    meta = {"W": W, "WP": WP, "SILU": silu, "HAS_BIAS": bias is not None, "HAS_STATE": state is not None}
    if blocks is None:
        _bwd_tuned[lambda m: (n_split, cdiv(C, m["BC"]), B)](*args, **meta)
    else:
        bt, bc, nw = blocks
        assert rows % bt == 0 and bt >= 2 * (W - 1), "rows must be a multiple of BT, and BT >= 2(W-1)"
        short_conv_bwd_kernel[(n_split, cdiv(C, bc), B)](*args, **meta, BT=bt, BC=bc, num_warps=nw)
    dweight = dw_part[:, :W].sum(0).t().to(weight.dtype)  # [C, W]; torch's sum is deterministic
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dweight, dbias, dstate


class ShortConvFunction(torch.autograd.Function):
    """``(x, weight, bias, state) -> (y, new_state)`` with a Triton backward (silu recomputed)."""

    @staticmethod
    def forward(ctx, x, weight, bias, state, silu, blocks):
        out_dtype = state.dtype if state is not None else x.dtype
        y, new_state = short_conv_fwd(x, weight, bias, state, silu, out_dtype, blocks and blocks[:3])
        ctx.save_for_backward(x, weight, bias, state)
        ctx.silu, ctx.blocks = silu, blocks
        return y, new_state

    @staticmethod
    def backward(ctx, dy, dns):
        x, weight, bias, state = ctx.saved_tensors
        bwd_blocks, rows = ctx.blocks[3:5] if ctx.blocks is not None else (None, None)
        dx, dw, db, ds = short_conv_bwd(x, weight, bias, state, dy, dns, ctx.silu, bwd_blocks, rows)
        return dx, dw, db, ds, None, None


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         state: torch.Tensor | None = None, activation: str | None = "silu",
                         _blocks: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, T, C]`` (any strides), ``weight [C, W]`` (2 <= W <= 4), ``bias [C]`` or None,
    ``state [B, C, W-1]`` or None (zeros) -> ``(y [B, T, C] in x.dtype, new_state [B, C, W-1]``
    in state's dtype, x's when state is None). Differentiable in x, weight, bias and state.
    ``_blocks=(fwd (BT, BC, warps), bwd (BT, BC, warps), rows)`` is for tests: fixed tilings."""
    check_conv_inputs("causal_conv1d_triton", x, weight, bias, state)
    silu = _silu_flag(activation)
    if x.shape[1] == 0:
        raise ValueError("causal_conv1d_triton: T = 0; pass at least one token")
    blocks = None if _blocks is None else (*_blocks[0], _blocks[1], _blocks[2])
    return ShortConvFunction.apply(x, weight, bias, state, silu, blocks)
