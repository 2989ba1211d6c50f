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

from kernels.dtypes import state_dtype




def gated_delta_rule_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                          scale: float | None = None) -> tuple[Tensor, Tensor]:
    """One token: ``q, k: [B, H, K]``, ``v: [B, H, V]``, ``g, beta: [B, H]``, ``state: [B, H, K, V]``
    -> ``(o: [B, H, V] in v's dtype, new state [B, H, K, V] in the work dtype)``."""
    out_dtype, dt = v.dtype, state_dtype(v.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))
    # alpha (I - beta k k^T) S + beta k v^T, as alpha S + k (beta (v - alpha S^T k))^T: O(KV), not O(K^2 V)
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
    dt = state_dtype(v.dtype)
    S = initial_state.to(dt) if initial_state is not None else v.new_zeros(B, H, K, v.shape[-1], dtype=dt)
    outs = []
    for t in range(T):
        o_t, S = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return o, (S if output_final_state else None)


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """``[B, T, H, *D]`` -> zero-padded, contiguous ``[N, B*H, C, *D]`` with ``N = ceil(T / C)``:
    chunk-major, so the sequential pass reads one contiguous slab per chunk. Padded tokens have
    k = v = beta = g = 0, so they leave the state untouched (alpha = 1, nothing written)."""
    B, T, H = x.shape[:3]
    pad = (-T) % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, 0, 0, pad))
    x = x.unflatten(1, (-1, C)).movedim(1, 0).movedim(3, 2)       # [N, B, H, C, *D]
    return x.reshape(x.shape[0], B * H, *x.shape[3:])


def _unit_lower_inverse(A: Tensor, leaf: int = 16) -> Tensor:
    """``(I + tril(A, -1))^{-1}`` for ``A: [..., n, n]`` (on and above the diagonal ignored),
    with matmuls only.

    LAPACK's batched trsm is slow for many small systems on CPU (and worse with threads), so:
    invert the ``leaf x leaf`` diagonal blocks by doubling, (I - N)^{-1} = (I + N)(I + N^2)
    (I + N^4)... (exact: N is nilpotent), then merge neighbours,
    [[T11, 0], [-T22 A21 T11, T22]], as fla's ``solve_tril`` merges 16x16 blocks into 64x64.
    """
    n = A.shape[-1]
    leaf = min(leaf, n)
    size = leaf
    while size < n:
        size *= 2
    if size > n:  # zero rows/columns extend I + A by an identity block: the top-left is unchanged
        A = F.pad(A, (0, size - n, 0, size - n))
    m = size // leaf
    blocks = torch.diagonal(A.unflatten(-1, (m, leaf)).unflatten(-3, (m, leaf)), dim1=-4, dim2=-2)
    N = -blocks.movedim(-1, -3).tril(-1)   # [..., m, leaf, leaf]; A's diagonal is ignored
    T, P, p = N + torch.eye(leaf, dtype=A.dtype, device=A.device), N, 1
    while 2 * p < leaf:
        P = P @ P
        T = T + T @ P
        p *= 2
    s = leaf
    while s < size:  # merge pairs of s x s inverses into 2s x 2s ones
        pairs = A.unflatten(-1, (-1, 2 * s)).unflatten(-3, (-1, 2 * s))
        A21 = torch.diagonal(pairs, dim1=-4, dim2=-2).movedim(-1, -3)[..., s:, :s]
        T11, T22 = T[..., 0::2, :, :], T[..., 1::2, :, :]
        T21 = -(T22 @ A21 @ T11)
        T = torch.cat([torch.cat([T11, torch.zeros_like(T11)], -1), torch.cat([T21, T22], -1)], -2)
        s *= 2
    return T.squeeze(-3)[..., :n, :n]


