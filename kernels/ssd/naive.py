"""SSD, the state-space dual of Mamba-2 (Dao & Gu, 2024), in pure PyTorch: the reference.

Per head h (scalar decay A_h < 0), with the head's group g = h // (H / G) supplying B and C:

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        h_t: [P, N]
    y_t = h_t C_t + D * x_t                                  y_t: [P]

Layouts (as mamba_ssm's ``mamba_chunk_scan_combined``): ``x: [B, T, H, P]``, ``dt: [B, T, H]``
(already softplus-ed and biased), ``A: [H]``, ``B, C: [B, T, G, N]``, ``D: [H]`` or None,
``state: [B, H, P, N]``; output ``y: [B, T, H, P]``. The D skip is applied here (optional) so
the op has the same signature as the fused kernels it stands in for.

Compute runs in ``state_dtype(x.dtype)`` (fp32, fp64 for fp64 inputs); ``y`` comes back in
``x.dtype`` and the final state in the compute dtype.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.dtypes import state_dtype





def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int]:
    """Validate the layouts; return (G, heads per group)."""
    H, G = x.shape[-2], B.shape[-2]
    if dt.shape != x.shape[:-1] or A.shape != (H,) or B.shape != C.shape or B.shape[:-2] != x.shape[:-2]:
        raise ValueError(
            f"ssd: expected x [B,T,H,P], dt [B,T,H], A [H], B/C [B,T,G,N]; got x {tuple(x.shape)}, "
            f"dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if H % G:
        raise ValueError(f"ssd: heads H={H} must be a multiple of groups G={G}")
    return G, H // G


def ssd_step(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
             D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token. ``x_t: [B, H, P]``, ``dt_t: [B, H]``, ``A: [H]``, ``B_t, C_t: [B, G, N]``,
    ``state: [B, H, P, N]`` -> ``(y_t: [B, H, P], new state)`` (the state keeps its dtype)."""
    cdt = state.dtype
    R = x_t.shape[1] // B_t.shape[1]  # heads per group: head h reads group h // R
    x, dt = x_t.to(cdt), dt_t.to(cdt)
    Bh = B_t.to(cdt).repeat_interleave(R, dim=1)  # [B, H, N]
    Ch = C_t.to(cdt).repeat_interleave(R, dim=1)
    decay = torch.exp(dt * A.to(cdt))  # [B, H]
    state = decay[..., None, None] * state + (dt[..., None] * x)[..., None] * Bh[:, :, None, :]
    y = (state @ Ch[..., None]).squeeze(-1)  # [B, H, P]
    if D is not None:
        y = y + D.to(cdt)[:, None] * x
    return y.to(x_t.dtype), state


