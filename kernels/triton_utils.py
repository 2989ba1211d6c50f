"""What every Triton kernel in ``kernels/`` shares: the interpreter switch, autotune config lists
that collapse to one config under the interpreter, and the device check that names the fix.

Triton reads ``TRITON_INTERPRET`` when a kernel is *decorated*, so the variable must be set
before a kernel module is imported (``tests/conftest.py`` sets it on machines without CUDA).
"""
from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``: kernels run on CPU tensors, one program at a time."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# Host-side integer helpers. Triton 3.6 wraps triton.cdiv and triton.next_power_of_2 as constexpr
# functions, ~2 us a call on the host (timeit, this 2-core CPU): a decode step's launch computed 3-7
# of them per call. These are the same formulas on plain ints.
def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints, as ``triton.cdiv``."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for n = 0), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def launch_ready(*expected: tuple[torch.Tensor | None, tuple[int, ...]]) -> bool:
    """True when every ``(tensor, shape)`` pair holds a tensor (None: an absent optional input) of
    exactly that shape, contiguous, on the first tensor's device, which the kernels run on (CUDA; the
    CPU under the interpreter). That is the decode loop's case: a step may then skip its full
    checks, whose one-error-per-bad-input messages serve every other case."""
    dev = expected[0][0].device
    if dev.type != ("cpu" if interpreting() else "cuda"):
        return False
    return all(t is None or (t.shape == s and t.is_contiguous() and t.device == dev) for t, s in expected)


def autotune_configs(configs: list) -> list:
    """The configs to autotune over: all of them on a GPU, the first alone under the interpreter
    (timing configs needs a GPU, and each interpreted run costs seconds)."""
    return configs[:1] if interpreting() else configs


def check_device(op: str, *tensors: torch.Tensor | None) -> None:
    """Raise unless every tensor is on CUDA, or on the CPU under the interpreter."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda" or (interpreting() and t.device.type == "cpu"):
            continue
        raise RuntimeError(
            f"{op}: the Triton kernel got a tensor on {t.device}; move the inputs to a CUDA device, "
            f"set TRITON_INTERPRET=1 before importing kernels to run it on the CPU (slow), or use "
            f"the PyTorch reference (impl='reference')"
        )


def check_head_shapes(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **gates: torch.Tensor) -> None:
    """The layout every headed op shares: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]`` and each
    per-token gate ``[B, T, H]``; one error naming the expected and the given shapes."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: expected q, k [B, T, H, K] and v [B, T, H, V]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    bad = {name: tuple(g.shape) for name, g in gates.items() if g.shape != q.shape[:3]}
    if bad:
        raise ValueError(f"{op}: gates {', '.join(gates)} must be [B, T, H] = {tuple(q.shape[:3])}; "
                         f"got {bad}")


def sequential_walk_fills(n_programs: int, device: torch.device, programs_per_sm: float) -> bool:
    """Whether a kernel that walks the whole sequence in each of ``n_programs`` programs has enough
    of them to keep the GPU busy: at least ``programs_per_sm`` times its SM count (a threshold each
    op measures). Always True under the interpreter, which has no SMs to fill."""
    if device.type != "cuda":
        return True
    return n_programs >= programs_per_sm * sm_count(device)


def sm_count(device: torch.device) -> int:
    """The CUDA device's SM count (cached: the device query costs microseconds a call)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
