"""Out-of-bounds checks for Triton kernels on the CPU interpreter, which has no memory checker.

Every tensor a kernel touches is placed inside a larger buffer with guard bands before and after
it, filled with NaN (a sentinel for integer dtypes):

* a stray **write** changes a guard band, which ``Guards.check()`` reports (tensor, side, offset);
* a stray **read** pulls NaN into the result, so outputs and gradients must be finite.

The interpreter hands kernels the whole storage of each tensor (the guards included), so offsets
computed from a tensor's base pointer land in its own bands, as they would land in a neighbour
inside the CUDA caching allocator's segment, where compute-sanitizer cannot see them either.

Usage (``guards`` fixture or the context manager)::

    with guarded_allocations() as g:           # torch.empty / empty_like / new_empty are guarded
        q = g.wrap(q)                          # inputs too: same values, inside guard bands
        o, s = op(q, ...)
    g.check()                                  # raises AssertionError naming the tensor
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class Guards:
    """Guard-banded tensors and the check that their bands are untouched."""

    def __init__(self, min_pad: int = 64):
        self.min_pad = min_pad
        self._bands: list[tuple[torch.Tensor, int, int, str]] = []     # (buffer, start, end, label)

    def alloc(self, shape, dtype: torch.dtype, device, label: str = "tensor") -> torch.Tensor:
        """A contiguous tensor of ``shape`` inside guard bands (its own values: NaN / sentinel)."""
        shape = torch.Size(shape)
        n = shape.numel()
        pad = max(self.min_pad, n)                                       # a stray tile-sized jump stays inside
        buf = torch.full((pad + n + pad,), _sentinel(dtype), dtype=dtype, device=device)  # not torch.empty: patched
        self._bands.append((buf, pad, pad + n, f"{label} {tuple(shape)} {dtype}"))
        return buf[pad:pad + n].view(shape)

    def wrap(self, t: torch.Tensor | None, label: str = "input") -> torch.Tensor | None:
        """A guarded copy of ``t`` (requires_grad carried over: the copy is a new leaf)."""
        if t is None:
            return None
        g = self.alloc(t.shape, t.dtype, t.device, label)
        g.copy_(t.detach())
        return g.requires_grad_() if t.requires_grad else g

    def check(self) -> None:
        """Raise if any guard band was written."""
        for buf, start, end, label in self._bands:
            for side, band, base in (("before", buf[:start], 0), ("after", buf[end:], end)):
                bad = ~_is_sentinel(band)
                if bad.any():
                    first = int(bad.nonzero()[0, 0]) + base - (start if side == "before" else end)
                    raise AssertionError(f"out-of-bounds write {side} {label}: {int(bad.sum())} elements "
                                         f"changed, the first at offset {first} from the band start")


def _sentinel(dtype: torch.dtype):
    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).min


def _is_sentinel(band: torch.Tensor) -> torch.Tensor:
    if band.dtype.is_floating_point or band.dtype.is_complex:
        return torch.isnan(band)
    return band == _sentinel(band.dtype)


@contextlib.contextmanager
def guarded_allocations(min_pad: int = 64) -> Iterator[Guards]:
    """Make ``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` return guard-banded,
    NaN-filled tensors for the duration (non-contiguous requests pass through unguarded)."""
    g = Guards(min_pad)
    originals = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def guarded(make, name):
        def wrapper(*args, **kwargs):
            t = make(*args, **kwargs)                                    # shape, dtype, device resolved by torch
            if not t.is_contiguous() or kwargs.get("pin_memory") or t.is_sparse:
                return t
            return g.alloc(t.shape, t.dtype, t.device, name).requires_grad_(t.requires_grad)
        return wrapper

    torch.empty = guarded(originals[0], "torch.empty")
    torch.empty_like = guarded(originals[1], "torch.empty_like")
    torch.Tensor.new_empty = guarded(originals[2], "new_empty")
    try:
        yield g
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals
