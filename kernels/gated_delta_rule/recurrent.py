"""Token-by-token gated delta rule in Triton: inference and short prefill (forward only), and the
one-token decode step. One program per (V tile, batch * head) keeps the [K, BV] state tile in
fp32 registers across the token loop, so the state is read once and written once:

    h <- exp(g_t) h;  u = beta_t (v_t - h^T k_t);  h <- h + k_t u^T;  o_t = h^T (scale q_t)

HBM per token and head (i = input bytes): reads 2 K i + V i + 2 scalars, writes V i, plus the
state 2 K V * 4 bytes once per call (the whole cost of a decode step). FLOPs per token and head:
~7 K V on CUDA cores (no matmul shape to feed tensor cores).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.gated_delta_rule.chunk import INPUT_DTYPES, MAX_KEY_DIM, check_inputs
from kernels.triton_utils import cdiv, check_device, launch_ready, next_power_of_2


@triton.jit
def gated_delta_rule_fwd_recurrent_kernel(q, k, v, g, beta, o, h0, ht, scale, T, H: tl.constexpr,
                                          K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                          BV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr):
    """h0 may alias ht (in-place decode): each program reads its tile before the loop, writes after."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)                                   # [BK, BV] state tile
    p_h = i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        b_h += tl.load(h0 + p_h, mask=m_h, other=0.).to(tl.float32)
    bos = i_b.to(tl.int64) * T
    for t in range(T):
        i_tok = (bos + t) * H + i_h                                              # int64 token-head row
        b_q = tl.load(q + i_tok * K + o_k, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(k + i_tok * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + i_tok * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_g = tl.load(g + i_tok).to(tl.float32)
        b_beta = tl.load(beta + i_tok).to(tl.float32)
        b_h *= tl.exp(b_g)
        b_u = b_beta * (b_v - tl.sum(b_h * b_k[:, None], 0))                    # [BV]
        b_h += b_k[:, None] * b_u[None, :]
        b_o = tl.sum(b_h * b_q[:, None], 0)                                       # [BV]
        tl.store(o + i_tok * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + p_h, b_h.to(ht.dtype.element_ty), mask=m_h)


def _launch(q, k, v, g, beta, scale, h0, ht, T):
    """``T`` tokens of ``q, k [B, T, H, K]``, ``v [B, T, H, V]`` (or ``[B, H, .]`` at T = 1: the same
    memory), contiguous; returns ``o`` shaped like ``v``."""
    B, (H, K), V = q.shape[0], q.shape[-2:], v.shape[-1]
    o = torch.empty_like(v)
    BK = max(16, next_power_of_2(K))
    # enough programs to fill the GPU at decode (B*H small) without spilling the [BK, BV] tile
    BV = min(max(16, next_power_of_2(V)), 64 if BK <= 128 else 32)
    while BV > 16 and B * H * cdiv(V, BV) < 264:
        BV //= 2
    grid = (cdiv(V, BV), B * H)
    gated_delta_rule_fwd_recurrent_kernel[grid](q, k, v, g, beta, o, h0, ht, scale, T, H, K, V, BK, BV,
                                                USE_H0=h0 is not None, STORE_HT=ht is not None,
                                                num_warps=4 if BK * BV >= 4096 else 2)
    return o


def fused_recurrent_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                     scale: float | None = None, initial_state: Tensor | None = None,
                                     output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Forward only. Shapes as ``chunk_gated_delta_rule``; returns ``(o [B, T, H, V] in v's dtype,
    final state [B, H, K, V] fp32 or None)``."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state)):
        raise RuntimeError("fused_recurrent_gated_delta_rule is forward only (inference / short prefill); an input "
                           "requires grad: use chunk_gated_delta_rule for training, or call under torch.no_grad()")
    check_inputs("fused_recurrent_gated_delta_rule", q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
    h0 = initial_state.contiguous() if initial_state is not None else None
    ht = torch.empty(B, H, K, v.shape[-1], device=v.device, dtype=torch.float32) if output_final_state else None
    if T == 0:
        if ht is not None:
            ht.copy_(h0 if h0 is not None else torch.zeros_like(ht))
        return v.new_zeros(B, 0, H, v.shape[-1]), ht
    o = _launch(q, k, v, g, beta, scale, h0, ht, T)
    return o, ht


def fused_gated_delta_rule_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                                scale: float | None = None, out_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: ``q, k: [B, H, K]``, ``v: [B, H, V]``, ``g, beta: [B, H]``, ``state: [B, H, K, V]``
    -> ``(o [B, H, V] in v's dtype, new state)``. The state is read once and written once, into
    ``out_state`` when given (``state`` itself is fine: in place), else into a fresh fp32 tensor.
    Inputs the decode loop passes (``_launchable``) go straight to the launch: at small batch a
    step is bound by host time."""
    if not _launchable(q, k, v, g, beta, state, out_state):
        q, k, v, g, beta, state = _checked(q, k, v, g, beta, state, out_state)
    B, H, K = q.shape
    if out_state is None:
        out_state = torch.empty(B, H, K, v.shape[-1], device=state.device, dtype=torch.float32)
    scale = K ** -0.5 if scale is None else float(scale)
    return _launch(q, k, v, g, beta, scale, state, out_state, 1), out_state


def _launchable(q, k, v, g, beta, state, out_state) -> bool:
    """True for what the decode loop passes: contiguous inputs of the step's shapes and the kernels'
    dtypes on one device, an fp32 state, ``out_state`` None or the state itself. Anything else takes
    ``_checked``, whose errors name the fix."""
    if q.dim() != 3 or v.dim() != 3 or (out_state is not None and out_state is not state):
        return False
    (B, H, K), V = q.shape, v.shape[-1]
    return K <= MAX_KEY_DIM and state.dtype == torch.float32 \
        and all(t.dtype in INPUT_DTYPES for t in (q, k, v, g, beta)) \
        and launch_ready((q, (B, H, K)), (k, (B, H, K)), (v, (B, H, V)), (g, (B, H)), (beta, (B, H)),
                         (state, (B, H, K, V)))


def _checked(q, k, v, g, beta, state, out_state):
    """The inputs ``_launchable`` turned away: one clear error for a bad one, contiguous copies of
    the rest."""
    op = "fused_gated_delta_rule_step"
    check_device(op, q, k, v, g, beta, state, out_state)
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"{op}: expected q, k [B, H, K] and v [B, H, V]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, H, K = q.shape
    V = v.shape[-1]
    if state.shape != (B, H, K, V):
        raise ValueError(f"{op}: state must be [B, H, K, V] = {(B, H, K, V)}; got {tuple(state.shape)}")
    if out_state is not None and (out_state.shape != state.shape or not out_state.is_contiguous()):
        raise ValueError(f"{op}: out_state must be a contiguous [B, H, K, V] tensor like state")
    check_inputs(op, q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], state)
    return tuple(t.contiguous() for t in (q, k, v, g, beta, state))
