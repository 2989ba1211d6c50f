"""A sweep is a list of ``RunConfig``s handed to an executor.

    from arena.sweep import run_sweep
    summary = run_sweep([RunConfig.create("mqar", m, seed=s) for m in mixers for s in range(3)])
    summary = run_sweep(configs, executor="ray", address="auto")   # on a running Ray cluster

Resuming is free: a run is its ``run_id`` (config hash + seed), and a run whose latest record
is ``ok`` is skipped. A run whose latest record is ``failed`` / ``diverged`` / ``oom`` is
skipped too, unless ``retry_failed=True``; its new attempt is a new record and the old one
stays in the store. A sweep killed at any moment loses at most the runs in flight.

Executors:

- ``local`` (default): every run in its own ``python -m arena.worker`` process, ``workers`` at
  once. With CUDA, each worker sees exactly one GPU (``CUDA_VISIBLE_DEVICES``), handed out
  round robin from the free ones, so no two concurrent runs share a GPU; ``workers`` defaults
  to (and is capped at) the number of visible GPUs. On CPU it defaults to 1: one run at a time,
  torch using every core, so runs never fight over cores and a run's thread count (and with it
  its last bits) does not depend on the sweep's width. With ``workers=N > 1`` (CPU or GPU)
  each worker gets ``cores // N`` threads (``OMP_NUM_THREADS``, unless already set); CPU
  results are bit-identical between sweeps run with the same thread count. On GPUs they are
  bit-identical across workers, GPUs of one model and executors wherever the mixer's kernels
  are deterministic (``arena determinism MIXER`` checks; tuned Triton configs are cached on disk,
  so every worker runs the same ones). A worker that
  dies without writing a record (a signal, a segfault, the OOM killer) is started again, at
  most twice; after that the sweep writes a ``failed`` record with the worker's last output.
  A worker that wrote a record (even ``failed``) is never started again.
- ``ray``: the same runs as Ray tasks (one GPU each where the cluster has GPUs, else one CPU;
  ``max_retries=2`` for dead workers), against the cluster at ``address`` or a local Ray
  instance started for the sweep. The workers write the records, so on a cluster the results
  directory must be on a filesystem every node shares, and arena must be installed there.

The parent process never imports torch: it needs only ``cfg.run_id`` and ``cfg.to_dict()``
from the configs it is handed.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from arena.records import Record, environment_info, utc_now
from arena.registry import ConfigError, UnknownNameError, did_you_mean
from arena.store import Store

if TYPE_CHECKING:
    from arena.config import RunConfig

EXECUTORS = ("local", "ray")
MAX_WORKER_RESTARTS = 2  # a run's worker may die without a record this often and be started again
RAY_MISSING = "executor 'ray' needs Ray: pip install 'arena[ray]'"
_ARENA_ROOT = str(Path(__file__).resolve().parent.parent)  # workers import this very arena
_POLL_S = 0.05


@dataclasses.dataclass
class SweepSummary:
    """What a sweep did. ``ran == ok + failed``; ``statuses`` maps every run of the sweep
    (skipped ones too) to its latest status, ``None`` only for a run that never got a record."""

    executor: str
    run_ids: list[str]  # every run of the sweep, in the order given
    ran: int = 0  # runs this sweep started
    skipped_ok: int = 0  # already "ok" in the store
    skipped_failed: int = 0  # already failed / diverged / oom, and retry_failed was False
    ok: int = 0  # runs started here that ended "ok"
    failed: int = 0  # runs started here that ended failed / diverged / oom
    retried: int = 0  # previously failed runs started again (retry_failed=True)
    worker_restarts: int = 0  # worker processes that died without a record and were restarted
    statuses: dict[str, str | None] = dataclasses.field(default_factory=dict)
    wall_time_s: float = 0.0

    def __str__(self) -> str:
        return (f"sweep ({self.executor}): {len(self.run_ids)} runs, ran {self.ran} (ok {self.ok}, "
                f"failed {self.failed}, retried {self.retried}), skipped {self.skipped_ok} ok and "
                f"{self.skipped_failed} failed, {self.worker_restarts} worker restarts, "
                f"{self.wall_time_s:.1f} s")


@dataclasses.dataclass
class _Run:
    run_id: str
    config: dict
    attempts_before: int  # records of this run in the store when the sweep planned it
    deaths: int = 0  # worker processes that died without writing its record


def run_sweep(configs: list[RunConfig], results: str = "results", executor: str = "local",
              workers: int | None = None, address: str | None = None, retry_failed: bool = False,
              progress: bool = True) -> SweepSummary:
    """Run every config that the store at ``results`` does not already hold; see the module
    docstring for the executors. ``workers``: runs at once (local: default one per visible
    GPU, else 1; ray: CPUs of the local instance, ignored with ``address``). ``address``:
    a Ray cluster (``"auto"``, ``"ray://host:10001"``), ray executor only. Raises
    ``ConfigError`` on duplicate run ids, ``UnknownNameError`` on an unknown executor."""
    if executor not in EXECUTORS:
        raise UnknownNameError(did_you_mean(str(executor), EXECUTORS, "executor"))
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1 (or None for the default)")
    if address is not None and executor != "ray":
        raise ConfigError(f"address={address!r} is for executor 'ray'; executor {executor!r} runs here")
    ray = _import_ray() if executor == "ray" else None
    start = time.perf_counter()
    store = Store(results)
    summary, runs = _plan(configs, store, executor, retry_failed)
    bar = _progress_bar(summary, len(runs), progress)
    try:
        if runs and executor == "local":
            _run_local(runs, store, workers, summary, bar)
        elif runs:
            _run_ray(ray, runs, store, workers, address, summary, bar)
    finally:
        bar.close()
    summary.wall_time_s = time.perf_counter() - start
    return summary


def _plan(configs: list[RunConfig], store: Store, executor: str,
          retry_failed: bool) -> tuple[SweepSummary, list[_Run]]:
    """Which runs to start: those without a record, and failed ones when ``retry_failed``."""
    ids = [cfg.run_id for cfg in configs]
    repeated = sorted(run_id for run_id, n in collections.Counter(ids).items() if n > 1)
    if repeated:
        raise ConfigError(f"the sweep holds these runs more than once: {', '.join(repeated)}; a run "
                          f"(config + seed) may appear once, and optim.progress does not make a new one")
    summary = SweepSummary(executor=executor, run_ids=ids)
    runs = []
    for cfg, run_id in zip(configs, ids):
        status = store.status_of(run_id)
        summary.statuses[run_id] = status
        if status == "ok":
            summary.skipped_ok += 1
            continue
        if status is not None and not retry_failed:
            summary.skipped_failed += 1
            continue
        summary.retried += status is not None
        runs.append(_Run(run_id, cfg.to_dict(), attempts_before=len(store.attempts(run_id))))
    return summary, runs


def _progress_bar(summary: SweepSummary, total: int, progress: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"sweep ({summary.executor})", unit="run", dynamic_ncols=True,
               disable=not progress or total == 0)
    if progress and (summary.skipped_ok or summary.skipped_failed):
        hint = " (retry_failed=True runs failed ones again)" if summary.skipped_failed else ""
        tqdm.write(f"sweep: skipping {summary.skipped_ok} runs already ok and {summary.skipped_failed} "
                   f"already failed{hint}; {total} to run", file=sys.stderr)
    return bar


def _finish(summary: SweepSummary, run: _Run, status: str | None, bar) -> None:
    summary.ran += 1
    summary.statuses[run.run_id] = status
    if status == "ok":
        summary.ok += 1
    else:
        summary.failed += 1
    bar.set_postfix_str(f"ok={summary.ok} failed={summary.failed}", refresh=False)
    bar.update(1)


# --- GPUs, seen without importing torch ------------------------------------------------------


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: that
    variable's entries when set (CUDA stops at the first negative one), else torch's count if
    torch is already imported, else the GPUs ``nvidia-smi -L`` lists; [] without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        found = []
        for entry in (e.strip() for e in env.split(",")):
            if not entry or entry.startswith("-"):
                break
            found.append(entry)
        return found
    torch = sys.modules.get("torch")
    if torch is not None:
        return [str(i) for i in range(torch.cuda.device_count())]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True,
                                 timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    return [str(i) for i, _ in enumerate(l for l in listing.stdout.splitlines() if l.startswith("GPU "))]


def default_workers() -> int:
    """One worker per visible GPU; 1 on CPU (one run at a time using every core)."""
    return len(visible_gpus()) or 1


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- local: one worker process per run --------------------------------------------------------


def _run_local(runs: list[_Run], store: Store, workers: int | None, summary: SweepSummary, bar) -> None:
    needs_gpu = any(run.config.get("device", "auto") != "cpu" for run in runs)
    gpus = visible_gpus() if needs_gpu else []
    if gpus and workers is not None and workers > len(gpus):
        warnings.warn(f"workers={workers} but {len(gpus)} GPU(s) are visible; running {len(gpus)} at "
                      f"once, one per GPU", stacklevel=3)
    n = min(workers or len(gpus), len(gpus)) if gpus else (workers or 1)
    free: collections.deque = collections.deque(gpus[:n] if gpus else [None] * n)
    threads = None if n == 1 or "OMP_NUM_THREADS" in os.environ else max(1, _cpu_count() // n)
    queue = collections.deque(runs)
    running: dict[subprocess.Popen, tuple[_Run, str | None, object]] = {}
    try:
        while queue or running:
            while queue and free:
                run, gpu = queue.popleft(), free.popleft()
                proc, log = _launch(run, store, gpu, threads)
                running[proc] = (run, gpu, log)
            time.sleep(_POLL_S)
            for proc in [p for p in running if p.poll() is not None]:
                run, gpu, log = running.pop(proc)
                free.append(gpu)  # the GPU goes to the back: round robin over free ones
                _collect(run, proc.returncode, _tail(log), gpu, store, queue, summary, bar)
    finally:  # an exception or Ctrl-C here: stop the workers; their runs stay unrecorded
        for proc, (_, _, log) in running.items():
            _stop(proc)
            log.close()


def _launch(run: _Run, store: Store, gpu: str | None, threads: int | None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ARENA_ROOT, env.get("PYTHONPATH")]))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _tail) the worker's output, to explain a death
    proc = subprocess.Popen([sys.executable, "-m", "arena.worker", "--results", str(store.root)],
                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        proc.stdin.write(json.dumps(run.config).encode())
        proc.stdin.close()
    except BrokenPipeError:  # died at once: found by poll() like any other death
        pass
    return proc, log


def _collect(run: _Run, returncode: int, output: str, gpu: str | None, store: Store,
             queue: collections.deque, summary: SweepSummary, bar) -> None:
    """A worker ended: its record counts, whatever its exit code; no record means it died."""
    if len(store.attempts(run.run_id)) > run.attempts_before:
        _finish(summary, run, store.status_of(run.run_id), bar)
        return
    run.deaths += 1
    how = _exit_text(returncode)
    if run.deaths <= MAX_WORKER_RESTARTS:
        summary.worker_restarts += 1
        bar.write(f"sweep: worker for {run.run_id} {how} without a record; starting it again "
                  f"({run.deaths}/{MAX_WORKER_RESTARTS})", file=sys.stderr)
        queue.appendleft(run)
        return
    error = (f"the worker process {how} without writing a record, {run.deaths} times; "
             f"its last output:\n{output}")
    _finish(summary, run, _write_lost(store, run, error, gpu), bar)


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _write_lost(store: Store, run: _Run, error: str, gpu: str | None) -> str:
    """The record of a run whose workers kept dying: ``failed``, with why, so resuming skips it.
    Returns the run's status (``ok`` if another writer finished it meanwhile)."""
    from arena.store import DuplicateRecordError

    model, d = run.config.get("model", {}), run.config
    record = Record(
        run_id=run.run_id, kind="train", status="failed", task=d.get("task", {}).get("name", ""),
        mixer=model.get("mixer") or "+".join(model.get("pattern") or ()), impl="",
        device="cpu" if gpu is None else "cuda", seed=d.get("seed", 0), config=d, error=error,
        started_at=utc_now(), extra={"gpu": gpu} if gpu is not None else {}, **environment_info(),
    )
    try:
        store.write(record)
    except DuplicateRecordError:
        return "ok"
    return "failed"


def _tail(log, limit: int = 4000) -> str:
    try:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - limit))
        return log.read().decode(errors="replace")
    finally:
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- ray: one task per run ---------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError(RAY_MISSING) from err
    return ray


def _run_ray(ray, runs: list[_Run], store: Store, workers: int | None, address: str | None,
             summary: SweepSummary, bar) -> None:
    from arena.worker import run_one

    started = not ray.is_initialized()
    if started and address is not None:
        ray.init(address=address)
    elif started:
        ray.init(num_cpus=workers or default_workers(), include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=MAX_WORKER_RESTARTS)(run_one)
        results = str(store.root.resolve())  # the workers may run in another directory
        futures = {task.remote(run.config, results, run.attempts_before): run for run in runs}
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for future in done:
                run = futures[future]
                try:
                    status = ray.get(future)
                except ray.exceptions.RayError as err:  # the task raised, or its workers kept dying
                    if len(store.attempts(run.run_id)) > run.attempts_before:
                        status = store.status_of(run.run_id)
                    else:
                        status = _write_lost(store, run, f"the Ray task failed without a record: {err}", None)
                _finish(summary, run, status, bar)
    finally:
        if started:
            ray.shutdown()
