"""``arena bench``: throughput, memory and roofline fraction of each mixer against length.

One row = (mixer, impl, seq_len, pass) at a batch size, dtype and d_model, measured on the
current device and written to the store as a ``Record`` of kind ``bench`` (task ``bench``,
run_id = hash of the row config; a row already ``ok`` in the store is skipped, so a sweep
resumes; use a new ``--results`` directory to measure again). ``arena.store.load`` gives the
columns ``mixer, impl, device, status, seq_len, batch_size, pass, tokens_per_s, time_ms,
time_ms_spread, first_call_ms, tflops, gbps, compute_frac, memory_frac, roofline_frac,
peak_mem_bytes`` (and more; see ``_record``). A row that kills the process (an abort inside
a compiler) is recorded as ``failed`` (``extra.crashed``) by the next sweep and then skipped.

Passes (x: ``[B, T, d_model]`` random, parameters and x at ``dtype``):

- ``fwd``: ``forward`` with autograd recording (the forward half of a training step);
- ``fwdbwd``: forward and ``backward`` of a random output gradient; FLOPs counted as 3x forward
  (the usual convention: backward = 2x forward);
- ``prefill``: ``forward`` from ``init_state`` under ``torch.inference_mode`` (what serving runs);
- ``decode``: the state is prefilled by ``forward`` over T tokens, then the per-token latency
  of ``step`` from that state; each rep continues from the state the last one returned (the
  context grows by the warm-up + reps tokens, a few dozen against T), so attention appends to
  its cache in place as real decoding does (``architectures/kv_cache.py``);
  tokens/s = B / latency; ``state_bytes`` (per sequence) is recorded: attention's KV cache
  grows with T, the recurrent states do not. FLOPs: ``flops(T + 1) - flops(T)`` (approximate).

Bytes floor (``bytes_floor``; the mixers' contract has no ``bytes()`` yet), with ``e`` the
element size of ``dtype``, ``s`` that of the state tensors, P parameters, S(T) = state_size(T):

- fwd / prefill: ``e (2 B T d + P) + s B S(T)`` (input read, output written, parameters read,
  final state written, each once);
- fwdbwd: twice the forward floor (x, y, dy, dx; parameters and their gradients; the state);
- decode: ``e (2 B d + P) + s B (S(T) + W)``, W = S(T) when the state has a fixed size
  (rewritten in place), else S(T + 1) - S(T) (a cache row appended).

roofline_frac = max(compute_frac, memory_frac) = floor time / measured time, where
compute_frac = achieved TFLOP/s / peak TFLOP/s and memory_frac = achieved GB/s / peak GB/s
(peaks from ``arena.bench_timing.roofline``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import traceback

import torch

from architectures import MIXERS, build_mixer
from architectures.mixer import ImplUnavailableError
from arena.bench_contenders import CONTENDERS, ContenderUnavailable, agreement, contender_ops
from arena.bench_timing import device_name, peak_memory, roofline, timer_for
from arena.records import Record, content_id, environment_info, utc_now
from arena.store import Store
from tasks.runner import is_oom

PASSES = ("fwd", "fwdbwd", "prefill", "decode")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CORE_MIXERS = ("attention", "gated_deltanet", "mamba", "mamba2", "xlstm")

# `arena bench --preset cpu|gpu`; flags given on the command line override a preset's values.
PRESETS = {
    # a few minutes on 2 cores: the demo's throughput-versus-length figure
    "cpu": {"mixers": CORE_MIXERS, "impls": ("reference",), "lengths": (256, 512, 1024, 2048),
                "passes": ("fwd", "fwdbwd", "decode"), "batch_policy": "tokens", "tokens": 2048, "batch_size": 1,
                "dtype": "fp32", "d_model": 256, "warmup": 1, "reps": 3, "mixer_overrides": {"mamba2": {"chunk_size": 64}}},
    # the standard sweep of issue 7 on a lent H100/H200 (public contenders run where installed)
    "gpu": {"mixers": CORE_MIXERS, "impls": ("reference", "triton", "fla", "mamba_ssm", "mlstm_kernels", "flash_attn"),
                "lengths": (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536), "passes": PASSES,
                "batch_policy": "tokens", "tokens": 32768, "batch_size": 1, "dtype": "bf16", "d_model": 1024,
                "warmup": 5, "reps": 20, "mixer_overrides": {}},
}


@dataclasses.dataclass(frozen=True)
class BenchRow:
    mixer: str
    impl: str
    seq_len: int
    pass_: str
    batch_size: int
    dtype: str = "fp32"
    d_model: int = 256
    device: str = "cpu"
    overrides: tuple = ()  # sorted (key, value) pairs of mixer config overrides

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pass"] = d.pop("pass_")
        d["overrides"] = dict(self.overrides)
        return d

    @property
    def run_id(self) -> str:
        return "bench-" + content_id(self.to_dict())


def parse_size(text: str) -> int:
    """``"512" -> 512``, ``"4k" -> 4096``, ``"1m" -> 1048576``."""
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1024**2}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def batch_for(policy: str, seq_len: int, tokens: int, batch_size: int) -> int:
    """``tokens``: B = tokens // T (at least 1), so every length sees B*T = tokens; ``fixed``: B."""
    if policy == "tokens":
        return max(1, tokens // seq_len)
    if policy == "fixed":
        return batch_size
    raise ValueError(f"batch policy must be 'tokens' or 'fixed', got {policy!r}")


def plan(mixers, impls, lengths, passes, *, batch_policy="tokens", tokens=32768, batch_size=1,
         dtype="fp32", d_model=256, device="cpu", mixer_overrides=None) -> list[BenchRow]:
    rows = []
    for mixer in mixers:
        ov = tuple(sorted((mixer_overrides or {}).get(mixer, {}).items()))
        for impl in impls:
            for T in lengths:
                for p in passes:
                    if p not in PASSES:
                        raise ValueError(f"unknown pass {p!r}; valid: {', '.join(PASSES)}")
                    rows.append(BenchRow(mixer, impl, T, p, batch_for(batch_policy, T, tokens, batch_size),
                                         dtype, d_model, str(device), ov))
    return rows


def skip_reason(row: BenchRow) -> str | None:
    """Why ``row`` is not a row at all (no record written), or None."""
    if row.impl in CONTENDERS:
        try:
            contender_ops(row.impl, row.mixer, torch.device(row.device))
        except ContenderUnavailable as e:
            return str(e)
        return None
    if row.impl not in ("auto", *MIXERS[row.mixer].IMPLS):
        return f"{row.mixer} has no {row.impl!r} implementation"
    return None


# --- one row ----------------------------------------------------------------------------------


def bytes_floor(mixer, row: BenchRow, state_elem: int = 4) -> int:
    """The bytes a pass must move at least; formula in the module doc."""
    e = torch.finfo(DTYPES[row.dtype]).bits // 8
    B, T, d = row.batch_size, row.seq_len, mixer.d_model
    P = sum(p.numel() for p in mixer.parameters())
    S = mixer.state_size(T)
    if row.pass_ == "decode":
        grown = mixer.state_size(T + 1) - S
        return e * (2 * B * d + P) + state_elem * B * (S + (grown if grown else S))
    fwd = e * (2 * B * T * d + P) + state_elem * B * S
    return 2 * fwd if row.pass_ == "fwdbwd" else fwd


def flops_of(mixer, row: BenchRow) -> int:
    B, T = row.batch_size, row.seq_len
    if row.pass_ == "decode":
        return B * (mixer.flops(T + 1) - mixer.flops(T))
    return (3 if row.pass_ == "fwdbwd" else 1) * B * mixer.flops(T)


def _workload(mixer, row: BenchRow, device):
    """``(fn, extra)``: the timed callable of ``row``'s pass."""
    dtype = DTYPES[row.dtype]
    B, T, d = row.batch_size, row.seq_len, mixer.d_model
    x = torch.randn(B, T, d, device=device, dtype=dtype)
    if row.pass_ == "fwd":
        return (lambda: mixer(x)), {}
    if row.pass_ == "fwdbwd":
        x.requires_grad_(True)
        dy = torch.randn_like(x)

        def fwdbwd():
            mixer.zero_grad(set_to_none=True)
            x.grad = None
            mixer(x)[0].backward(dy)
        return fwdbwd, {}
    if row.pass_ == "prefill":
        def prefill():
            with torch.inference_mode():
                return mixer(x, mixer.init_state(B, device, dtype))
        return prefill, {}
    with torch.inference_mode():  # decode
        _, state = mixer(x, mixer.init_state(B, device, dtype))
        x_t = torch.randn(B, d, device=device, dtype=dtype)
    state_bytes = sum(t.numel() * t.element_size() for t in state.values()) // B

    current = [state]

    def decode():  # each rep continues the sequence, as decoding does
        with torch.inference_mode():
            _, current[0] = mixer.step(x_t, current[0])
    return decode, {"state_bytes": state_bytes, "state_elem": max(t.element_size() for t in state.values())}


def measure(row: BenchRow, *, warmup: int = 2, reps: int = 5, peaks: dict | None = None) -> Record:
    """Measure one row; an OOM or any exception becomes a record with that status."""
    started, t0 = utc_now(), time.perf_counter()
    device = torch.device(row.device)
    metrics, extra, status, error, mem, impl, backend = {}, {}, "ok", "", 0, row.impl, None
    mixer = None
    try:
        mixer, impl = _build(row, device, extra)
        backend = getattr(mixer, "backend", None) if row.mixer == "attention" else None
        fn, wl = _workload(mixer, row, device)
        timing = timer_for(device)(fn, warmup=warmup, reps=reps)
        mem, mem_method = peak_memory(fn, device)
        metrics, measured = _metrics(mixer, row, timing, wl, peaks)
        extra.update(measured)
        extra["peak_mem_method"] = mem_method
    except Exception as err:  # noqa: BLE001 -- every failure is a row; the sweep goes on
        status = "oom" if is_oom(err) else "failed"
        error = traceback.format_exc(limit=8)
        if isinstance(err, ImplUnavailableError):
            error = str(err)
        if device.type == "cuda":  # GPU ONLY
            torch.cuda.empty_cache()
    extra.update(seq_len=row.seq_len, batch_size=row.batch_size, **{"pass": row.pass_}, dtype=row.dtype,
                 d_model=row.d_model, threads=torch.get_num_threads(), tokens=row.batch_size * row.seq_len)
    try:
        extra.update(params=sum(p.numel() for p in mixer.parameters()), state_size=mixer.state_size(row.seq_len),
                     mixer_config=mixer.cfg.to_dict())
    except Exception:  # noqa: BLE001, S110 -- no mixer was built (or a broken one): sizes left out
        pass
    return _record(row, status, error, started=started, wall_time_s=time.perf_counter() - t0, impl=impl,
                   backend=backend, metrics=metrics, mem=mem, extra=extra)


def _record(row: BenchRow, status: str, error: str, *, started: str, wall_time_s: float, impl: str,
            backend=None, metrics=None, mem=0, extra=None) -> Record:
    env = _environment()
    return Record(run_id=row.run_id, kind="bench", status=status, task="bench", mixer=row.mixer, impl=impl,
                  device=device_name(torch.device(row.device)), seed=0, attention_backend=backend,
                  config=row.to_dict(), metrics=metrics or {}, error=error, git_commit=env["git_commit"],
                  git_dirty=env["git_dirty"], versions=env["versions"], started_at=started,
                  wall_time_s=wall_time_s, peak_mem_bytes=mem, extra=_jsonable(extra or {}))


# --- rows that kill the process ------------------------------------------------------------------
# An abort inside a compiler or driver (seen: mlstm_kernels' first compile hits an LLVM assertion
# under Triton 3.6 on an H100) ends the process, not just the row. Each row leaves a marker in
# <results>/bench_inflight/ while it is measured; the next sweep turns a marker it finds into a
# ``failed`` record with ``extra.crashed`` and skips that row from then on (``--retry-crashed``).
INFLIGHT_DIR = "bench_inflight"
CRASH_ERROR = ("the process died while measuring this row (an abort inside a compiler or driver, a "
               "segfault, or a kill); `arena bench ... --retry-crashed` measures it again")


def _row_from(cfg: dict) -> BenchRow:
    cfg = dict(cfg)
    cfg["pass_"], cfg["overrides"] = cfg.pop("pass"), tuple(sorted(cfg["overrides"].items()))
    return BenchRow(**cfg)


def record_crashes(store: Store, log=print) -> int:
    """Turn the markers an earlier, dead sweep left into ``failed`` records; their number."""
    markers = sorted((store.root / INFLIGHT_DIR).glob("*.json"))
    for marker in markers:
        row = _row_from(json.loads(marker.read_text()))
        if store.status_of(row.run_id, "bench") != "ok":
            store.write(_record(row, "failed", CRASH_ERROR, started=utc_now(), wall_time_s=0.0, impl=row.impl,
                                extra={"crashed": True}))
            log(f"{row.mixer}/{row.impl} {row.pass_} T={row.seq_len}: crashed an earlier sweep, recorded as failed")
        marker.unlink()
    return len(markers)


def crashed_before(store: Store, row: BenchRow) -> bool:
    attempts = store.attempts(row.run_id, "bench")
    return bool(attempts) and attempts[-1].status != "ok" and bool((attempts[-1].extra or {}).get("crashed"))


# ||fast - reference|| / ||reference|| above which a fast or contender layer is not timed
AGREEMENT_TOL = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 2e-2}


