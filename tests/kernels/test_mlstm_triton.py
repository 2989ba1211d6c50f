"""kernels/mlstm Triton kernels against the naive references run in float64 on the same values.

One metric, ||a - b|| / ||b||. As tests/kernels/test_mlstm.py does, final states are compared
representation-invariantly (C * exp(m - m_ref)), and the loss whose gradients are checked uses that
invariant state, so a kernel may pick its own stabiliser. Every gradient is checked: q, k, v, i, f
and the initial (C, n, m). CPU runs go through the Triton interpreter (tests/conftest.py).
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from kernels.mlstm import mlstm_step, naive_recurrent_mlstm  # noqa: E402
from kernels.mlstm.chunk import FORWARD_PATHS, chunk_mlstm  # noqa: E402
from kernels.mlstm.recurrent import fused_mlstm_step, fused_recurrent_mlstm  # noqa: E402
from tests.conftest import assert_rel_close  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: the kernels' fp32 accumulation over <= 130 tokens against the fp64 truth (the reference
# itself sees ~1e-5 on h, 4e-5 on gradients in fp32). fp16: inputs rounded to 11 bits and fp16
# tensor-core operands (S, dNum, C cast to fp16 for the dots): ~1e-3 per product; 5e-3 / 1e-2
# leave headroom over the ~1-3e-3 observed. bf16 (GPU only): 8 bits, 4x fp16's rounding.
TOL = {
    torch.float32: {"h": 1e-4, "state": 1e-4, "grad": 5e-4},
    torch.float16: {"h": 5e-3, "state": 5e-3, "grad": 1e-2},
    torch.bfloat16: {"h": 2e-2, "state": 2e-2, "grad": 4e-2},
}
# forget gate near 1 (long memory), near 0 (m follows i), input gate near 0 (the exp(-m) floor);
# "f0" a forget gate ~1e-5: every df is then ~1e-5 of the terms a careless dlog f cancels
GATES = {"near1": (6.0, 0.0), "near0": (-6.0, 0.0), "i0": (3.0, -10.0), "f0": (-12.0, 0.0)}


def _inputs(B, T, H, K, V, gates, with_state, seed=1):
    f_mean, i_mean = GATES[gates]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V),
             i=i_mean + 2 * r(B, T, H), f=f_mean + r(B, T, H))
    state = (r(B, H, K, V), r(B, H, K), r(B, H)) if with_state else None
    return x, state


def _run(fn, x, state, m_ref=None, **kw):
    """Forward, then the gradients of every input and the initial state for a fixed random loss
    on h and the invariant final state (C, n) * exp(m - m_ref)."""
    leaves = {k: t.clone().requires_grad_() for k, t in x.items()}
    s0 = tuple(t.clone().requires_grad_() for t in state) if state is not None else None
    h, (C, n, m) = fn(**leaves, initial_state=s0, **kw)
    m_ref = m.detach() if m_ref is None else m_ref
    s = torch.exp(m - m_ref.to(m.dtype))
    C, n = C * s[..., None, None], n * s[..., None]
    g = torch.Generator().manual_seed(2)
    ws = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype) for t in (h, C, n)]
    loss = sum((t.float() * w.float()).sum() for t, w in zip((h, C, n), ws))
    names = [*leaves, *(("C0", "n0", "m0") if s0 else ())]
    grads = torch.autograd.grad(loss, [*leaves.values(), *(s0 or ())])
    return h.detach(), (C.detach(), n.detach()), m_ref, dict(zip(names, grads))


CASES = [  # (B, T, H, K, V, chunk, gates, with_state)
    (2, 1, 2, 16, 16, 16, "near1", True),
    (2, 63, 2, 16, 32, 16, "near0", False),
    (1, 130, 2, 32, 16, 32, "near1", True),
    (1, 130, 1, 16, 16, 64, "i0", True),
]


def _id(c):
    B, T, H, K, V, L, gates, st = c
    return f"B{B}-T{T}-H{H}-K{K}-V{V}-chunk{L}-{gates}-{'state' if st else 'zero'}"


# fp32 everywhere; fp16 on the multi-token cases (the interpreter's time budget); bf16 on a GPU
# only (the interpreter's bf16 arithmetic is wrong)
_DTYPES = [(torch.float32, "fp32"), (torch.float16, "fp16")]
_DTYPES += [(torch.bfloat16, "bf16")] if torch.cuda.is_available() else []
PARAMS = [pytest.param(c, d, id=f"{_id(c)}-{n}") for c in CASES
          for d, n in _DTYPES if n == "fp32" or c[1] > 1]


FWD = pytest.mark.parametrize("path", list(FORWARD_PATHS.values()), ids=[f"{n}-fwd" for n in FORWARD_PATHS])


@pytest.mark.parametrize("case,dtype", PARAMS)
@FWD
def test_chunk_mlstm_matches_reference(case, dtype, path, poison_empty):
    _check(case, dtype, path=path)


# Precision regressions (each failed before its fix, under the interpreter too):
# * f0: df at every chunk's last token was the difference of <C_{c+1}, dC_{c+1}> and the chunk's
#   own state writes in k.dk, both ~1e5 x df (df rel err 2.6e-3 / 2.5e-2 in fp32, 1.9e-2 in fp16;
#   on the GPU the bf16 / tf32 operands of k.dk made it 0.3 / 0.1 already at near0);
# * near0, fp16, T = 1, seed 6: dh . h taken on the fp16-rounded h cancels (dq rel err 7e-2).
REGRESSIONS = [  # (case, dtype, seed)
    ((2, 63, 2, 16, 16, 16, "f0", True), torch.float32, 1),
    ((1, 63, 1, 16, 16, 64, "f0", True), torch.float32, 1),
    ((1, 63, 1, 16, 16, 64, "f0", True), torch.float16, 1),
    ((2, 1, 2, 16, 16, 16, "near0", True), torch.float16, 6),
]


@pytest.mark.parametrize("case,dtype,seed", REGRESSIONS,
                         ids=[f"{_id(c)}-{str(d)[6:]}-seed{s}" for c, d, s in REGRESSIONS])
@FWD
def test_chunk_mlstm_precision_regressions(case, dtype, seed, path, poison_empty):
    _check(case, dtype, seed, path=path)


def _check(case, dtype, seed=1, path=None):
    B, T, H, K, V, L, gates, with_state = case
    x, state = _inputs(B, T, H, K, V, gates, with_state, seed)
    # the reference sees the very values the kernel sees: inputs rounded to dtype, state to fp32
    x = {k: t.to(dtype).double() for k, t in x.items()}
    state = tuple(t.float().double() for t in state) if state is not None else None
    h_ref, s_ref, m_ref, g_ref = _run(naive_recurrent_mlstm, x, state)
    xd = {k: t.to(DEV, dtype) for k, t in x.items()}
    sd = tuple(t.to(DEV, torch.float32) for t in state) if state is not None else None
    h, s, _, grads = _run(chunk_mlstm, xd, sd, m_ref=m_ref.to(DEV), chunk_size=L, **(path or {}))
    tol = TOL[dtype]
    assert h.dtype == dtype and s[0].dtype == torch.float32
    assert_rel_close(h.cpu(), h_ref, tol["h"], "h")
    assert_rel_close(s[0].cpu(), s_ref[0], tol["state"], "C final")
    assert_rel_close(s[1].cpu(), s_ref[1], tol["state"], "n final")
    for name, gr in grads.items():
        gt = tol["grad"]
        if name == "f" and T == 1 and not with_state:
            gt = 1e-3  # as test_mlstm.py: df is ~1e-11 of the rest there, pure rounding
        assert_rel_close(gr.cpu(), g_ref[name], gt, f"d{name}")


@FWD
def test_chunk_mlstm_stabiliser_gradients(path, poison_empty):
    """A loss on the raw (C, n, m) and a large eps: the gradient through the max-stabiliser path
    (h depends on m through eps, the final state through its m) is then O(1), not O(1e-6)."""
    B, T, H, K, V, L, eps = 1, 40, 2, 16, 16, 16, 0.1
    x, state = _inputs(B, T, H, K, V, "near1", True)
    state = tuple(t.float().double() for t in state)
    x = {k: t.float().double() for k, t in x.items()}

    def run(fn, xx, ss, **kw):
        lv = {k: t.clone().requires_grad_() for k, t in xx.items()}
        s0 = tuple(t.clone().requires_grad_() for t in ss)
        h, st = fn(**lv, initial_state=s0, eps=eps, **kw)
        g = torch.Generator().manual_seed(5)
        loss = sum((t.double().cpu() * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum()
                   for t in (h, *st))
        return [h, *st, *torch.autograd.grad(loss, [*lv.values(), *s0])]
    ref = run(naive_recurrent_mlstm, x, state)
    out = run(chunk_mlstm, {k: t.to(DEV, torch.float32) for k, t in x.items()},
              tuple(t.to(DEV, torch.float32) for t in state), chunk_size=L, **path)
    for name, a, b in zip("h C n m dq dk dv di df dC0 dn0 dm0".split(), out, ref):
        assert_rel_close(a.cpu(), b, 1e-4, name)


def test_chunk_mlstm_bad_inputs():
    q = torch.randn(1, 4, 1, 16, device=DEV)
    v, g = torch.randn(1, 4, 1, 16, device=DEV), torch.randn(1, 4, 1, device=DEV)
    with pytest.raises(ValueError, match="chunk_size must be one of"):
        chunk_mlstm(q, q, v, g, g, chunk_size=48)
    with pytest.raises(TypeError, match="share one dtype"):
        chunk_mlstm(q, q.half(), v, g, g)
    with pytest.raises(ValueError, match=r"gates i, f must be \[B, T, H\]"):
        chunk_mlstm(q, q, v, g[..., None], g)


# K = 80: the two passes tile it in two K blocks, the fused walk pads it to one 128-wide tile
INFERENCE_CASES = [(1, 63, 2, 80, 16, 16, "near1", True), (2, 40, 1, 16, 32, 32, "i0", False)]


@pytest.mark.parametrize("case", INFERENCE_CASES, ids=[_id(c) for c in INFERENCE_CASES])
@FWD
def test_chunk_mlstm_inference_matches_reference(case, path, poison_empty):
    """Without a gradient the fused walk saves nothing for the backward (SAVE off: only the final
    n, m slots): h and the final state alone, against the reference."""
    B, T, H, K, V, L, gates, with_state = case
    x, state = _inputs(B, T, H, K, V, gates, with_state)
    x = {k: t.float().double() for k, t in x.items()}
    state = tuple(t.float().double() for t in state) if state is not None else None
    h_ref, (C_ref, n_ref, m_ref) = naive_recurrent_mlstm(**x, initial_state=state)
    xd = {k: t.to(DEV, torch.float32) for k, t in x.items()}
    sd = tuple(t.to(DEV, torch.float32) for t in state) if state is not None else None
    with torch.no_grad():
        h, (C, n, m) = chunk_mlstm(**xd, chunk_size=L, initial_state=sd, **path)
    s = torch.exp(m.cpu().double() - m_ref)
    assert_rel_close(h.cpu(), h_ref, 1e-4, "h")
    assert_rel_close(C.cpu() * s[..., None, None], C_ref, 1e-4, "C final")
    assert_rel_close(n.cpu() * s[..., None], n_ref, 1e-4, "n final")


def test_chunk_mlstm_forward_path_is_two_pass_until_measured():
    """No crossover measured yet (FUSED_PROGRAMS_PER_SM None): the default is the two passes."""
    from kernels.mlstm import chunk as mc
    assert mc.FUSED_PROGRAMS_PER_SM is None
    assert not mc.fused_forward_by_default(64, 16, 128, 128, 64, torch.bfloat16, torch.device("cpu"))


def test_chunk_mlstm_forward_path_follows_the_gpu_size(monkeypatch):
    """The default forward path once a crossover is set (here 1.0): the fused walk once its (V
    tile, batch, head) programs reach FUSED_PROGRAMS_PER_SM per SM (here a 132-SM H100), the two
    passes below it and wherever the walk does not fit on chip; the interpreter's CPU always takes
    the fused walk where it fits."""
    import math

    from kernels import triton_utils
    from kernels.mlstm import chunk as mc
    monkeypatch.setattr(mc, "FUSED_PROGRAMS_PER_SM", 1.0)
    monkeypatch.setattr(triton_utils, "_sm_count", lambda index: 132)
    gpu, need, bf = torch.device("cuda", 0), math.ceil(mc.FUSED_PROGRAMS_PER_SM * 132), torch.bfloat16
    assert mc.fused_forward_by_default(need, 1, 128, 64, 64, bf, gpu)            # one V tile per head
    assert not mc.fused_forward_by_default(need - 1, 1, 128, 64, 64, bf, gpu)
    assert mc.fused_forward_by_default(1, need, 128, 64, 64, bf, gpu)            # heads count as batch
    assert mc.fused_forward_by_default(-(-need // 4), 1, 128, 256, 64, bf, gpu)  # 4 V tiles per head
    assert not mc.fused_forward_by_default(10 * need, 1, 320, 64, 64, bf, gpu)   # K over the walk's tile
    cpu = torch.device("cpu")
    assert mc.fused_forward_by_default(1, 1, 256, 16, 128, bf, cpu)
    assert mc.fused_forward_by_default(1, 1, 256, 16, 64, torch.float32, cpu)
    assert mc.fused_forward_by_default(1, 1, 128, 16, 128, torch.float16, cpu)
    assert not mc.fused_forward_by_default(1, 1, 256, 16, 128, torch.float32, cpu)  # fp32 tiles: 256 KB
    assert not mc.fused_forward_by_default(1, 1, 272, 16, 16, bf, cpu)
    # chunk_mlstm's default follows it (the interpreter: fused where it fits)
    seen = []
    run_forward = mc._forward
    monkeypatch.setattr(mc, "_forward", lambda *a, **kw: seen.append(kw["fused"]) or run_forward(*a, **kw))
    for K in (16, 272):
        q, v = torch.randn(1, 3, 1, K, device=DEV), torch.randn(1, 3, 1, 16, device=DEV)
        g = torch.randn(1, 3, 1, device=DEV)
        with torch.no_grad():
            chunk_mlstm(q, q, v, g, g, chunk_size=16)
    assert seen == [DEV == "cpu", False]


@FWD
def test_chunk_mlstm_chunks_without_writes(path, poison_empty):
    """Input gates at -inf over whole chunks (masked tokens): such a chunk writes nothing, and the
    chunk-parallel pass must weigh its (empty) write 0 rather than form -inf - -inf."""
    B, T, H, K, V, L = 1, 50, 2, 16, 16, 16
    x, _ = _inputs(B, T, H, K, V, "near1", False)
    x["i"][:, 16:32] = float("-inf")                                 # the second chunk, both heads
    x["i"][:, :16, 0] = float("-inf")                                # the first chunk of head 0
    h_ref, (C_ref, n_ref, m_ref) = naive_recurrent_mlstm(**x)
    with torch.no_grad():
        h, (C, n, m) = chunk_mlstm(**{k: t.to(DEV, torch.float32) for k, t in x.items()}, chunk_size=L,
                                   **path)
    s = torch.exp(m.cpu().double() - m_ref)
    assert_rel_close(h.cpu(), h_ref, 1e-4, "h")
    assert_rel_close(C.cpu() * s[..., None, None], C_ref, 1e-4, "C final")
    assert_rel_close(n.cpu() * s[..., None], n_ref, 1e-4, "n final")


def test_chunk_mlstm_parallel_states_with_a_shares_scratch(monkeypatch, poison_empty):
    """Where the states are stored rounded (bf16 inputs, which the interpreter cannot run), the
    chunk-parallel passes keep each chunk's own share in an fp32 scratch and write the states from
    it. Here the scratch is forced for fp32 states (NaN-poisoned, like every torch.empty): h, the
    final state and every gradient against the reference."""
    from kernels.mlstm import chunk as mc
    scratches = []

    def scratch(states):
        scratches.append(torch.empty(states.shape, device=states.device, dtype=torch.float32))
        return scratches[-1]
    monkeypatch.setattr(mc, "_shares_buffer", scratch)
    _check((1, 70, 2, 16, 32, 16, "near1", True), torch.float32, path=FORWARD_PATHS["parallel-states"])
    assert len(scratches) == 2                                           # forward and backward


def test_chunk_mlstm_parallel_states_default(monkeypatch):
    """The chunk-parallel state pass is off by default until measured (PARALLEL_STATES_BELOW_PER_SM
    None); once set (here 1.0 on a 132-SM H100) it runs where the sequential walk's (K tile, V tile,
    batch, head) programs number fewer, never on the interpreter's CPU, and never with the fused walk."""
    from kernels import triton_utils
    from kernels.mlstm import chunk as mc
    assert mc.PARALLEL_STATES_BELOW_PER_SM is None
    gpu = torch.device("cuda", 0)
    assert not mc.parallel_states_by_default(1, 1, 128, 128, gpu)
    monkeypatch.setattr(mc, "PARALLEL_STATES_BELOW_PER_SM", 1.0)
    monkeypatch.setattr(triton_utils, "_sm_count", lambda index: 132)
    assert mc.parallel_states_by_default(1, 4, 128, 256, gpu)         # 2 x 4 x 4 = 32 programs
    assert mc.parallel_states_by_default(16, 1, 128, 128, gpu)        # 2 x 2 x 16 = 64
    assert not mc.parallel_states_by_default(33, 1, 128, 128, gpu)    # 132
    assert not mc.parallel_states_by_default(1, 4, 128, 256, torch.device("cpu"))
    seen = []
    run_forward = mc._forward
    monkeypatch.setattr(mc, "parallel_states_by_default", lambda *a: True)
    monkeypatch.setattr(mc, "_forward", lambda *a, **kw: seen.append((kw["fused"], kw["parallel"]))
                        or run_forward(*a, **kw))
    q, v, g = torch.randn(1, 3, 1, 16, device=DEV), torch.randn(1, 3, 1, 16, device=DEV), torch.randn(1, 3, 1)
    with torch.no_grad():
        chunk_mlstm(q, q, v, g.to(DEV), g.to(DEV), chunk_size=16)
        chunk_mlstm(q, q, v, g.to(DEV), g.to(DEV), chunk_size=16, fused_forward=True)
        chunk_mlstm(q, q, v, g.to(DEV), g.to(DEV), chunk_size=16, parallel_states=False)
    assert seen == [(False, True), (True, False), (False, False)]  # fused: None until measured
    with pytest.raises(ValueError, match="fused_forward=True and parallel_states=True exclude each other"):
        chunk_mlstm(q, q, v, g.to(DEV), g.to(DEV), fused_forward=True, parallel_states=True)


