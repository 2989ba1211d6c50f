"""Make the Triton interpreter as strict as a GPU about loads whose padding is undefined.

On a GPU, ``tl.load(block_ptr, boundary_check=...)`` without ``padding_option="zero"`` and
``tl.load(ptr, mask=m)`` without ``other`` leave the out-of-bounds lanes *undefined* (Triton's
docs: '"" means an undefined value'): whatever the registers held. The interpreter fills them with
zeros, so a kernel that leans on zero padding passes every CPU test and goes wrong on the GPU
(seen: Gated DeltaNet's backward at T = 1, where 63 of 64 chunk rows are padding).
``poison_undefined_loads()`` fills those lanes with NaN for float loads instead, so such a
kernel fails on the CPU too. Integer loads keep zeros (no NaN to poison with).
"""
from __future__ import annotations

import numpy as np


def poison_undefined_loads() -> bool:
    """Patch the interpreter's builder; False (and nothing patched) without triton."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    builder = interpreter.InterpreterBuilder
    masked_load = builder.create_masked_load
    pointer_load = builder.create_tensor_pointer_load

    def nan_other(ptrs):
        dtype_tt = ptrs.get_element_ty()
        dtype_np = interpreter._get_np_dtype(dtype_tt)
        if not np.issubdtype(dtype_np, np.floating):
            return None
        return interpreter.TensorHandle(np.full_like(ptrs.data, np.nan, dtype=dtype_np), dtype_tt)

    def create_masked_load(self, ptrs, mask, other, *args):
        return masked_load(self, ptrs, mask, nan_other(ptrs) if other is None else other, *args)

    def create_tensor_pointer_load(self, ptr, boundary_check, padding_option, *args):
        if padding_option is None and boundary_check:
            ptrs, masks = ptr.materialize_pointers(boundary_check)
            return masked_load(self, ptrs, masks, nan_other(ptrs), *args)
        return pointer_load(self, ptr, boundary_check, padding_option, *args)

    builder.create_masked_load = create_masked_load
    builder.create_tensor_pointer_load = create_tensor_pointer_load
    return True
