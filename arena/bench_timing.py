"""Timers, peak memory and the device roofline for ``arena bench``.

- CPU: ``time_cpu``, a repeated ``perf_counter`` timer: the first call is timed apart (lazy
  init, compile), then ``warmup`` untimed calls, then ``reps`` timed calls; median and IQR.
  ``torch.set_num_threads`` is left as it is (the bench records ``torch.get_num_threads()``).
- GPU: ``time_cuda`` (GPU ONLY, untested on CPU CI): CUDA events around each rep, warm-up and
  first call (compile/autotune) excluded and reported apart, and a 256 MiB buffer zeroed before
  every rep so each rep starts with a cold L2 (as ``triton.testing.do_bench`` does).
- Peak memory: CUDA: ``torch.cuda.max_memory_allocated`` over one call (absolute, inputs and
  parameters included). CPU: tracemalloc does not see torch's allocator, so ``peak_rss_delta``
  samples the process RSS (``/proc/self/statm``) every ~1 ms during one call and records the
  peak growth over the RSS before the call. It is a lower bound: memory the allocator kept from
  earlier rows is reused without growing the RSS. 0 where /proc is missing.
- Roofline: ``roofline(device, dtype)`` measures the peak copy bandwidth (a large
  ``dst.copy_(src)``, read + write counted) and matmul rate (a square matmul at the bench dtype)
  once, and caches them in ``$ARENA_ROOFLINE_CACHE`` or ``~/.cache/arena/roofline-<device>.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


@dataclasses.dataclass
class Timing:
    median_ms: float
    iqr_ms: float  # spread: 75th - 25th percentile of the reps
    min_ms: float
    max_ms: float
    first_call_ms: float  # the first call alone: lazy init, compile, autotune
    reps: int
    warmup: int
    timer: str  # "perf_counter" or "cuda_events"


def _summary(times_ms: list[float], first_ms: float, warmup: int, timer: str) -> Timing:
    q = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 3
    return Timing(statistics.median(times_ms), q[2] - q[0], min(times_ms), max(times_ms), first_ms,
                  len(times_ms), warmup, timer)


def time_cpu(fn: Callable[[], object], warmup: int = 2, reps: int = 5) -> Timing:
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times, first, warmup, "perf_counter")


L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MiB)


def time_cuda(fn: Callable[[], object], warmup: int = 5, reps: int = 20) -> Timing:  # GPU ONLY
    sync = torch.cuda.synchronize
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        fn()
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        flush.zero_()  # evict L2 before the rep
        s.record()
        fn()
        e.record()
    sync()
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)], first, warmup, "cuda_events")


def timer_for(device: torch.device) -> Callable[..., Timing]:
    return time_cuda if torch.device(device).type == "cuda" else time_cpu


# --- peak memory ------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_delta(fn: Callable[[], object]) -> int:
    """Peak RSS growth (bytes) while ``fn`` runs once, sampled every ~1 ms; see the module doc."""
    base = _rss_bytes()
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(0, max(peak[0], _rss_bytes()) - base) if base else 0


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    """``(bytes, method)`` of one call of ``fn``."""
    if torch.device(device).type == "cuda":  # GPU ONLY
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), "cuda.max_memory_allocated"
    return peak_rss_delta(fn), "rss_delta_sampled"


# --- roofline ---------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def roofline_cache_path(device: torch.device) -> Path:
    if os.environ.get("ARENA_ROOFLINE_CACHE"):
        return Path(os.environ["ARENA_ROOFLINE_CACHE"])
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()
    if torch.device(device).type == "cpu":
        slug += f"-{torch.get_num_threads()}t"  # the CPU's rates depend on the thread count
    return Path.home() / ".cache" / "arena" / f"roofline-{slug}.json"


def measure_roofline(device: torch.device, dtype: torch.dtype) -> dict:
    """``{"peak_gbps", "peak_tflops"}``: a large copy (bytes read + written) and a square
    matmul at ``dtype``, each the best of a few reps (peaks, not medians)."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    timer = timer_for(device)
    n_copy = (1 << 30 if gpu else 1 << 27) // 4  # 1 GiB on GPU, 128 MiB on CPU (fp32 elements)
    src = torch.ones(n_copy, device=device)
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src), warmup=2, reps=10 if gpu else 5)
    gbps = 2 * src.numel() * 4 / (t.min_ms * 1e-3) / 1e9
    src = dst = None  # free the copy buffers before the matmul
    n = 8192 if gpu else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = timer(lambda: a @ b, warmup=2, reps=10 if gpu else 5)
    tflops = 2 * n**3 / (t.min_ms * 1e-3) / 1e12
    return {"peak_gbps": gbps, "peak_tflops": tflops, "device": device_name(device),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "copy_mib": n_copy * 4 / 2**20, "matmul_n": n}


def roofline(device: torch.device, dtype: torch.dtype, path: Path | None = None) -> dict:
    """The device's peaks at ``dtype``, measured on the first call and cached in ``path``."""
    path = Path(path) if path else roofline_cache_path(device)
    key = str(dtype).removeprefix("torch.")
    cache = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if key not in cache:
        cache[key] = measure_roofline(device, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache, indent=1) + "\n")
    return {**cache[key], "cache": str(path)}
