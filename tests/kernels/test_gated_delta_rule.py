"""The chunked gated delta rule against the token-by-token recurrence: outputs, final states and
the gradients of every input (initial state included), odd lengths, two chunk sizes, gates near 0
and near 1. One metric, ||a - b|| / ||b||, with the tolerances below."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.gated_delta_rule import (
    gated_delta_rule_step,
    naive_chunk_gated_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from kernels.gated_delta_rule.naive import _unit_lower_inverse
from tests.conftest import assert_rel_close

# fp64: both forms are exact algebra; what is left is rounding (seen: 1e-15, gradients 5e-14).
# fp32: the chunked form reorders sums over up to 64 tokens and inverts (I + A) (seen: 4e-7;
# gradients 1.5e-5, the decay gradient sums products of many exponentials).
TOL = {torch.float64: {"o": 1e-10, "state": 1e-10, "grad": 1e-10},
       torch.float32: {"o": 1e-5, "state": 1e-5, "grad": 1e-4}}

# (log-decay range, beta range): alpha = exp(g) near 1 with strong writes, or near 0 with weak ones.
GATES = {"near1": ((-0.01, 0.0), (0.9, 1.0)), "near0": ((-6.0, -3.0), (0.0, 0.1))}


def _inputs(B, T, H, K, V, gates, dtype, initial_state):
    (g_lo, g_hi), (b_lo, b_hi) = GATES[gates]
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, dtype=dtype), dim=-1)  # the mixer l2-normalises keys
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = torch.empty(B, T, H, dtype=dtype).uniform_(g_lo, g_hi)
    beta = torch.empty(B, T, H, dtype=dtype).uniform_(b_lo, b_hi)
    h0 = torch.randn(B, H, K, V, dtype=dtype) if initial_state else None
    return [t.requires_grad_() if t is not None else None for t in (q, k, v, g, beta, h0)]


def _run(fn, inputs, do, ds, **kw):
    """Output, final state and the gradients of ``<o, do> + <S, ds>`` w.r.t. every input."""
    q, k, v, g, beta, h0 = inputs
    o, s = fn(q, k, v, g, beta, initial_state=h0, **kw)
    leaves = [t for t in inputs if t is not None]
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
    return o, s, grads


CASES = [(T, h0, gates) for T in (1, 63, 130) for h0 in (False, True) for gates in GATES]


@pytest.mark.parametrize(
    "T, h0, gates", CASES, ids=[f"B2-T{T}-H3-K8-V12-{'h0' if h0 else 'zero'}-{g}" for T, h0, g in CASES]
)
def test_chunk_matches_recurrent_fp64(T, h0, gates):
    _compare(2, T, 3, 8, 12, (16, 64), h0, gates, torch.float64)


def test_chunk_matches_recurrent_fp32():
    _compare(1, 130, 2, 16, 16, (64,), True, "near1", torch.float32)


def _compare(B, T, H, K, V, chunk_sizes, h0, gates, dtype):
    inputs = _inputs(B, T, H, K, V, gates, dtype, h0)
    do, ds = torch.randn(B, T, H, V, dtype=dtype), torch.randn(B, H, K, V, dtype=dtype)
    o_ref, s_ref, g_ref = _run(naive_recurrent_gated_delta_rule, inputs, do, ds)
    tol = TOL[dtype]
    names = [n for n, t in zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), inputs) if t is not None]
    for C in chunk_sizes:  # one reference, several chunkings (16: T = 130 spans 9 chunks)
        o, s, grads = _run(naive_chunk_gated_delta_rule, inputs, do, ds, chunk_size=C)
        assert_rel_close(o, o_ref, tol["o"], f"o (C={C})")
        assert_rel_close(s, s_ref, tol["state"], f"final state (C={C})")
        for name, a, b in zip(names, grads, g_ref):
            assert_rel_close(a, b, tol["grad"], f"{name} (C={C})")


def test_step_is_the_papers_recurrence():
    """The step's delta form equals S_t = alpha (I - beta k k^T) S + beta k v^T, o = S^T q / sqrt(K)."""
    B, H, K, V = 2, 3, 5, 4
    q, k, v = torch.randn(B, H, K, dtype=torch.float64), torch.randn(B, H, K, dtype=torch.float64), \
        torch.randn(B, H, V, dtype=torch.float64)
    g, beta = -torch.rand(B, H, dtype=torch.float64), torch.rand(B, H, dtype=torch.float64)
    S = torch.randn(B, H, K, V, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    transition = g.exp()[..., None, None] * (eye - beta[..., None, None] * k[..., :, None] * k[..., None, :])
    S_ref = transition @ S + beta[..., None, None] * k[..., :, None] * v[..., None, :]
    o_ref = (S_ref.mT @ q[..., None]).squeeze(-1) / K ** 0.5
    o, S_new = gated_delta_rule_step(q, k, v, g, beta, S)
    assert_rel_close(S_new, S_ref, 1e-13, "state")
    assert_rel_close(o, o_ref, 1e-13, "o")


@pytest.mark.parametrize("n", [1, 7, 16, 17, 64], ids=lambda n: f"n{n}")
def test_unit_lower_inverse(n):
    A = 0.3 * torch.randn(3, n, n, dtype=torch.float64)  # |entries| < 1, as beta k_i^T k_j D with unit keys
    expected = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + A.tril(-1))
    assert_rel_close(_unit_lower_inverse(A), expected, 1e-12, f"inverse n={n}")


def test_dtypes_and_flags():
    """bf16 in: o in bf16, state in fp32; output_final_state=False gives None; scale is honoured."""
    q, k, v, g, beta, _ = (t.detach() if t is not None else None
                           for t in _inputs(1, 9, 2, 8, 8, "near1", torch.float32, False))
    for fn in (naive_chunk_gated_delta_rule, naive_recurrent_gated_delta_rule):
        o, s = fn(*(t.bfloat16() for t in (q, k, v, g, beta)))
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
        assert fn(q, k, v, g, beta, output_final_state=False)[1] is None
        o1, _ = fn(q, k, v, g, beta, scale=1.0)
        o2, _ = fn(q, k, v, g, beta)
        assert_rel_close(o2, o1 * 8 ** -0.5, 1e-6, "scale")