class Disagreement(RuntimeError):
    """A fast or contender layer whose output is not the reference's: its row gets no time."""


def _build(row: BenchRow, device: torch.device, extra: dict):
    """The layer of ``row`` and the impl its record names. Contenders run arena's layer on its
    ``auto`` path with the core op swapped (arena.bench_contenders); every layer that is not
    the reference is first checked against the fp32 reference with the same weights."""
    contender = row.impl in CONTENDERS
    mixer = build_mixer(row.mixer, row.d_model, impl="auto" if contender else row.impl, **dict(row.overrides))
    if contender:
        mixer.op_overrides = contender_ops(row.impl, row.mixer, device)
        if row.impl == "flash_attn":
            mixer.cfg.backend = "flash_attn"
    mixer = mixer.to(device=device, dtype=DTYPES[row.dtype])
    extra["layer_impl"] = mixer.impl
    if mixer.impl != "reference" or contender:
        reference = build_mixer(row.mixer, row.d_model, impl="reference", **dict(row.overrides))
        reference.load_state_dict(mixer.state_dict())
        err = agreement(mixer, reference.to(device=device, dtype=torch.float32), device, DTYPES[row.dtype])
        extra["agreement_rel_err"] = err
        if not err <= AGREEMENT_TOL[row.dtype]:
            raise Disagreement(f"{row.mixer}/{row.impl}: output differs from the fp32 reference by "
                               f"{err:.2e} > {AGREEMENT_TOL[row.dtype]:.0e} (relative); not timed")
    return mixer, (row.impl if contender else mixer.impl)


