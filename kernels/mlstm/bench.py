"""Benchmark + GPU checks of the Triton mLSTM kernels: ``python -m kernels.mlstm.bench [--out DIR]
[--only timing,decode,compile,correctness,stability] [--chunks 64,128]`` (sections in that order by
default; ``--smoke``: tiny shapes, CPU under TRITON_INTERPRET=1, seconds). Rows print as they are
measured; each public contender runs in its own child process with a time budget
(--contender-timeout), so an LLVM abort or a hang inside it becomes a row with the reason.

1. correctness against ``naive_chunk_mlstm`` in fp64 on the same (rounded) values, bf16 / fp16 /
   fp32 inputs, T = 1, 63, 130, 1000: h, the invariant final state and every gradient, for every
   forward path (``chunk.FORWARD_PATHS``: the two passes with the sequential or the chunk-parallel
   state pass, whose backward's state pass is chunk-parallel too, and the fused walk; column ``fwd``);
2. T = 65536 stability with gates at both extremes against the naive chunked form in fp32, every
   forward path;
3. timing (bf16, B*T = 32768, chunk 64) of fwd and fwd+bwd at two head shapes:
   ``xlstm-d1024`` = arena's xlstm mixer at d_model 1024 (H 4, K 128, V 256) and
   ``mlstm_kernels`` = mlstm_kernels' benchmark shape (H 16, K = V = 128), arena's rows for each
   forward path that fits (named in ``impl``); the contender
   ``mlstm_kernels.torch.chunkwise.triton_xl_chunk.mlstm_chunkwise__xl_chunk`` (layout
   [B, H, T, D], raw gate preactivations, converted outside the timed region); decode-step latency
   at B = 1 and 64 against mlstm_kernels' triton step; first-call (compile + autotune) seconds; the
   HBM floor (bytes the pass must move: inputs read once, outputs written once) and % achieved.
"""
from __future__ import annotations

import os
import sys

import torch

from kernels.bench_utils import (
    Table,
    bench_args,
    case_done,
    contender_cases,
    first_call_s,
    floor_ms,
    import_contender,
    run_contender,
    run_sections,
    table_path,
    time_ms,
)
from kernels.mlstm import naive_chunk_mlstm

TOL = {torch.float32: (1e-4, 5e-4), torch.float16: (5e-3, 1e-2), torch.bfloat16: (2e-2, 4e-2)}
COND_FACTOR = 16  # fp32: a chunked sum may sit this far above the reference formula's own fp32 error
SHAPES = {"xlstm-d1024": (4, 128, 256), "mlstm_kernels": (16, 128, 128)}   # H, K, V
GATES = {"near1": (6.0, 0.0), "near0": (-6.0, 0.0), "i0": (3.0, -10.0)}


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _inputs(B, T, H, K, V, dtype, dev, gates="near1", state=True, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=dev)
    fm, im = GATES[gates]
    x = dict(q=r(B, T, H, K).to(dtype), k=r(B, T, H, K).to(dtype), v=r(B, T, H, V).to(dtype),
             i=(im + 2 * r(B, T, H)).to(dtype), f=(fm + r(B, T, H)).to(dtype))
    s = (r(B, H, K, V), r(B, H, K), r(B, H)) if state else None
    return x, s


def _grads(fn, x, s, m_ref=None, **kw):
    """h, invariant final state, every gradient for a fixed random loss."""
    lv = {k: t.detach().clone().requires_grad_() for k, t in x.items()}
    s0 = tuple(t.detach().clone().requires_grad_() for t in s) if s is not None else None
    h, (C, n, m) = fn(**lv, initial_state=s0, **kw)
    m_ref = m.detach() if m_ref is None else m_ref
    sc = torch.exp(m - m_ref.to(m.dtype))
    C, n = C * sc[..., None, None], n * sc[..., None]
    g = torch.Generator(device=h.device).manual_seed(7)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, device=h.device, dtype=torch.float64)).sum()
               for t in (h, C, n))
    gr = torch.autograd.grad(loss, [*lv.values(), *(s0 or ())])
    names = [*lv, *(("C0", "n0", "m0") if s0 else ())]
    return {"h": h, "C": C, "n": n, **{f"d{k}": v for k, v in zip(names, gr)}}, m_ref


