"""Short conv benchmark: GPU correctness, a long-T check, fwd / fwd+bwd timings against the
PyTorch path (F.conv1d, what arena ran before) and public kernels, decode-step latency.

    python -m kernels.short_conv.bench [--out DIR] [--smoke] [--only timing,decode,compile,correctness,stability]

Sections run in that order by default; rows print as they are measured. Each public contender runs
in its own child process with a time budget (--contender-timeout), so an abort or a hang inside it
becomes a row with the reason. ``--smoke`` runs tiny shapes (on CPU under TRITON_INTERPRET=1 in
seconds) to check the script.
"""
from __future__ import annotations

import os

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

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.short_conv.conv import causal_conv1d_triton
from kernels.short_conv.naive import causal_conv1d, causal_conv1d_step
from kernels.short_conv.recurrent import causal_conv1d_step_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}  # one rounding of the output


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _inputs(B, T, C, W, dtype, grad=False):
    x = torch.randn(B, T, C, device=DEV, dtype=dtype)
    w = (torch.randn(C, W, device=DEV) / W ** 0.5).to(dtype)
    b = torch.randn(C, device=DEV, dtype=dtype)
    s = torch.randn(B, C, W - 1, device=DEV, dtype=torch.float32)  # the mixers' fp32 conv state
    return [t.requires_grad_(grad) for t in (x, w, b, s)]


def _fwd_bwd(fn, ins, gy, gs):
    leaves = [t.detach().clone().requires_grad_() for t in ins]
    y, s = fn(*leaves, activation="silu")
    ((y.float() * gy).sum() + (s.float() * gs).sum()).backward()
    return [y, s] + [t.grad for t in leaves]


def correctness(rows, cases) -> None:
    names = ["y", "final_state", "dx", "dweight", "dbias", "dstate"]
    for dtype, B, T, C in cases:
        ins = _inputs(B, T, C, 4, dtype)
        gy, gs = torch.randn(B, T, C, device=DEV), torch.randn(B, C, 3, device=DEV)
        got = _fwd_bwd(causal_conv1d_triton, ins, gy, gs)
        ref = _fwd_bwd(causal_conv1d, [t.double() for t in ins], gy.double(), gs.double())
        errs = {n: _rel(a, b) for n, a, b in zip(names, got, ref)}
        worst = max(errs.values())
        rows.append({"dtype": str(dtype).split(".")[-1], "B": B, "T": T, "C": C,
                     **{n: e for n, e in errs.items()}, "tol": TOL[dtype],
                     "status": "PASS" if worst <= TOL[dtype] else "FAIL"})


def long_t(rows, T, C) -> None:
    """No gates to saturate here; the check is finite output and gradients at T = 65536 with
    large inputs (x ~ 30: silu in both tails) against the reference run in fp32 on the GPU."""
    for scale in (1.0, 30.0):
        ins = _inputs(1, T, C, 4, torch.bfloat16)
        ins[0] = (ins[0].float() * scale).to(torch.bfloat16)
        gy, gs = torch.randn(1, T, C, device=DEV), torch.randn(1, C, 3, device=DEV)
        got = _fwd_bwd(causal_conv1d_triton, ins, gy, gs)
        ref = _fwd_bwd(causal_conv1d, [t.float() for t in ins], gy, gs)
        errs = [_rel(a, b) for a, b in zip(got, ref)]
        finite = all(torch.isfinite(g).all().item() for g in got)
        rows.append({"T": T, "C": C, "x_scale": scale, "worst_rel_err": max(errs), "tol": 1e-2,
                     "finite": finite, "status": "PASS" if finite and max(errs) <= 1e-2 else "FAIL"})


