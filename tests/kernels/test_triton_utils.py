"""kernels/triton_utils.py's host-side integer helpers against Triton's own."""
from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from kernels.triton_utils import cdiv, next_power_of_2  # noqa: E402


def test_host_integer_helpers_match_triton():
    for n in [*range(0, 300), 1023, 1024, 1025, 65535, 65536, 2**40 + 3]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 16, 64, 100):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
