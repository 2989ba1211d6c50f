"""Triton selective scan (Mamba-1) against the float64 token-by-token recurrence: outputs, final
states and the gradients of every input (u, delta, A, B, C, D, z, delta_bias, initial state),
lengths 1, 63, 130, chunk sizes 16 and 32, decays near 0 and near 1, fp32 and fp16 inputs,
ragged channel and state blocks; the decode step in place and out of place."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels.selective_scan import naive_recurrent_selective_scan, selective_scan_step
from kernels.selective_scan.interp import patch_interpreter_scan
from kernels.selective_scan.recurrent import fused_selective_scan_step
from kernels.selective_scan.scan import selective_scan
from kernels.selective_scan.scan_fwd import FWD_CONFIGS, selective_scan_fwd_kernel
from tests.conftest import assert_rel_close
from tests.kernels.test_selective_scan import make_inputs, run

if not torch.cuda.is_available():
    patch_interpreter_scan()  # the interpreter's per-element scan costs minutes per case
DEV = "cuda" if torch.cuda.is_available() else "cpu"

# ||a - b|| / ||b|| against the float64 recurrence on the same (rounded) input values.
# fp32: 2e-5 for everything (seen <= 2.2e-6 at T 130 with decays near 1: fp32 accumulation in
# the log-depth scan, whose order differs from the recurrence's). fp16 activations: the fp32
# final state keeps 2e-5 (same inputs, fp32 state); the output is rounded to fp16 (2^-11 relative
# per element) and `run` draws the cotangent dy in the output's dtype, so every gradient, even
# of the fp32 parameters, sees an fp16-rounded dy (seen <= 2e-4): 2e-3 for output and gradients.
TOL = {torch.float32: {"out": 2e-5, "state": 2e-5, "grad": 2e-5},
       torch.float16: {"out": 2e-3, "state": 2e-5, "grad": 2e-3}}
FP32_PARAMS = ("A", "D", "delta_bias", "h0")  # kept in fp32 in every run, as the Mamba block does

# (T, decay, initial state, chunk_size, N, dtype): every length, both chunk sizes, both decay
# extremes; N = 5 pads the state axis to 8 (masked), D = 24 leaves a ragged channel block.
CASES = [
    (1, "near0", True, 16, 16, torch.float32),
    (63, "near1", True, 16, 16, torch.float32),
    (63, "mixed", False, 32, 5, torch.float32),
    (130, "near0", True, 32, 16, torch.float32),
    (130, "near1", True, 16, 16, torch.float32),
    (130, "mixed", True, 32, 16, torch.float16),
]


def _id(c):
    T, decay, h0, chunk, N, dtype = c
    return f"B2-T{T}-D24-N{N}-chunk{chunk}-{decay}-{'h0' if h0 else 'nostate'}-{str(dtype)[6:]}"


def _cast(t, dtype):
    """Activations in ``dtype``, parameters and the initial state in fp32, all leaves on DEV."""
    return {k: (v.detach().to(DEV, dtype if k not in FP32_PARAMS else torch.float32).requires_grad_()
                if v is not None else None) for k, v in t.items()}


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_matches_recurrent(case, poison_empty):
    T, decay, h0, chunk, N, dtype = case
    t = _cast(make_inputs(2, T, 24, N, decay, initial_state=h0), dtype)
    t64 = {k: (v.detach().cpu().double().requires_grad_() if v is not None else None) for k, v in t.items()}
    y, h, g = run(selective_scan, t, chunk_size=chunk)
    assert y.dtype == dtype and h.dtype == torch.float32
    y_ref, h_ref, g_ref = run(naive_recurrent_selective_scan, t64)
    tol = TOL[dtype]
    assert_rel_close(y.cpu(), y_ref.to(dtype), tol["out"], "output")
    assert_rel_close(h.cpu(), h_ref.float(), tol["state"], "final state")
    for k in g_ref:
        assert_rel_close(g[k].cpu(), g_ref[k].to(g[k].dtype), tol["grad"], f"d{k}")


def test_without_skip_gate_bias_or_final_state(poison_empty):
    """HAS_D / HAS_Z / HAS_BIAS / softplus off, no final state (no dL/dh_T): B1-T40-D16-N16."""
    t = make_inputs(1, 40, 16, 16, "mixed", dtype=torch.float32)
    t["delta"] = (0.05 * t["delta"].detach().abs()).requires_grad_()  # dt >= 0 without the softplus
    t = {k: (v.detach().to(DEV).requires_grad_() if v is not None else None) for k, v in t.items()}

    def go(fn, t, **kw):
        y, h = fn(t["u"], t["delta"], t["A"], t["B"], t["C"], initial_state=t["h0"],
                  output_final_state=False, **kw)
        assert h is None
        names = ("u", "delta", "A", "B", "C", "h0")
        return y, torch.autograd.grad((y * torch.cos(y.detach())).sum(), [t[k] for k in names])

    y, g = go(selective_scan, t, chunk_size=16)
    y_ref, g_ref = go(naive_recurrent_selective_scan, {k: v.detach().cpu().double().requires_grad_()
                                                       for k, v in t.items() if v is not None})
    assert_rel_close(y.cpu(), y_ref.float(), 2e-5, "output")
    for k, a, b in zip(("u", "delta", "A", "B", "C", "h0"), g, g_ref):
        assert_rel_close(a.cpu(), b.float(), 2e-5, f"d{k}")


@pytest.mark.parametrize("in_place", [False, True], ids=["fresh-state", "in-place"])
def test_step_matches_reference(in_place, poison_empty):
    """B2-D24-N5 (ragged channel and state blocks), with skip, gate, bias and softplus."""
    t = {k: v.detach()[:, 0] if k in ("u", "delta", "B", "C", "z") else v.detach()
         for k, v in make_inputs(2, 1, 24, 5, "mixed", dtype=torch.float32).items()}
    names = ("u", "delta", "A", "B", "C", "h0", "D", "z")
    y_ref, h_ref = selective_scan_step(*(t[k].double() for k in names),
                                       delta_bias=t["delta_bias"].double(), delta_softplus=True)
    t = {k: v.to(DEV) for k, v in t.items()}
    state = t["h0"].clone()
    y, h = fused_selective_scan_step(t["u"], t["delta"], t["A"], t["B"], t["C"], state, t["D"], t["z"],
                                     delta_bias=t["delta_bias"], delta_softplus=True,
                                     out_state=state if in_place else None)
    assert (h is state) == in_place and h.dtype == torch.float32
    assert_rel_close(y.cpu(), y_ref.float(), 1e-6, "output")  # one step in fp32: rounding only
    assert_rel_close(h.cpu(), h_ref.float(), 1e-6, "state")


def test_steps_continue_the_scan():
    """The scan's final state, stepped on, gives what the scan over the longer sequence gives."""
    t = {k: v.detach().to(DEV) for k, v in make_inputs(1, 20, 16, 16, "mixed", dtype=torch.float32).items()}
    kw = dict(delta_bias=t["delta_bias"], delta_softplus=True)
    args = lambda s: [t[k][:, s] for k in ("u", "delta")] + [t["A"]] + [t[k][:, s] for k in ("B", "C")]
    scan_kw = kw | dict(chunk_size=16, initial_state=t["h0"])
    y_all, h_all = selective_scan(*args(slice(None)), t["D"], t["z"], **scan_kw)
    _, h = selective_scan(*args(slice(0, 19)), t["D"], t["z"][:, :19], **scan_kw)
    y, h = fused_selective_scan_step(*args(19), h, t["D"], t["z"][:, 19], out_state=h, **kw)
    assert_rel_close(y, y_all[:, 19], 1e-6, "last output")
    assert_rel_close(h, h_all, 1e-6, "last state")


