"""Shared pieces of the kernel benchmark scripts (``python -m kernels.<op>.bench``): a timer,
first-call (compile + autotune) time, the HBM floor, optional public contenders, and one table
printed and saved as JSON. Scripts, not tests: timings are numbers to record, never asserted.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# The H100 floor the kernel READMEs quote (measured on the lent H100: device-to-device copy,
# bytes read + written; 8192^3 bf16 matmul). Override with ARENA_HBM_GBPS / ARENA_PEAK_TFLOPS.
HBM_GBPS = float(os.environ.get("ARENA_HBM_GBPS", 3000))
PEAK_TFLOPS = float(os.environ.get("ARENA_PEAK_TFLOPS", 790))


def time_ms(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) milliseconds of ``fn()``. CUDA: ``triton.testing.do_bench``
    (CUDA events, L2 flushed between calls); CPU: repeated ``perf_counter``."""
    if torch.cuda.is_available():
        import triton.testing
        q = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return tuple(q)
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[1], times[-2]


def first_call_s(fn: Callable[[], object]) -> float:
    """Seconds of the first call (Triton compile + autotune included), synchronised."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def floor_ms(bytes_moved: float, flops: float = 0.0) -> float:
    """The roofline floor: max(bytes / HBM bandwidth, FLOPs / peak matmul rate), in ms."""
    return max(bytes_moved / (HBM_GBPS * 1e9), flops / (PEAK_TFLOPS * 1e12)) * 1e3


def import_contender(module: str, attr: str) -> tuple[Callable | None, str]:
    """``(function, "")`` when ``module.attr`` imports, else ``(None, reason)``. mamba_ssm's
    package ``__init__`` imports its CUDA extension; its Triton ops need none, so a source tree
    named by ``ARENA_MAMBA_SSM_SRC`` (the unpacked sdist) is imported with that init skipped."""
    top = module.split(".")[0]
    src = os.environ.get("ARENA_MAMBA_SSM_SRC")
    if top == "mamba_ssm" and src and top not in sys.modules:
        spec = importlib.machinery.ModuleSpec(top, None, is_package=True)
        pkg = importlib.util.module_from_spec(spec)
        pkg.__path__ = [str(Path(src) / top)]
        sys.modules[top] = pkg
    try:
        return getattr(importlib.import_module(module), attr), ""
    except Exception as e:  # noqa: BLE001 - any failure to import a contender is reported, not raised
        return None, f"{module}.{attr} unavailable: {type(e).__name__}: {e}"


def device_label() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------
# Streaming tables, ``--only`` sections, contenders in a child process
# ---------------------------------------------------------------------------------------------

_LAST: list = [None]  # the table that printed the last row


class Table(list):
    """A list of rows that prints each row (flushed) the moment it is appended and rewrites its
    JSON file after every row, so a killed or timed-out run keeps what it measured. Existing code
    that does ``rows.append(row)`` / ``rows.extend(rows)`` streams unchanged."""

    def __init__(self, title: str, path: str | None = None, quiet: bool = False):
        super().__init__()
        self.title, self.path, self._cols, self.quiet = title, path, None, quiet
        if not quiet:  # a quiet table only saves (its rows are printed elsewhere)
            print(f"\n## {title}\n", flush=True)
            _LAST[0] = self

    def append(self, row: dict, echo: bool = True) -> None:
        super().append(row)
        if echo and not self.quiet:
            cols = list(row)
            if _LAST[0] is not self and _LAST[0] is not None and self._cols is not None:
                print(f"\n## {self.title} (continued)\n", flush=True)  # another table printed in between
                self._cols = None
            _LAST[0] = self
            if self._cols is None or any(c not in self._cols for c in cols):  # new columns: a new header
                self._cols = list(dict.fromkeys((self._cols or []) + cols))
                print("| " + " | ".join(self._cols) + " |\n|" + "---|" * len(self._cols), flush=True)
            print("| " + " | ".join(_fmt(row.get(c, "")) for c in self._cols) + " |", flush=True)
        self.save()

    def extend(self, rows, echo: bool = True) -> None:
        for r in rows:
            self.append(r, echo)

    def save(self) -> None:
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_text(json.dumps({"title": self.title, "device": device_label(),
                                                   "rows": list(self)}, indent=1, default=str))


def bench_args(doc: str, argv=None, sections: tuple[str, ...] = (), timeout_s: float = 180.0, extra=None):
    """The common command line: --out, --smoke, --only, --cases (contender children), and the
    per-contender time budget; ``extra(parser)`` adds a script's own options."""
    import argparse
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--out", default=None, help="folder for the JSON tables (rewritten after every row)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, TRITON_INTERPRET=1), seconds")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated sections to run, in this order (default: {','.join(sections)})")
    ap.add_argument("--cases", default=None, help="(contender children) the cases to run, comma-separated")
    ap.add_argument("--contender-timeout", type=float, default=timeout_s,
                    help="seconds each public contender (its own child process) may take in all")
    if extra:
        extra(ap)
    return ap.parse_args(argv)


