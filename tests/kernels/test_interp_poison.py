"""Under the interpreter (CPU), lanes a GPU leaves undefined read as NaN (tests/conftest.py turns
this on): a kernel that relies on the interpreter's zero padding fails here, not on the GPU."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tl = triton.language

if torch.cuda.is_available():
    pytest.skip("the poison applies to the CPU interpreter only", allow_module_level=True)


@triton.jit
def _load_tile(x, y, n, HOW: tl.constexpr, BLOCK: tl.constexpr):
    """Copy an 8-wide tile of the n-long ``x`` into ``y`` with one of three out-of-bounds policies."""
    o = tl.arange(0, BLOCK)
    p_x = tl.make_block_ptr(x, (n,), (1,), (0,), (BLOCK,), (0,))
    if HOW == 0:
        b = tl.load(p_x, boundary_check=(0,))                          # undefined padding
    elif HOW == 1:
        b = tl.load(x + o, mask=o < n)                                  # masked, no `other`
    else:
        b = tl.load(p_x, boundary_check=(0,), padding_option="zero")   # defined: zeros
    tl.store(y + o, b)


@pytest.mark.parametrize("how, tail", [(0, "nan"), (1, "nan"), (2, "zero")])
def test_out_of_bounds_lanes(how, tail):
    x, y = torch.arange(1.0, 6.0), torch.full((8,), 7.0)
    _load_tile[(1,)](x, y, 5, HOW=how, BLOCK=8)
    assert torch.equal(y[:5], x)
    assert (torch.isnan(y[5:]) if tail == "nan" else y[5:] == 0).all(), y