def contender_fn(name):
    """(callable(x, w, b, s), "") of one public kernel, or (None, reason)."""
    if name == "causal_conv1d":
        cc, why = import_contender("causal_conv1d", "causal_conv1d_fn")
        if cc is None:
            return None, why
        # Dao-AILab's CUDA kernel takes x as [B, C, T]; a channel-last view is its fast layout
        return (lambda x, w, b, s, cc=cc: cc(x.transpose(1, 2), w, b, activation="silu")), ""
    for mod in ("fla.modules.convolution", "fla.modules.conv"):
        fla, why = import_contender(mod, "causal_conv1d")
        if fla is not None:
            def fla_fn(x, w, b, s, _f=fla):
                out = _f(x=x, weight=w, bias=b, activation="silu")
                return out[0] if isinstance(out, tuple) else out
            return fla_fn, ""
    return None, why


CONTENDERS = {"causal_conv1d": "causal_conv1d (CUDA)", "fla": "fla causal_conv1d (Triton)"}


def _time_shape(rows, C, T, B, impls, first: bool) -> None:
    """fwd and fwd+bwd rows of ``impls`` {name: callable(x, w, b, s) -> y} at one shape."""
    x, w, b, s = _inputs(B, T, C, 4, torch.bfloat16, grad=True)
    gy = torch.randn(B, T, C, device=DEV, dtype=torch.bfloat16)
    n = B * T * C * 2  # bytes of one bf16 [B, T, C] tensor
    for name, impl in impls.items():
        f = lambda impl=impl, x=x, w=w, b=b, s=s: impl(x, w, b, s)
        fb = lambda f=f, gy=gy: f().backward(gy)
        row = {"C": C, "T": T, "B": B, "impl": name}
        try:
            if first:
                row["first_call_s"] = first_call_s(fb)
            fwd = time_ms(f)[0]
            fwd_bwd = time_ms(fb)[0]
            row.update({"fwd_ms": fwd, "fwd_floor_ms": floor_ms(2 * n),
                        "fwd_%floor": 100 * floor_ms(2 * n) / fwd, "fwd_GB/s": 2 * n / fwd / 1e6,
                        "fwd+bwd_ms": fwd_bwd, "fwd+bwd_floor_ms": floor_ms(5 * n),
                        "fwd+bwd_%floor": 100 * floor_ms(5 * n) / fwd_bwd, "status": "ok"})
        except torch.cuda.OutOfMemoryError:
            row["status"] = "oom"
        except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
            row["status"] = f"error: {type(e).__name__}: {str(e)[:120]}"
        rows.append(row)
        x.grad = w.grad = b.grad = None


OURS = {"triton": lambda x, w, b, s: causal_conv1d_triton(x, w, b, s, "silu")[0],
        "torch F.conv1d": lambda x, w, b, s: causal_conv1d(x, w, b, s, "silu")[0]}


