"""Selective scan (Mamba-1) benchmark: ``python -m kernels.selective_scan.bench [--out DIR] [--smoke]
[--only timing,decode,compile,correctness,stability]`` (that order by default). Rows print as they
are measured; each public contender runs in its own child process with a time budget
(--contender-timeout), so an abort or a hang inside it becomes a row with the reason.

1. GPU correctness of the Triton scan (bf16, fp16, fp32 inputs) against the float64 chunked
   reference: output, final state, every gradient, rel errors with their tolerance, PASS/FAIL;
2. a T = 65536 stability check with decays near 0 and near 1 (bf16 vs the fp32 reference);
3. timings (bf16, D = 2048, N = 16, B * T = 32768, T 1k..32k) of fwd and fwd+bwd against the
   naive chunked reference and mamba_ssm's CUDA ``selective_scan_fn`` when it imports; decode-step
   latency against mamba_ssm's Triton ``selective_state_update``; first-call compile + autotune
   seconds; the floor: max(HBM bytes / bandwidth, exps / MUFU rate) and the % of it achieved.
"""
from __future__ import annotations

import os

import torch

from kernels.bench_utils import (
    HBM_GBPS,
    Table,
    bench_args,
    case_done,
    contender_cases,
    first_call_s,
    import_contender,
    run_contender,
    run_sections,
    table_path,
    time_ms,
)
from kernels.selective_scan import naive_chunk_selective_scan
from kernels.selective_scan.recurrent import fused_selective_scan_step
from kernels.selective_scan.scan import selective_scan

# H100 SXM MUFU: 16 exp2 per SM per clock x 132 SMs x ~1.75 GHz (ARENA_EXP_PER_S overrides)
EXP_PER_S = float(os.environ.get("ARENA_EXP_PER_S", str(16 * 132 * 1.75e9)))
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}  # output rounding: 2^-11, 2^-8
KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")


