"""mLSTM (Beck et al. 2024, "xLSTM"; as used in xLSTM 7B, Beck et al. 2025), the references.

Per head, with a key-by-value memory ``C: [K, V]``, a normaliser ``n: [K]`` and a max-stabiliser
``m`` (a scalar), input-gate preactivation ``i_t`` (exponential gate, used in log space) and
forget-gate preactivation ``f_t`` (sigmoid gate, ``log f_t = logsigmoid(f_t)``):

    m_t = max(log f_t + m_{t-1}, i_t)
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T
    n_t = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t) k_t
    h_t = C_t^T q~_t / (max(|n_t^T q~_t|, exp(-m_t)) + eps),   q~_t = scale * q_t

The true (unstabilised) memory is ``exp(m) C``; ``m`` only keeps the exponentials finite. The
``+ eps`` is applied to the stabilised denominator, exactly as mlstm_kernels'
``mlstm_recurrent_step__native_fw`` does, so ``h`` depends on ``m`` (by ~eps): both forms here
compute the very same ``m_t``, so they agree to rounding.

Layout: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``i, f: [B, T, H]``, state the tuple
``(C [B, H, K, V], n [B, H, K], m [B, H])`` (zeros at the start, as mlstm_kernels). Work happens in
fp32 (fp64 for fp64 inputs); ``h`` comes back in ``v``'s dtype, the state in the work dtype.
``scale`` defaults to ``K ** -0.5`` and ``eps`` to 1e-6 (mlstm_kernels defaults).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dtypes import state_dtype

MLSTMState = tuple[Tensor, Tensor, Tensor]




def _zero_state(B: int, H: int, K: int, V: int, like: Tensor, dtype: torch.dtype) -> MLSTMState:
    z = lambda *s: like.new_zeros(s, dtype=dtype)  # noqa: E731
    return z(B, H, K, V), z(B, H, K), z(B, H)


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState,
               scale: float | None = None, eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """One token: ``q, k: [B, H, K]``, ``v: [B, H, V]``, ``i, f: [B, H]`` (preactivations),
    ``state = (C [B, H, K, V], n [B, H, K], m [B, H])`` -> ``(h: [B, H, V], new state)``."""
    out_dtype, dt = v.dtype, state_dtype(v.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, i, f = (t.to(dt) for t in (q, k, v, i, f))
    C, n, m = (s.to(dt) for s in state)
    log_f = F.logsigmoid(f)
    m_new = torch.maximum(log_f + m, i)
    f_act = torch.exp(log_f + m - m_new)                     # [B, H]
    i_act = torch.exp(i - m_new)
    C = f_act[..., None, None] * C + i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = f_act[..., None] * n + i_act[..., None] * k
    q = q * scale
    num = torch.einsum("bhk,bhkv->bhv", q, C)
    den = torch.maximum((q * n).sum(-1).abs(), torch.exp(-m_new)) + eps
    return (num / den[..., None]).to(out_dtype), (C, n, m_new)


def naive_recurrent_mlstm(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                          scale: float | None = None, eps: float = 1e-6,
                          initial_state: MLSTMState | None = None,
                          output_final_state: bool = True) -> tuple[Tensor, MLSTMState | None]:
    """The ground truth, token by token. Shapes as in the module docstring;
    returns ``(h: [B, T, H, V], final state (C, n, m) or None)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = state_dtype(v.dtype)
    state = initial_state if initial_state is not None else _zero_state(B, H, K, V, v, dt)
    state = tuple(s.to(dt) for s in state)
    outs = []
    for t in range(T):
        h_t, state = mlstm_step(q[:, t], k[:, t], v[:, t], i[:, t], f[:, t], state, scale, eps)
        outs.append(h_t)
    h = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V)
    return h, (state if output_final_state else None)


def _to_chunks(x: Tensor, L: int, value: float = 0.0) -> Tensor:
    """``[B, T, H, ...]`` -> ``[B, H, N, L, ...]`` with ``N = ceil(T / L)``, the tail padded with
    ``value``. Padding tokens get i = -inf (no write) and log f = 0 (no decay): the state and the
    stabiliser pass through them unchanged, so the final state is the one after token T."""
    pad = (-x.shape[1]) % L
    x = x.movedim(1, 2)                                           # [B, H, T, ...]
    if pad:
        x = torch.cat([x, x.new_full((*x.shape[:2], pad, *x.shape[3:]), value)], dim=2)
    return x.unflatten(2, (-1, L)).contiguous()  # contiguous once, not inside every matmul


