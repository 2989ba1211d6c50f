"""The causal depthwise short convolution: against the definition, step against full, states."""
from __future__ import annotations

import pytest
import torch

from kernels.short_conv import causal_conv1d, causal_conv1d_step
from tests.conftest import assert_rel_close


def _by_definition(x, weight, bias, state, activation):
    """y[t, c] = act(bias[c] + sum_j weight[c, j] * x[t - (W-1) + j, c]), history from ``state``."""
    W = weight.shape[1]
    hist = torch.cat([state.transpose(1, 2), x], dim=1)  # [B, W-1+T, C]
    y = torch.stack([(hist[:, t:t + W].transpose(1, 2) * weight).sum(-1) for t in range(x.shape[1])], 1)
    y = y + bias
    return torch.nn.functional.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("activation", ["silu", None], ids=["silu", "linear"])
@pytest.mark.parametrize("T", [1, 3, 63], ids=lambda t: f"T{t}")
def test_causal_conv1d_matches_definition_and_steps(T, activation):
    B, C, W = 2, 5, 4
    x, weight, bias = torch.randn(B, T, C, dtype=torch.float64), torch.randn(C, W, dtype=torch.float64), \
        torch.randn(C, dtype=torch.float64)
    state = torch.randn(B, C, W - 1, dtype=torch.float64)
    y, final = causal_conv1d(x, weight, bias, state, activation)
    assert_rel_close(y, _by_definition(x, weight, bias, state, activation), 1e-12, "output")
    s, ys = state, []
    for t in range(T):
        y_t, s = causal_conv1d_step(x[:, t], weight, bias, s, activation)
        ys.append(y_t)
    assert_rel_close(torch.stack(ys, 1), y, 1e-12, "step output")
    assert_rel_close(s, final, 0.0, "final state")
    expect = torch.cat([state, x.transpose(1, 2)], -1)[..., -(W - 1):]
    assert torch.equal(final, expect)


def test_zero_state_is_the_default_and_unknown_activation_raises():
    x, w = torch.randn(1, 6, 3), torch.randn(3, 4)
    assert torch.equal(causal_conv1d(x, w)[0], causal_conv1d(x, w, state=torch.zeros(1, 3, 3))[0])
    with pytest.raises(ValueError, match="valid: 'silu', None"):
        causal_conv1d(x, w, activation="gelu")