def run_sections(sections: dict[str, Callable[[], object]], only: str | None, default: tuple[str, ...]) -> None:
    """Run the named sections in order; a failing section prints its traceback and the next one
    still runs. Unknown names stop the run at once (a typo must not cost a GPU call)."""
    import signal
    import traceback
    names = [s for s in (only.split(",") if only else default) if s]
    bad = [s for s in names if s not in sections and s not in COMMON_SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {bad}; choose from {list(sections)}")
    signal.signal(signal.SIGTERM, _on_term)  # `timeout` must take a contender child down with us
    t0 = time.perf_counter()
    for name in names:
        if name not in sections:  # a common section this op does not have (one command line for all ops)
            print(f"\n# section {name}: none in this script", flush=True)
            continue
        print(f"\n# section {name} ({time.perf_counter() - t0:.0f} s since start)", flush=True)
        try:
            sections[name]()
        except Exception:  # noqa: BLE001 - one failing section must not hide the others
            print(f"section {name} FAILED:\n{traceback.format_exc()}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"\n# done ({time.perf_counter() - t0:.0f} s)", flush=True)


COMMON_SECTIONS = ("timing", "decode", "compile", "correctness", "stability")
_CHILD: list = [None]  # the contender child process running now, if any


def _on_term(signum, frame):
    """SIGTERM (e.g. from `timeout`): kill the contender child's process group, then exit."""
    import signal
    if _CHILD[0] is not None and _CHILD[0].poll() is None:
        os.killpg(_CHILD[0].pid, signal.SIGKILL)
    print("\n# terminated (SIGTERM): the JSON tables hold every row printed above", flush=True)
    os._exit(143)


def table_path(out: str | None, op: str, name: str) -> str | None:
    return os.path.join(out, f"{op}_{name}.json") if out else None


DONE = "#case-done "  # a contender child prints this line after each case it finished


def case_done(case: str) -> None:
    print(f"{DONE}{case}", flush=True)


def run_contender(op: str, section: str, cases: list[str], table: Table, args, base: Callable[[str], dict]) -> None:
    """Run ``python -m kernels.<op>.bench --only <section> --cases ...`` in a child process (its
    own session, killed on timeout) and add its rows to ``table``. An abort (e.g. an LLVM assertion
    inside Triton), a crash or a hang becomes a row naming the case and the reason; after a crash
    the child is started again on the cases left, within ``args.contender_timeout`` seconds in all.
    ``base(case)`` gives the identifying columns of a failure row."""
    import signal
    import subprocess
    import tempfile
    import threading
    deadline = time.perf_counter() + args.contender_timeout
    left = list(cases)
    root = str(Path(__file__).resolve().parent.parent)
    while left:
        budget = deadline - time.perf_counter()
        if budget <= 1:
            table.extend({**base(c), "impl": section, "status": "skipped: contender time budget spent"} for c in left)
            return
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", f"kernels.{op}.bench", "--only", section, "--cases", ",".join(left),
                   "--out", tmp] + (["--smoke"] if args.smoke else [])
            proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1, start_new_session=True)
            _CHILD[0] = proc
            done, tail = [], []

            def pump(proc=proc, done=done, tail=tail):
                for line in proc.stdout:
                    if line.startswith(DONE):
                        done.append(line[len(DONE):].strip())
                        continue
                    tail.append(line.rstrip())
                    del tail[:-40]
                    print("    " + line, end="", flush=True)
            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=budget)
                why = None if rc == 0 else _death(rc, tail)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its compilers
                proc.wait()
                why = f"timeout: no result within {budget:.0f} s (first call / autotune included)"
            reader.join(5)
            _CHILD[0] = None
            f = Path(table_path(tmp, op, section))
            if f.exists():
                table.extend(json.loads(f.read_text())["rows"], echo=False)  # already printed by the child
        left = [c for c in left if c not in done]
        if why is None:
            if left:
                table.extend({**base(c), "impl": section, "status": "not run (child exited early)"} for c in left)
            return
        if left:
            table.append({**base(left[0]), "impl": section, "status": why[:300]})
            left = left[1:]  # the case in progress when the child died; the others get a new child
            if why.startswith("timeout"):
                table.extend({**base(c), "impl": section, "status": "skipped after the timeout"} for c in left)
                return


def _death(rc: int, tail: list[str]) -> str:
    """A short reason from a dead child's exit status and its last lines of output."""
    import signal
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
    keys = ("Assertion", "Error", "error", "Aborted", "Segmentation")
    hint = next((ln.strip() for ln in reversed(tail) if any(k in ln for k in keys)), tail[-1] if tail else "")
    return f"crashed ({how}): {hint[:240]}"


def contender_cases(args, default: list[str]) -> list[str]:
    return args.cases.split(",") if args.cases else default
