"""Triton SSD kernels (chunk_ssd, fused_recurrent_ssd, fused_ssd_step) against the float64
token-by-token reference on the same values: outputs, final states and the gradient of every
input, lengths 1 / 63 / 130 (ragged last chunk), two chunk sizes, decays near 0 and near 1,
fp32 and fp16 inputs, torch.empty poisoned with NaN. Runs under TRITON_INTERPRET=1 on the CPU."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels.ssd import naive_recurrent_ssd, ssd_step
from kernels.ssd.chunk import chunk_ssd
from kernels.ssd.recurrent import fused_recurrent_ssd, fused_ssd_step
from tests.conftest import assert_rel_close, assert_run_close
from tests.kernels.test_ssd import make_inputs, run

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# ||a - b|| / ||b|| against the float64 reference on the same (rounded) input values.
# fp32: products are exact fp32 (ieee dots); 1e-5 on outputs and states as for the naive chunked
# form, 1e-4 on gradients because dA sums T * P * N products of cancelling signs.
# fp16: the kernels round x dt, the score blocks and the stored chunk states to fp16 before each
# tensor-core product (2^-11 relative each, ~3e-4 measured) and y is stored in fp16: 2e-3 on
# outputs and the fp32 state; 5e-3 on gradients, which chain two such rounded products
# (dy -> dh -> dB, dx).
TOL = {torch.float32: {"out": 1e-5, "grad": 1e-4}, torch.float16: {"out": 2e-3, "grad": 5e-3}}
# near0 (dt A ~ -20 per token) in fp32: |cs| reaches 20 * chunk, where one fp32 ulp of the cumsum
# (6e-5 at 640) becomes a relative error of every decay exp(cs_l - cs_s); dA (exactly ~1e-7
# here, a sum of such decayed terms) inherits it, so gradients get 5e-4.
TOL_NEAR0_FP32 = {"out": 1e-5, "grad": 5e-4}

# (b, T, H, G, P, N, chunk, decay, initial state, dtype): each length meets each decay regime once,
# chunk sizes 16 / 32 / 64, fp16 once; G < H once (two heads per group), no initial state once.
CASES = [
    (2, 63, 4, 2, 16, 32, 16, "mixed", True, torch.float32),
    (1, 130, 2, 1, 16, 16, 32, "near0", True, torch.float32),
    (1, 130, 2, 1, 16, 16, 64, "near1", False, torch.float32),  # 2 row blocks per chunk
    (2, 1, 2, 2, 16, 16, 16, "near1", True, torch.float32),
    (1, 130, 2, 1, 16, 32, 32, "mixed", True, torch.float16),
]


def case_id(c) -> str:
    b, T, H, G, P, N, cs, decay, h0, dtype = c
    return f"B{b}-T{T}-H{H}-G{G}-P{P}-N{N}-chunk{cs}-{decay}-{'h0' if h0 else 'nostate'}-{str(dtype)[6:]}"


def inputs(b, T, H, G, P, N, decay, h0, dtype, with_d=True):
    """(kernel inputs in ``dtype`` with the fp32 state, float64 copies of the same values)."""
    t = make_inputs(b, T, H, G, P, N, decay, dtype=torch.float64, initial_state=h0)
    cast = {k: (v.detach().to(DEV, torch.float32 if k in ("dt", "A", "h0") else dtype) if v is not None else None)
            for k, v in t.items()}
    if not with_d:
        cast["D"] = None
    ref = {k: (v.double().requires_grad_() if v is not None else None) for k, v in cast.items()}
    return {k: (v.requires_grad_() if v is not None else None) for k, v in cast.items()}, ref


@pytest.mark.parametrize("fused", [True, False], ids=["fused-fwd", "two-kernel-fwd"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_chunk_matches_recurrent(case, fused, poison_empty):
    """Both forward paths (one walk over the chunks; state pass + output pass), one backward."""
    b, T, H, G, P, N, chunk_size, decay, h0, dtype = case
    t, ref = inputs(b, T, H, G, P, N, decay, h0, dtype)
    y, h, g = run(chunk_ssd, t, chunk_size=chunk_size, fused_forward=fused)
    assert y.dtype == dtype and h.dtype == torch.float32
    tol = TOL_NEAR0_FP32 if (decay, dtype) == ("near0", torch.float32) else TOL[dtype]
    assert_run_close((y, h, g), run(naive_recurrent_ssd, ref), tol)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-fwd", "two-kernel-fwd"])
def test_chunk_without_d_or_final_state(fused, poison_empty):
    """D = None and output_final_state=False: the state's gradient path is then empty."""
    t, ref = inputs(1, 40, 2, 1, 16, 16, "mixed", True, torch.float32, with_d=False)
    y, h = chunk_ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=16, initial_state=t["h0"],
                     output_final_state=False, fused_forward=fused)
    assert h is None
    y_ref, _ = naive_recurrent_ssd(ref["x"], ref["dt"], ref["A"], ref["B"], ref["C"], initial_state=ref["h0"])
    dy = torch.randn_like(y)
    names = ("x", "dt", "A", "B", "C", "h0")
    grads = torch.autograd.grad((y * dy).sum(), [t[k] for k in names])
    grads_ref = torch.autograd.grad((y_ref * dy.double()).sum(), [ref[k] for k in names])
    assert_rel_close(y, y_ref.float(), TOL[torch.float32]["out"], "output")
    for k, a, e in zip(names, grads, grads_ref):
        assert_rel_close(a, e.float(), TOL[torch.float32]["grad"], f"d{k}")


