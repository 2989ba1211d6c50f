"""Shared test helpers: one error metric, ||actual - expected|| / ||expected||, and the
tiny per-mixer settings the registry-driven tests use."""
from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run on CPU tensors under the interpreter; Triton reads the switch when a kernel
# is decorated, so it is set here, before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # the interpreter's tl.associative_scan costs a Python call per element: minutes per case
    from kernels.selective_scan.interp import patch_interpreter_scan
    patch_interpreter_scan()  # a no-op without triton
    # out-of-bounds lanes a GPU leaves undefined read as NaN here, not as the interpreter's zeros
    from kernels.interp_poison import poison_undefined_loads
    poison_undefined_loads()

torch.set_num_threads(2)  # CI has 2 cores; keep runs deterministic and comparable


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64 (0 when both are exactly zero)."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.norm().item()
    diff = (a - e).norm().item()
    return diff / denom if denom > 0 else diff


def assert_rel_close(actual, expected, tol: float, name: str = "tensor") -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = rel_err(actual, expected)
    assert err <= tol, f"{name}: ||a - b|| / ||b|| = {err:.3e} > {tol:.0e}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_run_close(actual, expected, tol: dict[str, float]) -> None:
    """Compare ``(output, final state, {input name: gradient})`` of a fast form against its
    reference: ``tol["out"]`` for output and state, ``tol["grad"]`` for every gradient."""
    (y, h, g), (y_ref, h_ref, g_ref) = actual, expected
    assert_rel_close(y, y_ref.to(y.dtype), tol["out"], "output")
    assert_rel_close(h, h_ref.to(h.dtype), tol["out"], "final state")
    for k in g_ref:
        assert_rel_close(g[k], g_ref[k].to(g[k].dtype), tol["grad"], f"d{k}")


@pytest.fixture
def poison_empty(monkeypatch):
    """Fill every floating tensor from ``torch.empty`` / ``empty_like`` / ``new_empty`` with NaN
    (fla's tests/conftest.py does the same), so a kernel that leaves part of an output unwritten
    fails the comparison instead of passing on whatever the allocator handed back."""
    def poisoned(make):
        def wrapper(*args, **kwargs):
            t = make(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t
        return wrapper
    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))