def _chunk_states(k: Tensor, v: Tensor, log_i: Tensor, b: Tensor, state: MLSTMState):
    """The states entering every chunk, and the final one.

    ``k: [B, H, N, L, K]``, ``v: [B, H, N, L, V]``, ``log_i, b: [B, H, N, L]`` (``b`` the
    within-chunk inclusive cumsum of log f). Returns ``(C_in [B, H, N, K, V], n_in [B, H, N, K],
    m_in [B, H, N], final state)``. The boundary stabiliser is the recurrence's own ``m``:
    ``m_{c+1} = max(g_c + m_c, a*_c)``, unrolled with a cummax, so the outputs match the
    recurrence including its ``exp(-m)`` floor. Only a scaled add per chunk stays sequential.
    """
    C0, n0, m0 = state
    g = b[..., -1]                                                # [B, H, N] log decay of a chunk
    a = g[..., None] - b + log_i                                  # log weight of k_s v_s^T at chunk end
    a_max = a.amax(-1)                                            # [B, H, N]
    kw = k * torch.exp(a - a_max[..., None])[..., None]           # weights <= 1
    C_write = kw.transpose(-1, -2) @ v                            # [B, H, N, K, V] chunk-local writes
    n_write = kw.sum(-2)                                          # [B, H, N, K]
    # 1. m after chunk c: G_c + max(m_0, max_{j<=c} (a*_j - G_j)), G the inclusive cumsum of g
    G = g.cumsum(-1)
    m_out = G + torch.maximum(m0[..., None], torch.cummax(a_max - G, dim=-1).values)
    m_prev = torch.cat([m0[..., None], m_out[..., :-1]], dim=-1)  # m entering chunk c
    decay = torch.exp(g + m_prev - m_out)                         # <= 1
    write = torch.exp(a_max - m_out)[..., None]                   # <= 1
    C_write, n_write = C_write * write[..., None], n_write * write
    # 2. the sequential part: C_{c+1} = decay_c C_c + D_c (and n alike), one fused op per chunk
    Cs, ns = [C0], [n0]
    for c in range(g.shape[-1]):
        dc = decay[..., c, None]
        Cs.append(torch.addcmul(C_write[:, :, c], dc[..., None], Cs[-1]))
        ns.append(torch.addcmul(n_write[:, :, c], dc, ns[-1]))
    C_all, n_all = torch.stack(Cs, dim=2), torch.stack(ns, dim=2)  # [B, H, N + 1, ...]
    final = (C_all[:, :, -1], n_all[:, :, -1], m_out[..., -1])
    return C_all[:, :, :-1], n_all[:, :, :-1], m_prev, final


def naive_chunk_mlstm(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                      scale: float | None = None, eps: float = 1e-6, chunk_size: int = 64,
                      initial_state: MLSTMState | None = None,
                      output_final_state: bool = True) -> tuple[Tensor, MLSTMState | None]:
    """Chunkwise form (mlstm_kernels' native chunkwise: parallel within a chunk, the states C, n, m
    passed between chunks), vectorised over chunks but for one scaled add per chunk. Any T, the tail
    chunk padded internally. Shapes as in the module docstring; returns
    ``(h: [B, T, H, V], final state (C, n, m) or None)``."""
    B, T, H, K = q.shape
    V, L, out_dtype, dt = v.shape[-1], chunk_size, v.dtype, state_dtype(v.dtype)
    scale = K ** -0.5 if scale is None else scale
    if L < 1 or scale <= 0:
        raise ValueError(f"naive_chunk_mlstm: need chunk_size >= 1 and scale > 0, got {L} and {scale}")
    state = initial_state if initial_state is not None else _zero_state(B, H, K, V, v, dt)
    state = tuple(s.to(dt) for s in state)
    if T == 0:
        return v.new_zeros(B, 0, H, V), (state if output_final_state else None)
    q, k, v = (_to_chunks(t.to(dt), L) for t in (q, k, v))       # [B, H, N, L, D]
    log_i = _to_chunks(i.to(dt), L, float("-inf"))                # [B, H, N, L]
    log_f = _to_chunks(F.logsigmoid(f.to(dt)), L)
    b = log_f.cumsum(-1)                                          # decay from chunk start to l
    # 1. states entering each chunk
    C_in, n_in, m_in, final = _chunk_states(k, v, log_i, b, state)
    # 2. the combined stabiliser m_l = max(b_l + m_in, max_{s<=l} (b_l - b_s + i_s)) == the
    #    recurrence's m_t; the in-chunk max is a cummax, O(L) rather than a max over [L, L]
    m_inter = b + m_in[..., None]                                 # [B, H, N, L]
    m = torch.maximum(m_inter, b + torch.cummax(log_i - b, dim=-1).values)
    # 3. intra-chunk weights scale * exp(b_l - b_s + i_s - m_l) for s <= l, masked before the exp
    #    (in place: these [L, L] buffers are the largest temporaries)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_D = (b - m + math.log(scale))[..., :, None] - (b - log_i)[..., None, :]
    D = log_D.masked_fill_(~causal, float("-inf")).exp_()         # [B, H, N, L, L]
    S = (q @ k.transpose(-1, -2)) * D
    # 4. numerator and denominator: the carried state plus the causal in-chunk part
    q_inter = q * (scale * torch.exp(m_inter - m))[..., None]
    num = q_inter @ C_in + S @ v                                  # [B, H, N, L, V]
    den = (q_inter @ n_in[..., None]).squeeze(-1) + S.sum(-1)     # [B, H, N, L]
    h = num / (torch.maximum(den.abs(), torch.exp(-m)) + eps)[..., None]
    h = h.flatten(2, 3)[:, :, :T].transpose(1, 2)                 # [B, T, H, V]
    return h.to(out_dtype), (final if output_final_state else None)
