"""Split-K decode attention against the naive reference (float64 on the same values): cache
lengths 1, 63, 130 (one block, ragged blocks, several splits), per-batch lengths, GQA, rows
beyond the cache length filled with NaN, and poisoned allocations. No gradients: decode only."""
from __future__ import annotations

import pytest
import torch

from kernels.attention_decode import attention_decode
from tests.conftest import assert_rel_close

pytest.importorskip("triton")
from kernels.attention_decode.decode import attention_decode_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: ieee dots, fp32 softmax (~1e-7). fp16: the output is rounded once to fp16 (half-ulp
# 4.9e-4) and p is rounded to fp16 before the p.v dot (same order again).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _case(B, H, Hkv, S, D, dtype, lens, block, split_len):
    q = torch.randn(B, H, D, device=DEVICE).to(dtype)
    k = torch.randn(B, Hkv, S, D, device=DEVICE).to(dtype)
    v = torch.randn(B, Hkv, S, D, device=DEVICE).to(dtype)
    n = torch.as_tensor(lens, device=DEVICE).expand(B)
    beyond = torch.arange(S, device=DEVICE)[None, None, :, None] >= n[:, None, None, None]
    k, v = k.masked_fill(beyond, float("nan")), v.masked_fill(beyond, float("nan"))  # never read
    o = attention_decode_triton(q, k, v, lens, _block=block, _split_len=split_len)
    ref = attention_decode(q.double(), k.double(), v.double(), lens)
    assert o.dtype == dtype
    assert_rel_close(o, ref, TOL[dtype], "output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("L", [1, 63, 130], ids=lambda n: f"L{n}")
def test_decode_matches_reference(L, dtype, poison_empty):
    _case(2, 4, 2, 130, 32, dtype, L, 16, 48)  # 48-row splits of 16-row blocks: 3 splits at L=130


@pytest.mark.parametrize("lens,split_len", [([1, 130], 32), ([63, 5], None)], ids=["L1-130-split32", "L63-5-auto"])
def test_decode_per_batch_lengths(lens, split_len, poison_empty):
    """A [B] length tensor: splits are planned over the whole cache, most empty for short rows."""
    _case(2, 4, 1, 130, 16, torch.float32, torch.tensor(lens, device=DEVICE), 16, split_len)


def test_decode_mha_and_ragged_head_dim(poison_empty):
    _case(1, 2, 2, 70, 24, torch.float16, 70, 32, 64)


def test_decode_bad_inputs_raise():
    q, k = torch.randn(1, 3, 16, device=DEVICE), torch.randn(1, 2, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        attention_decode_triton(q, k, k, 4)
    with pytest.raises(ValueError, match=r"must be in \[1, S = 8\]"):
        attention_decode_triton(q[:, :2], k, k, 9)
    with pytest.raises(TypeError, match="share one dtype"):
        attention_decode_triton(q[:, :2], k.half(), k, 4)


def test_reference_matches_sdpa_on_the_prefix():
    q, k, v = torch.randn(2, 4, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.double()[:, :, None], k.double()[:, :, :33], v.double()[:, :, :33], enable_gqa=True)[:, :, 0]
    assert_rel_close(attention_decode(q.double(), k.double(), v.double(), 33), sdpa, 1e-12, "reference")
