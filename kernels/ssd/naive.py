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



def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, fp64 for fp64 inputs: ``architectures.mixer.state_dtype``, restated here because
    kernels never import architectures (DESIGN.md, "Imports run one way")."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    """``[B, T, ...]`` -> ``[B, T/Q, Q, ...]`` after zero-padding T up to a multiple of Q."""
    pad = -t.shape[1] % Q
    if pad:
        t = torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)
    return t.unflatten(1, (-1, Q))


def naive_chunk_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                    chunk_size: int = 64, initial_state: Tensor | None = None,
                    output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Chunked SSD, the four steps of the paper's minimal listing (``ssd_minimal_discrete``),
    vectorised over chunks. Any T: the tail is padded with dt = 0 tokens, which leave the state
    untouched (decay exp(0) = 1, input dt * x B^T = 0). Chunks are ``min(chunk_size, T)`` long.

    Heads are laid out ``[G, R]`` (group, head within group) so B and C broadcast over R
    without being copied H/G times. Shapes as in the module docstring.
    """
    G, R = _check_shapes(x, dt, A, B, C)
    b, T, H, P = x.shape
    N, cdt = B.shape[-1], state_dtype(x.dtype)
    Q = max(1, min(chunk_size, T))

    # [b, c, Q, H, ...] chunks -> [b, G, R, c, Q, ...]: heads outermost, so matmuls batch over them
    a = _chunk((dt * A).to(cdt), Q).unflatten(-1, (G, R)).permute(0, 3, 4, 1, 2)  # dt*A: [b,G,R,c,Q]
    xdt = _chunk((x * dt[..., None]).to(cdt), Q).unflatten(3, (G, R)).permute(0, 3, 4, 1, 2, 5)
    Bc = _chunk(B.to(cdt), Q).permute(0, 3, 1, 2, 4).unsqueeze(2)  # [b, G, 1, c, Q, N]
    Cc = _chunk(C.to(cdt), Q).permute(0, 3, 1, 2, 4).unsqueeze(2)
    a_cs = a.cumsum(-1)  # log-decay from the chunk start to each position, inclusive

    # 1. Diagonal blocks (intra-chunk outputs): y_l = sum_{s<=l} C_l.B_s exp(cs_l - cs_s) dt_s x_s.
    # exp of a difference of cumsums, masked to -inf above the diagonal *before* exp so that
    # neither the forward nor the backward ever sees an overflowing exp(positive).
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    seg = (a_cs[..., :, None] - a_cs[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = (Cc @ Bc.transpose(-1, -2)) * torch.exp(seg)  # [b, G, R, c, Q, Q]
    y = scores @ xdt  # [b, G, R, c, Q, P]

    # 2. Intra-chunk states (B terms): each chunk's contribution to the state at its end.
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)  # [b, G, R, c, Q]
    states = (xdt * decay_to_end[..., None]).transpose(-1, -2) @ Bc  # [b, G, R, c, P, N]

    # 3. Inter-chunk recurrence (A terms): the state entering each chunk. A scan over chunks,
    # linear in T/Q (the listing's [c, c] segsum matrix is quadratic in it).
    h = initial_state.to(cdt).unflatten(1, (G, R)) if initial_state is not None else \
        x.new_zeros(b, G, R, P, N, dtype=cdt)
    chunk_decay = torch.exp(a_cs[..., -1])  # [b, G, R, c]
    entering = []
    for c in range(a.shape[3]):
        entering.append(h)
        h = chunk_decay[..., c, None, None] * h + states[:, :, :, c]
    entering = torch.stack(entering, dim=3)  # [b, G, R, c, P, N]

    # 4. State -> output (C terms): y_l += exp(cs_l) C_l h_entering.
    y = y + (Cc @ entering.transpose(-1, -2)) * torch.exp(a_cs)[..., None]

    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, -1, H, P)[:, :T]  # back to [b, T, H, P]
    if D is not None:
        y = y + D.to(cdt)[:, None] * x.to(cdt)
    final = h.flatten(1, 2) if output_final_state else None
    return y.to(x.dtype), final