def check_correctness(dev, smoke, rows):
    from kernels.mlstm.chunk import FORWARD_PATHS, chunk_mlstm
    bf, hf, f = torch.bfloat16, torch.float16, torch.float32
    # the timing shapes' head dims and chunk, so the bf16 compiles + autotunes serve the timing:
    # bf16 at T = 1, a ragged T and T = 1000; fp16 / fp32 at one shape each (each dtype x shape
    # compiles every kernel of both forward paths and the backward)
    cases = [(bf, 2, 1, 2, 128, 256, 64, "near1"), (bf, 1, 130, 2, 128, 256, 64, "i0"),
             (bf, 1, 1000, 2, 128, 128, 64, "near1"), (hf, 2, 63, 2, 128, 128, 64, "near0"),
             (bf, 2, 63, 2, 128, 128, 64, "near0"), (hf, 1, 1000, 2, 128, 128, 64, "near1"),
             (f, 1, 130, 2, 128, 128, 64, "i0"), (f, 1, 1000, 2, 128, 128, 64, "near1")]
    if smoke:
        cases = [(f, 1, 40, 1, 16, 16, 16, "near1"), (hf, 1, 63, 1, 16, 16, 16, "near0")]
    for (dt, B, T, H, K, V, L, gates) in cases:
        x, s = _inputs(B, T, H, K, V, dt, dev, gates)
        ref, m_ref = _grads(naive_chunk_mlstm, {k: t.double() for k, t in x.items()},
                            tuple(t.double() for t in s), chunk_size=L)
        # the conditioning floor: the reference's own formula in fp32 on the same values
        r32, _ = _grads(naive_chunk_mlstm, {k: t.float() for k, t in x.items()},
                        tuple(t.float() for t in s), m_ref=m_ref.float(), chunk_size=L)
        base = dict(shape=f"B{B}-T{T}-H{H}-K{K}-V{V}-chunk{L}-{gates}", dtype=str(dt)[6:])
        for path, kw in FORWARD_PATHS.items():  # every forward path (the default picks by the grid's size)
            row = dict(**base, fwd=path)
            print(f"# correctness {row}", flush=True)  # a hard crash (abort, IMA) is named by this line
            try:
                out, _ = _grads(chunk_mlstm, x, s, m_ref=m_ref, chunk_size=L, **kw)
            except Exception as e:  # noqa: BLE001 - a failing path is a row
                rows.append(dict(**row, tensor="all", result=f"error: {type(e).__name__}: {str(e)[:160]}"))
                continue
            _score(out, ref, r32, dt, row, rows)


def _score(out, ref, r32, dt, row, rows):
    """One row per tensor: its error against the fp64 reference, PASS / FAIL at the dtype's tolerance."""
    for name in ref:
        tol, floor = TOL[dt][0 if name in ("h", "C", "n") else 1], _rel(r32[name], ref[name])
        a, b, note = out[name], ref[name], ""
        if dt == torch.float32 and COND_FACTOR * floor > tol:
            # ill-conditioned in fp32 itself (dm0 sums large cancelling terms; measured on an
            # H100: 1.3e-3 against the reference formula's own 1.0e-4): scale with that floor
            tol, note = COND_FACTOR * floor, f"tol = {COND_FACTOR} x the fp32 reference's own error"
        # a true value past the dtype's range (fp16: 65504) can only come back as inf (autograd
        # casts every gradient to its input's dtype): score the rest, require inf there
        big = b.abs() > torch.finfo(a.dtype).max
        if big.any():
            note = (f"{int(big.sum())} true values exceed {str(a.dtype)[6:]} range "
                    f"(max {b.abs().max().item():.3g})")
            ok_big = bool((a[big].double().abs() >= torch.finfo(a.dtype).max).all())
            a, b = a[~big], b[~big]
        else:
            ok_big = True
        err = _rel(a, b)
        ok = err <= tol and bool(torch.isfinite(a).all()) and ok_big
        rows.append(dict(**row, tensor=name, rel_err=err, tol=tol, result="PASS" if ok else "FAIL",
                         ref_fp32_err=floor, note=note))