def naive_chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                 chunk_size: int = 64, scale: float | None = None,
                                 initial_state: Tensor | None = None,
                                 output_final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """The chunked (WY / UT-transform) form: everything that needs no state runs for all chunks
    at once; a short loop passes the state between chunks. Any ``T`` (the last chunk is padded;
    a sequence shorter than ``chunk_size`` is one chunk). Shapes as in the module docstring;
    returns ``(o: [B, T, H, V], final state [B, H, K, V] or None)``.

    Within a chunk with start state ``S0``, ``gamma_r = sum_{s<=r} g_s`` and
    ``D[r, j] = exp(gamma_r - gamma_j)`` for ``j <= r`` (0 above the diagonal), the recurrence
    unrolls to ``S_r = exp(gamma_r) S0 + sum_{j<=r} D[r, j] k_j u_j^T`` with the update vectors
    ``u_r = beta_r (v_r - alpha_r S_{r-1}^T k_r)``. Substituting ``S_{r-1}`` gives a unit lower
    triangular system (the UT transform; Yang et al. 2024, Sec. 3.3):

        (I + A) U = beta V - (beta exp(gamma) K) S0,      A = (beta K K^T * D) strictly lower
        U = U_v - W S0,  U_v = (I + A)^{-1} beta V,  W = (I + A)^{-1} beta exp(gamma) K
        O = (Q exp(gamma)) S0 + (Q K^T * D) U
        S_C = exp(gamma_C) S0 + (K exp(gamma_C - gamma))^T U
    """
    B, T, H, K = k.shape
    V, out_dtype, dt = v.shape[-1], v.dtype, state_dtype(v.dtype)
    scale = K ** -0.5 if scale is None else scale
    if T == 0:
        S = initial_state if initial_state is not None else v.new_zeros(B, H, K, V, dtype=dt)
        return v.new_zeros(B, 0, H, V), (S.to(dt) if output_final_state else None)
    C = min(chunk_size, T)
    q, k, v, g, beta = (_to_chunks(t.to(dt), C) for t in (q, k, v, g, beta))   # [N, B*H, C, *]

    # 1. Intra-chunk terms, all chunks at once.
    gamma = g.cumsum(-1)                                                   # [N, BH, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    k_beta = k * beta[..., None]
    T_inv = _unit_lower_inverse(k_beta @ k.mT * decay)                   # (I + A)^{-1}  [.., C, C]
    W = T_inv @ (k_beta * gamma.exp()[..., None])                        # [.., C, K]
    U_v = T_inv @ (v * beta[..., None])                                  # [.., C, V]
    P = (q * scale) @ k.mT * decay                                        # [.., C, C], causal
    q_decay = q * (scale * gamma.exp())[..., None]                        # [.., C, K]
    k_decay = (k * (gamma[..., -1:] - gamma).exp()[..., None]).mT        # [.., K, C]
    alpha_chunk = gamma[..., -1].exp()[..., None, None]                   # [N, BH, 1, 1]

    # 2. State passing, chunk by chunk: U_n = U_v - W S;  S <- exp(gamma_C) S + k_decay U_n.
    S = (initial_state.to(dt).reshape(B * H, K, V) if initial_state is not None
         else q.new_zeros(B * H, K, V))
    starts, U = [], []
    for n in range(q.shape[0]):
        starts.append(S)
        U.append(torch.baddbmm(U_v[n], W[n], S, alpha=-1))
        S = torch.baddbmm(S * alpha_chunk[n], k_decay[n], U[-1])

    # 3. Outputs, all chunks at once: O = (Q exp(gamma)) S0 + P U.
    o = torch.baddbmm(P.flatten(0, 1) @ torch.stack(U).flatten(0, 1),
                      q_decay.flatten(0, 1), torch.stack(starts).flatten(0, 1))  # [N * BH, C, V]
    o = o.unflatten(0, (-1, B, H)).permute(1, 0, 3, 2, 4).reshape(B, -1, H, V)[:, :T]
    return o.to(out_dtype), (S.view(B, H, K, V) if output_final_state else None)
