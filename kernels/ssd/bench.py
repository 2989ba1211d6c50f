"""SSD (Mamba-2) Triton kernels: speed against the public kernels, decode, first-call seconds, GPU
correctness, long-sequence stability. ``python -m kernels.ssd.bench [--out DIR] [--smoke]
[--only timing,decode,compile,correctness,stability]``; --smoke runs tiny shapes on the CPU under
TRITON_INTERPRET=1 (export it first) to check the script itself. Rows print as they are measured;
each public contender runs in its own child process with a time budget (--contender-timeout), so an
abort or a hang inside it becomes a row with the reason.

Contenders (each optional, reported as a row with the reason when missing or failing):
mamba_ssm ``mamba_chunk_scan_combined`` (chunk 256, its default), fla ``chunk_simple_gla`` as the
Mamba-2-like GLA (q = C, k = B expanded to heads, v = x dt, g = dt A, scale 1) and, for decode,
mamba_ssm ``selective_state_update`` with dt / A / D expanded (stride 0) to its tied-head layout.
All get the same bf16 x / B / C and fp32 dt / A / D; layouts, gates and expansions are built
outside the timed region.
"""
from __future__ import annotations

import os
import traceback

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
from kernels.ssd import chunk_bwd
from kernels.ssd.chunk import chunk_ssd, fused_forward_by_default
from kernels.ssd.naive import naive_chunk_ssd, ssd_step
from kernels.ssd.recurrent import fused_recurrent_ssd, fused_ssd_step

TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (5e-3, 1e-2), torch.bfloat16: (1e-2, 3e-2)}  # (out, grad)
NAMES = ("x", "dt", "A", "B", "C", "D", "h0")


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make(b, T, H, G, P, N, dtype, decay="mixed", dev="cuda", grad=True, h0=True):
    """bf16/fp16/fp32 x, B, C; fp32 dt, A, D and state (as the mamba2 mixer hands them over)."""
    if decay == "near1":
        dt, A = torch.full((b, T, H), 1e-2, device=dev), -0.1 * torch.rand(H, device=dev) - 0.05
    elif decay == "near0":
        dt, A = 4.0 + torch.rand(b, T, H, device=dev), -5.0 - torch.rand(H, device=dev)
    else:
        dt, A = torch.nn.functional.softplus(torch.randn(b, T, H, device=dev) - 4.0), -torch.exp(torch.rand(H, device=dev))
    t = {"x": torch.randn(b, T, H, P, device=dev, dtype=dtype), "dt": dt, "A": A,
             "B": torch.randn(b, T, G, N, device=dev, dtype=dtype), "C": torch.randn(b, T, G, N, device=dev, dtype=dtype),
             "D": torch.randn(H, device=dev), "h0": torch.randn(b, H, P, N, device=dev) if h0 else None}
    return {k: (v.requires_grad_(grad) if v is not None else None) for k, v in t.items()}


def run_all(fn, t, dy, dh, **kw):
    y, h = fn(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], initial_state=t["h0"], **kw)
    leaves = [t[k] for k in NAMES if t[k] is not None]
    g = torch.autograd.grad((y * dy.to(y.dtype)).sum() + (h * dh.to(h.dtype)).sum(), leaves)
    return y, h, dict(zip([k for k in NAMES if t[k] is not None], g))


def check(rows, label, dtype, got, ref, tol_out, tol_grad):
    (y, h, g), (y_r, h_r, g_r) = got, ref
    pairs = [("y", y, y_r, tol_out), ("state", h, h_r, tol_out)] + [(f"d{k}", g[k], g_r[k], tol_grad) for k in g_r]
    for name, a, e, tol in pairs:
        err = rel(a, e) if torch.isfinite(a).all() else float("inf")
        rows.append({"case": label, "dtype": str(dtype)[6:], "tensor": name, "rel_err": err, "tol": tol,
                         "status": "PASS" if err <= tol else "FAIL"})