def naive_recurrent_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                        initial_state: Tensor | None = None,
                        output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Token-by-token recurrence (the ground truth). Shapes as in the module docstring."""
    _check_shapes(x, dt, A, B, C)
    b, T, H, P = x.shape
    state = initial_state.to(state_dtype(x.dtype)) if initial_state is not None else \
        x.new_zeros(b, H, P, B.shape[-1], dtype=state_dtype(x.dtype))
    ys = []
    for t in range(T):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)
    return y, (state if output_final_state else None)


def _chunk(t: Tensor, Q: int) -> Tensor:
    """``[B, T, ...]`` -> ``[B, c, Q, ...]``, c = ceil(T / Q), zero-padding T up to c * Q."""
    pad = -t.shape[1] % Q
    if pad:
        t = torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)
    return t.unflatten(1, (-1, Q))


def _suffix_sum(a: Tensor) -> Tensor:
    """``out[:, :, s] = sum_{t > s} a[:, :, t]`` over dim 2, built without subtracting cumsums:
    exp(cs_end - cs_end) = 1 would feed +g and -g into d(a_end) that cancel only up to rounding."""
    tail = a[:, :, 1:].flip(2).cumsum(2).flip(2)
    return torch.cat([tail, torch.zeros_like(a[:, :, :1])], dim=2)


def naive_chunk_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                    chunk_size: int = 64, initial_state: Tensor | None = None,
                    output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Chunked SSD: the four steps of the paper's minimal listing (``ssd_minimal_discrete``,
    Dao & Gu 2024, Listing 1), vectorised over chunks. Shapes as in the module docstring.

    Chunks are ``Q = min(chunk_size, T)`` long; a ragged tail is padded with dt = 0 tokens, which
    leave the state untouched (decay exp(0) = 1, input 0 * x B^T = 0), so any T works.

    Layout, chosen to keep copies out of the matmuls: every per-token tensor stays in x's own
    order ``[b, c, Q, H, P]`` (H split as G groups x R heads per group), so that with R heads
    sharing one B/C the B- and C-products fold R into one matmul of width R*P instead of
    broadcasting B and C H/G times; only the diagonal blocks need x head-major (one copy).
    """
    G, R = _check_shapes(x, dt, A, B, C)
    b, T, H, P = x.shape
    cdt = state_dtype(x.dtype)
    Q = max(1, min(chunk_size, T))
    dt = _chunk(dt.to(cdt), Q)  # [b, c, Q, H]
    xdt = _chunk(x.to(cdt), Q) * dt[..., None]  # [b, c, Q, H, P]: the discretised input dt * x
    Bc = _chunk(B.to(cdt), Q).transpose(2, 3)  # [b, c, G, Q, N]
    Cc = _chunk(C.to(cdt), Q).transpose(2, 3)
    a = dt * A.to(cdt)  # [b, c, Q, H]: log-decay of each step
    a_cs = a.cumsum(2)  # log-decay from the chunk start, inclusive
    cs = a_cs.transpose(2, 3).unflatten(2, (G, R)).contiguous()  # [b, c, G, R, Q]

    # 1. Diagonal blocks (intra-chunk outputs): y_l = sum_{s<=l} (C_l . B_s) exp(cs_l - cs_s) dt_s x_s.
    # exp of a difference of cumsums, so no exp(+large) can overflow. The strictly-causal mask
    # zeroes the diagonal and the anti-causal half before exp (giving exactly 1), and the
    # causal C.B zeroes the anti-causal half after. Zeroing the diagonal too keeps its O(1)
    # terms out of d(cs): their +g and -g cancel only up to rounding, which swamps dA when
    # decays are fast. (A multiply by a 0/1 mask: faster on CPU than tril or masked_fill.)
    strictly_causal = torch.ones(Q, Q, dtype=cdt, device=x.device).tril(-1)
    CB = (Cc @ Bc.transpose(-1, -2)).tril().unsqueeze(3)  # [b, c, G, 1, Q, Q]
    L = torch.exp((cs[..., :, None] - cs[..., None, :]) * strictly_causal)  # [b, c, G, R, Q, Q]
    x_heads = xdt.unflatten(3, (G, R)).permute(0, 1, 3, 4, 2, 5)  # [b, c, G, R, Q, P]
    y_diag = (CB * L) @ x_heads  # [b, c, G, R, Q, P]

    # 2. Intra-chunk states (B terms of the off-diagonal blocks): each chunk's input, decayed to
    # the chunk's end. [R*P, Q] @ [Q, N] per group: the R heads of a group share B_s.
    decay_to_end = torch.exp(_suffix_sum(a))  # [b, c, Q, H]
    xw = (xdt * decay_to_end[..., None]).flatten(3).unflatten(3, (G, R * P))  # [b, c, Q, G, R*P]
    states = (xw.permute(0, 1, 3, 4, 2) @ Bc).unflatten(3, (R, P)).flatten(2, 3)  # [b, c, H, P, N]

    # 3. Inter-chunk recurrence (A terms): the state entering each chunk. A scan over the
    # chunks, linear in T/Q (the listing's [c, c] segsum matrix is quadratic in it).
    h = initial_state.to(cdt) if initial_state is not None else x.new_zeros(b, H, P, B.shape[-1], dtype=cdt)
    chunk_decay = torch.exp(a_cs[:, :, -1])[..., None, None]  # [b, c, H, 1, 1]
    entering = []
    # unbind, not states[:, c]: the backward of c selects would write c full-size zero tensors
    for decay_c, states_c in zip(chunk_decay.unbind(1), states.unbind(1)):
        entering.append(h)
        h = decay_c * h + states_c
    entering = torch.stack(entering, dim=1).unflatten(2, (G, R)).flatten(3, 4)  # [b, c, G, R*P, N]

    # 4. State -> output (C terms): y_l += exp(cs_l) C_l h_entering, again R*P wide per group.
    y_off = (Cc @ entering.transpose(-1, -2)).unflatten(-1, (R, P))  # [b, c, G, Q, R, P]
    y = y_off * torch.exp(cs).transpose(3, 4)[..., None] + y_diag.transpose(3, 4)

    y = y.transpose(2, 3).reshape(b, -1, H, P)[:, :T]  # a view when G == 1
    if D is not None:
        y = y + D.to(cdt)[:, None] * x.to(cdt)
    return y.to(x.dtype), (h if output_final_state else None)