def test_bad_inputs_raise():
    u, A = torch.randn(1, 5, 4, device=DEV), -torch.rand(4, 3, device=DEV)
    BC = torch.randn(1, 5, 3, device=DEV)
    with pytest.raises(ValueError, match=r"A \[D,N\]"):
        selective_scan(u, u, -torch.rand(4, 2, device=DEV), BC, BC)
    with pytest.raises(ValueError, match="power of two"):
        selective_scan(u, u, A, BC, BC, chunk_size=24)
    with pytest.raises(TypeError, match="one dtype"):
        selective_scan(u, u.half(), A, BC, BC)
    with pytest.raises(ValueError, match=r"initial_state \[B,D,N\]"):
        selective_scan(u, u, A, BC, BC, initial_state=torch.zeros(1, 4, 2, device=DEV))
    with pytest.raises(ValueError, match=r"state \[B,D,N\]"):
        fused_selective_scan_step(u[:, 0], u[:, 0], A, BC[:, 0], BC[:, 0], torch.zeros(1, 3, 3, device=DEV))


@pytest.mark.parametrize("config", FWD_CONFIGS, ids=[f"BD{bd}-warps{w}-{'nmajor' if nm else 'dmajor'}"
                                                    for bd, w, nm in FWD_CONFIGS])
def test_every_forward_config(config, monkeypatch, poison_empty):
    """Each autotune candidate of the forward (the interpreter keeps only the first): both tile
    orders, B2-T40-D24-N16 (ragged last block and channel block), output and final state."""
    import triton
    bd, w, nm = config
    config = triton.Config({"BD": bd, "N_MAJOR": nm}, num_warps=w)
    monkeypatch.setattr(selective_scan_fwd_kernel, "configs", [config])
    t = {k: v.detach().float().to(DEV) for k, v in make_inputs(2, 40, 24, 16, "mixed").items()}
    y, h = run_forward(selective_scan, t, chunk_size=16)
    y_ref, h_ref = run_forward(naive_recurrent_selective_scan, {k: v.cpu().double() for k, v in t.items()})
    assert_rel_close(y.cpu(), y_ref.float(), 2e-5, "output")
    assert_rel_close(h.cpu(), h_ref.float(), 2e-5, "final state")


def run_forward(fn, t, **kw):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], delta_bias=t["delta_bias"],
              delta_softplus=True, initial_state=t["h0"], **kw)
