"""The decode steps' host path: inputs as a decode loop passes them (contiguous, one device, the
step's shapes and dtypes, the state updated in place) go straight to the launch, since a
small-batch step is bound by host time; anything else goes through the step's full checks
(``_checked``), which copy strided inputs. Both give the same bits."""
from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, T = 2, 3                                     # per-token inputs are [:, 1] views of a T = 3 batch


def _r(*shape):
    return torch.randn(*shape, device=DEV)


def _gated_delta_rule():
    q, k, v = _r(B, T, 2, 16), _r(B, T, 2, 16), _r(B, T, 2, 32)
    g, beta = -_r(B, T, 2).abs(), _r(B, T, 2).sigmoid()
    return [q[:, 1], k[:, 1], v[:, 1], g[:, 1], beta[:, 1]], _r(B, 2, 16, 32), {}


def _ssd():
    x, dt, bc = _r(B, T, 4, 16), _r(B, T, 4).exp(), _r(B, T, 2, 2, 32)
    args = [x[:, 1], dt[:, 1], -_r(4).abs(), bc[:, 1, 0], bc[:, 1, 1]]
    return args, _r(B, 4, 16, 32), {"D": _r(4)}


def _mlstm():
    q, k, v, i, f = _r(B, T, 2, 16), _r(B, T, 2, 16), _r(B, T, 2, 32), _r(B, T, 2), _r(B, T, 2)
    state = (_r(B, 2, 16, 32), _r(B, 2, 16), _r(B, 2))
    return [q[:, 1], k[:, 1], v[:, 1], i[:, 1], f[:, 1]], state, {}


def _selective_scan():
    u, delta, z, bc = _r(B, T, 24), _r(B, T, 24), _r(B, T, 24), _r(B, T, 2, 5)
    args = [u[:, 1], delta[:, 1], -_r(24, 5).abs(), bc[:, 1, 0], bc[:, 1, 1]]
    kw = {"D": _r(24), "z_t": z[:, 1], "delta_bias": _r(24), "delta_softplus": True}
    return args, _r(B, 24, 5), kw


# op: (the step's module, its name there, inputs: (per-token args, state, keyword args))
STEPS = {
    "gated_delta_rule": ("kernels.gated_delta_rule.recurrent", "fused_gated_delta_rule_step", _gated_delta_rule),
    "ssd": ("kernels.ssd.recurrent", "fused_ssd_step", _ssd),
    "mlstm": ("kernels.mlstm.recurrent", "fused_mlstm_step", _mlstm),
    "selective_scan": ("kernels.selective_scan.recurrent", "fused_selective_scan_step", _selective_scan),
}


def _contiguous(x):
    return x.contiguous() if isinstance(x, torch.Tensor) else x


def _clone(state):
    return tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()


@pytest.mark.parametrize("op", STEPS)
def test_ready_inputs_skip_the_checked_path(op, monkeypatch):
    module_name, step_name, make = STEPS[op]
    module = importlib.import_module(module_name)
    step = getattr(module, step_name)
    torch.manual_seed(0)
    strided, state, kw = make()
    assert not strided[0].is_contiguous()
    out_slow, state_slow = step(*strided, _clone(state), **kw)              # the checked path
    ready, ready_kw = [_contiguous(a) for a in strided], {k: _contiguous(v) for k, v in kw.items()}

    def refuse(*args):
        raise AssertionError("the checked path ran for ready inputs")
    monkeypatch.setattr(module, "_checked", refuse)
    st = _clone(state)
    out, new = step(*ready, st, out_state=st, **ready_kw)
    assert new is st
    assert torch.equal(out, out_slow)
    assert all(torch.equal(a, b) for a, b in zip(*((new, state_slow) if isinstance(st, tuple)
                                                    else ((new,), (state_slow,)))))
    with pytest.raises(AssertionError, match="checked path"):
        step(*strided, _clone(state), **kw)
