"""The selective scan of Mamba-1 (Gu & Dao, 2023, "Mamba", Algorithm 2), in pure PyTorch.

Per channel d and state index n, with a diagonal A (A[d, n] < 0) and input-dependent B, C, delta:

    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n]  (+ D[d] u_t[d])  (* silu(z_t[d]))

Layouts. Mamba-1 has no heads (every channel has its own N-wide state), so the channel tensors
are ``[B, T, D]`` rather than the ``[B, T, H, P]`` of the headed ops; a Triton kernel keeps this
signature. ``u, delta, z: [B, T, D]``, ``A: [D, N]``, ``B, C: [B, T, N]`` (one group, as the
Mamba-1 block uses), ``D, delta_bias: [D]``, ``state: [B, D, N]``; ``y: [B, T, D]``.

As mamba_ssm's ``selective_scan_fn`` / ``selective_scan_ref`` (ops/selective_scan_interface.py)
the op takes the raw delta with an optional ``delta_bias`` and ``delta_softplus``, and applies
the D skip and the silu(z) gate itself, so a fused kernel can drop in with the same arguments.

Compute runs in ``state_dtype(u.dtype)`` (fp32, fp64 for fp64 inputs); ``y`` comes back in
``u.dtype`` and the final state in the compute dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dtypes import state_dtype




def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    Dch, N = A.shape
    if (delta.shape != u.shape or u.shape[-1] != Dch or B.shape != C.shape
            or B.shape[:-1] != u.shape[:-1] or B.shape[-1] != N):
        raise ValueError(
            f"selective_scan: expected u, delta [B,T,D] (or [B,D] for a step), A [D,N], B/C [B,T,N]; "
            f"got u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )


def _delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, cdt: torch.dtype) -> Tensor:
    """The step size as the scan uses it: softplus(delta + bias) when asked, in the compute dtype."""
    delta = delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)
    return F.softplus(delta) if delta_softplus else delta


def _skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """``y + D u``, then ``* silu(z)``: the epilogue of mamba_ssm's scan, in y's dtype."""
    if D is not None:
        y = y + D.to(y.dtype) * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_step(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
                        D: Tensor | None = None, z_t: Tensor | None = None, delta_bias: Tensor | None = None,
                        delta_softplus: bool = False) -> tuple[Tensor, Tensor]:
    """One token. ``u_t, delta_t, z_t: [B, D]``, ``A: [D, N]``, ``B_t, C_t: [B, N]``,
    ``state: [B, D, N]`` -> ``(y_t: [B, D] in u_t.dtype, new state in the state's dtype)``."""
    _check_shapes(u_t, delta_t, A, B_t, C_t)
    cdt = state.dtype
    dt = _delta(delta_t, delta_bias, delta_softplus, cdt)  # [B, D]
    u = u_t.to(cdt)
    decay = torch.exp(dt[..., None] * A.to(cdt))  # [B, D, N]: exp(delta A), zero-order hold
    state = decay * state + (dt * u)[..., None] * B_t.to(cdt)[:, None, :]  # + (delta B) u, Euler
    y = (state @ C_t.to(cdt)[..., None]).squeeze(-1)  # [B, D]
    return _skip_and_gate(y, u, D, z_t).to(u_t.dtype), state


def naive_recurrent_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                   D: Tensor | None = None, z: Tensor | None = None,
                                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                                   initial_state: Tensor | None = None,
                                   output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Token-by-token recurrence (the ground truth). Shapes as in the module docstring."""
    _check_shapes(u, delta, A, B, C)
    b, T, Dch = u.shape
    cdt = state_dtype(u.dtype)
    state = initial_state.to(cdt) if initial_state is not None else u.new_zeros(b, Dch, A.shape[1], dtype=cdt)
    ys = []
    for t in range(T):
        y_t, state = selective_scan_step(u[:, t], delta[:, t], A, B[:, t], C[:, t], state, D,
                                         None if z is None else z[:, t], delta_bias, delta_softplus)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    return y, (state if output_final_state else None)


def _position_major(t: Tensor, Q: int) -> Tensor:
    """``[B, T, K]`` -> ``[Q, B, c, K]`` (c = ceil(T / Q)), zero-padding T up to c * Q, so that
    position j of every chunk is one contiguous slice ``[B, c, K]``."""
    pad = -t.shape[1] % Q
    if pad:
        t = torch.cat([t, t.new_zeros(t.shape[0], pad, t.shape[2])], dim=1)
    return t.unflatten(1, (-1, Q)).permute(2, 0, 1, 3).contiguous()


def naive_chunk_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Tensor | None = None, z: Tensor | None = None,
                               delta_bias: Tensor | None = None, delta_softplus: bool = False,
                               chunk_size: int = 64, initial_state: Tensor | None = None,
                               output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Chunked scan: all chunks advance in lock-step, then the states are passed between chunks.
    Shapes as in the module docstring; any T (the tail is padded with delta = 0 tokens, which
    leave the state untouched: decay exp(0) = 1, input 0).

    A per-(d, n) decay has no matmul form (Mamba-2's scalar decay per head is what gives SSD
    one), so the parallelism is across chunks. With Q = min(chunk_size, T) and c = ceil(T / Q):

    1. chunk states: every chunk but the last scans its Q tokens from a zero state, all chunks
       at once (Q steps on ``[B, c, D, N]``);
    2. inter-chunk recurrence: h_in[k+1] = exp(A sum_{chunk k} delta) h_in[k] + S_k (c steps);
    3. outputs: every chunk scans again from its true entering state and reads y_t = h_t C_t.

    Only products of decays <= 1 ever occur (no exp of a positive cumsum), so it is as stable as
    the recurrence. 2Q + c Python steps instead of T; each touches ``[B, c, D, N]`` tensors.
    """
    _check_shapes(u, delta, A, B, C)
    b, T, Dch = u.shape
    N, cdt = A.shape[1], state_dtype(u.dtype)
    Q = max(1, min(chunk_size, T))
    A_ = A.to(cdt)
    dt = _delta(delta, delta_bias, delta_softplus, cdt)  # before padding: pads must stay delta = 0
    dts = _position_major(dt, Q)  # [Q, b, c, D]
    dtus = _position_major(dt * u.to(cdt), Q)  # [Q, b, c, D]: the discretised input delta u
    Bs, Cs = _position_major(B.to(cdt), Q), _position_major(C.to(cdt), Q)  # [Q, b, c, N]
    nc = dts.shape[2]
    h = initial_state.to(cdt) if initial_state is not None else u.new_zeros(b, Dch, N, dtype=cdt)
    # unbind, not [j] indexing: the backward of Q selects would write Q full-size zero tensors
    steps = list(zip(dts.unbind(0), dtus.unbind(0), Bs.unbind(0)))

    # 1. chunk states from zero, for the chunks whose end feeds another chunk
    S = u.new_zeros(b, nc - 1, Dch, N, dtype=cdt)
    if nc > 1:
        for dt_j, dtu_j, B_j in steps:
            dt_j, dtu_j, B_j = dt_j[:, :-1], dtu_j[:, :-1], B_j[:, :-1]
            S = torch.addcmul(dtu_j[..., None] * B_j[..., None, :], torch.exp(dt_j[..., None] * A_), S)

    # 2. inter-chunk recurrence: the state entering each chunk
    chunk_decay = torch.exp(dts[:, :, :-1].sum(0)[..., None] * A_)  # [b, c-1, D, N]
    entering = [h]
    for decay_k, S_k in zip(chunk_decay.unbind(1), S.unbind(1)):
        entering.append(torch.addcmul(S_k, decay_k, entering[-1]))
    h = torch.stack(entering, dim=1)  # [b, c, D, N]

    # 3. outputs: rescan each chunk from its entering state
    ys = []
    for (dt_j, dtu_j, B_j), C_j in zip(steps, Cs.unbind(0)):
        h = torch.addcmul(dtu_j[..., None] * B_j[..., None, :], torch.exp(dt_j[..., None] * A_), h)
        ys.append((h @ C_j[..., None]).squeeze(-1))  # [b, c, D]
    y = torch.stack(ys, dim=2).reshape(b, nc * Q, Dch)[:, :T]
    y = _skip_and_gate(y, u, D, z)
    return y.to(u.dtype), (h[:, -1] if output_final_state else None)
