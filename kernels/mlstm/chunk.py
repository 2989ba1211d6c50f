"""Chunkwise mLSTM in Triton: ``chunk_mlstm``, the training path (forward and backward).

Same semantics, shapes and dtypes as ``naive_chunk_mlstm`` (``kernels/mlstm/naive.py``); the
kernels are in ``chunk_fwd.py`` and ``chunk_bwd.py``, the algorithm and its cost in the README's
Triton section. Per token and head at bf16 (K key, V value dims, chunk L): forward ~``2 (3K + 2V)``
bytes of activations + ``4 K V / L`` of bf16 states, ``2 K V + 2 L (K + V) + 2 K V`` FLOPs; when
a gradient is wanted it also writes h in fp32 (``4 V`` bytes) for the backward's ``dh . h``, a sum
that cancels: taken on the bf16 / fp16 h its rounding could exceed it (dq off by 7e-2 in fp16).

Forward, one of these paths (the same products and roundings; ``fused_forward`` picks; by default the
two passes until the walk's crossover is measured on a GPU, then the grid's size):
- two passes: a state pass (sequential over chunks, parallel over K and V tiles) writes the state
  entering every chunk, Cs; an output pass (parallel over chunks) reads it back with q, k, v. The
  state pass may instead run chunk-parallel (``parallel_states``): every chunk's own write at once,
  then an elementwise walk over the chunks spread over the state's elements, for grids whose
  (K tile, V tile, batch, head) programs leave the GPU idle; it moves ``2 (4 K V / L)`` bytes per
  token and head more (``PARALLEL_STATES_BELOW_PER_SM``: None, the walk, until measured). With it
  the backward's reverse state pass runs chunk-parallel the same way.
- fused (``mlstm_fwd_fused_kernel``): one program per (V tile, batch, head) walks the chunks with the
  whole-K state in registers, writing h as it goes. It saves the Cs write + read, ~``2 (2 K V / L)``
  bytes per token and head at bf16 (when a gradient is wanted it still writes Cs for the backward:
  the read alone), and the second read of k, v; its parallelism is the (V tile, batch, head)
  programs alone, so it runs where they fill the GPU (``FUSED_PROGRAMS_PER_SM``) and where its
  tiles fit on chip (``fused_forward_fits``: K <= 256; fp16 / fp32 at K > 128 only at chunk <= 64).

The backward holds every stabiliser m at its forward value inside the kernels; the gradient that
flows through the max-stabiliser itself (h depends on m through eps and the exp(-m) floor, the
final state through its m) is a reverse scan with resets over O(B T H) scalars (``chunk_gates.py``):
``dm_t = -eps (dh_t . h_t) / d_t``, routed back along the recurrence's argmax branches
(``m_t = max(log f_t + m_{t-1}, i_t)``) to i, f and m_0, as the reference's autograd does.
Backward launches: prep, reverse states (+ the stabiliser path), dq/dk, dv, gates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.mlstm.chunk_bwd import (
    mlstm_bwd_dqk_kernel,
    mlstm_bwd_dv_kernel,
    mlstm_bwd_local_kernel,
    mlstm_bwd_pass_kernel,
    mlstm_bwd_states_kernel,
)
from kernels.mlstm.chunk_fwd import (
    FUSED_MAX_STAGE_BYTES,
    fused_stage_bytes,
    mlstm_fwd_fused_kernel,
    mlstm_fwd_local_kernel,
    mlstm_fwd_output_kernel,
    mlstm_fwd_pass_kernel,
    mlstm_fwd_states_kernel,
)
from kernels.mlstm.chunk_gates import mlstm_bwd_gates_kernel, mlstm_bwd_prep_kernel
from kernels.triton_utils import cdiv, check_device, check_head_shapes, sequential_walk_fills

MLSTMState = tuple[Tensor, Tensor, Tensor]
CHUNK_SIZES = (16, 32, 64, 128)
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# The fused forward walk holds the whole [K, BV] fp32 C tile in registers.
FUSED_MAX_KEY_DIM = 256
# The fused walk runs by default where (V tiles x batch x heads) >= this many programs per SM, once
# measured on a GPU against the two passes as SSD's and GDN's crossovers were (the bench times both
# paths). None until then (it was built on 2026-12-08, when no GPU was lent): the two passes stay
# the default and the walk runs when asked for (fused_forward=True).
FUSED_PROGRAMS_PER_SM: float | None = None
# The state passes run chunk-parallel (forward: mlstm_fwd_local_kernel + mlstm_fwd_pass_kernel;
# backward: mlstm_bwd_local_kernel + mlstm_bwd_pass_kernel) by default where the sequential walks'
# (K tile, V tile, batch, head) programs number fewer than this many per SM. None until measured on
# a GPU (built on 2026-12-08, when no GPU was lent): the walks stay the default and the chunk-parallel
# passes run when asked for (parallel_states=True).
PARALLEL_STATES_BELOW_PER_SM: float | None = None
# chunk_mlstm's forward paths by name, as its arguments (benches and tests run each): two passes whose
# state pass is the sequential walk or chunk-parallel (and then so is the backward's reverse state
# pass), and the fused walk
FORWARD_PATHS = {"two-pass": dict(fused_forward=False, parallel_states=False),
                 "parallel-states": dict(fused_forward=False, parallel_states=True),
                 "fused": dict(fused_forward=True, parallel_states=False)}
# Elements of C (or dC) per program of the chunk-parallel walks (mlstm_fwd_pass_kernel,
# mlstm_bwd_pass_kernel): small, so that even one head's 32k-element state is spread over 128
# programs (a walk is a chain over the chunks; more of them in flight hides its latency).
PASS_BLOCK = 256


def _blocks(K: int, V: int) -> tuple[int, int]:
    """Key / value tile widths: powers of two >= 16 (tl.dot's minimum), at most 64."""
    p2 = lambda x: max(16, min(64, 1 << (x - 1).bit_length()))  # noqa: E731
    return p2(K), p2(V)


def _fused_key_block(K: int) -> int:
    """The fused walk's key tile: the whole key dim, a power of two >= 16."""
    return max(16, 1 << (K - 1).bit_length())


def fused_forward_fits(K: int, chunk_size: int, dtype: torch.dtype) -> bool:
    """Whether the fused walk fits on chip: K <= 256 (the state in registers) and one chunk's q, k
    tiles, as its dots take them, within FUSED_MAX_STAGE_BYTES of shared memory (chunk_fwd.py):
    every K <= 256 for bf16; for fp16 / fp32 (fp32 tiles) K <= 128, or K <= 256 at chunk <= 64."""
    stage = fused_stage_bytes(chunk_size, _fused_key_block(K), _flags(dtype)["LOW"])
    return K <= FUSED_MAX_KEY_DIM and stage <= FUSED_MAX_STAGE_BYTES


def fused_forward_by_default(B: int, H: int, K: int, V: int, chunk_size: int, dtype: torch.dtype,
                             device: torch.device) -> bool:
    """chunk_mlstm's forward path when not asked: the fused walk where it fits
    (``fused_forward_fits``) and its (V tile, batch, head) programs fill the GPU, else the two passes."""
    if FUSED_PROGRAMS_PER_SM is None or not fused_forward_fits(K, chunk_size, dtype):
        return False
    return sequential_walk_fills(B * H * cdiv(V, _blocks(K, V)[1]), device, FUSED_PROGRAMS_PER_SM)


def parallel_states_by_default(B: int, H: int, K: int, V: int, device: torch.device) -> bool:
    """The state passes (the two-pass forward's and the backward's): chunk-parallel where the
    sequential walks' programs would leave the GPU idle (``PARALLEL_STATES_BELOW_PER_SM``, once
    measured), else the walks."""
    if PARALLEL_STATES_BELOW_PER_SM is None:
        return False
    BK, BV = _blocks(K, V)
    return not sequential_walk_fills(B * H * cdiv(K, BK) * cdiv(V, BV), device, PARALLEL_STATES_BELOW_PER_SM)


def _shares_buffer(states: Tensor) -> Tensor:
    """Where the chunk-parallel passes put every chunk's own share before the walk adds them up:
    fp32 (rounded to bf16 they took the final state at T = 65536 from 2.5e-4 to 1.7e-3 relative
    error, chunk_fwd.py), so the states tensor itself where it is fp32, else a scratch like it."""
    return states if states.dtype == torch.float32 else torch.empty(states.shape, device=states.device,
                                                                     dtype=torch.float32)


def _flags(dtype: torch.dtype) -> dict:
    """bf16: tensor-core dots on bf16 operands (fp32's exponent range: stabilised states and
    dh / d can be large); fp16: tf32 dots (fp16's range would overflow); fp32: exact fp32 dots."""
    return dict(LOW=dtype == torch.bfloat16, PREC="tf32" if dtype == torch.float16 else "ieee")


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage of the per-chunk C and dC between passes: bf16 for bf16 inputs (the passes that
    read them multiply in bf16 anyway; halves the dominant HBM traffic), else fp32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _check(q, k, v, i, f, chunk_size, initial_state, scale, fused_forward=None, parallel_states=None):
    check_head_shapes("chunk_mlstm", q, k, v, i=i, f=f)
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"chunk_mlstm: q, k, v must share one dtype of bf16/fp16/fp32, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}; cast them (fp64: use naive_chunk_mlstm)")
    if not (i.is_floating_point() and f.is_floating_point()):
        raise TypeError(f"chunk_mlstm: gates must be floating point, got {i.dtype}, {f.dtype}")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_mlstm: chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")
    if scale <= 0:
        raise ValueError(f"chunk_mlstm: scale must be > 0, got {scale}")
    if initial_state is not None:
        B, _, H, K = q.shape
        want = ((B, H, K, v.shape[-1]), (B, H, K), (B, H))
        got = tuple(tuple(s.shape) for s in initial_state)
        if len(initial_state) != 3 or got != want:
            raise ValueError(f"chunk_mlstm: initial_state must be (C, n, m) of shapes {want}, got {got}")
    check_device("chunk_mlstm", q, k, v, i, f, *(initial_state or ()))
    K = q.shape[-1]
    if fused_forward and not fused_forward_fits(K, chunk_size, q.dtype):
        raise ValueError(
            f"chunk_mlstm: fused_forward=True does not fit on chip at K={K}, chunk_size={chunk_size}, "
            f"{str(q.dtype)[6:]}: the walk takes K <= {FUSED_MAX_KEY_DIM}, and for fp16 / fp32 inputs "
            f"K <= 128 or chunk_size <= 64 (its dots take fp32 tiles); pass fused_forward=False (or None, "
            f"which picks the two-pass forward there) or a smaller chunk_size")
    if fused_forward and parallel_states:
        raise ValueError("chunk_mlstm: fused_forward=True and parallel_states=True exclude each other: the "
                         "fused walk has no separate state pass to run chunk-parallel; pass one of them "
                         "(or None for the default)")


