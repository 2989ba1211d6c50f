"""A KV cache that grows in place: decoding appends one row per token without copying the rows
before it, so a decode step reads the cache once instead of copying all of it.

The state keeps plain tensors ``[B, H, S, D]`` (the contract's batch-first state, whose numel is
what ``state_size`` counts); each is a view of the first S rows of a larger buffer. ``append``
writes the new rows into the buffer's spare rows when nobody has claimed them yet and returns the
longer view; otherwise (no room, a dtype change, autograd recording, or a second step from the
same state, as in beam search) it copies into a new buffer with room to spare, so every state
handed out stays valid. Appending T tokens one at a time costs O(T) copies in all (doubling).
"""
from __future__ import annotations

import torch
from torch import Tensor

MIN_SPARE_ROWS = 16


def _buffer_of(cache: Tensor) -> Tensor | None:
    """The buffer ``cache`` is the leading-rows view of, when it is one. The link is an attribute
    set by ``append`` on the view it returns, not ``Tensor._base``: under ``torch.inference_mode``
    views have no ``_base``, and every decode step would copy the whole cache."""
    buf = getattr(cache, "_arena_buffer", None)
    if buf is None or buf.data_ptr() != cache.data_ptr() or buf.stride() != cache.stride():
        return None
    return buf


def append(cache: Tensor, new: Tensor) -> Tensor:
    """``cache: [B, H, S, D]``, ``new: [B, H, T, D]`` -> ``[B, H, S + T, D]`` (``new``'s dtype)."""
    if torch.is_grad_enabled() and (new.requires_grad or cache.requires_grad):
        # training: autograd records a concatenation (a buffer written in place could not be
        # differentiated through)
        return torch.cat([cache.to(new.dtype), new], dim=2)
    S, T = cache.shape[2], new.shape[2]
    buf = _buffer_of(cache)
    if (buf is None or buf.dtype != new.dtype or buf.shape[2] < S + T
            or getattr(buf, "_arena_rows_used", -1) != S):  # no room, or the rows were handed out
        spare = S + T + MIN_SPARE_ROWS if T == 1 else 0  # decoding: double; a prefill: exact
        buf = new.new_empty(new.shape[0], new.shape[1], S + T + spare, new.shape[3])
        buf[:, :, :S] = cache
    buf[:, :, S:S + T] = new
    buf._arena_rows_used = S + T
    view = buf[:, :, :S + T]
    view._arena_buffer = buf
    return view