def correctness(rows, shapes, dev):
    for (b, T, H, G, P, N, cs), dtypes in shapes:
        for dtype in dtypes:
            t = make(b, T, H, G, P, N, dtype, dev=dev)
            ref_t = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in t.items()}
            dy = torch.randn(b, T, H, P, device=dev, dtype=torch.float64)
            dh = torch.randn(b, H, P, N, device=dev, dtype=torch.float64)
            label = f"B{b}-T{T}-H{H}-G{G}-P{P}-N{N}-chunk{cs}"
            try:
                ref = run_all(naive_chunk_ssd, ref_t, dy, dh, chunk_size=cs)
                for fused in (True, False):  # both forward paths (the default picks by the grid's size)
                    check(rows, f"{label}-{'fused' if fused else 'two-kernel'}-fwd", dtype,
                          run_all(chunk_ssd, t, dy, dh, chunk_size=cs, fused_forward=fused), ref, *TOL[dtype])
                with torch.no_grad():
                    args = [t[k].detach() for k in ("x", "dt", "A", "B", "C", "D")]
                    y, h = fused_recurrent_ssd(*args, initial_state=t["h0"].detach())
                    y_r, h_r = naive_chunk_ssd(*(a.double() for a in args), initial_state=t["h0"].detach().double())
                    ys, hs = fused_ssd_step(args[0][:, 0], args[1][:, 0], args[2], args[3][:, 0], args[4][:, 0],
                                            t["h0"].detach(), args[5])
                    ys_r, hs_r = ssd_step(args[0][:, 0].double(), args[1][:, 0].double(), args[2].double(),
                                          args[3][:, 0].double(), args[4][:, 0].double(), t["h0"].detach().double(),
                                          args[5].double())
                for name, a, e in (("recurrent y", y, y_r), ("recurrent state", h, h_r), ("step y", ys, ys_r),
                                   ("step state", hs, hs_r)):
                    err = rel(a, e)
                    rows.append({"case": label, "dtype": str(dtype)[6:], "tensor": name, "rel_err": err, "tol": TOL[dtype][0],
                                     "status": "PASS" if err <= TOL[dtype][0] else "FAIL"})
            except Exception as e:  # noqa: BLE001 - a crash is a FAIL row, the script goes on
                rows.append({"case": label, "dtype": str(dtype)[6:], "tensor": "all", "rel_err": float("nan"), "tol": 0,
                                 "status": f"FAIL {type(e).__name__}: {e}"})
                traceback.print_exc()


def stability(rows, T, H, P, N, dtype, dev):
    """Gates at both extremes over a long sequence: finite, and close to the fp32 chunked reference."""
    tol_out, tol_grad = TOL[dtype]
    if dtype == torch.float32:
        tol_grad = 1e-3  # near0 fp32: one ulp of a cumsum near -20 * 64 is a 1e-4 error of each decay
    for decay in ("near0", "near1"):
        t = make(1, T, H, 1, P, N, dtype, decay=decay, dev=dev)
        ref_t = {k: (v.detach().float().requires_grad_() if v is not None else None) for k, v in t.items()}
        dy = torch.randn(1, T, H, P, device=dev)
        dh = torch.randn(1, H, P, N, device=dev)
        try:
            ref = run_all(naive_chunk_ssd, ref_t, dy, dh, chunk_size=64)
            for fused in (True, False):
                check(rows, f"T{T}-H{H}-P{P}-N{N}-{decay}-{'fused' if fused else 'two-kernel'}-fwd", dtype,
                      run_all(chunk_ssd, t, dy, dh, chunk_size=64, fused_forward=fused), ref, tol_out, tol_grad)
        except Exception as e:  # noqa: BLE001 - a crash is a FAIL row, the script goes on
            rows.append({"case": f"T{T}-{decay}", "status": f"FAIL {type(e).__name__}: {e}"})


def hbm_bytes(b, T, H, G, P, N, bwd: bool) -> float:
    """The bytes a pass must move at least (bf16 x/B/C/y, fp32 dt, the fp32 states once)."""
    tok = b * T
    fwd = tok * (2 * H * P * 2 + 2 * G * N * 2 + 4 * H) + b * H * P * N * 4 * 2
    # + read dy, write dx, dB, dC, ddt (inputs re-read: x, B, C, dt)
    return fwd + (tok * (2 * H * P * 2 + 2 * G * N * 2 + 4 * H) + tok * (H * P + 2 * G * N) * 2 + tok * 4 * H) * bwd