def _forward(q, k, v, i, f, C0, n0, m0, scale, eps, L, save=False, fused=False, parallel=False):
    """One of the forward paths (``parallel``: the two passes with the chunk-parallel state pass).
    Returns ``(h, h32, Cs, ns, ms, CT, m_tok, d_tok, den_tok)``;
    ``ns[:, -1], ms[:, -1]`` the final n, m. The fused walk without ``save`` writes no Cs (None), no
    per-token values (None) and only the final slot of ``ns, ms``."""
    B, T, H, K = q.shape
    V, NT, BH = v.shape[-1], cdiv(T, L), B * H
    BK, BV = _blocks(K, V)
    fl, dev = _flags(q.dtype), q.device
    f32 = {"device": dev, "dtype": torch.float32}
    keep = save or not fused                       # what the backward reads (the two passes always write it)
    NS = NT + 1 if keep else 1
    Cs = torch.empty(BH, NT + 1, K, V, device=dev, dtype=_state_dtype(q.dtype)) if keep else None
    CT = torch.empty(BH, K, V, **f32)
    ns, ms = torch.empty(BH, NS, K, **f32), torch.empty(BH, NS, **f32)
    h = torch.empty_like(v)
    # the backward's dh . h cancels: it reads h unrounded (an fp32 copy for bf16 / fp16 inputs)
    save_h32 = save and v.dtype != torch.float32
    h32 = torch.empty(v.shape, **f32) if save_h32 else h
    m_tok, d_tok, den_tok = (torch.empty(BH, T, **f32) if keep else None for _ in range(3))
    has_init = C0 is not None
    init = (C0, n0, m0) if has_init else (ns, ns, ms)   # unread without HAS_INIT
    if fused:
        out = (Cs, m_tok, d_tok, den_tok) if keep else (ns, ns, ns, ns)   # unread without SAVE
        mlstm_fwd_fused_kernel[(cdiv(V, BV), BH)](
            q, k, v, i, f, *init, h, h32, out[0], ns, ms, CT, *out[1:], scale, eps, T, NT, NS,
            H=H, K=K, V=V, BT=L, BKF=_fused_key_block(K), BV=BV, HAS_INIT=has_init, SAVE=save,
            SAVE_H32=save_h32, **fl)
    elif parallel:
        stats = torch.empty(BH, NT, 2, **f32)     # per chunk (g_c, a*_c) for the pass
        Ws = _shares_buffer(Cs)
        mlstm_fwd_local_kernel[(cdiv(K, BK) * cdiv(V, BV), NT, BH)](
            k, v, i, f, Ws, ns, stats, T, NT, H=H, K=K, V=V, BT=L, BK=BK, BV=BV, **fl)
        mlstm_fwd_pass_kernel[(cdiv(K * V, PASS_BLOCK) + 1, BH)](
            *init, Ws, Cs, ns, ms, stats, CT, NT, K=K, V=V, BLK=PASS_BLOCK, BKN=_fused_key_block(K),
            HAS_INIT=has_init, num_warps=2)
    else:
        mlstm_fwd_states_kernel[(cdiv(K, BK), cdiv(V, BV), BH)](
            k, v, i, f, *init, Cs, ns, ms, CT, T, NT, H=H, K=K, V=V, BT=L, BK=BK, BV=BV,
            HAS_INIT=has_init, **fl)
    if not fused:
        mlstm_fwd_output_kernel[(cdiv(V, BV), NT, BH)](
            q, k, v, i, f, Cs, ns, ms, h, h32, m_tok, d_tok, den_tok, scale, eps, T, NT,
            H=H, K=K, V=V, BT=L, BK=BK, BV=BV, SAVE_H32=save_h32, **fl)
    return h, h32, Cs, ns, ms, CT, m_tok, d_tok, den_tok


class ChunkMLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, scale, eps, chunk_size, training, fused, parallel):
        B, _, H, K = q.shape
        h, h32, Cs, ns, ms, CT, m_tok, d_tok, den_tok = _forward(
            q, k, v, i, f, C0, n0, m0, scale, eps, chunk_size, save=training, fused=fused, parallel=parallel)
        nT, mT = (s.view(B, H, *s.shape[1:])[:, :, -1].clone() for s in (ns, ms))
        CT = CT.view(B, H, K, v.shape[-1])
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h32, Cs, ns, ms, CT, m_tok, d_tok, den_tok)
        ctx.cfg = (scale, eps, chunk_size, parallel)
        return h, CT, nT, mT

    @staticmethod
    def backward(ctx, dh, dCT, dnT, dmT):
        q, k, v, i, f, C0, n0, m0, h, Cs, ns, ms, CT, m_tok, d_tok, den_tok = ctx.saved_tensors
        scale, eps, L, parallel = ctx.cfg
        grads = _backward(q, k, v, i, f, C0, n0, m0, h, Cs, ns, ms, CT, m_tok, d_tok, den_tok,
                          dh, dCT, dnT, dmT, scale, eps, L, parallel)
        return (*grads, None, None, None, None, None, None)


def _backward(q, k, v, i, f, C0, n0, m0, h, Cs, ns, ms, CT, m_tok, d_tok, den_tok,
              dh, dCT, dnT, dmT, scale, eps, L, parallel=False):
    B, T, H, K = q.shape
    V, NT, BH = v.shape[-1], cdiv(T, L), B * H
    BK, BV = _blocks(K, V)
    NK, NV = cdiv(K, BK), cdiv(V, BV)
    fl, dev = _flags(q.dtype), q.device
    f32 = dict(device=dev, dtype=torch.float32)
    dh = (torch.zeros_like(h) if dh is None else dh).to(v.dtype).contiguous()
    has_df = dCT is not None or dnT is not None
    dCT = torch.zeros(B, H, K, V, **f32) if dCT is None else dCT.float().contiguous()
    dnT = torch.zeros(B, H, K, **f32) if dnT is None else dnT.float().contiguous()
    # the final state's pull on its own stabiliser: dm_T - <dC_T, C_T> - <dn_T, n_T>
    fin = None
    if has_df or dmT is not None:
        fin = -(dCT * CT).sum((-1, -2)) - (dnT * ns.view(B, H, NT + 1, K)[:, :, -1]).sum(-1)
        fin = (fin + dmT.float() if dmT is not None else fin).reshape(BH).contiguous()
    dden, x_m = torch.empty(BH, T, **f32), torch.empty(BH, T, **f32)
    mlstm_bwd_prep_kernel[(NT, BH)](h, dh, m_tok, d_tok, den_tok, fin if fin is not None else x_m,
                                    dden, x_m, eps, T, H=H, V=V, BT=L, BV=BV, HAS_FIN=fin is not None)
    dCs, dns = torch.empty_like(Cs), torch.empty_like(ns)
    dC0 = torch.empty(BH, K, V, **f32)
    Gi, Gf = torch.empty(BH, T, **f32), torch.empty(BH, T, **f32)
    if parallel:    # chunk-parallel reverse state pass
        NKV = cdiv(K * V, PASS_BLOCK) + 1
        dg, stats = torch.empty(NKV, BH, NT, **f32), torch.empty(BH, NT, 3, **f32)
        Us = _shares_buffer(dCs)
        mlstm_bwd_local_kernel[(NK * NV, NT, BH)](
            q, i, f, dh, ms, m_tok, d_tok, dden, x_m, Us, dns, Gi, Gf, stats, scale, T, NT,
            H=H, K=K, V=V, BT=L, BK=BK, BV=BV, **fl)
        mlstm_bwd_pass_kernel[(NKV + 1, BH)](
            Cs, ns, Us, dCs, dns, dCT, dnT, dC0, dg, stats, Gi, Gf, T, NT, K=K, V=V, BT=L, BLK=PASS_BLOCK,
            BKN=_fused_key_block(K), HAS_DFINAL=has_df, num_warps=2)
    else:
        NKV, dg = NK * NV, torch.empty(NK * NV, BH, NT, **f32)
        mlstm_bwd_states_kernel[(NK, NV, BH)](
            q, i, f, dh, ms, m_tok, d_tok, dden, x_m, Cs, ns, dCT, dnT, dCs, dns, dC0, dg, Gi, Gf,
            scale, T, NT, H=H, K=K, V=V, BT=L, BK=BK, BV=BV, HAS_DFINAL=has_df, **fl)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qdq, kdk, kdw = (torch.empty(NK, BH, T, **f32) for _ in range(3))
    mlstm_bwd_dqk_kernel[(NK, NT, BH)](
        q, k, v, i, f, dh, ms, m_tok, d_tok, dden, Cs, ns, dCs, dns, dq, dk, qdq, kdk, kdw, scale, T, NT,
        H=H, K=K, V=V, BT=L, BK=BK, BV=BV, **fl)
    mlstm_bwd_dv_kernel[(NV, NT, BH)](
        q, k, i, f, dh, ms, m_tok, d_tok, dCs, dv, scale, T, NT, H=H, K=K, V=V, BT=L, BK=BK, BV=BV, **fl)
    di, df = torch.empty_like(i), torch.empty_like(f)
    mlstm_bwd_gates_kernel[(NT, BH)](f, qdq, kdk, kdw, dg, Gi, Gf, di, df, T, NT, H=H, BT=L, NK=NK, NKV=NKV)
    dC0_, dn0, dm0 = None, None, None
    if C0 is not None:
        dC0_ = dC0.view(B, H, K, V)
        dn0 = dns.view(B, H, NT + 1, K)[:, :, 0]
        # m_0 scales the whole initial state (its representation), plus its f-branch path
        dm0 = ((C0.float() * dC0_).sum((-1, -2)) + (n0.float() * dn0).sum(-1) + Gf[:, 0].view(B, H))
        dC0_, dn0, dm0 = dC0_.to(C0.dtype), dn0.to(n0.dtype), dm0.to(m0.dtype)
    return dq, dk, dv, di, df, dC0_, dn0, dm0


