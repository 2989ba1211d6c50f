"""Benchmark + GPU checks of the Triton gated delta rule: ``python -m kernels.gated_delta_rule.bench
[--out DIR] [--only timing,decode,compile,correctness,stability] [--smoke]`` (sections in that order
by default). Every row prints (flushed) and its JSON table is rewritten the moment it is measured,
so a run cut short keeps what it measured. Public contenders (fla) run in a child process with a
time budget (--contender-timeout): a refusal, an abort or a hang there is a row with the reason.

1. timing (fwd, fwd + bwd) at H = 16, K = V = 128, bf16, B * T = 32768, T = 1k .. 32k, chunk 64,
   with the first call (compile + autotune) of the first shape, beside fla's
   chunk_gated_delta_rule and chunk_simple_gla; the HBM floor and the % of it achieved;
2. decode-step latency at B = 1, 64 beside fla's fused_recurrent_gated_delta_rule at T = 1;
3. first-call seconds per entry point (only meaningful in a fresh process: ``--only compile``);
4. GPU correctness against the fp64 chunked reference (bf16, fp16, fp32; T = 1, 63, 130, 1000):
   output, final state and every gradient, with PASS / FAIL against the stated tolerance;
5. stability at T = 65536 with gates at both extremes, against the fp32 chunked reference.
``--smoke`` runs tiny shapes (CPU under TRITON_INTERPRET=1: seconds).
"""
from __future__ import annotations

import itertools
import os
import sys
from functools import partial

import torch
import torch.nn.functional as F

from kernels.bench_utils import (Table, bench_args, case_done, contender_cases, first_call_s, floor_ms,
                                 import_contender, run_contender, run_sections, table_path, time_ms)
from kernels.gated_delta_rule.naive import naive_chunk_gated_delta_rule

OP = "gated_delta_rule"
SECTIONS = ("timing", "decode", "compile", "correctness", "stability")
H, K, V, CHUNK, TOKENS = 16, 128, 128, 64, 32768
TOL = {torch.bfloat16: (2e-2, 5e-2), torch.float16: (5e-3, 1e-2), torch.float32: (2e-5, 2e-4)}  # (out, grad)


def make_inputs(B, T, h, k, v, dtype, dev, gates="bench", h0=False, grad=False):
    """Gates outside any timed region: g = logsigmoid-like in [-5, 0), beta in (0, 1), q, k l2-normalised."""
    q = F.normalize(torch.randn(B, T, h, k, device=dev), dim=-1).to(dtype)
    kk = F.normalize(torch.randn(B, T, h, k, device=dev), dim=-1).to(dtype)
    vv = torch.randn(B, T, h, v, device=dev).to(dtype)
    lo, hi = {"bench": (-5.0, -1e-3), "near1": (-0.01, -1e-4), "near0": (-8.0, -4.0)}[gates]
    g = F.logsigmoid(torch.empty(B, T, h, device=dev).uniform_(-5, 5)).clamp(lo, hi).to(dtype)
    beta = torch.rand(B, T, h, device=dev).clamp(1e-3, 1 - 1e-3).to(dtype)
    s0 = torch.randn(B, h, k, v, device=dev) if h0 else None
    ins = [q, kk, vv, g, beta, s0]
    return [t.requires_grad_() if (grad and t is not None) else t for t in ins]


