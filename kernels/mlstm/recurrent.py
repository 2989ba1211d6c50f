"""mLSTM inference in Triton: ``fused_recurrent_mlstm`` (a whole sequence, token by token, the
state held in registers) and ``fused_mlstm_step`` (one token, decoding). Forward only.

Per token and head the recurrence does ``~6 K V`` FLOPs (decay + write of C, ``C^T q``); it is
bound by memory: the step reads and writes the fp32 state once, ``8 (K V + K) + 8`` bytes, plus
``2 (2K + V)`` of q, k, v and ``2 V`` of h. ``fused_recurrent_mlstm`` moves the state once per
sequence, but runs T dependent steps: latency-bound, for short prompts and tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mlstm.chunk_fwd import _logsigmoid
from kernels.triton_utils import autotune_configs, cdiv, check_device, launch_ready, next_power_of_2

MLSTMState = tuple[Tensor, Tensor, Tensor]


@triton.jit
def _gate_step(i, f, o_g, b_m):
    """New stabiliser and the two gate factors (both exps of non-positive arguments)."""
    b_lf = _logsigmoid(tl.load(f + o_g).to(tl.float32))
    b_i = tl.load(i + o_g).to(tl.float32)
    b_mn = tl.maximum(b_lf + b_m, b_i)
    return b_mn, tl.exp(b_lf + b_m - b_mn), tl.exp(b_i - b_mn)


# restore_value: autotuning runs the kernel several times, and out_state may alias the state.
# fused_mlstm_step keeps each key's tuned config itself (_STEP_CONFIGS) and launches it directly
# after the first call: the autotuner rebuilds its key, a str per tensor dtype, on every call (~6.6
# us of a decode step's host time on a 2-core CPU; python -m kernels.step_host leaves it out).
@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=w) for w in (4, 2, 8)]),
                 key=["K", "V", "BV"], cache_results=True, restore_value=["C_out", "n_out", "m_out"])
@triton.jit
def mlstm_step_kernel(q, k, v, i, f, C, n, m, h, C_out, n_out, m_out, scale, eps, NSPLIT,
                      K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One token, grid ``[NSPLIT, B*H]``: ``q, k [B*H, K]``, ``v [B*H, V]``, ``i, f [B*H]``; the
    state read once and written once. Program s takes the value blocks s, s + NSPLIT, ...; every
    program reads all of ``n``, so ``*_out`` may alias the input only with NSPLIT = 1 (one program
    owns a head's whole state)."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_q = tl.load(q + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32) * scale   # [BK]
    b_k = tl.load(k + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_mn, b_fa, b_ia = _gate_step(i, f, i_bh, tl.load(m + i_bh))
    b_n = b_fa * tl.load(n + i_bh * K + o_k, mask=m_k, other=0.0) + b_ia * b_k
    b_d = tl.maximum(tl.abs(tl.sum(b_q * b_n, 0)), tl.exp(-b_mn)) + eps
    for i_v in range(i_s, tl.cdiv(V, BV), NSPLIT):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        o_kv = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_v = tl.load(v + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)     # [BV]
        b_C = b_fa * tl.load(C + o_kv, mask=m_kv, other=0.0) + b_ia * b_k[:, None] * b_v[None, :]
        tl.store(C_out + o_kv, b_C, mask=m_kv)
        b_h = tl.sum(b_q[:, None] * b_C, 0) / b_d                                  # [BV]
        tl.store(h + i_bh * V + o_v, b_h.to(h.dtype.element_ty), mask=m_v)
    if i_s == 0:
        tl.store(n_out + i_bh * K + o_k, b_n, mask=m_k)
        tl.store(m_out + i_bh, b_mn)


@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=w) for w in (4, 2, 8)]),
                 key=["K", "V", "BV"], cache_results=True)
@triton.jit
def mlstm_recurrent_kernel(q, k, v, i, f, C0, n0, m0, h, CT, nT, mT, scale, eps, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                           BV: tl.constexpr, HAS_INIT: tl.constexpr):
    """Grid ``[V / BV, B*H]``: the state tile ``C [BK, BV]`` stays in registers over all T tokens;
    every program keeps its own copy of ``n`` (the denominator needs all of it)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    o_kv = i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    if HAS_INIT:
        b_C = tl.load(C0 + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_n = tl.load(n0 + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_m = tl.load(m0 + i_bh).to(tl.float32)
    else:
        b_C = tl.zeros([BK, BV], dtype=tl.float32)
        b_n = tl.zeros([BK], dtype=tl.float32)
        b_m = tl.full([], 0.0, tl.float32)
    for t in range(T):
        o_tok = (i_b.to(tl.int64) * T + t) * H + i_h                 # [B, T, H] index
        b_q = tl.load(q + o_tok * K + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + o_tok * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + o_tok * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_m, b_fa, b_ia = _gate_step(i, f, o_tok, b_m)
        b_C = b_fa * b_C + b_ia * b_k[:, None] * b_v[None, :]
        b_n = b_fa * b_n + b_ia * b_k
        b_d = tl.maximum(tl.abs(tl.sum(b_q * b_n, 0)), tl.exp(-b_m)) + eps
        b_h = tl.sum(b_q[:, None] * b_C, 0) / b_d
        tl.store(h + o_tok * V + o_v, b_h.to(h.dtype.element_ty), mask=m_v)
    tl.store(CT + o_kv, b_C, mask=m_kv)
    if i_v == 0:
        tl.store(nT + i_bh * K + o_k, b_n, mask=m_k)
        tl.store(mT + i_bh, b_m)


_STEP_CONFIGS: dict[tuple, dict] = {}    # key -> the tuned config's launch options


def _bk_bv(K: int, V: int, bv_max: int) -> tuple[int, int]:
    BK = next_power_of_2(K)
    return BK, max(16, min(bv_max, next_power_of_2(V), 4096 // BK))


def _check_no_grad(op: str, *tensors):
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op} is forward only (inference): an input requires grad; use "
                           f"kernels.mlstm.chunk.chunk_mlstm for training, or wrap the call in "
                           f"torch.no_grad()")


def fused_recurrent_mlstm(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                          scale: float | None = None, eps: float = 1e-6,
                          initial_state: MLSTMState | None = None,
                          output_final_state: bool = True) -> tuple[Tensor, MLSTMState | None]:
    """``naive_recurrent_mlstm``'s arguments and results, forward only: ``q, k [B, T, H, K]``,
    ``v [B, T, H, V]``, ``i, f [B, T, H]`` -> ``(h [B, T, H, V], (C, n, m) fp32 or None)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or i.shape != q.shape[:3] or f.shape != i.shape:
        raise ValueError(f"fused_recurrent_mlstm: need q, k [B, T, H, K], v [B, T, H, V], i, f "
                         f"[B, T, H]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}, "
                         f"{tuple(i.shape)}, {tuple(f.shape)}")
    _check_no_grad("fused_recurrent_mlstm", q, k, v, i, f, *(initial_state or ()))
    check_device("fused_recurrent_mlstm", q, k, v, i, f, *(initial_state or ()))
    scale = K ** -0.5 if scale is None else scale
    q, k, v, i, f = (t.contiguous() for t in (q, k, v, i, f))
    BK, BV = _bk_bv(K, V, 64)
    h = torch.empty_like(v)
    CT = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    nT = torch.empty(B, H, K, device=q.device, dtype=torch.float32)
    mT = torch.empty(B, H, device=q.device, dtype=torch.float32)
    s0 = tuple(s.contiguous() for s in initial_state) if initial_state is not None else (CT, nT, mT)
    mlstm_recurrent_kernel[(cdiv(V, BV), B * H)](
        q, k, v, i, f, *s0, h, CT, nT, mT, scale, eps, T, H=H, K=K, V=V, BK=BK, BV=BV,
        HAS_INIT=initial_state is not None)
    return h, ((CT, nT, mT) if output_final_state else None)


def fused_mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState,
                     scale: float | None = None, eps: float = 1e-6,
                     out_state: MLSTMState | None = None) -> tuple[Tensor, MLSTMState]:
    """``mlstm_step`` in one kernel: ``q, k [B, H, K]``, ``v [B, H, V]``, ``i, f [B, H]``,
    ``state = (C [B, H, K, V], n [B, H, K], m [B, H])`` fp32 contiguous. The new state goes to
    ``out_state`` (new tensors if None; ``out_state = state`` updates in place). Returns
    ``(h [B, H, V] in v's dtype, new state)``. Inputs the decode loop passes (``_launchable``) go
    straight to the launch: at small batch a step is bound by host time."""
    if not _launchable(q, k, v, i, f, state, out_state):
        q, k, v, i, f = _checked(q, k, v, i, f, state)
    B, H, K = q.shape
    V = v.shape[-1]
    C, n, m = state
    scale = K ** -0.5 if scale is None else scale
    if out_state is None:
        out_state = (torch.empty_like(C), torch.empty_like(n), torch.empty_like(m))
    BK, BV = _bk_bv(K, V, 32)
    # in place: one program per head (n is read whole by all); else split V across programs
    aliased = any(a.data_ptr() == b.data_ptr() for a, b in zip(out_state, state))
    nsplit = 1 if aliased else cdiv(V, BV)
    h = torch.empty_like(v)
    grid, args = (nsplit, B * H), (q, k, v, i, f, C, n, m, h, *out_state, scale, eps, nsplit)
    # the autotuner's own key (K, V, BV and every tensor's dtype; C, n, m and h's are fixed by q..f)
    key = (K, V, BV, q.dtype, k.dtype, v.dtype, i.dtype, f.dtype, *(s.dtype for s in out_state))
    config = _STEP_CONFIGS.get(key)
    if config is None:       # the first call of a key: tuned (on a GPU), and launched
        mlstm_step_kernel[grid](*args, K=K, V=V, BK=BK, BV=BV)
        _STEP_CONFIGS[key] = mlstm_step_kernel.best_config.all_kwargs()
    else:                    # later calls launch that config directly
        mlstm_step_kernel.fn[grid](*args, K=K, V=V, BK=BK, BV=BV, **config)
    return h, out_state


def _launchable(q, k, v, i, f, state, out_state) -> bool:
    """True for what the decode loop passes: contiguous inputs of the step's shapes on one device
    that need no gradient, an fp32 state, ``out_state`` None or the state's own tensors. Anything
    else takes ``_checked``, whose errors name the fix."""
    if q.dim() != 3 or v.dim() != 3 or len(state) != 3:
        return False
    if out_state is not None and (len(out_state) != 3 or any(a is not b for a, b in zip(out_state, state))):
        return False
    (B, H, K), V = q.shape, v.shape[-1]
    C, n, m = state
    return all(s.dtype == torch.float32 for s in state) \
        and not any(t.requires_grad for t in (q, k, v, i, f, C, n, m)) \
        and launch_ready((q, (B, H, K)), (k, (B, H, K)), (v, (B, H, V)), (i, (B, H)), (f, (B, H)),
                         (C, (B, H, K, V)), (n, (B, H, K)), (m, (B, H)))


def _checked(q, k, v, i, f, state):
    """The inputs ``_launchable`` turned away: one clear error for a bad one, contiguous copies of
    q, k, v, i, f."""
    B, H, K = q.shape
    V = v.shape[-1]
    C, n, m = state
    if C.shape != (B, H, K, V) or n.shape != (B, H, K) or m.shape != (B, H):
        raise ValueError(f"fused_mlstm_step: state must be (C [B, H, K, V], n [B, H, K], m [B, H]) "
                         f"= {(B, H, K, V)}, got {tuple(C.shape)}, {tuple(n.shape)}, {tuple(m.shape)}")
    if any(s.dtype != torch.float32 or not s.is_contiguous() for s in state):
        raise TypeError("fused_mlstm_step: the state must be fp32 and contiguous (init it so once; "
                        "it is updated in place when out_state=state)")
    if k.shape != q.shape or v.shape[:2] != (B, H) or i.shape != (B, H) or f.shape != (B, H):
        raise ValueError(f"fused_mlstm_step: need q, k [B, H, K], v [B, H, V], i, f [B, H]; got "
                         f"{tuple(q.shape)}, {tuple(v.shape)}, {tuple(i.shape)}, {tuple(f.shape)}")
    _check_no_grad("fused_mlstm_step", q, k, v, i, f, *state)
    check_device("fused_mlstm_step", q, k, v, i, f, *state)
    return tuple(t.contiguous() for t in (q, k, v, i, f))