def make(b, T, Dch, N, dtype, dev, decay="mixed", h0=True, grad=False):
    """Activations in ``dtype``; A, D, delta_bias, h0 in fp32 (the Mamba block's parameters)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    A = -torch.exp(torch.rand(Dch, N, generator=g))
    if decay == "near1":
        delta, bias, A = torch.full((b, T, Dch), -4.0), torch.zeros(Dch), 0.05 * A
    elif decay == "near0":
        delta, bias, A = 4.0 + torch.rand(b, T, Dch, generator=g), torch.rand(Dch, generator=g), 4.0 * A - 2.0
    else:
        delta, bias = torch.randn(b, T, Dch, generator=g) - 4.0, torch.randn(Dch, generator=g)
    t = dict(u=torch.randn(b, T, Dch, generator=g), delta=delta, A=A, B=torch.randn(b, T, N, generator=g),
             C=torch.randn(b, T, N, generator=g), D=torch.randn(Dch, generator=g),
             z=torch.randn(b, T, Dch, generator=g), delta_bias=bias,
             h0=torch.randn(b, Dch, N, generator=g) if h0 else None)
    fp32 = ("A", "D", "delta_bias", "h0")
    return {k: (v.to(dev, torch.float32 if k in fp32 else dtype).requires_grad_(grad)
                if v is not None else None) for k, v in t.items()}


def call(fn, t, **kw):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], delta_bias=t["delta_bias"],
              delta_softplus=True, initial_state=t["h0"], **kw)


def run_grads(fn, t, dy, dh, **kw):
    y, h = call(fn, t, **kw)
    names = [k for k in KEYS if t[k] is not None]
    loss = (y * dy.to(y.dtype)).sum() + (h * dh.to(h.dtype)).sum()
    grads = torch.autograd.grad(loss, [t[k] for k in names])
    return y, h, dict(zip(names, grads))


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def correctness(dev, shapes, rows):
    for dtype, b, T, Dch, N in shapes:
        t = make(b, T, Dch, N, dtype, dev, grad=True)
        t64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in t.items()}
        g = torch.Generator(device="cpu").manual_seed(1)
        dy = torch.randn(b, T, Dch, generator=g).to(dev, dtype)  # the same cotangent values on both sides
        dh = torch.randn(b, Dch, N, generator=g).to(dev)
        y, h, gr = run_grads(selective_scan, t, dy, dh)
        y_r, h_r, gr_r = run_grads(naive_chunk_selective_scan, t64, dy.double(), dh.double())
        errs = {"y": rel(y, y_r), "h": rel(h, h_r)} | {f"d{k}": rel(gr[k], gr_r[k]) for k in gr}
        tol = TOL[dtype]
        worst = max(errs, key=errs.get)
        ok = all(e <= (1e-4 if k == "h" else tol) for k, e in errs.items())
        rows.append(dict(dtype=str(dtype)[6:], shape=f"B{b}-T{T}-D{Dch}-N{N}", tol=tol,
                         worst=worst, worst_err=errs[worst], y=errs["y"], h=errs["h"],
                         status="PASS" if ok else "FAIL"))


def stability(dev, T, Dch, rows):
    for decay in ("near0", "near1"):
        t = make(1, T, Dch, 16, torch.bfloat16, dev, decay=decay)
        with torch.no_grad():
            y, h = call(selective_scan, t)
            t32 = {k: (v.float() if v is not None else None) for k, v in t.items()}
            y_r, h_r = call(naive_chunk_selective_scan, t32, chunk_size=256)
        finite = bool(torch.isfinite(y).all() and torch.isfinite(h).all())
        ok = finite and rel(y, y_r) < 2e-2 and rel(h, h_r) < 1e-3
        rows.append(dict(check=f"T{T}-D{Dch}-{decay}", y_err=rel(y, y_r), h_err=rel(h, h_r),
                         tol="2e-2 / 1e-3", status="PASS" if ok else "FAIL"))


def floor_ms_of(bT, Dch, N, chunk, backward):
    """max(HBM bytes / bandwidth, exps / MUFU rate) in ms; bf16 activations, fp32 saved states."""
    fwd_bytes = bT * (8 * Dch + 4 * N)  # read u, delta, z, B, C; write y
    exps = bT * Dch * N
    if not backward:
        return max(fwd_bytes / (HBM_GBPS * 1e9), exps / EXP_PER_S) * 1e3, fwd_bytes
    states = bT * 4 * Dch * N / chunk  # written by the forward, read by the backward
    # read u, delta, z, dy, B, C; write du, ddelta, dz, dB, dC
    bwd_bytes = bT * (8 * Dch + 4 * N) + bT * (6 * Dch + 4 * N)
    total = fwd_bytes + bwd_bytes + 2 * states
    return max(total / (HBM_GBPS * 1e9), 2 * exps / EXP_PER_S) * 1e3, total


def timed(fn, backward, t, bT, Dch, N, chunk, impl, T, rows, first=False):
    """One row: median ms, floor and % of floor (and the first call's seconds when ``first``); an
    OOM or a failure is a row, not a crash."""
    fl, nbytes = floor_ms_of(bT, Dch, N, chunk, backward)
    row = dict(impl=impl, pass_="fwd+bwd" if backward else "fwd", T=T, B=bT // T)
    try:
        if first:
            row["first_call_s"] = first_call_s(fn)
        ms = time_ms(fn)[0]
        row |= dict(ms=ms, floor_ms=fl, pct_floor=100 * fl / ms, GBps=nbytes / ms / 1e6, status="ok")
    except torch.cuda.OutOfMemoryError:
        row |= dict(status="oom")
    except Exception as e:  # noqa: BLE001 - a contender failure is recorded, not raised
        row |= dict(status=f"error: {type(e).__name__}: {str(e)[:80]}")
    rows.append(row)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def backward_of(y, dy, leaves):
    """Gradients without accumulating into .grad (no extra adds inside the timed region)."""
    return torch.autograd.grad(y, leaves, dy)


def step_of(fn, t, dy, backward, **kw):
    """The timed closure: the scan with our argument order, then its gradients when asked."""
    leaves = [t[k] for k in KEYS if t[k] is not None]

    def go(fn=fn, t=t, dy=dy, leaves=leaves, kw=kw):
        y, _ = call(fn, t, **kw)
        if backward:
            backward_of(y, dy, leaves)
    return go


def mamba_step_of(fn, t, dy, backward):
    """mamba_ssm's layout (u, delta, z [B, D, L]; B, C [B, N, L]), copied outside the timing."""
    tm = {k: (v.detach().transpose(1, 2).contiguous().requires_grad_() if k in ("u", "delta", "z", "B", "C")
              else v) for k, v in t.items()}
    dym = dy.transpose(1, 2).contiguous()
    leaves = [tm[k] for k in KEYS if tm[k] is not None and tm[k].requires_grad]

    def go(fn=fn, tm=tm, dym=dym, leaves=leaves):
        y = fn(tm["u"], tm["delta"], tm["A"], tm["B"], tm["C"], tm["D"], tm["z"],
               delta_bias=tm["delta_bias"], delta_softplus=True)
        if backward:
            backward_of(y, dym, leaves)
    return go


def scan_timings(dev, Ts, bT, Dch, N, chunk, rows, naive_T):
    """Arena's scan (and the torch reference at ``naive_T``), in this process."""
    for T in Ts:
        b = bT // T
        t = make(b, T, Dch, N, torch.bfloat16, dev, grad=True)
        dy = torch.randn(b, T, Dch, device=dev, dtype=torch.bfloat16)
        for backward in (False, True):
            for c in chunk:
                timed(step_of(selective_scan, t, dy, backward, chunk_size=c), backward, t, b * T, Dch, N, c,
                      f"triton chunk{c}", T, rows, first=T == Ts[0])
            if T in naive_T:
                timed(step_of(naive_chunk_selective_scan, t, dy, backward), backward, t, b * T, Dch, N,
                      chunk[0], "naive_chunk (torch)", T, rows)
        DONE_FIRST.add("scan")


def mamba_child(a, dev, Ts, bT, Dch, N, chunk):
    """(child process) mamba_ssm's CUDA ``selective_scan_fn`` at the cases ``T<n>``."""
    rows = Table("selective_scan contender: mamba_ssm selective_scan_fn",
                 table_path(a.out, "selective_scan", "contender-mamba_ssm"))
    fn, why = import_contender("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
    for i, case in enumerate(contender_cases(a, [f"T{T}" for T in Ts])):
        T = int(case[1:])
        if fn is None:
            rows.append(dict(impl="mamba_ssm selective_scan_fn (CUDA)", T=T, B=bT // T, status=why))
        else:
            b = bT // T
            t = make(b, T, Dch, N, torch.bfloat16, dev, grad=True)
            dy = torch.randn(b, T, Dch, device=dev, dtype=torch.bfloat16)
            for backward in (False, True):
                timed(mamba_step_of(fn, t, dy, backward), backward, t, b * T, Dch, N, chunk[0],
                      "mamba_ssm selective_scan_fn (CUDA)", T, rows, first=i == 0)
        case_done(case)


def decode_impls(x, state, step_fn):
    """(name, closure) of arena's decode step (``step_fn`` None) or mamba_ssm's; both update
    ``state`` in place."""
    if step_fn is None:
        return "triton fused_selective_scan_step", lambda x=x, state=state: fused_selective_scan_step(
            x["u"], x["delta"], x["A"], x["B"], x["C"], state, x["D"], x["z"], delta_bias=x["delta_bias"],
            delta_softplus=True, out_state=state)
    return "mamba_ssm selective_state_update (Triton)", lambda x=x, state=state: step_fn(
        state, x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], dt_bias=x["delta_bias"],
        dt_softplus=True)


def decode_timings(dev, Bs, Dch, N, rows, step_fn=None):
    for b in Bs:
        decode_row(dev, b, Dch, N, rows, step_fn)


def decode_row(dev, b, Dch, N, rows, step_fn):
    t = make(b, 1, Dch, N, torch.bfloat16, dev)
    x = {k: (v[:, 0].contiguous() if k in ("u", "delta", "B", "C", "z") else v) for k, v in t.items()}
    state = torch.randn(b, Dch, N, device=dev)
    nbytes = 2 * 4 * b * Dch * N + 4 * Dch * N
    name, fn = decode_impls(x, state, step_fn)
    try:
        c = first_call_s(fn)
        us = time_ms(fn)[0] * 1e3
        rows.append({"impl": name, "B": b, "us": us, "floor_us": nbytes / (HBM_GBPS * 1e3), "first_call_s": c,
                     "status": "ok"})
    except Exception as e:  # noqa: BLE001 - a failure is recorded, not raised
        rows.append({"impl": name, "B": b, "status": f"error: {type(e).__name__}: {str(e)[:80]}"})


def step_child(a, dev, Bs, Dch, N):
    """(child process) mamba_ssm's Triton ``selective_state_update`` at the cases ``B<n>``."""
    rows = Table("selective_scan decode contender", table_path(a.out, "selective_scan", "contender-mamba_ssm_step"))
    fn, why = import_contender("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")
    for case in contender_cases(a, [f"B{b}" for b in Bs]):
        if fn is None:
            rows.append({"impl": "mamba_ssm selective_state_update (Triton)", "B": int(case[1:]), "status": why})
        else:
            decode_row(dev, int(case[1:]), Dch, N, rows, fn)
        case_done(case)


def first_calls(dev, Dch, N, T, chunk, rows):
    """Compile + autotune seconds of each kernel, measured before anything else runs them."""
    t = make(1, T, Dch, N, torch.bfloat16, dev, grad=True)
    held = {}

    def fwd():
        held["y"] = call(selective_scan, t, chunk_size=chunk)[0]
    rows.append(dict(kernel="selective_scan_fwd_kernel (+ autotune)", s=first_call_s(fwd)))
    rows.append(dict(kernel="selective_scan_bwd_kernel (+ autotune)",
                     s=first_call_s(lambda: held["y"].sum().backward())))
    x = {k: (v.detach()[:, 0].contiguous() if k in ("u", "delta", "B", "C", "z")
             else v.detach() if v is not None else None) for k, v in t.items()}
    state = torch.zeros(1, Dch, N, device=dev)
    rows.append(dict(kernel="selective_scan_step_kernel", s=first_call_s(
        lambda: fused_selective_scan_step(x["u"], x["delta"], x["A"], x["B"], x["C"], state, x["D"], x["z"],
                                          delta_bias=x["delta_bias"], delta_softplus=True))))


DONE_FIRST: set[str] = set()
SECTIONS = ("timing", "decode", "compile", "correctness", "stability")


def main(argv=None):
    a = bench_args(__doc__, argv, SECTIONS)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        from kernels.selective_scan.interp import patch_interpreter_scan
        patch_interpreter_scan()
    out = lambda name: table_path(a.out, "selective_scan", name)
    bf, hf, f = torch.bfloat16, torch.float16, torch.float32
    if a.smoke:
        Dch, N, bT, Ts, chunk, stab_T, Bs = 16, 16, 64, (32, 64), (16,), 64, (1, 2)
        shapes = [(f, 1, 1, 16, 16), (f, 1, 20, 12, 5), (hf, 1, 20, 12, 5)]
    else:
        Dch, N, bT, Ts, chunk = 2048, 16, 32768, (1024, 2048, 4096, 8192, 16384, 32768), (16, 32, 64)
        stab_T, Bs = 65536, (1, 64)
        # bf16 at T = 1, a ragged T and T = 1000; fp16 / fp32 at one shape each
        shapes = [(bf, 2, 1, 64, 16), (bf, 2, 130, 96, 16), (bf, 1, 1000, 256, 16), (hf, 2, 63, 64, 16),
                  (f, 2, 63, 64, 16)]

    def timing():
        rows = Table(f"selective_scan: bf16, D={Dch}, N={N}, B*T={bT} (ms; floor = max(bytes, exps))",
                     out("scan_timings"))
        scan_timings(dev, Ts, bT, Dch, N, chunk, rows, naive_T=Ts if a.smoke else (1024, 8192, 32768))
        run_contender("selective_scan", "contender-mamba_ssm", [f"T{T}" for T in Ts], rows, a,
                      lambda c: {"T": int(c[1:])})

    def decode():
        rows = Table(f"selective_scan: decode step, D={Dch}, N={N} (us)", out("decode_timings"))
        decode_timings(dev, Bs, Dch, N, rows)
        run_contender("selective_scan", "contender-mamba_ssm_step", [f"B{b}" for b in Bs], rows, a,
                      lambda c: {"B": int(c[1:])})

    def compile_():
        if "scan" in DONE_FIRST:  # the timing section ran first in this process: kernels are warm
            print("first calls were measured by the timing section above (first_call_s column)", flush=True)
            return
        first_calls(dev, Dch, N, Ts[0], chunk[0], Table("selective_scan: first call (compile + autotune), seconds",
                                                        out("first_call")))

    sections = {
        "timing": timing, "decode": decode, "compile": compile_,
        "correctness": lambda: correctness(dev, shapes, Table(
            "selective_scan: Triton vs float64 reference (rel err)", out("correctness"))),
        "stability": lambda: stability(dev, stab_T, 64 if not a.smoke else 16, Table(
            f"selective_scan: T={stab_T} stability (bf16 vs fp32 reference)", out("stability"))),
        "contender-mamba_ssm": lambda: mamba_child(a, dev, Ts, bT, Dch, N, chunk),
        "contender-mamba_ssm_step": lambda: step_child(a, dev, Bs, Dch, N),
    }
    run_sections(sections, a.only, SECTIONS)


if __name__ == "__main__":
    main()
