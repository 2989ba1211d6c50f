"""Mamba-1's selective scan in Triton: ``selective_scan`` with the arguments of
``naive_chunk_selective_scan``, differentiable w.r.t. every input through one autograd Function.

Forward (``scan_fwd.py``): one program per (BD channels, batch row), ``[BD, N]`` fp32 state in
registers, T walked in blocks of ``chunk_size`` tokens, each block one ``[BT, BD, N]``
associative scan over time. It saves only the fp32 state entering every block,
``[B, ceil(T / chunk_size), D, N]``; the backward (``scan_bwd.py``) walks the blocks in reverse,
recomputes each block's states from its saved entry state and runs the reverse scan of dL/dh.

Per token (bf16, ``Dch`` channels, ``N`` states): forward ``8 Dch + 4 N`` bytes plus
``4 Dch N / chunk_size`` for the saved states under autograd, ``Dch N`` exps; backward about
``14 Dch + 8 N`` bytes, the saved states again and the fp32 dB/dC partials (``16 N Dch / BD``,
written then summed), ``Dch N`` exps (see the kernels' docstrings and README.md).
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.selective_scan.scan_bwd import selective_scan_bwd
from kernels.selective_scan.scan_fwd import check_inputs, selective_scan_fwd


def _contig(t: Tensor | None) -> Tensor | None:
    return t.contiguous() if t is not None else None


class SelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size,
                output_final_state):
        save = any(ctx.needs_input_grad[:9])
        y, ht, hc = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                       output_final_state, save, chunk_size)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hc)
            ctx.meta = (delta_softplus, chunk_size, initial_state is not None,
                        initial_state.dtype if initial_state is not None else None)
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        u, delta, A, B, C, D, z, delta_bias, hc = ctx.saved_tensors
        delta_softplus, chunk_size, has_h0, h0_dtype = ctx.meta
        grads = selective_scan_bwd(dy.contiguous(), _contig(dht), u, delta, A, B, C, D, z, delta_bias,
                                   delta_softplus, hc, has_h0, chunk_size)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
        dh0 = dh0.to(h0_dtype) if dh0 is not None else None
        return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None, None, None


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   chunk_size: int = 16, initial_state: Tensor | None = None,
                   output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Triton selective scan, same semantics as ``naive_chunk_selective_scan``.

    ``u, delta, z: [B, T, D]`` (fp32, fp16 or bf16, one dtype), ``A: [D, N]``, ``B, C: [B, T, N]``,
    ``D, delta_bias: [D]``, ``initial_state: [B, D, N]`` (any float dtype, read as fp32).
    ``chunk_size`` (power of two >= 16) is the token block of the kernels and the spacing of the
    states saved for the backward: each thread keeps a column of ``chunk_size`` tokens in
    registers, and the backward spills on sm_90 above 16 (ptxas: 220 registers at 16, spills at
    32 and 64: slower, still correct). Returns ``(y [B, T, D] in u.dtype, final state fp32
    [B, D, N] or None)``.
    """
    check_inputs("selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size)
    args = [_contig(t) for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)]
    return SelectiveScanFunction.apply(*args, delta_softplus, chunk_size, output_final_state)
