"""Gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks"), the references.

Per head, with a key-by-value state ``S: [K, V]``, log decay ``g_t`` (``alpha_t = exp(g_t)``)
and writing strength ``beta_t``:

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale * q_t)

Layout: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``g, beta: [B, T, H]``, state
``[B, H, K, V]``. Work happens in fp32 (fp64 for fp64 inputs); ``o`` comes back in ``v``'s
dtype, the state in the work dtype. ``scale`` defaults to ``K ** -0.5`` (as fla's ops do).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Kernels import nothing from architectures/ (DESIGN.md); same rule as mixer.state_dtype.
    return torch.float64 if dtype == torch.float64 else torch.float32


def gated_delta_rule_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                          scale: float | None = None) -> tuple[Tensor, Tensor]:
    """One token: ``q, k: [B, H, K]``, ``v: [B, H, V]``, ``g, beta: [B, H]``, ``state: [B, H, K, V]``
    -> ``(o: [B, H, V] in v's dtype, new state [B, H, K, V] in the work dtype)``."""
    out_dtype, dt = v.dtype, _work_dtype(v.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))
    S = state.to(dt) * g.exp()[..., None, None]                       # alpha_t S_{t-1}
    delta = beta[..., None] * (v - torch.einsum("bhk,bhkv->bhv", k, S))  # beta (v - S^T k)
    S = S + k[..., :, None] * delta[..., None, :]                     # ... + k delta^T
    o = torch.einsum("bhk,bhkv->bhv", q * scale, S)
    return o.to(out_dtype), S


def naive_recurrent_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                     scale: float | None = None, initial_state: Tensor | None = None,
                                     output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """The ground truth, token by token. Shapes as in the module docstring;
    returns ``(o: [B, T, H, V], final state [B, H, K, V] or None)``."""
    B, T, H, K = k.shape
    dt = _work_dtype(v.dtype)
    S = initial_state.to(dt) if initial_state is not None else v.new_zeros(B, H, K, v.shape[-1], dtype=dt)
    outs = []
    for t in range(T):
        o_t, S = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return o, (S if output_final_state else None)


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """``[B, T, H, ...]`` -> zero-padded ``[B, H, N, C, ...]`` with ``N = ceil(T / C)``.
    Padded tokens have k = v = beta = g = 0: they leave the state untouched (alpha = 1, no write)."""
    pad = (-x.shape[1]) % C
    x = x.movedim(1, 2)                                           # [B, H, T, ...]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.unflatten(2, (-1, C))


def _intra_chunk(q, k, v, g, beta):
    """Everything that needs no state, for all chunks at once. Inputs ``[B, H, N, C, *]``
    (``q`` already scaled). Returns the terms of the state-passing step below:

    Within a chunk, with ``gamma_r = sum_{s<=r} g_s`` and ``D[r, j] = exp(gamma_r - gamma_j)``
    (j <= r), unrolling the recurrence from the chunk's start state ``S0`` gives the update
    vectors ``u_r = beta_r (v_r - k_r^T S_{r-1} alpha_r)`` as the solution of a unit lower
    triangular system (the WY / UT transform, Yang et al. 2024, Sec. 3.2):

        (I + A) U = beta V - (beta exp(gamma) K) S0,   A[r, j] = beta_r D[r, j] k_r^T k_j, j < r
        =>  U = U_v - W S0,   [W | U_v] = (I + A)^{-1} [beta exp(gamma) K | beta V]

    and then  O = (Q exp(gamma)) S0 + (Q K^T * D) U,
              S_C = exp(gamma_C) S0 + (K exp(gamma_C - gamma))^T U.
    Substituting U gives an affine map of S0 per chunk: ``O = Q_eff S0 + O_intra`` and
    ``S_C = M S0 + b``, so only a [K, K] x [K, V] product per chunk stays sequential.
    """
    C = q.shape[-2]
    gamma = g.cumsum(-1)                                                   # [B, H, N, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    k_beta = k * beta[..., None]
    A = (k_beta @ k.transpose(-1, -2) * decay).tril(-1)                   # strictly lower
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    rhs = torch.cat([k_beta * gamma.exp()[..., None], v * beta[..., None]], dim=-1)
    X = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    W, U_v = X.split([k.shape[-1], v.shape[-1]], dim=-1)                 # [.., C, K], [.., C, V]
    P = q @ k.transpose(-1, -2) * decay                                   # [.., C, C], causal
    q_eff = q * gamma.exp()[..., None] - P @ W                            # [.., C, K]
    o_intra = P @ U_v                                                     # [.., C, V]
    k_decay = k * (gamma[..., -1:] - gamma).exp()[..., None]              # [.., C, K]
    eye_k = torch.eye(k.shape[-1], dtype=q.dtype, device=q.device)
    M = gamma[..., -1, None, None].exp() * eye_k - k_decay.transpose(-1, -2) @ W  # [.., K, K]
    b = k_decay.transpose(-1, -2) @ U_v                                   # [.., K, V]
    return q_eff, o_intra, M, b


def naive_chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                 chunk_size: int = 64, scale: float | None = None,
                                 initial_state: Tensor | None = None,
                                 output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """The chunked (WY) form: parallel within and across chunks, a short sequential pass of the
    state between chunks. Any ``T`` (the last chunk is padded). Shapes as in the module
    docstring; returns ``(o: [B, T, H, V], final state [B, H, K, V] or None)``."""
    B, T, H, K = k.shape
    V, out_dtype, dt = v.shape[-1], v.dtype, _work_dtype(v.dtype)
    scale = K ** -0.5 if scale is None else scale
    C = max(1, min(chunk_size, T))  # a short sequence is one chunk: no padding to chunk_size
    q, k, v, g, beta = (_to_chunks(t.to(dt), C) for t in (q, k, v, g, beta))
    q_eff, o_intra, M, b = _intra_chunk(q * scale, k, v, g, beta)

    # Sequential pass over chunks: S_{n+1} = M_n S_n + b_n; keep each chunk's start state.
    S = initial_state.to(dt) if initial_state is not None else q.new_zeros(B, H, K, V)
    starts = []
    for n in range(q.shape[2]):
        starts.append(S)
        S = torch.baddbmm(b[:, :, n].flatten(0, 1), M[:, :, n].flatten(0, 1), S.flatten(0, 1)).view(B, H, K, V)
    o = q_eff @ torch.stack(starts, dim=2) + o_intra                     # [B, H, N, C, V]
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2)                        # [B, T, H, V]
    return o.to(out_dtype), (S if output_final_state else None)