def timings(rows, a, Ts, Cs, BT_total) -> None:
    """Arena's kernel and the torch path in this process; the public kernels in child processes,
    without the carried state (they would need a [B, C, W] layout): a small advantage to them.
    Inputs and grad outputs are made outside the timed region for all."""
    for C in Cs:
        for T in Ts:
            _time_shape(rows, C, T, max(1, BT_total // T), OURS, T == Ts[0])
    DONE_FIRST.add("conv")
    for name in CONTENDERS:
        run_contender("short_conv", f"contender-{name}", [f"{C}:{T}" for C in Cs for T in Ts], rows, a,
                      lambda c: {"C": int(c.split(":")[0]), "T": int(c.split(":")[1])})


def contender_child(a, name, BT_total) -> None:
    rows = Table(f"short conv contender {CONTENDERS[name]}", table_path(a.out, "short_conv", f"contender-{name}"))
    fn, why = contender_fn(name)
    seen = set()
    for case in contender_cases(a, []):
        C, T = (int(v) for v in case.split(":"))
        if fn is None:
            rows.append({"C": C, "T": T, "impl": CONTENDERS[name], "status": why})
        else:
            _time_shape(rows, C, T, max(1, BT_total // T), {CONTENDERS[name]: fn}, C not in seen)
            seen.add(C)
        case_done(case)


def _decode_rows(rows, C, B) -> None:
    x_t = torch.randn(B, C, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(C, 4, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(C, device=DEV, dtype=torch.bfloat16)
    s = torch.randn(B, C, 3, device=DEV, dtype=torch.float32)
    nbytes = B * C * (2 + 2 + 2 * 3 * 4) + C * (4 + 1) * 2
    impls = {"triton (in place)": lambda x_t=x_t, w=w, b=b, s=s: causal_conv1d_step_triton(x_t, w, b, s, "silu", s),
             "torch": lambda x_t=x_t, w=w, b=b, s=s: causal_conv1d_step(x_t, w, b, s, "silu")}
    for name, f in impls.items():
        row = {"C": C, "B": B, "impl": name}
        try:
            row["first_call_s"] = first_call_s(f)
            row.update(us=time_ms(f)[0] * 1e3, floor_us=floor_ms(nbytes) * 1e3, status="ok")
        except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
            row["status"] = f"error: {type(e).__name__}: {str(e)[:120]}"
        rows.append(row)


def first_calls(rows, T, Cs, BT_total) -> None:
    """fwd+bwd first call (compile + autotune) per channel count, unless the timing section (its
    first_call_s column) already ran in this process."""
    if "conv" in DONE_FIRST:
        print("first calls were measured by the timing section above (first_call_s column)", flush=True)
        return
    for C in Cs:
        x, w, b, s = _inputs(max(1, BT_total // T), T, C, 4, torch.bfloat16, grad=True)
        rows.append({"C": C, "T": T, "impl": "triton fwd+bwd", "first_call_s": first_call_s(
            lambda x=x, w=w, b=b, s=s: causal_conv1d_triton(x, w, b, s, "silu")[0].sum().backward())})
    DONE_FIRST.add("conv")


DONE_FIRST: set[str] = set()
SECTIONS = ("timing", "decode", "compile", "correctness", "stability")


def main(argv=None):
    a = bench_args(__doc__, argv, SECTIONS)
    tab = lambda name, title: Table(title, table_path(a.out, "short_conv", name))
    torch.manual_seed(0)
    bf, hf, f = torch.bfloat16, torch.float16, torch.float32
    if a.smoke:
        cases = [(f, 2, 1, 24), (f, 1, 40, 24), (hf, 1, 40, 24)]
        Ts, Cs, BT, Bs, long = [16], [24], 32, [1], (64, 24)
    else:
        # bf16 at T = 1, a ragged T and T = 1000 on the timing's channel counts (their autotune
        # serves the timing); fp16 / fp32 at one shape each
        cases = [(bf, 2, 1, 2304), (bf, 2, 130, 2304), (bf, 1, 1000, 3072), (hf, 2, 63, 2304), (f, 2, 63, 2304)]
        Ts, Cs, BT, Bs, long = [1024, 2048, 4096, 8192, 16384, 32768], [2304, 3072], 32768, [1, 64], (65536, 2304)
    sections = {
        "timing": lambda: timings(tab("timing", "short conv: bf16, B*T = 32768, W = 4, silu (floor: fwd reads x + "
                                             "writes y; fwd+bwd adds read x, dy + write dx)"), a, Ts, Cs, BT),
        "decode": lambda: [_decode_rows(rows, C, B) for rows in [tab("decode", "short conv: decode step latency, "
                                                                           "bf16, fp32 state")]
                           for C in Cs for B in Bs],
        "compile": lambda: first_calls(tab("first_call", "short conv: first call (compile + autotune), s"), Ts[0], Cs, BT),
        "correctness": lambda: correctness(tab("correctness", "short conv: correctness vs float64 reference "
                                                              "(W=4, silu, bias, state)"), cases),
        "stability": lambda: long_t(tab("long_t", f"short conv: T = {long[0]}, bf16, vs fp32 reference"), *long),
        **{f"contender-{n}": (lambda n=n: contender_child(a, n, BT)) for n in CONTENDERS},
    }
    run_sections(sections, a.only, SECTIONS)


if __name__ == "__main__":
    main()