def check_long(dev, smoke, rows):
    from kernels.mlstm.chunk import FORWARD_PATHS, chunk_mlstm
    T = 300 if smoke else 65536
    K = V = 16 if smoke else 64
    for name, (fm, im) in {"f~1,i+": (8.0, 8.0), "f~0,i-": (-8.0, -8.0), "f~1,i-": (8.0, -20.0)}.items():
        g = torch.Generator(device=dev).manual_seed(3)
        r = lambda *s, g=g: torch.randn(*s, generator=g, device=dev)
        dt = torch.float32 if smoke else torch.bfloat16
        # q, k >= 0: q.n stays away from 0, so h is well conditioned (zero-mean keys let q.n cross
        # 0 now and then, where h = num / (|q.n| + eps) amplifies any rounding: no kernel question)
        x = dict(q=r(1, T, 2, K).abs().to(dt), k=r(1, T, 2, K).abs().to(dt), v=r(1, T, 2, V).to(dt),
                 i=(im + 4 * r(1, T, 2)).to(dt), f=(fm + 2 * r(1, T, 2)).to(dt))
        with torch.no_grad():
            x32 = {k: t.float() for k, t in x.items()}
            h_ref, (C_ref, _, m_ref) = naive_chunk_mlstm(**x32, chunk_size=64)
        for path, kw in FORWARD_PATHS.items():
            with torch.no_grad():
                h, (C, n, m) = chunk_mlstm(**x, chunk_size=64, **kw)
            finite = all(bool(torch.isfinite(t).all()) for t in (h, C, n, m))
            e_h = _rel(h, h_ref)
            e_C = _rel(C * torch.exp(m - m_ref)[..., None, None], C_ref)
            tol = TOL[dt][0]
            rows.append(dict(gates=name, fwd=path, T=T, finite=finite,
                             rel_err_h=e_h, rel_err_C=e_C, tol=tol,
                             result="PASS" if finite and e_h <= tol and e_C <= tol else "FAIL"))


def _floor(B, T, H, K, V, L, bwd):
    """Bytes each pass must move (bf16 activations in once, outputs out once, bf16 gates) and the
    FLOPs of the chunkwise form (full L x L blocks), per the README's count."""
    tok = B * T * H
    by = tok * (2 * (2 * K + V) + 4 + 2 * V)
    fl = tok * (2 * L * (K + V) + 4 * K * V)
    if bwd:
        by += tok * (2 * (2 * K + 2 * V) + 4 + 2 * (2 * K + V) + 4)
        fl += tok * (8 * K * V + 8 * L * K + 4 * L * V)
    return floor_ms(by, fl)


def _timing_grid(smoke):
    """(shapes {name: (H, K, V)}, Ts, B*T, dtype) of the timing section."""
    if smoke:
        return {"smoke": (2, 16, 16)}, [64], 64, torch.float32
    return SHAPES, [1024, 2048, 4096, 8192, 16384, 32768], 32768, torch.bfloat16


