"""Registry-driven conformance tests: every registered mixer gets them the moment its file exists."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from architectures import MIXERS, ImplUnavailableError
from tests.architectures.tiny import TINY_D_MODEL, tiny_mixer
from tests.conftest import assert_rel_close

NAMES = MIXERS.names()
F64_TOL = 1e-6  # DESIGN.md: step == forward and split == whole, in float64


def _x(B: int, T: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(B, T, TINY_D_MODEL, dtype=dtype)


def _numel(state) -> int:
    return sum(t.numel() for t in state.values())


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_finite(name):
    mixer = tiny_mixer(name)
    y, state = mixer(_x(2, 7, torch.float32))
    assert y.shape == (2, 7, TINY_D_MODEL) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert all(t.shape[0] == 2 for t in state.values()), "every state tensor is batch-first"


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    mixer = tiny_mixer(name).double()
    y, _ = mixer(_x(2, 19))
    y.pow(2).mean().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{name}.{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"


@pytest.mark.parametrize("T", [1, 7, 63, 130], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", NAMES)
def test_step_by_step_equals_forward(name, T):
    mixer = tiny_mixer(name).double().eval()
    x = _x(2, T)
    with torch.no_grad():
        y, _ = mixer(x)
        state = mixer.init_state(2, dtype=torch.float64)
        ys = []
        for t in range(T):
            y_t, state = mixer.step(x[:, t], state)
            ys.append(y_t)
    assert_rel_close(torch.stack(ys, dim=1), y, F64_TOL, f"{name} step-by-step output")


@pytest.mark.parametrize("T", [7, 63, 130], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", NAMES)
def test_split_forward_equals_whole(name, T):
    mixer = tiny_mixer(name).double().eval()
    x = _x(2, T)
    with torch.no_grad():
        y, _ = mixer(x)
        for cut in sorted({1, T // 2, T - 1}):
            y1, s = mixer(x[:, :cut])
            y2, _ = mixer(x[:, cut:], s)
            assert_rel_close(torch.cat([y1, y2], dim=1), y, F64_TOL, f"{name} split at {cut}")


@pytest.mark.parametrize("name", NAMES)
def test_init_state_is_a_valid_start(name):
    mixer = tiny_mixer(name).double()
    x = _x(2, 9)
    with torch.no_grad():
        y_none, _ = mixer(x)
        y_init, _ = mixer(x, mixer.init_state(2, dtype=torch.float64))
    assert_rel_close(y_init, y_none, F64_TOL, f"{name} forward from init_state")


@pytest.mark.parametrize("T", [1, 64, 130], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", NAMES)
def test_state_size_counts_the_carried_state(name, T):
    mixer = tiny_mixer(name)
    with torch.no_grad():
        _, state = mixer(_x(1, T, torch.float32))
    assert mixer.state_size(T) == _numel(state)
    assert _numel(mixer.init_state(1)) == mixer.state_size(0)


@pytest.mark.parametrize("name", NAMES)
def test_flops_cover_the_projections(name):
    """Every weight of a Linear is used once per token: at least 2 * T * (its numel) FLOPs."""
    mixer = tiny_mixer(name)
    linear = sum(m.weight.numel() for m in mixer.modules() if isinstance(m, nn.Linear))
    for T in (1, 64, 1000):
        flops = mixer.flops(T)
        assert isinstance(flops, int) and flops >= 2 * T * linear
    assert mixer.flops(2000) >= 2 * mixer.flops(1000) * 0.99  # never sublinear in length


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_runs(name, dtype):
    mixer = tiny_mixer(name).to(dtype)
    x = _x(2, 33, dtype)
    y, state = mixer(x)
    y_t, _ = mixer.step(x[:, 0], mixer.init_state(2, dtype=dtype))
    assert y.dtype == dtype and y_t.dtype == dtype
    assert torch.isfinite(y.float()).all() and torch.isfinite(y_t.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_shapes_raise(name):
    mixer = tiny_mixer(name)
    with pytest.raises(ValueError, match=r"d_model=32"):
        mixer(torch.randn(2, 5, TINY_D_MODEL + 1))
    with pytest.raises(ValueError, match=r"\[B, T, d_model\]"):
        mixer(torch.randn(5, TINY_D_MODEL))
    with pytest.raises(ValueError, match=r"\[B, d_model\]"):
        mixer.step(torch.randn(2, 1, TINY_D_MODEL), mixer.init_state(2))


@pytest.mark.parametrize("name", NAMES)
def test_impl_choice_is_explicit(name):
    mixer = tiny_mixer(name)
    assert mixer.impl == "reference"  # auto on a CPU tensor without the interpreter
    with pytest.raises(ValueError, match="Did you mean 'triton'"):
        tiny_mixer(name, impl="tritn")
    if "triton" not in MIXERS[name].IMPLS:
        with pytest.raises(ImplUnavailableError, match="use impl='reference'"):
            tiny_mixer(name, impl="triton")
