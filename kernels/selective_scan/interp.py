"""CPU-interpreter speed-up for the selective scan's tests and ``bench --smoke``.

Triton's interpreter runs ``tl.associative_scan`` with a user combine function one element at a
time (``ScanOps.generic_scan``: a Python call per element, ~40 s for one backward on a 16^3
tile). Every combine function of this op is elementwise, so calling it once per position of the
scanned axis on whole slices gives the same numbers. ``patch_interpreter_scan()`` swaps that in;
it changes nothing on a GPU, and nothing when the interpreter's internals are not as expected.
"""
from __future__ import annotations

import numpy as np


def _sliced_scan(self, input):
    """``generic_scan`` with the combine applied to whole ``[..., 1, ...]`` slices of the axis."""
    datas = [arg.handle.data for arg in input]
    outs = [np.empty_like(d) for d in datas]
    n = datas[0].shape[self.axis]
    acc = None
    for k in range(n):
        idx = (slice(None),) * self.axis + (slice(k, k + 1),)
        cur = tuple(self.to_tensor(np.ascontiguousarray(d[idx]), a.dtype) for d, a in zip(datas, input))
        if acc is None:
            acc = cur
        else:
            ret = self.combine_fn.fn(*acc, *cur)
            acc = ret if isinstance(ret, tuple) else (ret,)
        for o, a in zip(outs, acc):
            o[idx] = a.handle.data
    return [self.to_tensor(o, a.dtype) for o, a in zip(outs, input)]


def patch_interpreter_scan() -> bool:
    """Install the sliced scan into Triton's interpreter; True when it did."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    ops = getattr(interpreter, "ScanOps", None)
    if ops is None or not hasattr(ops, "generic_scan"):
        return False
    ops.generic_scan = _sliced_scan
    return True
