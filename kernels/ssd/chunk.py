"""Chunked SSD (Mamba-2) in Triton: ``chunk_ssd``, same semantics as ``naive_chunk_ssd``.

Forward, one of two paths (at one chunk size, the same products and roundings; ``fused_forward``
picks, and by default the grid size does):
- fused (chunk_fwd.ssd_fwd_fused_kernel): one program per (P tile, batch, head) walks the chunks,
  the state in registers, writing y as it goes; chunk states never reach HBM. Its parallelism is
  the (batch, head) pairs alone, so it runs where they fill the GPU.
- two kernels (chunk_fwd.py): a state pass, sequential over chunks and parallel over (batch, head,
  state tiles), writes the state entering each chunk and the chunk-local cumsum of dt A; an output
  pass, parallel over (row block, chunk, batch, head), adds the inter-chunk term exp(cs) C h_c^T
  to the causal intra-chunk term. It splits the state into tiles, so it keeps a GPU busy with few
  (batch, head) pairs (long sequences at small batch).
Backward (chunk_bwd.py): the state pass again (recompute, nothing but the inputs is saved), a
reverse state pass for the states' gradients, then one pass for dx / ddt / dD and one per (chunk,
group) for dB / dC / dA.

Memory traffic and FLOPs per token are counted in chunk_fwd.py, chunk_bwd.py and the README.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.ssd.chunk_bwd import bwd
from kernels.ssd.chunk_fwd import fwd_fused, fwd_output, fwd_states
from kernels.triton_utils import check_device, sequential_walk_fills

CHUNK_SIZES = (16, 32, 64, 128, 256)
# The fused forward's chunk: at 128 it takes 1.11-1.15 ms against 0.60-0.62 at 64 (H100, H 64, P 64,
# N 128, B*T 32k, T 1k-8k); smaller chunk sizes are kept as asked.
FUSED_MAX_CHUNK = 64
# The fused forward runs where (P tiles x batch x heads) >= 1.5 programs per SM. H100 (132 SMs),
# same shape: 256 programs (T <= 8k) fused 0.60-0.62 ms against 0.77-0.83 for the two kernels;
# 128 programs (T 16k, B 2) 1.07 against 0.87; 64 (T 32k, B 1) 2.09 against 1.12.
FUSED_PROGRAMS_PER_SM = 1.5
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # x, B and C share one of them


def check_inputs(op: str, x, dt, A, B, C, D, state) -> None:
    """One clear error for every bad input: shapes, groups, dtypes, devices."""
    if x.dim() != 4 or dt.shape != x.shape[:-1] or A.shape != (x.shape[2],) or B.dim() != 4 \
            or B.shape != C.shape or B.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"{op}: expected x [B,T,H,P], dt [B,T,H], A [H], B/C [B,T,G,N]; got x {tuple(x.shape)}, "
            f"dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    b, _T, H, P = x.shape
    G, N = B.shape[-2:]
    if H % G:
        raise ValueError(f"{op}: heads H={H} must be a multiple of groups G={G}")
    if D is not None and D.shape != (H,):
        raise ValueError(f"{op}: D must be [H] = [{H}], got {tuple(D.shape)}")
    if state is not None and state.shape != (b, H, P, N):
        raise ValueError(f"{op}: the state must be [B,H,P,N] = {[b, H, P, N]}, got {list(state.shape)}")
    if P > 256 or N > 256:
        raise ValueError(f"{op}: headdim P={P} and d_state N={N} must be <= 256 (whole tiles in registers)")
    if not (x.dtype == B.dtype == C.dtype) or x.dtype not in INPUT_DTYPES:
        raise TypeError(f"{op}: x, B, C must share one dtype among fp16/bf16/fp32; got x {x.dtype}, "
                        f"B {B.dtype}, C {C.dtype} (cast them to x.dtype)")
    for name, t in (("dt", dt), ("A", A), ("D", D)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    if state is not None and state.dtype != torch.float32:
        raise TypeError(f"{op}: the state must be fp32, got {state.dtype} (pass state.float())")
    check_device(op, x, dt, A, B, C, D, state)


def fused_forward_by_default(b: int, H: int, P: int, device: torch.device) -> bool:
    """chunk_ssd's forward path when not asked: fused where its (P tiles of 64, batch, head)
    programs fill the GPU."""
    return sequential_walk_fills(b * H * -(-P // 64), device, FUSED_PROGRAMS_PER_SM)


class ChunkSSDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, BT, output_final_state, fused_forward):
        if fused_forward:
            y, ht = fwd_fused(x, dt, A, B, C, D, initial_state, min(BT, FUSED_MAX_CHUNK), output_final_state)
        else:
            h, ht, cs = fwd_states(x, dt, A, B, initial_state, BT, store_h=True, store_final=output_final_state)
            y = fwd_output(x, dt, B, C, D, h, cs, BT)
        ctx.save_for_backward(x, dt, A, B, C, D, initial_state)
        ctx.BT = BT
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        x, dt, A, B, C, D, h0 = ctx.saved_tensors
        dy = dy.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dx, ddt, dA, dB, dC, dD, dh0 = bwd(x, dt, A, B, C, D, h0, dy, dht, ctx.BT)
        return dx, ddt, dA, dB, dC, dD, dh0, None, None, None


def chunk_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
              chunk_size: int = 64, initial_state: Tensor | None = None,
              output_final_state: bool = True, fused_forward: bool | None = None) -> tuple[Tensor, Tensor | None]:
    """Chunked SSD. ``x: [B, T, H, P]``, ``dt: [B, T, H]`` (softplus-ed), ``A: [H]`` (< 0),
    ``B, C: [B, T, G, N]`` (head h reads group h // (H / G)), ``D: [H]`` or None,
    ``initial_state: [B, H, P, N]`` fp32 or None -> ``(y [B, T, H, P] in x.dtype, final state
    [B, H, P, N] fp32 or None)``. ``chunk_size``: a power of two in [16, 256]; sequences shorter
    than a chunk run in one chunk of the next power of two >= 16. Differentiable w.r.t. every
    tensor input. ``fused_forward``: True runs the forward as one walk over the chunks (on chunks of
    at most 64 tokens), False as the two kernels; None picks by whether the (batch, head) pairs
    fill the GPU (the crossover measured on an H100, ``FUSED_PROGRAMS_PER_SM``)."""
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_ssd: chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")
    check_inputs("chunk_ssd", x, dt, A, B, C, D, initial_state)
    T = x.shape[1]
    BT = min(chunk_size, max(16, 1 << (T - 1).bit_length()))  # short inputs: one small chunk
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    D = D.contiguous() if D is not None else None
    initial_state = initial_state.contiguous() if initial_state is not None else None
    if fused_forward is None:
        fused_forward = fused_forward_by_default(x.shape[0], x.shape[2], x.shape[3], x.device)
    return ChunkSSDFunction.apply(x, dt, A, B, C, D, initial_state, BT, output_final_state, bool(fused_forward))