def _metrics(mixer, row: BenchRow, timing, wl: dict, peaks: dict | None) -> tuple[dict, dict]:
    sec = timing.median_ms * 1e-3
    tokens = row.batch_size * (1 if row.pass_ == "decode" else row.seq_len)
    flops = flops_of(mixer, row)
    nbytes = bytes_floor(mixer, row, wl.get("state_elem", 4))
    m = {"tokens_per_s": tokens / sec, "time_ms": timing.median_ms, "time_ms_spread": timing.iqr_ms,
         "time_ms_min": timing.min_ms, "time_ms_max": timing.max_ms, "first_call_ms": timing.first_call_ms,
         "tflops": flops / sec / 1e12, "gbps": nbytes / sec / 1e9}
    if "state_bytes" in wl:
        m["state_bytes"] = wl["state_bytes"]
    if peaks:
        m["compute_frac"] = m["tflops"] / peaks["peak_tflops"]
        m["memory_frac"] = m["gbps"] / peaks["peak_gbps"]
        m["roofline_frac"] = max(m["compute_frac"], m["memory_frac"])
    extra = {"flops": flops, "bytes_floor": nbytes, "timer": timing.timer, "reps": timing.reps,
             "warmup": timing.warmup, "roofline": {k: v for k, v in (peaks or {}).items() if k != "cache"}}
    return m, extra