def chunk_mlstm(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                scale: float | None = None, eps: float = 1e-6, chunk_size: int = 64,
                initial_state: MLSTMState | None = None, output_final_state: bool = True,
                fused_forward: bool | None = None,
                parallel_states: bool | None = None) -> tuple[Tensor, MLSTMState | None]:
    """Triton chunkwise mLSTM, the arguments of ``naive_chunk_mlstm``: ``q, k [B, T, H, K]``,
    ``v [B, T, H, V]`` (one dtype of bf16/fp16/fp32), gate preactivations ``i, f [B, T, H]``,
    ``initial_state (C [B, H, K, V], n [B, H, K], m [B, H])`` or None (zeros); ``chunk_size`` in
    16, 32, 64, 128. Returns ``(h [B, T, H, V] in v's dtype, (C, n, m) fp32 or None)``;
    differentiable w.r.t. q, k, v, i, f and the initial state (backward in Triton).
    ``fused_forward``: True runs the forward as one walk over the chunks (where it fits on chip:
    ``fused_forward_fits``, else a ValueError), False as the two passes; None picks the walk where it
    fits and its (V tile, batch, head) programs fill the GPU, once that crossover is measured
    (``FUSED_PROGRAMS_PER_SM``; until then None means the two passes).
    ``parallel_states``: True runs the two-pass forward's state pass and the backward's reverse one
    chunk-parallel (every chunk's own share at once, then an elementwise walk over the chunks: for
    grids whose (K tile, V tile, batch, head) programs leave the GPU idle, e.g. B = 1 with few
    heads), False as sequential walks; None picks by that grid once measured
    (``PARALLEL_STATES_BELOW_PER_SM``; until then the walks). It does not combine with the fused
    forward walk, which has no state pass."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else float(scale)
    _check(q, k, v, i, f, chunk_size, initial_state, scale, fused_forward, parallel_states)
    V = v.shape[-1]
    if T == 0:
        z = lambda *s: q.new_zeros(s, dtype=torch.float32)  # noqa: E731
        state = (tuple(s.float() for s in initial_state) if initial_state is not None
                 else (z(B, H, K, V), z(B, H, K), z(B, H)))
        return v.new_zeros(B, 0, H, V), (state if output_final_state else None)
    q, k, v, i, f = (t.contiguous() for t in (q, k, v, i, f))
    C0 = n0 = m0 = None
    if initial_state is not None:
        C0, n0, m0 = (s.contiguous() for s in initial_state)
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, i, f, C0, n0, m0))
    if parallel_states is None:
        parallel_states = not fused_forward and parallel_states_by_default(B, H, K, V, q.device)
    if fused_forward is None:
        fused_forward = not parallel_states and fused_forward_by_default(B, H, K, V, chunk_size, q.dtype,
                                                                         q.device)
    h, C, n, m = ChunkMLSTMFunction.apply(q, k, v, i, f, C0, n0, m0, scale, eps, chunk_size, training,
                                          bool(fused_forward), bool(parallel_states))
    return h, ((C, n, m) if output_final_state else None)