def _run(fn, ins, do, ds, **kw):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in ins]
    o, s = fn(*leaves[:5], initial_state=leaves[5], **kw)
    given = [t for t in leaves if t is not None]
    grads = torch.autograd.grad((o.double() * do).sum() + (s.double() * ds).sum(), given)
    return [o, s, *grads]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def correctness(chunk_fn, dev, smoke, rows):
    from kernels.gated_delta_rule.chunk import FORWARD_PATHS  # after main() set the interpreter
    names = ["o", "state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
    shapes = [(1, 63, 2, 16, 32)] if smoke else [(2, 1, 4, 128, 128), (2, 63, 4, 64, 128), (1, 130, 4, 128, 64),
                                                  (2, 1000, 4, 128, 128)]
    dtypes = [torch.float32] if smoke else [torch.bfloat16, torch.float16, torch.float32]
    for dtype in dtypes:
        for B, T, h, k, v in shapes:
            base = {"dtype": str(dtype)[6:], "shape": f"B{B}-T{T}-H{h}-K{k}-V{v}"}
            print(f"# correctness {base}", flush=True)  # a hard crash (abort, IMA) is named by this line
            try:
                ins = make_inputs(B, T, h, k, v, dtype, dev, h0=True)
                do = torch.randn(B, T, h, v, device=dev, dtype=torch.float64)
                ds = torch.randn(B, h, k, v, device=dev, dtype=torch.float64)
                ref = _run(naive_chunk_gated_delta_rule, [t.double() if t is not None else None for t in ins], do, ds)
            except Exception as e:  # noqa: BLE001 - a failing shape is a row
                rows.append({**base, "tensor": "all", "status": f"error: {type(e).__name__}: {e}"[:200]})
                continue
            # every forward path (the default picks by the grid's size)
            for path, (fused, fused_prep) in FORWARD_PATHS.items():
                row = {**base, "fwd": path}
                try:
                    with fused_prepare(fused_prep):
                        out = _run(chunk_fn, ins, do, ds, chunk_size=16 if smoke else CHUNK,
                                   fused_forward=fused)
                except Exception as e:  # noqa: BLE001 - a failing shape is a row
                    rows.append({**row, "tensor": "all", "status": f"error: {type(e).__name__}: {e}"[:200]})
                    continue
                for i, (n, x, y) in enumerate(zip(names, out, ref)):
                    tol, err = TOL[dtype][0 if i < 2 else 1], rel(x, y)
                    rows.append({**row, "tensor": n, "rel_err": err, "tol": tol,
                                 "status": "PASS" if err <= tol else "FAIL"})


def stability(chunk_fn, dev, smoke, rows):
    from kernels.gated_delta_rule.chunk import FORWARD_PATHS  # after main() set the interpreter
    T = 40 if smoke else 65536
    for (path, (fused, prep)), gates in itertools.product(FORWARD_PATHS.items(), ("near1", "near0")):
        print(f"# stability T={T} gates={gates} fused_forward={fused} fused_prepare={prep}", flush=True)
        try:
            dt = torch.bfloat16 if dev == "cuda" else torch.float32
            ins = make_inputs(1, T, 2, 16 if smoke else K, 16 if smoke else V, dt, dev, gates=gates, h0=True, grad=True)
            with fused_prepare(prep):
                o, s = chunk_fn(*ins[:5], initial_state=ins[5], chunk_size=16 if smoke else CHUNK,
                                fused_forward=fused)
            (o.float().sum() + s.sum()).backward()
            with torch.no_grad():
                o_ref, s_ref = naive_chunk_gated_delta_rule(*(t.float() for t in ins[:5]), chunk_size=64,
                                                            initial_state=ins[5].float())
            finite = all(bool(torch.isfinite(t).all()) for t in (o, s, *(x.grad for x in ins)))
            eo, es = rel(o, o_ref), rel(s, s_ref)
            ok = finite and eo <= 2e-2 and es <= 2e-2
            rows.append({"T": T, "gates": gates, "fwd": path, "finite (o, state, grads)": finite,
                         "o rel_err": eo, "state rel_err": es, "tol": 2e-2,
                         "status": "PASS" if ok else "FAIL"})
        except Exception as e:  # noqa: BLE001
            rows.append({"T": T, "gates": gates, "fwd": path,
                         "status": f"error: {type(e).__name__}: {e}"[:200]})


def fwd_bytes(B, T, dt_bytes=2):
    """q, k, v, g, beta read + o written, bytes (the floor of any implementation)."""
    return B * T * H * ((2 * K + 2 * V) * dt_bytes + 2 * dt_bytes)


def fwd_flops(B, T):
    return B * T * H * (6 * CHUNK * K + 4 * CHUNK * V + 6 * K * V)


def _time_rows(rows, impl, T, B, fns, first=None):
    """One row per (pass, fn) in ``fns``; a failure (fla's refusal included) is a row with its reason."""
    byts, flops = fwd_bytes(B, T), fwd_flops(B, T)
    for name, fn in fns:
        b = byts if name == "fwd" else byts * 2.75  # fwd+bwd: bwd reads q, k, v, g, beta, do; writes 5 grads
        fl_ms = floor_ms(b, flops if name == "fwd" else flops * 4.0)  # bwd ~3x fwd FLOPs (README)
        try:
            row = {"impl": impl, "pass": name, "T": T, "B": B}
            if first is not None:
                row["first_call_s"] = first_call_s(fn)
            ms = time_ms(fn)[0]
            rows.append({**row, "ms": ms, "floor_ms": fl_ms, "% of floor": 100 * fl_ms / ms, "Mtok/s": B * T / ms / 1e3})
        except Exception as e:  # noqa: BLE001 - a contender failing is a row, not a crash
            rows.append({"impl": impl, "pass": name, "T": T, "B": B, "status": f"{type(e).__name__}: {e}"[:300]})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _fwd(fn, args, kw):
    """Forward timing: no autograd graph for anyone (inputs require grad for the fwd+bwd rows)."""
    with torch.no_grad():
        return fn(*args, **kw)


def _fwd_bwd(fn, args, do, kw):
    o = fn(*args, **kw)[0]
    torch.autograd.backward([o], [do])


def _timing_inputs(T, dev, smoke):
    B = max(1, (16 if smoke else TOKENS) // T)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    q, k, v, g, beta, _ = make_inputs(B, T, 1 if smoke else H, 16 if smoke else K, 16 if smoke else V,
                                      dtype, dev, grad=True)
    return B, (q, k, v, g, beta), torch.randn_like(v)


def _lengths(smoke):
    return [16] if smoke else [1024, 2048, 4096, 8192, 16384, 32768]


FIRST_DONE: set[str] = set()


def fused_prepare(on: bool):
    """chunk.fused_prepare (kkt + solve + wu as one launch, or three), imported after main() set
    the interpreter."""
    from kernels.gated_delta_rule.chunk import fused_prepare as switch
    return switch(on)


def timing(chunk_fn, dev, smoke, rows, a):
    """Ours in this process (first call recorded at the first T), then fla in a child process."""
    from kernels.gated_delta_rule.chunk import fused_forward_by_default  # after main() set the interpreter
    for T in _lengths(smoke):
        print(f"# timing arena triton T={T}", flush=True)
        B, args, do = _timing_inputs(T, dev, smoke)
        kw = {"chunk_size": 16 if smoke else CHUNK}
        fns = [("fwd", partial(_fwd, chunk_fn, args, kw)), ("fwd+bwd", partial(_fwd_bwd, chunk_fn, args, do, kw))]
        fused = fused_forward_by_default(B, args[0].shape[2], args[2].shape[3], args[0].device)
        path = "fused" if fused else "two-launch"
        _time_rows(rows, f"arena triton ({path} fwd)", T, B, fns, first=None if "chunk" in FIRST_DONE else True)
        FIRST_DONE.add("chunk")
        with fused_prepare(True):  # the one-launch prep, not yet the default (chunk.FUSED_PREPARE)
            _time_rows(rows, f"arena triton (fused prep, {path} fwd)", T, B, fns[:1],
                       first=None if "prep" in FIRST_DONE else True)
        FIRST_DONE.add("prep")
    run_contender(OP, "fla-chunk", [f"T{T}" for T in _lengths(smoke)], rows, a, lambda c: {"T": int(c[1:])})


def fla_chunk_child(dev, smoke, a):
    """(child process) fla's chunk_gated_delta_rule and chunk_simple_gla at cases ``T<len>``."""
    rows = Table("gated delta rule contender: fla", table_path(a.out, OP, "fla-chunk"))
    cands = [("fla chunk_gated_delta_rule", "fla.ops.gated_delta_rule", "chunk_gated_delta_rule", 5),
             ("fla chunk_simple_gla", "fla.ops.simple_gla", "chunk_simple_gla", 4)]
    for case in contender_cases(a, []):
        T = int(case[1:])
        B, args, do = _timing_inputs(T, dev, smoke)
        for impl, mod, attr, n_args in cands:
            fn, why = import_contender(mod, attr)
            if fn is None:
                rows.append({"impl": impl, "T": T, "B": B, "status": why[:300]})
                continue
            kw = {"output_final_state": True}
            fns = [("fwd", partial(_fwd, fn, args[:n_args], kw)),
                   ("fwd+bwd", partial(_fwd_bwd, fn, args[:n_args], do, kw))]
            _time_rows(rows, impl, T, B, fns, first=True)
        case_done(case)


def _decode_inputs(B, dev, smoke):
    h, k, v = (1, 16, 16) if smoke else (H, K, V)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    q, kk, vv, g, beta, s0 = make_inputs(B, 1, h, k, v, dtype, dev, h0=True)
    return (q, kk, vv, g, beta, s0), B * h * (2 * k * v * 4 + (2 * k + 2 * v) * 2)


def _decode_rows(rows, impl, B, fn, byts):
    try:
        with torch.no_grad():
            first = first_call_s(fn)
            ms = time_ms(fn)[0]
        rows.append({"impl": impl, "B": B, "us": ms * 1e3, "floor_us": floor_ms(byts) * 1e3,
                     "% of floor": 100 * floor_ms(byts) / ms, "first_call_s": first})
    except Exception as e:  # noqa: BLE001
        rows.append({"impl": impl, "B": B, "status": f"{type(e).__name__}: {e}"[:300]})


def _decode_batches(smoke):
    return (1, 2) if smoke else (1, 64)


def decode(dev, smoke, rows, a):
    from kernels.gated_delta_rule.recurrent import fused_gated_delta_rule_step
    for B in _decode_batches(smoke):
        (q, kk, vv, g, beta, s0), byts = _decode_inputs(B, dev, smoke)
        state = s0.clone()
        tok = [t[:, 0] for t in (q, kk, vv, g, beta)]                    # [B, H, *]: sliced outside the timing
        _decode_rows(rows, "arena triton step (in place)", B,
                     partial(fused_gated_delta_rule_step, *tok, state, out_state=state), byts)
    run_contender(OP, "fla-decode", [f"B{B}" for B in _decode_batches(smoke)], rows, a, lambda c: {"B": int(c[1:])})


def fla_decode_child(dev, smoke, a):
    rows = Table("gated delta rule decode contender: fla", table_path(a.out, OP, "fla-decode"))
    fn, why = import_contender("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule")
    for case in contender_cases(a, []):
        B = int(case[1:])
        if fn is None:
            rows.append({"impl": "fla fused_recurrent T=1", "B": B, "status": why[:300]})
        else:
            (q, kk, vv, g, beta, s0), byts = _decode_inputs(B, dev, smoke)
            _decode_rows(rows, "fla fused_recurrent T=1", B,
                         partial(fn, q, kk, vv, g, beta, initial_state=s0, output_final_state=True), byts)
        case_done(case)


def compile_times(chunk_fn, dev, smoke, rows):
    """First calls (compile + autotune; a config tuned earlier on this machine is read from Triton's
    disk cache, cache_results=True). Meaningful in a fresh process only: ``--only compile``."""
    from kernels.gated_delta_rule.recurrent import fused_recurrent_gated_delta_rule
    if "chunk" in FIRST_DONE:
        print("# chunk kernels already compiled in this process: see the timing section's first_call_s", flush=True)
    B, T = (1, 64) if smoke else (2, 4096)
    dims = (2, 16, 16) if smoke else (H, K, V)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    q, k, v, g, beta, s0 = make_inputs(B, T, *dims, dtype, dev, h0=True, grad=True)
    do = torch.randn_like(v)
    kw = {"initial_state": s0}
    entries = [("chunk fwd (kkt, solve, wu, h + o or ho)", partial(_fwd, chunk_fn, (q, k, v, g, beta), kw)),
               ("fused_recurrent", partial(_fwd, fused_recurrent_gated_delta_rule, (q, k, v, g, beta), kw)),
               ("chunk fwd+bwd (+ dv_local, dh, dqkwg, wy)", partial(_fwd_bwd, chunk_fn, (q, k, v, g, beta), do, kw))]
    for name, fn in entries:
        try:
            rows.append({"entry": name, "first_call_s": first_call_s(fn)})
        except Exception as e:  # noqa: BLE001
            rows.append({"entry": name, "status": f"{type(e).__name__}: {e}"[:300]})
    FIRST_DONE.add("chunk")


def main(argv=None):
    a = bench_args(__doc__, argv, SECTIONS)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        if not a.smoke:
            sys.exit("kernels.gated_delta_rule.bench: no CUDA device; run with --smoke (CPU interpreter)")
        os.environ["TRITON_INTERPRET"] = "1"                              # before the kernels are imported
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    from kernels.gated_delta_rule.chunk import chunk_gated_delta_rule as chunk_fn
    torch.manual_seed(0)
    tab = lambda name, title: Table(title, table_path(a.out, OP, name))  # noqa: E731
    sections = {
        "timing": lambda: timing(chunk_fn, dev, a.smoke, tab("timing", f"timing, H={H} K={K} V={V} bf16, "
                                                                       f"B*T={TOKENS}, chunk {CHUNK}"), a),
        "decode": lambda: decode(dev, a.smoke, tab("decode", f"decode step latency, H={H} K={K} V={V}"), a),
        "compile": lambda: compile_times(chunk_fn, dev, a.smoke, tab("compile", "first call (compile + autotune), s")),
        "correctness": lambda: correctness(chunk_fn, dev, a.smoke, tab("correctness", "correctness vs fp64 reference")),
        "stability": lambda: stability(chunk_fn, dev, a.smoke, tab("stability", "stability at T = 65536, gate extremes")),
        "fla-chunk": lambda: fla_chunk_child(dev, a.smoke, a),
        "fla-decode": lambda: fla_decode_child(dev, a.smoke, a),
    }
    run_sections(sections, a.only, SECTIONS)


if __name__ == "__main__":
    main()