@pytest.mark.parametrize("K,chunk,dtype", [(272, 64, torch.float32), (256, 128, torch.float32)],
                         ids=["K272", "K256-chunk128-fp32"])
def test_chunk_mlstm_fused_forward_refuses_what_does_not_fit(K, chunk, dtype):
    q = torch.randn(1, 4, 1, K, device=DEV, dtype=dtype)
    v, g = torch.randn(1, 4, 1, 16, device=DEV, dtype=dtype), torch.randn(1, 4, 1, device=DEV)
    with pytest.raises(ValueError, match=rf"fused_forward=True does not fit on chip at K={K}, "
                                         rf"chunk_size={chunk}.*pass fused_forward=False"):
        chunk_mlstm(q, q, v, g, g, chunk_size=chunk, fused_forward=True)


STEP_CASES = [(2, 3, 16, 64, "near1"), (1, 2, 32, 16, "i0")]


@pytest.mark.parametrize("case", STEP_CASES, ids=["B{}-H{}-K{}-V{}-{}".format(*c) for c in STEP_CASES])
def test_fused_step_and_recurrent(case, poison_empty):
    B, H, K, V, gates = case
    T = 9
    x, state = _inputs(B, T, H, K, V, gates, True)
    h_ref, (C_ref, n_ref, m_ref) = naive_recurrent_mlstm(**x, initial_state=state)
    xd = {k: t.to(DEV, torch.float32) for k, t in x.items()}
    sd = tuple(t.to(DEV, torch.float32) for t in state)
    h, (C, n, m) = fused_recurrent_mlstm(**xd, initial_state=sd)
    s = torch.exp(m.cpu().double() - m_ref)
    assert_rel_close(h.cpu(), h_ref, 1e-5, "h (recurrent)")
    assert_rel_close(C.cpu() * s[..., None, None], C_ref, 1e-5, "C (recurrent)")
    assert_rel_close(n.cpu() * s[..., None], n_ref, 1e-5, "n (recurrent)")
    # one step, in place (out_state = state), against mlstm_step
    st = tuple(t.clone() for t in sd)
    one = {k: t[:, 0] for k, t in xd.items()}
    h1_ref, (C1, n1, m1) = mlstm_step(**{k: t.double() for k, t in one.items()},
                                      state=tuple(t.double() for t in sd))
    h1n, new = fused_mlstm_step(**one, state=st)          # out of place: V split over programs
    assert_rel_close(h1n.cpu(), h1_ref.cpu(), 1e-5, "h (step)")
    assert_rel_close(new[0].cpu(), C1.cpu(), 1e-5, "C (step)")
    assert_rel_close(new[1].cpu(), n1.cpu(), 1e-5, "n (step)")
    h1, out = fused_mlstm_step(**one, state=st, out_state=st)
    assert out[0] is st[0]
    assert_rel_close(h1.cpu(), h1_ref.cpu(), 1e-5, "h (step)")
    assert_rel_close(st[0].cpu(), C1.cpu(), 1e-5, "C (step, in place)")
    assert_rel_close(st[1].cpu(), n1.cpu(), 1e-5, "n (step, in place)")
    assert_rel_close(st[2].cpu(), m1.cpu(), 1e-6, "m (step, in place)")


def test_fused_recurrent_refuses_grad():
    q = torch.randn(1, 2, 1, 16, device=DEV, requires_grad=True)
    v, g = torch.randn(1, 2, 1, 16, device=DEV), torch.randn(1, 2, 1, device=DEV)
    with pytest.raises(RuntimeError, match="forward only"):
        fused_recurrent_mlstm(q, q, v, g, g)