def _timing_inputs(dev, smoke, sname, T):
    shapes, _, total, dt = _timing_grid(smoke)
    H, K, V = shapes[sname]
    B = max(1, total // T)
    x, _ = _inputs(B, T, H, K, V, dt, dev, "near1", state=False)
    dh = torch.randn(B, T, H, V, device=dev, dtype=dt)
    return x, dh, dict(shape=sname, B=B, T=T, H=H, K=K, V=V)


def bench_chunk(dev, smoke, chunks, rows, a):
    """Arena's chunk_mlstm in this process (a line before each shape: an abort names it), then
    mlstm_kernels' xl_chunk in a child process, one case per (shape, T, chunk)."""
    shapes, Ts, _, _ = _timing_grid(smoke)
    chunks = (16,) if smoke else chunks
    first = {}
    for sname in shapes:
        for T in Ts:
            x, dh, base = _timing_inputs(dev, smoke, sname, T)
            for L in chunks:
                print(f"# timing arena chunk_mlstm {sname} T={T} chunk={L}", flush=True)
                rows.extend(_time_ours(x, dh, base, L, first, (sname, L)))
    DONE_FIRST.add("chunk")
    cases = [f"{sname}:{T}:{L}" for sname in shapes for T in Ts for L in ((16,) if smoke else (64, 128))]
    run_contender("mlstm", "contender-xl_chunk", cases, rows, a, _case_base)


def _case_base(case):
    sname, T, L = case.split(":")
    return dict(shape=sname, T=int(T), chunk=int(L))


def contender_child(dev, smoke, a):
    """(child process) mlstm_kernels' ``mlstm_chunkwise__xl_chunk`` at cases ``shape:T:chunk``;
    chunk 64 is our bench chunk, 128 xl_chunk's default."""
    rows = Table("mLSTM contender: mlstm_kernels xl_chunk", table_path(a.out, "mlstm", "contender-xl_chunk"))
    contender, why = import_contender("mlstm_kernels.torch.chunkwise.triton_xl_chunk",
                                      "mlstm_chunkwise__xl_chunk")
    for case in contender_cases(a, []):
        base = _case_base(case)
        if contender is None:
            rows.append(dict(**base, impl="mlstm_kernels xl_chunk", status=why))
        else:
            x, dh, base = _timing_inputs(dev, smoke, base["shape"], base["T"])
            L = _case_base(case)["chunk"]
            B, T, H, K, V = (base[c] for c in "BTHKV")
            for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
                rows.extend(_time_contender(contender, x, dh, base, mode, bwd, _floor(B, T, H, K, V, L, bwd), L))
        case_done(case)
        if dev == "cuda":
            torch.cuda.empty_cache()


def _time_ours(x, dh, base, L, first, key, first_only=False):
    """fwd and fwd+bwd rows of arena's chunk_mlstm on each forward path that fits (the two passes
    with either state pass, and the fused walk: the crossovers chunk.PARALLEL_STATES_BELOW_PER_SM
    and chunk.FUSED_PROGRAMS_PER_SM are measured from these rows); the
    first call's seconds on the first shape of each ``key`` and path (only them with ``first_only``).
    A failure is a row, not a crash."""
    from kernels.mlstm.chunk import FORWARD_PATHS, fused_forward_fits
    rows = []
    for path, kw in FORWARD_PATHS.items():
        if path != "fused" or fused_forward_fits(base["K"], L, x["q"].dtype):
            rows.extend(_time_path(x, dh, base, L, first, (*key, path), path, kw, first_only))
    return rows


def _time_path(x, dh, base, L, first, key, path, kw, first_only):
    from kernels.mlstm.chunk import chunk_mlstm
    xl = {k: t.detach().clone().requires_grad_() for k, t in x.items()}
    fwd = lambda x=x, L=L: chunk_mlstm(**x, chunk_size=L, output_final_state=False, **kw)

    def fwdbwd(xl=xl, dh=dh, L=L):
        h, _ = chunk_mlstm(**xl, chunk_size=L, output_final_state=False, **kw)
        return torch.autograd.grad(h, list(xl.values()), dh)
    rows, fc = [], None
    B, T, H, K, V = (base[c] for c in "BTHKV")
    for j, (mode, fn, bwd) in enumerate((("fwd", fwd, False), ("fwd+bwd", fwdbwd, True))):
        impl = f"arena chunk_mlstm ({path} fwd)"
        row = dict(**base, chunk=L, impl=impl, mode=mode)
        try:
            if key not in first:
                with torch.no_grad():
                    fc_fwd = first_call_s(fwd)
                first[key] = fc = (fc_fwd, first_call_s(fwdbwd))
            if fc is not None:
                row["first_call_s"] = fc[j]
            if not first_only:
                fl = _floor(B, T, H, K, V, L, bwd)
                with torch.no_grad() if not bwd else torch.enable_grad():
                    ms = time_ms(fn)[0]
                row.update(ms=ms, floor_ms=fl, pct_floor=100 * fl / ms)
        except torch.cuda.OutOfMemoryError:
            row["status"] = "oom"
        except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
            row["status"] = f"error: {type(e).__name__}: {str(e)[:160]}"
        rows.append(row)
    return rows


def _time_contender(contender, x, dh, base, mode, bwd, fl, L):
    tr = lambda t: t.transpose(1, 2).contiguous()
    try:
        xc = {k: tr(t).detach().requires_grad_(bwd) for k, t in x.items()}
        dhc = tr(dh)

        def run(xc=xc, dhc=dhc, L=L, bwd=bwd):
            h = contender(**xc, return_last_states=False, chunk_size=L)
            h = h[0] if isinstance(h, tuple) else h
            return torch.autograd.grad(h, list(xc.values()), dhc) if bwd else h
        with torch.no_grad() if not bwd else torch.enable_grad():
            fc = first_call_s(run)
            ms = time_ms(run)[0]
        return [dict(**base, chunk=L, impl="mlstm_kernels xl_chunk", mode=mode, ms=ms, floor_ms=fl,
                     pct_floor=100 * fl / ms, first_call_s=fc)]
    except Exception as e:  # noqa: BLE001 - a contender failure is a row, not a crash
        return [dict(**base, chunk=L, impl="mlstm_kernels xl_chunk", mode=mode,
                     status=f"error: {type(e).__name__}: {str(e)[:160]}")]


def bench_step(dev, smoke, rows, a):
    """Arena's step in this process; mlstm_kernels' triton step in a child (cases ``shape:B``)."""
    shapes = {"smoke": (2, 16, 16)} if smoke else SHAPES
    for sname in shapes:
        for B in ((1, 2) if smoke else (1, 64)):
            _step_rows(dev, smoke, sname, B, rows, None)
    cases = [f"{sname}:{B}" for sname in shapes for B in ((1, 2) if smoke else (1, 64))]
    run_contender("mlstm", "contender-step", cases, rows, a,
                  lambda c: dict(shape=c.split(":")[0], B=int(c.split(":")[1])))


def step_child(dev, smoke, a):
    rows = Table("mLSTM decode contender: mlstm_kernels step triton", table_path(a.out, "mlstm", "contender-step"))
    cont, why = import_contender("mlstm_kernels.torch.recurrent", "mlstm_recurrent_step__triton")
    for case in contender_cases(a, []):
        sname, B = case.split(":")
        if cont is None:
            rows.append(dict(shape=sname, B=int(B), impl="mlstm_kernels step triton", status=why))
        else:
            _step_rows(dev, smoke, sname, int(B), rows, cont)
        case_done(case)


def _step_rows(dev, smoke, sname, B, rows, cont):
    """Arena's fused_mlstm_step in place and to a new state (``cont`` None), or the contender."""
    from kernels.mlstm.recurrent import fused_mlstm_step
    H, K, V = ({"smoke": (2, 16, 16)} if smoke else SHAPES)[sname]
    dt = torch.float32 if smoke else torch.bfloat16
    x, s = _inputs(B, 1, H, K, V, dt, dev, "near1")
    one = {k: t[:, 0].contiguous() for k, t in x.items()}
    st = tuple(t.contiguous() for t in s)
    by = B * H * (8 * (K * V + K) + 8 + 2 * (2 * K + V) + 4 + 2 * V)
    fl = floor_ms(by)
    base = dict(shape=sname, B=B, H=H, K=K, V=V)
    if cont is None:
        st2 = tuple(torch.empty_like(t) for t in st)
        runs = [(f"arena fused_mlstm_step ({how})",
                 lambda o=o, one=one, st=st: fused_mlstm_step(**one, state=st, out_state=o))
                for how, o in (("in place", st), ("new state", st2))]
    else:
        C, n, m = (t.clone() for t in st)
        ic, fc_ = one["i"][..., None], one["f"][..., None]
        runs = [("mlstm_kernels step triton",
                 lambda one=one, ic=ic, fc_=fc_, C=C, n=n, m=m: cont(one["q"], one["k"], one["v"], ic, fc_, C, n,
                                                                    m[..., None]))]
    for name, run in runs:
        try:
            with torch.no_grad():
                first = first_call_s(run)
                us = time_ms(run)[0] * 1e3
            rows.append(dict(**base, impl=name, us=us, floor_us=fl * 1e3, pct_floor=100 * fl * 1e3 / us,
                             first_call_s=first))
        except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
            rows.append(dict(**base, impl=name, status=f"error: {type(e).__name__}: {str(e)[:160]}"))


DONE_FIRST: set[str] = set()
SECTIONS = ("timing", "decode", "compile", "correctness", "stability")


def compile_section(dev, smoke, chunks, a):
    """First calls at the smallest timing shape, unless the timing section (which records them in
    its first_call_s column) already ran in this process."""
    if "chunk" in DONE_FIRST:
        print("first calls were measured by the timing section above (first_call_s column)", flush=True)
        return
    shapes, Ts, _, _ = _timing_grid(smoke)
    rows, first = Table("mLSTM first call (compile + autotune), seconds", table_path(a.out, "mlstm", "first_call")), {}
    for sname in shapes:
        x, dh, base = _timing_inputs(dev, smoke, sname, Ts[0])
        for L in ((16,) if smoke else chunks):
            rows.extend(_time_ours(x, dh, base, L, first, (sname, L), first_only=True))
    DONE_FIRST.add("chunk")


def main(argv=None):
    a = bench_args(__doc__, argv, SECTIONS, extra=lambda ap: ap.add_argument(
        "--chunks", default="64", help="our chunk sizes to time, e.g. 64,128"))
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("kernels.mlstm.bench: no CUDA device; run with TRITON_INTERPRET=1 and --smoke on CPU")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    chunks = tuple(int(c) for c in a.chunks.split(","))
    tab = lambda name, title: Table(title, table_path(a.out, "mlstm", name))
    sections = {
        "timing": lambda: bench_chunk(dev, a.smoke, chunks, tab("chunk", "mLSTM chunkwise timing (bf16, B*T = 32768)"), a),
        "decode": lambda: bench_step(dev, a.smoke, tab("step", "mLSTM decode step latency"), a),
        "compile": lambda: compile_section(dev, a.smoke, chunks, a),
        "correctness": lambda: check_correctness(dev, a.smoke, tab("correctness", "mLSTM correctness vs fp64 reference")),
        "stability": lambda: check_long(dev, a.smoke, tab("long", "mLSTM long-sequence stability")),
        "contender-xl_chunk": lambda: contender_child(dev, a.smoke, a),
        "contender-step": lambda: step_child(dev, a.smoke, a),
    }
    run_sections(sections, a.only, SECTIONS)


if __name__ == "__main__":
    main()