def contender_fns(name, t):
    """(fwd callable, leaves) of one public kernel on the inputs ``t``, or (None, reason)."""
    x, dt, A, B, C, D = (t[k] for k in ("x", "dt", "A", "B", "C", "D"))
    if name == "mamba_ssm":
        mamba, reason = import_contender("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")
        if not mamba:
            return None, reason
        return (lambda x=x, dt=dt, A=A, B=B, C=C, D=D: mamba(x, dt, A, B, C, 256, D=D, return_final_states=True)[0],
                [x, dt, A, B, C, D]), ""
    gla, reason = import_contender("fla.ops.simple_gla", "chunk_simple_gla")
    if not gla:
        return None, reason
    R = x.shape[2] // B.shape[2]
    q = C.detach().repeat_interleave(R, dim=2).requires_grad_()  # [B, T, H, N]
    k = B.detach().repeat_interleave(R, dim=2).requires_grad_()
    v = (x.detach() * dt.detach()[..., None]).to(x.dtype).requires_grad_()
    g = (dt.detach() * A.detach()).requires_grad_()
    return (lambda q=q, k=k, v=v, g=g: gla(q=q, k=k, v=v, g=g, scale=1.0, output_final_state=True)[0],
            [q, k, v, g]), ""


CONTENDERS = {"mamba_ssm": "mamba_ssm chunk256", "fla": "fla chunk_simple_gla"}


def time_impl(rows, first_rows, name, fwd, args, dy, base, hbm, bwd_chunk=None, first_only=False):
    """One row: fwd and fwd+bwd median ms and % of the HBM floor; first calls when asked (only
    them with ``first_only``)."""
    row = {**base, "impl": name}

    def fwd_bwd(fwd=fwd, args=args, dy=dy):
        default = chunk_bwd.BWD_CHUNK
        chunk_bwd.BWD_CHUNK = bwd_chunk or default
        try:
            return torch.autograd.grad(fwd(), args, dy)
        finally:
            chunk_bwd.BWD_CHUNK = default
    try:
        if first_rows is not None:
            with torch.no_grad():
                c_f = first_call_s(fwd)
            try:
                c_fb = first_call_s(fwd_bwd)
            except Exception:  # noqa: BLE001 - the timing below records the backward's error
                c_fb = float("nan")
            first_rows.append({**base, "impl": name, "fwd_first_call_s": c_f, "fwd_bwd_first_call_s": c_fb})
            row["first_call_s"] = c_f + c_fb
            if first_only:
                return
        with torch.no_grad():
            ms_f = time_ms(fwd)[0]
        # the op's floor, the same for every row: HBM-bound (README: the minimal FLOPs take less)
        fl_f, fl_fb = floor_ms(hbm(False)), floor_ms(hbm(True))
        row.update(fwd_ms=ms_f, fwd_Mtok_s=base["B"] * base["T"] / ms_f / 1e3, fwd_floor_ms=fl_f,
                   fwd_pct_floor=100 * fl_f / ms_f)
        try:  # a forward that runs keeps its numbers when the backward refuses (fla's guard on Hopper)
            ms_fb = time_ms(fwd_bwd)[0]
        except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
            row["status"] = f"fwd ok; fwd+bwd error {type(e).__name__}: {str(e)[:120]}"
        else:
            row.update(fwd_bwd_ms=ms_fb, fwd_bwd_floor_ms=fl_fb, fwd_bwd_pct_floor=100 * fl_fb / ms_fb, status="ok")
    except torch.cuda.OutOfMemoryError:
        row["status"] = "oom"
    except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
        row["status"] = f"error {type(e).__name__}: {str(e)[:120]}"
    rows.append(row)