_ENV: dict = {}


def _environment() -> dict:
    """``environment_info()`` once per process: it runs git, which costs more than a tiny row."""
    if not _ENV:
        _ENV.update(environment_info())
    return _ENV


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# --- the sweep --------------------------------------------------------------------------------


def sweep(rows: list[BenchRow], store: Store, *, warmup: int = 2, reps: int = 5, roofline_path=None,
          log=print, retry_crashed: bool = False) -> list[Record]:
    """Measure every row not yet ``ok`` in ``store``; skipped rows (no such impl, contender not
    installed) are printed with the reason and write nothing; a row that crashed an earlier sweep
    is skipped unless ``retry_crashed``."""
    written, peaks_by, skipped = [], {}, set()
    record_crashes(store, log)
    inflight = store.root / INFLIGHT_DIR
    for i, row in enumerate(rows, 1):
        label = f"[{i}/{len(rows)}] {row.mixer}/{row.impl} {row.pass_} T={row.seq_len} B={row.batch_size}"
        why = skip_reason(row)
        if why:
            if (row.mixer, row.impl) not in skipped:
                log(f"{row.mixer}/{row.impl}: skipped, no records ({why})")
            skipped.add((row.mixer, row.impl))
            continue
        if store.status_of(row.run_id, "bench") == "ok":
            log(f"{label}: already in the store, skipped")
            continue
        if not retry_crashed and crashed_before(store, row):
            log(f"{label}: crashed an earlier sweep, skipped (--retry-crashed measures it again)")
            continue
        key = (row.device, row.dtype)
        if key not in peaks_by:
            peaks_by[key] = _peaks(row, roofline_path, log)
        inflight.mkdir(parents=True, exist_ok=True)
        marker = inflight / f"{row.run_id}.json"
        marker.write_text(json.dumps(row.to_dict()))
        record = measure(row, warmup=warmup, reps=reps, peaks=peaks_by[key])
        store.write(record)
        marker.unlink()
        written.append(record)
        if record.status == "ok":
            m = record.metrics
            log(f"{label}: {m['tokens_per_s']:,.0f} tok/s, {m['time_ms']:.3f} ms "
                f"(IQR {m['time_ms_spread']:.3f}), roofline {m.get('roofline_frac', math.nan):.1%}")
        else:
            log(f"{label}: {record.status}: {(record.error.strip().splitlines() or [''])[-1]}")
    return written


def _peaks(row: BenchRow, path, log) -> dict | None:
    try:
        return roofline(torch.device(row.device), DTYPES[row.dtype], path)
    except Exception as e:  # noqa: BLE001 -- no roofline is not fatal: fractions are left out
        log(f"roofline not measured ({type(e).__name__}: {e}); roofline_frac left out")
        return None


if __name__ == "__main__":
    from arena.bench_baselines import main

    sys.exit(main())
