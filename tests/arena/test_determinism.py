"""arena.determinism finds the first kernel launch whose results change between identical calls,
and the kernels that read memory nothing wrote (under the interpreter, with planted kernels)."""
import itertools

import torch
import triton
import triton.language as tl

from arena.determinism import check, mixer_run


@triton.jit
def _scale_kernel(x, y, n, c, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y + offs, tl.load(x + offs, mask=m, other=0.0) * c, mask=m)


@triton.jit
def _first_half_kernel(x, y, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n // 2
    tl.store(y + offs, tl.load(x + offs, mask=m, other=0.0), mask=m)


X = torch.arange(8, dtype=torch.float32)


def _steady_then_drifting():
    calls = itertools.count()

    def run():
        a, b = torch.empty_like(X), torch.empty_like(X)
        _scale_kernel[(1,)](X, a, 8, 2.0, BLOCK=8)
        _scale_kernel[(1,)](a, b, 8, 1.0 + 1e-3 * next(calls), BLOCK=8)  # a different factor each call
        return {"a": a, "b": b}
    return run


def test_the_first_launch_that_drifts_is_named():
    report = check(_steady_then_drifting(), reps=2, nan_fill=False)
    assert not report.deterministic
    assert all(r.differing == ["b"] for r in report.repeats)
    assert all(r.first_launch.startswith("#1 _scale_kernel (arg 1 (8,)") for r in report.repeats)
    assert "NOT deterministic: 2 of 2" in str(report)


def test_reading_unwritten_memory_shows_with_nan_filled_buffers():
    def run():
        y = torch.empty_like(X)
        _first_half_kernel[(1,)](X, y, 8, BLOCK=8)  # rows 4..7 keep whatever torch.empty held
        return {"y": y}

    report = check(run, reps=2)
    assert report.deterministic  # the constant fill makes the unwritten rows equal every run
    assert report.finite_with_nan_fill is False
    assert "depends on memory that nothing wrote" in str(report)


def test_a_mixer_with_triton_kernels_is_deterministic_under_the_interpreter():
    report = check(mixer_run("mamba2", 32, batch=2, seq_len=40, device="cpu"), reps=1)
    assert report.deterministic and report.finite_with_nan_fill
    assert {"y", "dx"} <= set(report.names) and len(report.names) > 3  # parameter gradients too
