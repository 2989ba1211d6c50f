"""Every mixer with a Triton implementation against its own reference, module level: the same
weights, the same input and start state -> the same output, final state and gradients of every
parameter, the input and the start state; and the same decode steps. Registry-driven, so a
mixer gains these checks the moment it lists "triton" in IMPLS.

On a machine without CUDA the kernels run under TRITON_INTERPRET=1 (tests/conftest.py) on CPU
tensors, in fp32: the interpreter's bf16 arithmetic is wrong, so bf16 is checked on a GPU by the
kernels' bench scripts instead."""
from __future__ import annotations

import pytest
import torch

from architectures import MIXERS
from tests.architectures.tiny import TINY_D_MODEL, tiny_mixer
from tests.conftest import assert_rel_close

pytest.importorskip("triton")

TRITON_MIXERS = [n for n in MIXERS.names() if "triton" in MIXERS[n].IMPLS]
# fp32 kernels against the fp32 reference: both round differently (other summation orders and
# chunkings), so outputs and states agree to ~1e-6 relative; gradients sum over T and the
# batch (and the decay-rate gradients over cancelling terms), hence 1e-4.
TOL = {"out": 1e-5, "grad": 1e-4}


def _pair(name: str):
    """A reference mixer and a Triton one holding the same weights."""
    ref = tiny_mixer(name, impl="reference")
    fast = tiny_mixer(name, impl="triton")
    fast.load_state_dict(ref.state_dict())
    assert fast.impl == "triton" and ref.impl == "reference"
    return ref, fast


def _start_state(mixer, B: int) -> dict:
    """A non-trivial state to start from: the reference run over a short random prefix."""
    with torch.no_grad():
        _, state = mixer(torch.randn(B, 5, TINY_D_MODEL))
    return state


def _forward_and_grads(mixer, x, state):
    x = x.clone().requires_grad_()
    state = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in state.items()}
    y, new_state = mixer(x, state)
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g)).sum() for s in new_state.values())
    leaves = [x, *[s for s in state.values() if s.requires_grad], *mixer.parameters()]
    names = ["x", *[f"state.{k}" for k, s in state.items() if s.requires_grad],
             *[n for n, _ in mixer.named_parameters()]]
    return y, new_state, dict(zip(names, torch.autograd.grad(loss, leaves)))


@pytest.mark.parametrize("T", [1, 63, 130], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", TRITON_MIXERS)
def test_triton_forward_matches_reference(name, T, poison_empty):
    ref, fast = _pair(name)
    x, state = torch.randn(2, T, TINY_D_MODEL), _start_state(ref, 2)
    y_ref, s_ref, g_ref = _forward_and_grads(ref, x, state)
    y, s, g = _forward_and_grads(fast, x, state)
    assert_rel_close(y, y_ref, TOL["out"], f"{name} output")
    for k in s_ref:
        assert_rel_close(s[k], s_ref[k], TOL["out"], f"{name} final state {k!r}")
    for k in g_ref:
        assert_rel_close(g[k], g_ref[k], TOL["grad"], f"{name} d{k}")


@pytest.mark.parametrize("name", TRITON_MIXERS)
def test_triton_steps_match_reference(name, poison_empty):
    ref, fast = _pair(name)
    state_ref = _start_state(ref, 3)
    state = {k: v.clone() for k, v in state_ref.items()}
    with torch.no_grad():
        for t in range(4):
            x_t = torch.randn(3, TINY_D_MODEL)
            y_ref, state_ref = ref.step(x_t, state_ref)
            y, state = fast.step(x_t, state)
            assert_rel_close(y, y_ref, TOL["out"], f"{name} step {t} output")
            for k in state_ref:
                assert_rel_close(state[k], state_ref[k], TOL["out"], f"{name} step {t} state {k!r}")


@pytest.mark.parametrize("name", TRITON_MIXERS)
def test_triton_step_leaves_the_old_state_alone(name):
    """Decode kernels may write in place only where asked: the contract's step returns a new
    state, and callers (beam search, the split == whole checks) reuse the old one."""
    _, fast = _pair(name)
    state = _start_state(fast, 2)
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        fast.step(torch.randn(2, TINY_D_MODEL), state)
    for k in state:
        assert torch.equal(state[k], before[k]), f"{name}: step modified the input state {k!r}"


@pytest.mark.parametrize("name", MIXERS.names())
def test_every_triton_op_has_a_reference_and_imports(name):
    """A typo in TRITON_OPS would only surface on a GPU; here it fails at once."""
    import importlib

    cls = MIXERS[name]
    assert ("triton" in cls.IMPLS) == bool(cls.TRITON_OPS), f"{name}: IMPLS and TRITON_OPS disagree"
    assert set(cls.TRITON_OPS) <= set(cls.REFERENCE_OPS), f"{name}: a Triton op without its reference"
    for op, path in cls.TRITON_OPS.items():
        module, function = path.split(":")
        assert callable(getattr(importlib.import_module(module), function)), f"{name}.{op}: {path}"