def shape_inputs(T, cfg, dev):
    H, G, P, N = (cfg[k] for k in "HGPN")
    b = max(1, cfg["BT_total"] // T)
    t = make(b, T, H, G, P, N, torch.bfloat16, dev=dev, h0=False)
    dy = torch.randn(b, T, H, P, device=dev, dtype=torch.bfloat16)
    hbm = lambda bwd, b=b, T=T: hbm_bytes(b, T, H, G, P, N, bwd)
    return t, dy, {"T": T, "B": b}, hbm


def time_ours(rows, first_rows, T, cfg, dev, first_only=False):
    """Arena's kernels at one (B, T), in this process; first calls too when ``first_rows``."""
    t, dy, base, hbm = shape_inputs(T, cfg, dev)
    leaves = [t[k] for k in ("x", "dt", "A", "B", "C", "D")]
    x = t["x"]
    path = "fused" if fused_forward_by_default(x.shape[0], x.shape[2], x.shape[3], x.device) else "two-kernel"
    for cs in cfg["chunk_sizes"]:
        fwd = lambda cs=cs, leaves=leaves: chunk_ssd(*leaves, chunk_size=cs)[0]
        time_impl(rows, first_rows, f"triton chunk{cs} ({path} fwd)", fwd, leaves, dy, base, hbm, first_only=first_only)
        # the backward on the bigger chunk too, up to 128: at 256 its [Q, Q] tiles spill (H100: 34.6 ms
        # fwd + bwd against 3.5 with the backward on 64-token chunks), not worth each run's time
        if chunk_bwd.BWD_CHUNK < cs <= 128 and not first_only:
            time_impl(rows, None, f"triton chunk{cs} bwd{cs}", fwd, leaves, dy, base, hbm, bwd_chunk=cs)


def timing(a, cfg, dev, tables):
    rows = tables("timing", f"SSD fwd / fwd+bwd, bf16, {shape_label(cfg)}")
    first = tables("first_call", FIRST_TITLE, quiet=True)  # saved; printed as the first_call_s column
    for T in cfg["Ts"]:
        time_ours(rows, first if T == cfg["Ts"][0] else None, T, cfg, dev)
        DONE_FIRST.add("ours")
        if dev == "cuda":
            torch.cuda.empty_cache()
    for name in CONTENDERS:
        run_contender("ssd", f"contender-{name}", [f"T{T}" for T in cfg["Ts"]], rows, a,
                      lambda c: {"T": int(c[1:])})


def contender_child(a, cfg, dev, name):
    """(child process) one public kernel at the cases ``T<n>``: first call at the first, then timings."""
    rows = Table(f"SSD contender {CONTENDERS[name]}", table_path(a.out, "ssd", f"contender-{name}"))
    for i, case in enumerate(contender_cases(a, [f"T{T}" for T in cfg["Ts"]])):
        t, dy, base, hbm = shape_inputs(int(case[1:]), cfg, dev)
        fns, reason = contender_fns(name, t)
        if fns is None:
            rows.append({**base, "impl": CONTENDERS[name], "status": reason})
        else:
            time_impl(rows, [] if i == 0 else None, CONTENDERS[name], *fns, dy, base, hbm)
        case_done(case)
        if dev == "cuda":
            torch.cuda.empty_cache()


def compile_section(cfg, dev, tables):
    """First calls (compile + autotune) of arena's kernels at the smallest timing shape; already
    recorded (and printed) by the timing section when it ran first in this process."""
    if "ours" in DONE_FIRST:
        print("first calls were measured by the timing section above (ssd_first_call.json)", flush=True)
        return
    time_ours([], tables("first_call", FIRST_TITLE), cfg["Ts"][0], cfg, dev, first_only=True)
    DONE_FIRST.add("ours")


def decode(a, cfg, dev, tables):
    rows = tables("decode", f"SSD decode step, {shape_label(cfg).split(',')[0]}")
    for b in cfg["dec"]:
        decode_rows(rows, b, cfg, dev, None)
    run_contender("ssd", "contender-mamba_ssm_step", [f"B{b}" for b in cfg["dec"]], rows, a,
                  lambda c: {"B": int(c[1:])})


def decode_child(a, cfg, dev):
    rows = Table("SSD decode contender", table_path(a.out, "ssd", "contender-mamba_ssm_step"))
    ssu, why = import_contender("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")
    for case in contender_cases(a, [f"B{b}" for b in cfg["dec"]]):
        if ssu:
            decode_rows(rows, int(case[1:]), cfg, dev, ssu)
        else:
            rows.append({"B": int(case[1:]), "impl": "mamba_ssm selective_state_update", "status": why})
        case_done(case)


def decode_rows(rows, b, cfg, dev, ssu):
    """Arena's in-place step (``ssu`` None) or mamba_ssm's ``selective_state_update``."""
    H, G, P, N = (cfg[k] for k in "HGPN")
    t = make(b, 1, H, G, P, N, torch.bfloat16, dev=dev, grad=False)
    x, dt, A, B, C, D = t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["D"]
    state = t["h0"].clone()
    state_bytes = 2 * b * H * P * N * 4 + b * (2 * H * P * 2 + 2 * G * N * 2)
    if ssu is None:
        name = "triton fused_ssd_step (in place)"
        fn = lambda x=x, dt=dt, A=A, B=B, C=C, state=state, D=D: fused_ssd_step(
            x, dt, A, B, C, state, D, out_state=state)
    else:
        name = "mamba_ssm selective_state_update"
        dt_e = dt[..., None].expand(b, H, P)  # stride-0 expansions: mamba's tied-head fast path
        A_e = A[:, None, None].expand(H, P, N)
        D_e = D[:, None].expand(H, P)
        fn = lambda x=x, dt_e=dt_e, A_e=A_e, B=B, C=C, state=state, D_e=D_e: ssu(
            state, x, dt_e, A_e, B, C, D=D_e)
    row = {"B": b, "impl": name}
    try:
        c = first_call_s(fn)
        ms = time_ms(fn)[0]
        row.update(step_us=ms * 1e3, first_call_s=c, floor_us=floor_ms(state_bytes) * 1e3,
                   pct_floor=100 * floor_ms(state_bytes) / ms, status="ok")
    except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
        row["status"] = f"error {type(e).__name__}: {str(e)[:120]}"
    rows.append(row)


FIRST_TITLE = "SSD first call (compile + autotune), seconds"
DONE_FIRST: set[str] = set()
SECTIONS = ("timing", "decode", "compile", "correctness", "stability")


def shape_label(cfg):
    return f"H{cfg['H']} P{cfg['P']} N{cfg['N']} G{cfg['G']}, B*T = {cfg['BT_total']}"


def config(smoke):
    if smoke:
        return {"shapes": [((1, 1, 2, 1, 16, 16, 16), (torch.float32,)), ((1, 40, 2, 1, 16, 16, 16), (torch.float32,))],
                "stab": (512, 2, 16, 16, torch.float32),  # the interpreter's bf16 arithmetic is wrong
                "Ts": (64,), "BT_total": 128, "H": 2, "G": 1, "P": 16, "N": 16, "chunk_sizes": (16, 128),
                "dec": (1, 2)}
    bf, hf, f = (torch.bfloat16,), (torch.float16,), (torch.float32,)
    # bf16 at T = 1 and a ragged T (the timing's chunk sizes 64 / 128), fp16 and fp32 at one shape
    # each (every dtype x chunk size compiles every autotune config anew)
    return {"shapes": [((2, 1, 4, 1, 64, 128, 64), bf), ((1, 130, 8, 2, 64, 128, 128), bf),
                       ((2, 63, 4, 2, 64, 128, 64), hf), ((1, 200, 4, 1, 64, 64, 64), f)],
            "stab": (65536, 4, 64, 128, torch.bfloat16),
            "Ts": (1024, 2048, 4096, 8192, 16384, 32768), "BT_total": 32768, "H": 64, "G": 1, "P": 64, "N": 128,
            "chunk_sizes": (64, 128, 256), "dec": (1, 64)}


def main(argv=None):
    a = bench_args(__doc__, argv, SECTIONS)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("no GPU: export TRITON_INTERPRET=1 and pass --smoke")
    torch.manual_seed(0)
    cfg = config(a.smoke)
    made = {}

    def tables(name, title, quiet=False):  # one streaming table per name (timing and compile share first_call)
        if name not in made:
            made[name] = Table(title, table_path(a.out, "ssd", name), quiet)
        return made[name]
    sections = {
        "timing": lambda: timing(a, cfg, dev, tables),
        "decode": lambda: decode(a, cfg, dev, tables),
        "compile": lambda: compile_section(cfg, dev, tables),
        "correctness": lambda: correctness(tables("correctness", "SSD correctness vs naive (fp64)"),
                                           cfg["shapes"], dev),
        "stability": lambda: stability(tables("stability", "SSD stability, gates at both extremes (fp32 reference)"),
                                       *cfg["stab"], dev),
        "contender-mamba_ssm_step": lambda: decode_child(a, cfg, dev),
        **{f"contender-{n}": (lambda n=n: contender_child(a, cfg, dev, n)) for n in CONTENDERS},
    }
    run_sections(sections, a.only, SECTIONS)


if __name__ == "__main__":
    main()
