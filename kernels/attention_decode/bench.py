"""Decode attention benchmark: GPU correctness, a 64k-row cache, and latency against torch SDPA
on the cache prefix, with the floor = the valid cache read once.

    python -m kernels.attention_decode.bench [--out DIR] [--smoke] [--only timing,compile,correctness,stability]

Sections run in that order by default; rows print as they are measured. SDPA is torch's own
kernel and runs in this process (no public package to isolate).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels.bench_utils import Table, bench_args, first_call_s, floor_ms, run_sections, table_path, time_ms

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.attention_decode.decode import attention_decode_triton
from kernels.attention_decode.naive import attention_decode

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def _qkv(B, H, Hkv, S, D, dtype):
    return (torch.randn(B, H, D, device=DEV, dtype=dtype), torch.randn(B, Hkv, S, D, device=DEV, dtype=dtype),
            torch.randn(B, Hkv, S, D, device=DEV, dtype=dtype))


def correctness(rows, cases) -> None:
    for dtype, B, H, Hkv, S, D, lens in cases:
        q, k, v = _qkv(B, H, Hkv, S, D, dtype)
        n = torch.tensor(lens, device=DEV) if isinstance(lens, list) else lens
        err = _rel(attention_decode_triton(q, k, v, n), attention_decode(q.double(), k.double(), v.double(), n))
        rows.append({"dtype": str(dtype).split(".")[-1], "B": B, "H": H, "Hkv": Hkv, "S": S, "D": D,
                     "cache_len": str(lens), "rel_err": err, "tol": TOL[dtype],
                     "status": "PASS" if err <= TOL[dtype] else "FAIL"})


def long_cache(rows, S, dtype=torch.bfloat16) -> None:
    """A 64k-row cache with scores spread wide (q scaled by 8): bf16 vs the fp32 reference."""
    q, k, v = _qkv(1, 16, 4, S, 64, dtype)  # fp32 under --smoke: the interpreter's bf16 arithmetic is wrong
    q = (q.float() * 8).to(dtype)
    o = attention_decode_triton(q, k, v, S)
    err = _rel(o, attention_decode(q.float(), k.float(), v.float(), S))
    ok = bool(torch.isfinite(o).all()) and err <= 1e-2
    rows.append({"S": S, "rel_err": err, "tol": 1e-2, "status": "PASS" if ok else "FAIL"})


def _time_rows(rows, B, H, Hkv, S, D, first: bool) -> None:
    q, k, v = _qkv(B, H, Hkv, S, D, torch.bfloat16)
    nbytes = 2 * B * Hkv * S * D * 2 + 2 * B * H * D * 2  # the cache once, q and o
    impls = {"triton split-K": lambda q=q, k=k, v=v, S=S: attention_decode_triton(q, k, v, S),
             "torch SDPA": lambda q=q, k=k, v=v, gqa=H != Hkv: F.scaled_dot_product_attention(
                 q[:, :, None], k, v, enable_gqa=gqa)}
    for name, f in impls.items():
        row = {"B": B, "H": H, "Hkv": Hkv, "S": S, "D": D, "impl": name}
        try:
            if first:
                row["first_call_s"] = first_call_s(f)
            ms = time_ms(f)[0]
            row.update({"us": ms * 1e3, "floor_us": floor_ms(nbytes) * 1e3,
                        "%floor": 100 * floor_ms(nbytes) / ms, "GB/s": nbytes / ms / 1e6, "status": "ok"})
        except torch.cuda.OutOfMemoryError:
            row["status"] = "oom"
        except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
            row["status"] = f"error: {type(e).__name__}: {str(e)[:120]}"
        rows.append(row)


def timings(rows, Ss, Bs, H, Hkvs, D) -> None:
    for Hkv in Hkvs:
        for B in Bs:
            for S in Ss:
                _time_rows(rows, B, H, Hkv, S, D, first=S == Ss[0] and B == Bs[0] and Hkv == Hkvs[0])
    DONE_FIRST.add("decode")


def first_calls(rows, B, H, Hkv, S, D) -> None:
    """The split-K kernel's first call (compile + autotune), unless the timing section (its
    first_call_s column) already ran in this process."""
    if "decode" in DONE_FIRST:
        print("first calls were measured by the timing section above (first_call_s column)", flush=True)
        return
    q, k, v = _qkv(B, H, Hkv, S, D, torch.bfloat16)
    rows.append({"B": B, "H": H, "Hkv": Hkv, "S": S, "D": D, "impl": "triton split-K",
                 "first_call_s": first_call_s(lambda q=q, k=k, v=v: attention_decode_triton(q, k, v, S))})
    DONE_FIRST.add("decode")


DONE_FIRST: set[str] = set()
SECTIONS = ("timing", "compile", "correctness", "stability")


def main(argv=None):
    a = bench_args(__doc__, argv, SECTIONS)
    tab = lambda name, title: Table(title, table_path(a.out, "attention_decode", name))
    torch.manual_seed(0)
    bf, hf, f = torch.bfloat16, torch.float16, torch.float32
    if a.smoke:
        cases = [(f, 2, 4, 2, 40, 16, 33), (f, 2, 4, 2, 40, 16, [1, 40]), (hf, 2, 4, 2, 40, 16, 1)]
        tim, long_S = ([32], [1], 4, [2], 16), 256
    else:
        # bf16 at cache length 1, a ragged length and per-row lengths; fp16 / fp32 at one shape each
        cases = [(bf, 2, 16, 16, 1000, 64, 1), (bf, 2, 16, 4, 1000, 64, 130), (bf, 3, 16, 4, 4096, 64, [1, 777, 4096]),
                 (hf, 2, 16, 4, 1000, 64, 63), (f, 1, 32, 8, 2048, 128, 2000)]
        tim, long_S = ([1024, 2048, 4096, 8192, 16384, 32768], [1, 32], 16, [16, 4], 64), 65536
    sections = {
        "timing": lambda: timings(tab("timing", "decode attention: bf16, H 16, D 64, full cache (floor: the cache "
                                                "read once)"), *tim),
        "compile": lambda: first_calls(tab("first_call", "decode attention: first call (compile + autotune), s"),
                                       tim[1][0], tim[2], tim[3][0], tim[0][0], tim[4]),
        "correctness": lambda: correctness(tab("correctness", "decode attention: correctness vs float64 reference"),
                                           cases),
        "stability": lambda: long_cache(tab("long_cache", f"decode attention: {long_S}-row cache, bf16 vs fp32 "
                                                          "reference"), long_S, f if a.smoke else bf),
    }
    run_sections(sections, a.only, SECTIONS)


if __name__ == "__main__":
    main()
