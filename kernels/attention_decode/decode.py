"""Split-K ("flash decoding") attention for one new token against a KV cache, in Triton.

Memory: the naive form (``naive.py``) reads the valid cache once, 2 Hkv L D elements per token
(bf16: 4 Hkv L D bytes), plus q and o; it is entirely memory-bound (4 H L D FLOPs against
4 Hkv L D bytes: 1 FLOP/byte at H = Hkv). One program per (batch, kv head) would leave most of
the GPU idle at small B, so the cache rows are split across programs too:

1. ``attention_decode_split_kernel``, grid (B, Hkv, splits): the G = H / Hkv query heads that
   share kv head ``i_h`` are one [BG, D] tile (GQA: each cache row is read once for all G
   heads), walked over its split of the rows in [BS, D] blocks with the online softmax; writes
   per split the running max m, the sum l (both in log2 units) and the unnormalised
   accumulator [BG, D], fp32.
2. ``attention_decode_combine_kernel``, grid (B, H): o = sum_i 2^(m_i - M) acc_i /
   sum_i 2^(m_i - M) l_i over the splits.

Partials: B H splits (D + 2) fp32, small next to the cache. Rows at and beyond ``cache_len``
are never loaded (masked), so whatever they hold cannot reach the output.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import cdiv, check_device, interpreting, next_power_of_2, sm_count

_LOG2E = 1.4426950408889634


@triton.jit
def attention_decode_split_kernel(q, k, v, lens, m_part, l_part, o_part, LEN, SPLIT_LEN, qk_scale,
                                  s_qb, s_qh, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs,
                                  H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BG: tl.constexpr,
                                  BD: tl.constexpr, BS: tl.constexpr, HAS_LENS: tl.constexpr,
                                  IEEE: tl.constexpr):
    i_b, i_h, i_sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_sp = tl.num_programs(2)
    n = LEN
    if HAS_LENS:
        n = tl.load(lens + i_b).to(tl.int32)
    o_g, o_d = tl.arange(0, BG), tl.arange(0, BD)
    m_g, m_d = o_g < G, o_d < D
    o_h = i_h * G + o_g  # the query heads reading kv head i_h
    p_q = q + i_b.to(tl.int64) * s_qb + o_h[:, None] * s_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_g[:, None] & m_d[None, :], other=0.)  # [BG, BD]
    b_m = tl.full([BG], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BG], dtype=tl.float32)
    b_acc = tl.zeros([BG, BD], dtype=tl.float32)
    p_k = k + i_b.to(tl.int64) * s_kb + i_h.to(tl.int64) * s_kh
    p_v = v + i_b.to(tl.int64) * s_vb + i_h.to(tl.int64) * s_vh
    s_end = tl.minimum((i_sp + 1) * SPLIT_LEN, n)
    for s0 in range(i_sp * SPLIT_LEN, s_end, BS):
        o_s = s0 + tl.arange(0, BS)
        m_s = o_s < s_end
        b_k = tl.load(p_k + o_s.to(tl.int64)[:, None] * s_ks + o_d[None, :],
                      mask=m_s[:, None] & m_d[None, :], other=0.)  # [BS, BD]
        if IEEE:  # fp32 inputs: no tf32 rounding of q.k
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * qk_scale  # [BG, BS], log2 units
        else:
            b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale
        b_s = tl.where(m_s[None, :], b_s, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_s, axis=1))  # finite: the block holds a valid row
        b_p = tl.exp2(b_s - b_mn[:, None])
        b_alpha = tl.exp2(b_m - b_mn)
        b_l = b_l * b_alpha + tl.sum(b_p, axis=1)
        b_v = tl.load(p_v + o_s.to(tl.int64)[:, None] * s_vs + o_d[None, :],
                      mask=m_s[:, None] & m_d[None, :], other=0.)  # [BS, BD]
        if IEEE:
            b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p, b_v, input_precision="ieee")
        else:
            b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        b_m = b_mn
    o_p = (i_b.to(tl.int64) * H + o_h) * n_sp + i_sp  # [BG] rows of the [B, H, splits] partials
    tl.store(m_part + o_p, b_m, mask=m_g)
    tl.store(l_part + o_p, b_l, mask=m_g)
    tl.store(o_part + o_p[:, None] * D + o_d[None, :], b_acc, mask=m_g[:, None] & m_d[None, :])


@triton.jit
def attention_decode_combine_kernel(m_part, l_part, o_part, o, s_ob, s_oh, NSP,
                                    H: tl.constexpr, D: tl.constexpr, BSP: tl.constexpr, BD: tl.constexpr):
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    o_sp, o_d = tl.arange(0, BSP), tl.arange(0, BD)
    m_sp, m_d = o_sp < NSP, o_d < D
    o_p = (i_b.to(tl.int64) * H + i_h) * NSP + o_sp  # [BSP]
    b_m = tl.load(m_part + o_p, mask=m_sp, other=float("-inf"))
    b_l = tl.load(l_part + o_p, mask=m_sp, other=0.)
    b_mx = tl.max(b_m, axis=0)
    b_w = tl.where(b_m == float("-inf"), 0., tl.exp2(b_m - b_mx))  # empty splits weigh 0
    b_acc = tl.load(o_part + o_p[:, None] * D + o_d[None, :], mask=m_sp[:, None] & m_d[None, :], other=0.)
    b_den = tl.sum(b_w * b_l, axis=0)
    b_o = tl.sum(b_w[:, None] * b_acc, axis=0) / tl.where(b_den > 0, b_den, 1.)  # [BD]; 0 if no rows
    tl.store(o + i_b.to(tl.int64) * s_ob + i_h * s_oh + o_d, b_o.to(o.dtype.element_ty), mask=m_d)


def _plan_splits(B: int, Hkv: int, S: int, BS: int, device) -> int:
    """Rows per split (a multiple of BS): enough programs to fill the GPU (~2 per SM)."""
    n_sm = sm_count(device) if device.type == "cuda" else 4
    n_blocks = cdiv(max(S, 1), BS)
    splits = max(1, min(n_blocks, cdiv(2 * n_sm, B * Hkv)))
    return cdiv(n_blocks, splits) * BS


def attention_decode_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            cache_len: torch.Tensor | int, _block: int | None = None,
                            _split_len: int | None = None) -> torch.Tensor:
    """``q [B, H, D]``, ``k_cache, v_cache [B, Hkv, S, D]`` (last dim contiguous), ``cache_len``
    an int or ``[B]`` ints (each >= 1) -> ``o [B, H, D]`` in q's dtype. ``_block`` (rows per
    block) and ``_split_len`` (rows per split, a multiple of it) are for tests."""
    op = "attention_decode_triton"
    has_lens = isinstance(cache_len, torch.Tensor)
    check_device(op, q, k_cache, v_cache, cache_len if has_lens else None)
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"{op}: want q [B, H, D] and k_cache = v_cache shape [B, Hkv, S, D]; got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, H, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    if k_cache.shape[0] != B or k_cache.shape[3] != D or H % Hkv:
        raise ValueError(f"{op}: cache {tuple(k_cache.shape)} does not match q {tuple(q.shape)} "
                         f"(same B and D, H a multiple of Hkv)")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k_cache.dtype != q.dtype \
            or v_cache.dtype != q.dtype:
        raise TypeError(f"{op}: q, k_cache, v_cache must share one dtype of fp16, bf16, fp32; got "
                        f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype} (use kernels.attention_decode.naive)")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError(f"{op}: the head dim must be contiguous; call .contiguous() on q and the caches")
    if has_lens and tuple(cache_len.shape) != (B,):
        raise ValueError(f"{op}: cache_len must be an int or a [B] = [{B}] tensor, got {tuple(cache_len.shape)}")
    if not has_lens and not 1 <= int(cache_len) <= S:
        raise ValueError(f"{op}: cache_len = {cache_len} must be in [1, S = {S}]")
    BS = _block or (16 if interpreting() else 64)
    split_len = _split_len or _plan_splits(B, Hkv, S if has_lens else int(cache_len), BS, q.device)
    n_sp = cdiv(S if has_lens else int(cache_len), split_len)
    G = H // Hkv
    m_part = torch.empty(B, H, n_sp, device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    o_part = torch.empty(B, H, n_sp, D, device=q.device, dtype=torch.float32)
    attention_decode_split_kernel[(B, Hkv, n_sp)](
        q, k_cache, v_cache, cache_len if has_lens else None, m_part, l_part, o_part,
        0 if has_lens else int(cache_len), split_len, D ** -0.5 * _LOG2E,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        H=H, G=G, D=D, BG=max(16, next_power_of_2(G)), BD=max(16, next_power_of_2(D)), BS=BS,
        HAS_LENS=has_lens, IEEE=q.dtype == torch.float32, num_warps=4)
    o = torch.empty_like(q)
    attention_decode_combine_kernel[(B, H)](m_part, l_part, o_part, o, o.stride(0), o.stride(1), n_sp,
                                            H=H, D=D, BSP=next_power_of_2(n_sp),
                                            BD=next_power_of_2(D), num_warps=1)
    return o
