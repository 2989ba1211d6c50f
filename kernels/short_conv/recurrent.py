"""One decode step of the causal depthwise short convolution in Triton.

    window = [state[:, 0], ..., state[:, W-2], x_t]       (state rounded to x's dtype)
    y_t = act(bias + sum_k w_k window[k]),  new_state = window[1:]

Per token and channel: reads x_t, W-1 state values and W weights, writes y_t and W-1 state
values; 2W FLOPs (+4 for silu). A decode step is launch-bound: one launch, grid
(B, C-blocks), each program reads its rolling buffer once and writes it once, so the update
may be in place (``out_state=state``): a program loads its whole [BC, W-1] slice before it
stores, and no two programs share a slice.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.short_conv.conv import _silu_flag, check_conv_inputs
from kernels.triton_utils import cdiv, next_power_of_2


@triton.jit
def short_conv_step_kernel(x, weight, bias, state, y, out_state, C,
                           s_xb, s_xc, s_wc, s_ww, s_sb, s_sc, s_sw, s_ob, s_oc, s_ow,
                           W: tl.constexpr, WP: tl.constexpr, BC: tl.constexpr,
                           SILU: tl.constexpr, HAS_BIAS: tl.constexpr):
    i_b, i_c = tl.program_id(0), tl.program_id(1)
    o_c = i_c * BC + tl.arange(0, BC)
    o_k = tl.arange(0, WP)
    m_c = o_c < C
    p_s = state + i_b.to(tl.int64) * s_sb + o_c[:, None] * s_sc
    b_x = tl.load(x + i_b.to(tl.int64) * s_xb + o_c * s_xc, mask=m_c, other=0.)  # [BC]
    # window[:, k] = state[:, k] for k < W-1, x_t at k = W-1; the shifted copy is window[:, k+1]
    b_win = tl.load(p_s + o_k[None, :] * s_sw, mask=m_c[:, None] & (o_k < W - 1)[None, :], other=0.)
    b_win = tl.where((o_k == W - 1)[None, :], b_x[:, None], b_win.to(b_x.dtype))  # [BC, WP]
    b_nxt = tl.load(p_s + (o_k + 1)[None, :] * s_sw, mask=m_c[:, None] & (o_k + 1 < W - 1)[None, :], other=0.)
    b_nxt = tl.where((o_k + 1 == W - 1)[None, :], b_x[:, None], b_nxt.to(b_x.dtype))  # [BC, WP]
    b_w = tl.load(weight + o_c[:, None] * s_wc + o_k[None, :] * s_ww, mask=m_c[:, None] & (o_k < W)[None, :],
                  other=0.).to(tl.float32)  # [BC, WP]
    b_y = tl.sum(b_w * b_win.to(tl.float32), axis=1)  # [BC]
    if HAS_BIAS:
        b_y += tl.load(bias + o_c, mask=m_c, other=0.).to(tl.float32)
    if SILU:
        b_y = b_y * tl.sigmoid(b_y)
    tl.store(y + i_b.to(tl.int64) * C + o_c, b_y.to(y.dtype.element_ty), mask=m_c)
    p_o = out_state + i_b.to(tl.int64) * s_ob + o_c[:, None] * s_oc + o_k[None, :] * s_ow
    tl.store(p_o, b_nxt.to(out_state.dtype.element_ty), mask=m_c[:, None] & (o_k < W - 1)[None, :])


def causal_conv1d_step_triton(x_t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              state: torch.Tensor, activation: str | None = "silu",
                              out_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_t [B, C]`` (any strides), ``weight [C, W]``, ``bias [C]`` or None, ``state [B, C, W-1]``
    -> ``(y_t [B, C] in x_t.dtype, new_state [B, C, W-1] in state's dtype)``. The new state is
    written into ``out_state`` when given (``state`` itself is allowed), else into a new tensor.
    Inference only: no autograd."""
    check_conv_inputs("causal_conv1d_step_triton", x_t, weight, bias, state, time_dim=False)
    if state is None:
        raise ValueError("causal_conv1d_step_triton: state is required (zeros at the start of a sequence)")
    silu = _silu_flag(activation)
    B, C = x_t.shape
    W = weight.shape[1]
    if out_state is None:
        out_state = torch.empty_like(state)
    elif out_state.shape != state.shape or out_state.dtype != state.dtype or out_state.device != state.device:
        raise ValueError(f"causal_conv1d_step_triton: out_state must match state ({tuple(state.shape)}, "
                         f"{state.dtype}, {state.device}); got {tuple(out_state.shape)}, {out_state.dtype}")
    y = torch.empty(B, C, device=x_t.device, dtype=x_t.dtype)
    BC = min(256, next_power_of_2(C))
    short_conv_step_kernel[(B, cdiv(C, BC))](
        x_t, weight, bias, state, y, out_state, C, *x_t.stride(), *weight.stride(), *state.stride(),
        *out_state.stride(), W=W, WP=next_power_of_2(W), BC=BC, SILU=silu, HAS_BIAS=bias is not None,
        num_warps=4)
    return y, out_state
