"""Chunked gated delta rule in Triton: ``chunk_gated_delta_rule``, forward and backward.

Same semantics, shapes and dtypes as ``naive_chunk_gated_delta_rule`` (``o`` in v's dtype, the
final state fp32). Inputs may mix dtypes (the mixer passes l2-normalised q, k in fp32 with v in
bf16): every kernel reads each tensor in its own dtype, works in fp32 registers, and casts the
operands of each ``tl.dot`` to the *dot dtype*: bf16 / fp16 when any of q, k, v is (v's dtype
first), fp32 ("ieee" precision, no tf32) when all are fp32. Accumulation is always fp32.

Forward, per chunk of BT tokens (5 launches):
  1. fwd_kkt   gamma = chunk cumsum of g;  A = tril(b K K^T * exp(gamma_r - gamma_j), -1)  (chunk_wy)
  2. fwd_solve Ai = (I + A)^{-1} by 16 x 16 diagonal blocks + block merges               (chunk_wy)
  3. fwd_wu    W = Ai (b exp(gamma) K), U = Ai (b V)                                     (chunk_wy)
  or 1-3 as one launch, fwd_prep (``FUSED_PREPARE``: not yet run on a GPU, off by default);
  4. fwd_h     sequential over chunks: h_n, v_new = U - W h_n, h_{n+1}                   (chunk_h)
  5. fwd_o     O = scale ((Q exp(gamma)) h_n + (Q K^T * D) v_new)                        (chunk_o)
  or 4 + 5 as one walk, fwd_ho (chunk_h), where the (batch, head) pairs fill the GPU: h and v_new
  then stay on chip (``fused_forward``; FUSED_PROGRAMS_PER_SM has the measured crossover).
Backward (gamma and Ai saved; W, U recomputed by fwd_wu, h, v_new by fwd_h): bwd_dv_local, bwd_dh
(reverse over chunks), bwd_dqkwg, bwd_wy (dk, dv, dbeta, dg via a chunk-local reverse cumsum).

Per token and head at K = V = 128, BT = 64, bf16 (2 bytes) inputs: the forward must read q, k, v
(3 x 256 B) and g, beta, write o (256 B): ~1 KiB floor; this implementation moves ~4.8 KiB (A's fp32
scratch 256 B written and read, Ai 128 B written and read, k read twice, W, U, v_new 768 B written
and read again, h 512 B written and read); fwd_ho saves v_new's and h's round trips (~1.5 KiB),
fwd_prep A's read, Ai's read and k's second read (640 B).
FLOPs ~ 2 BT (3K + 3V) + 10 K V ~ 0.26 MFLOP (fwd); ~2.5x that for fwd + bwd (incl. recompute).
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from kernels.gated_delta_rule.blocks import dot_block
from kernels.gated_delta_rule.chunk_h import (
    gated_delta_rule_bwd_dh_kernel,
    gated_delta_rule_fwd_h_kernel,
    gated_delta_rule_fwd_ho_kernel,
)
from kernels.gated_delta_rule.chunk_o import (
    gated_delta_rule_bwd_dqkwg_kernel,
    gated_delta_rule_bwd_dv_local_kernel,
    gated_delta_rule_fwd_o_kernel,
)
from kernels.gated_delta_rule.chunk_wy import (
    gated_delta_rule_bwd_wy_kernel,
    gated_delta_rule_fwd_kkt_kernel,
    gated_delta_rule_fwd_prep_kernel,
    gated_delta_rule_fwd_solve_kernel,
    gated_delta_rule_fwd_wu_kernel,
)
from kernels.triton_utils import cdiv, check_device, check_head_shapes, sequential_walk_fills

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # each input may be any of them
MAX_KEY_DIM = 256  # the [K, BV] state tile lives in registers; V is tiled (any size)


def dot_dtype(*tensors: Tensor) -> torch.dtype:
    """bf16 / fp16 when any input is (later tensors first: v, then k, then q), else fp32."""
    for t in reversed(tensors):
        if t.dtype in (torch.bfloat16, torch.float16):
            return t.dtype
    return torch.float32


def _prec(dt: torch.dtype):
    return "ieee" if dt == torch.float32 else None


def _pow2(n: int) -> int:
    return dot_block(n)  # >= 64 on a GPU: see blocks.py (Triton 3.6 Hopper bug with 16 / 32 wide dots)


def check_inputs(op: str, q, k, v, g, beta, initial_state=None) -> None:
    """One clear error per bad input: shapes, dtypes, device."""
    check_device(op, q, k, v, g, beta, initial_state)
    check_head_shapes(op, q, k, v, g=g, beta=beta)
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("initial_state", initial_state)):
        if t is not None and t.dtype not in INPUT_DTYPES:
            raise TypeError(f"{op}: {name} is {t.dtype}; the Triton kernels take fp16, bf16 or fp32 "
                            f"(use naive_chunk_gated_delta_rule for fp64)")
    B, _, H, K = q.shape
    V = v.shape[-1]
    if K > MAX_KEY_DIM:
        raise ValueError(f"{op}: key head dim K={K}: at most {MAX_KEY_DIM} (the [K, BV] state tile lives in "
                         f"registers; V is tiled and may be any size): use more heads with a smaller K")
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(f"{op}: initial_state must be [B, H, K, V] = {(B, H, K, V)}; got {tuple(initial_state.shape)}")


# kkt, solve and wu as one launch (fwd_prep) instead of three. It moves 640 B less per token and
# head (A's fp32 read, Ai's read, k's second read: the same program reads A and Ai back from L1 /
# L2, and k once) and solves the diagonal blocks together. It passes every CPU check against the
# fp64 recurrence and compiles for sm_90 within its shared memory, but it has not run on a GPU yet
# (no device was lent on 2026-12-08): the three measured launches stay the default until the
# bench's "fused prep" rows and a GPU correctness run decide.
FUSED_PREPARE = False


# The forward paths by name, as (fused_forward, FUSED_PREPARE) (the bench's rows and the tests run
# each): fwd_ho's single walk or fwd_h + fwd_o, after kkt + solve + wu or after fwd_prep
FORWARD_PATHS = {"fused": (True, False), "two-launch": (False, False), "fused prep + fused": (True, True)}


@contextlib.contextmanager
def fused_prepare(on: bool):
    """``FUSED_PREPARE`` set to ``on`` inside the block (the bench and sm90_check run both paths)."""
    global FUSED_PREPARE
    before, FUSED_PREPARE = FUSED_PREPARE, on
    try:
        yield
    finally:
        FUSED_PREPARE = before


def _prepare(k, v, g, beta, BT, DT):
    """gamma (fp32), Ai (dot dtype), W, U (dot dtype): fwd_prep, or fwd_kkt + fwd_solve + fwd_wu."""
    B, T, H, K = k.shape
    V, NT, prec = v.shape[-1], cdiv(T, BT), _prec(DT)
    gamma = torch.empty(B, T, H, device=k.device, dtype=torch.float32)
    A = torch.empty(B, T, H, BT, device=k.device, dtype=torch.float32)       # fp32 scratch
    Ai = torch.empty(B, T, H, BT, device=k.device, dtype=DT)
    if not FUSED_PREPARE:
        gated_delta_rule_fwd_kkt_kernel[(NT, B * H)](k, g, beta, gamma, A, Ai, T, H, K, BT, min(64, _pow2(K)),
                                                     prec)
        gated_delta_rule_fwd_solve_kernel[(NT, B * H)](A, Ai, T, H, BT)
        return (gamma, Ai, *_recompute_wu(k, v, beta, gamma, Ai, BT, DT))
    w = torch.empty(B, T, H, K, device=k.device, dtype=DT)
    u = torch.empty(B, T, H, V, device=k.device, dtype=DT)
    gated_delta_rule_fwd_prep_kernel[(NT, B * H)](k, v, g, beta, gamma, A, Ai, w, u, T, H, K, V, BT,
                                                  min(64, _pow2(K)), min(64, _pow2(V)), prec)
    return gamma, Ai, w, u


def _recompute_wu(k, v, beta, gamma, Ai, BT, DT):
    B, T, H, K = k.shape
    V = v.shape[-1]
    w = torch.empty(B, T, H, K, device=k.device, dtype=DT)
    u = torch.empty(B, T, H, V, device=k.device, dtype=DT)
    gated_delta_rule_fwd_wu_kernel[(cdiv(T, BT), B * H)](
        k, v, beta, gamma, Ai, w, u, T, H, K, V, BT, min(64, _pow2(K)), min(64, _pow2(V)), _prec(DT))
    return w, u


def _fwd_h(k, w, u, gamma, h0, BT, DT, store_final):
    B, T, H, K = k.shape
    V, NT = u.shape[-1], cdiv(T, BT)
    h = torch.empty(B, NT, H, K, V, device=k.device, dtype=DT)
    v_new = torch.empty_like(u)
    ht = torch.empty(B, H, K, V, device=k.device, dtype=torch.float32) if store_final else None
    grid = lambda meta: (cdiv(V, meta["BV"]), B * H)
    gated_delta_rule_fwd_h_kernel[grid](k, u, w, gamma, h, v_new, h0, ht, T, H, K, V, BT, _pow2(K),
                                        USE_H0=h0 is not None, STORE_HT=store_final, PREC=_prec(DT))
    return h, v_new, ht


# fwd_h and fwd_o run as one walk (fwd_ho) where (V tiles x batch x heads) >= 0.75 programs per SM:
# fwd_h alone walks with that many programs, so fusing only adds work to a walk that is there
# anyway. H100 (132 SMs), H16 K=V=128, B*T 32k: 128 programs (T <= 8k) 0.94-0.95 ms against
# 1.14-1.15; 64 (T 16k, B 2) 1.32 against 1.27-1.29; 32 (T 32k, B 1) 2.08-2.11 against 1.72.
FUSED_PROGRAMS_PER_SM = 0.75


def fused_forward_by_default(B: int, H: int, V: int, device: torch.device) -> bool:
    """chunk_gated_delta_rule's forward path when not asked: fwd_ho where its (V tiles of 64, batch,
    head) programs fill the GPU."""
    return sequential_walk_fills(B * H * -(-V // 64), device, FUSED_PROGRAMS_PER_SM)


def chunk_fwd(q, k, v, g, beta, scale, h0, BT, store_final, fused):
    B, T, H, K = q.shape
    V, DT = v.shape[-1], dot_dtype(q, k, v)
    gamma, Ai, w, u = _prepare(k, v, g, beta, BT, DT)
    o = torch.empty(B, T, H, V, device=v.device, dtype=v.dtype)
    if fused:
        ht = torch.empty(B, H, K, V, device=k.device, dtype=torch.float32) if store_final else None
        grid = lambda meta: (cdiv(V, meta["BV"]), B * H)
        gated_delta_rule_fwd_ho_kernel[grid](q, k, u, w, gamma, o, h0, ht, scale, T, H, K, V, BT, _pow2(K),
                                             USE_H0=h0 is not None, STORE_HT=store_final, PREC=_prec(DT))
        return o, ht, gamma, Ai
    h, v_new, ht = _fwd_h(k, w, u, gamma, h0, BT, DT, store_final)
    grid = lambda meta: (cdiv(V, meta["BV"]), cdiv(T, BT), B * H)
    gated_delta_rule_fwd_o_kernel[grid](q, k, v_new, h, gamma, o, scale, T, H, K, V, BT, min(64, _pow2(K)),
                                        PREC=_prec(DT))
    return o, ht, gamma, Ai


def chunk_bwd(q, k, v, g, beta, scale, h0, gamma, Ai, do, dht, BT):
    B, T, H, K = q.shape
    V, DT, prec, NT, dev = v.shape[-1], dot_dtype(q, k, v), _prec(dot_dtype(q, k, v)), cdiv(T, BT), q.device
    w, u = _recompute_wu(k, v, beta, gamma, Ai, BT, DT)
    h, v_new, _ = _fwd_h(k, w, u, gamma, h0, BT, DT, False)
    dv_local = torch.empty(B, T, H, V, device=dev, dtype=torch.float32)
    grid = lambda meta: (cdiv(V, meta["BV"]), NT, B * H)
    gated_delta_rule_bwd_dv_local_kernel[grid](q, k, gamma, do, dv_local, scale, T, H, K, V, BT,
                                               min(64, _pow2(K)), DOT_DT=Ai, PREC=prec)
    dh = torch.empty(B, NT, H, K, V, device=dev, dtype=DT)
    du = torch.empty(B, T, H, V, device=dev, dtype=torch.float32)
    dh0 = torch.empty(B, H, K, V, device=dev, dtype=h0.dtype) if h0 is not None else None
    grid = lambda meta: (cdiv(V, meta["BV"]), B * H)
    gated_delta_rule_bwd_dh_kernel[grid](q, k, w, gamma, do, dv_local, du, dh, dht, dh0, scale, T, H, K, V, BT,
                                         _pow2(K), USE_DHT=dht is not None, STORE_DH0=h0 is not None, PREC=prec)
    dq = torch.empty_like(q)
    dk_part = torch.empty(B, T, H, K, device=dev, dtype=torch.float32)
    dw = torch.empty(B, T, H, K, device=dev, dtype=torch.float32)
    dgam = torch.empty(B, T, H, device=dev, dtype=torch.float32)
    gated_delta_rule_bwd_dqkwg_kernel[(NT, B * H)](q, k, v_new, h, dh, do, du, gamma, dq, dk_part, dw, dgam, scale,
                                                   T, H, K, V, BT, _pow2(K), PREC=prec)
    dk, dv, dbeta, dg = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta), torch.empty_like(g)
    gated_delta_rule_bwd_wy_kernel[(NT, B * H)](k, v, beta, gamma, Ai, dw, du, dk_part, dgam, dk, dv, dbeta, dg,
                                                T, H, K, V, BT, _pow2(K), min(64, _pow2(V)), PREC=prec)
    return dq, dk, dv, dg, dbeta, dh0


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, fused):
        q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
        h0 = initial_state.contiguous() if initial_state is not None else None
        o, ht, gamma, Ai = chunk_fwd(q, k, v, g, beta, scale, h0, chunk_size, output_final_state, fused)
        ctx.save_for_backward(q, k, v, g, beta, h0, gamma, Ai)
        ctx.scale, ctx.chunk_size = scale, chunk_size
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0, gamma, Ai = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = chunk_bwd(q, k, v, g, beta, ctx.scale, h0, gamma, Ai, do.contiguous(),
                                               dht.contiguous() if dht is not None else None, ctx.chunk_size)
        return dq, dk, dv, dg, dbeta, None, dh0, None, None, None


def chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, chunk_size: int = 64,
                           scale: float | None = None, initial_state: Tensor | None = None,
                           output_final_state: bool = True,
                           fused_forward: bool | None = None) -> tuple[Tensor, Tensor | None]:
    """``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``g`` (log decay, <= 0), ``beta: [B, T, H]``,
    ``initial_state: [B, H, K, V]`` -> ``(o [B, T, H, V] in v's dtype, final state fp32 or None)``.
    Differentiable w.r.t. q, k, v, g, beta and initial_state. ``chunk_size`` in {16, 32, 64}.
    ``fused_forward``: True runs the state and output passes as one walk (fwd_ho), False as two
    launches; None picks by whether the (batch, head) pairs fill the GPU (measured on an H100)."""
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_gated_delta_rule: chunk_size={chunk_size}; valid values are 16, 32, 64 (fla uses 64)")
    check_inputs("chunk_gated_delta_rule", q, k, v, g, beta, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    B, T, H, K = q.shape
    if T == 0:
        S = initial_state.float() if initial_state is not None else q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
        return v.new_zeros(B, 0, H, v.shape[-1]), (S if output_final_state else None)
    if fused_forward is None:
        fused_forward = fused_forward_by_default(B, H, v.shape[-1], q.device)
    o, ht = ChunkGatedDeltaRuleFunction.apply(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size,
                                              bool(fused_forward))
    return o, (ht if output_final_state else None)