def test_chunk_backward_tiling(poison_empty, monkeypatch):
    """The backward's own tilings, which the small cases above do not reach: a backward chunk
    (16) smaller than the forward's (32), the dB/dC kernel's head split (two programs per chunk
    and group each sum half of the 4 heads, as at H=64, G=1) and its N tiles (two of 16, whose
    d cs partials are summed afterwards)."""
    from kernels.ssd import chunk_bwd
    monkeypatch.setattr(chunk_bwd, "head_split", lambda n_programs, R: 2)
    monkeypatch.setattr(chunk_bwd, "BWD_BN", 16)
    monkeypatch.setattr(chunk_bwd, "BWD_CHUNK", 16)
    t, ref = inputs(1, 40, 4, 1, 16, 32, "mixed", True, torch.float32)
    assert_run_close(run(chunk_ssd, t, chunk_size=32), run(naive_recurrent_ssd, ref), TOL[torch.float32])


def test_fused_forward_caps_its_chunk(poison_empty):
    """chunk_size 128: the fused forward walks 64-token chunks (FUSED_MAX_CHUNK), the backward
    its own; the result is the recurrence's either way."""
    t, ref = inputs(1, 130, 2, 1, 16, 16, "mixed", True, torch.float32)
    assert_run_close(run(chunk_ssd, t, chunk_size=128, fused_forward=True), run(naive_recurrent_ssd, ref),
                     TOL[torch.float32])


def test_forward_path_follows_the_gpu_size(monkeypatch):
    """The default forward path: the fused walk once its programs reach the measured programs per
    SM, the two-kernel one below (the chunk_ssd crossover on a 132-SM H100); the interpreter's
    CPU always takes the fused one."""
    from kernels import triton_utils
    monkeypatch.setattr(triton_utils, "_sm_count", lambda index: 132)
    gpu = torch.device("cuda", 0)
    assert triton_utils.sequential_walk_fills(256, gpu, 1.5)  # B 4 x H 64, one P tile: T 8k
    assert not triton_utils.sequential_walk_fills(128, gpu, 1.5)  # B 2: T 16k
    assert triton_utils.sequential_walk_fills(1, torch.device("cpu"), 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fused_recurrent_matches_reference(dtype, poison_empty):
    t, ref = inputs(1, 63, 2, 1, 16, 32, "mixed", True, dtype)
    with torch.no_grad():
        y, h = fused_recurrent_ssd(*(t[k] for k in ("x", "dt", "A", "B", "C", "D")), initial_state=t["h0"])
        y_ref, h_ref = naive_recurrent_ssd(*(ref[k] for k in ("x", "dt", "A", "B", "C", "D")),
                                           initial_state=ref["h0"])
    assert_rel_close(y, y_ref.to(dtype), TOL[dtype]["out"], "output")
    assert_rel_close(h, h_ref.float(), TOL[dtype]["out"], "final state")


def test_fused_recurrent_refuses_grad():
    t, _ = inputs(1, 4, 2, 1, 16, 16, "mixed", True, torch.float32)
    with pytest.raises(RuntimeError, match="chunk_ssd"):
        fused_recurrent_ssd(t["x"], t["dt"], t["A"], t["B"], t["C"])


@pytest.mark.parametrize("in_place", [False, True], ids=["new-state", "in-place"])
def test_step_matches_naive_step(in_place, poison_empty):
    t, _ = inputs(2, 1, 4, 2, 16, 32, "mixed", True, torch.float32)
    t = {k: v.detach() for k, v in t.items()}
    args = (t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0])
    y_ref, h_ref = ssd_step(*(a.double() for a in args), t["h0"].double(), t["D"].double())
    state = t["h0"].clone()
    y, h = fused_ssd_step(*args, state, t["D"], out_state=state if in_place else None)
    assert (h.data_ptr() == state.data_ptr()) == in_place
    assert_rel_close(y, y_ref.float(), 1e-5, "output")
    assert_rel_close(h, h_ref.float(), 1e-6, "new state")  # one fp32 multiply-add per element


def test_bad_inputs_raise():
    t, _ = inputs(1, 5, 2, 1, 16, 16, "mixed", True, torch.float32)
    t = {k: v.detach() for k, v in t.items()}
    with pytest.raises(ValueError, match=r"one of \(16, 32, 64, 128, 256\)"):
        chunk_ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=48)
    with pytest.raises(ValueError, match="multiple of groups"):
        chunk_ssd(t["x"], t["dt"], t["A"], t["B"].expand(-1, -1, 3, -1), t["C"].expand(-1, -1, 3, -1))
    with pytest.raises(TypeError, match="share one dtype"):
        chunk_ssd(t["x"], t["dt"], t["A"], t["B"].half(), t["C"])
    with pytest.raises(TypeError, match="state must be fp32"):
        chunk_ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], initial_state=t["h0"].double())
