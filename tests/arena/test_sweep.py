"""Sweeps on the local executor: records written once, resuming after a kill, failed runs
skipped or retried, dead workers restarted, one GPU per worker. Every run is a real worker
process training a tiny model for 4 steps (most of a worker's ~5 s is importing torch)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arena import sweep
from arena.config import RunConfig
from arena.records import Record
from arena.registry import ConfigError, UnknownNameError
from arena.store import Store, load
from arena.sweep import RAY_MISSING, run_sweep, visible_gpus
from tests.arena.tiny import tiny

REPO = Path(__file__).resolve().parents[2]




def record_files(results: Path) -> list[Path]:
    return sorted((results / "records" / "train").glob("*.json"))


def assert_each_run_once(results: Path, configs: list[RunConfig]) -> list[Record]:
    """Exactly one record file per run, each a whole record, and ``load`` sees just those."""
    files = [p for p in record_files(results) if not p.name.startswith(".")]
    records = [Record.from_json(p.read_bytes()) for p in files]  # every file parses
    assert sorted(r.run_id for r in records) == sorted(c.run_id for c in configs)
    assert all(p.name.endswith(".1.json") for p in files), [p.name for p in files]
    frame = load(results)
    assert sorted(frame["run_id"]) == sorted(c.run_id for c in configs)
    return records


@pytest.fixture
def no_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


# --- planning and errors (no worker starts) --------------------------------------------------


def test_duplicate_run_ids_are_an_error_naming_them(tmp_path):
    with pytest.raises(ConfigError, match=tiny(1).run_id):
        run_sweep([tiny(0), tiny(1), tiny(1, progress=True)], results=str(tmp_path), progress=False)


def test_unknown_executor_names_the_valid_ones(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'ray'.*Valid: local, ray"):
        run_sweep([tiny(0)], results=str(tmp_path), executor="rey")


def test_missing_ray_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=RAY_MISSING.replace("[", r"\[").replace("]", r"\]")):
        run_sweep([tiny(0)], results=str(tmp_path), executor="ray")


def test_sweep_module_does_not_import_torch():
    code = "import sys, arena.sweep, arena.worker; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.parametrize("env, gpus", [("", []), ("0,2", ["0", "2"]), ("1,-1,0", ["1"]),
                                       ("GPU-3f2a,GPU-77b1", ["GPU-3f2a", "GPU-77b1"])])
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, env, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == gpus
    assert sweep.default_workers() == (len(gpus) or 1)


# --- the worker ------------------------------------------------------------------------------


def test_worker_writes_one_record_and_never_a_second_ok_one(tmp_path, no_gpus):
    from arena import worker

    cfg = tiny(0)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    argv = ["--results", str(tmp_path / "results"), "--config", str(tmp_path / "config.json")]
    assert worker.main(argv) == 0
    assert Store(tmp_path / "results").status_of(cfg.run_id) == "ok"
    # Ray re-runs a task whose process died after writing: the attempt count makes that a no-op
    assert worker.run_one(cfg.to_dict(), str(tmp_path / "results"), attempts_before=0) == "ok"
    assert worker.main(argv) == worker.EXIT_NO_RECORD  # a second ok record is refused
    assert len(record_files(tmp_path / "results")) == 1


# --- the local executor ----------------------------------------------------------------------


def test_local_sweep_writes_each_record_once_one_gpu_per_worker_then_skips(tmp_path, monkeypatch):
    # Two "GPUs" on a CPU machine: the workers are pinned as on a GPU host, torch in them finds
    # no CUDA device and trains on the CPU, so this checks the scheduling, not CUDA.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    in_use, pinned = set(), []
    launch, collect = sweep._launch, sweep._collect

    def tracked_launch(run, store, gpu, threads):
        assert gpu not in in_use, f"GPU {gpu} handed to a second concurrent run"
        in_use.add(gpu)
        pinned.append(gpu)
        return launch(run, store, gpu, threads)

    def tracked_collect(run, returncode, output, gpu, *args):
        in_use.discard(gpu)
        return collect(run, returncode, output, gpu, *args)

    monkeypatch.setattr(sweep, "_launch", tracked_launch)
    monkeypatch.setattr(sweep, "_collect", tracked_collect)
    configs = [tiny(s) for s in range(3)]
    summary = run_sweep(configs, results=str(tmp_path), progress=False)
    assert (summary.ran, summary.ok, summary.failed) == (3, 3, 0), summary
    assert sorted(pinned[:2]) == ["0", "1"] and pinned[2] in ("0", "1")
    records = assert_each_run_once(tmp_path, configs)
    assert all(r.status == "ok" and r.metrics for r in records)

    again = run_sweep(configs, results=str(tmp_path), progress=False)
    assert (again.ran, again.skipped_ok, again.skipped_failed) == (0, 3, 0), again
    assert again.statuses == {c.run_id: "ok" for c in configs}
    assert len(record_files(tmp_path)) == 3


def test_failed_run_is_skipped_then_retried_keeping_the_old_attempt(tmp_path, no_gpus):
    bad = tiny(0, batch_size=128)  # more than the 64 training examples: the runner raises
    first = run_sweep([bad], results=str(tmp_path), progress=False)
    assert (first.ran, first.failed) == (1, 1), first
    store = Store(tmp_path)
    assert store.status_of(bad.run_id) == "failed"
    assert "batch_size=128 exceeds" in store.attempts(bad.run_id)[0].error

    rerun = run_sweep([bad], results=str(tmp_path), progress=False)
    assert (rerun.ran, rerun.skipped_failed) == (0, 1), rerun

    retry = run_sweep([bad], results=str(tmp_path), retry_failed=True, progress=False)
    assert (retry.ran, retry.retried, retry.failed) == (1, 1, 1), retry
    assert [r.status for r in store.attempts(bad.run_id)] == ["failed", "failed"]  # attempt 1 kept


SWEEP_SCRIPT = textwrap.dedent("""
    import json, sys
    from arena.config import RunConfig
    from arena.sweep import run_sweep
    configs = [RunConfig.from_dict(d) for d in json.load(open(sys.argv[1]))]
    print(run_sweep(configs, results=sys.argv[2], workers=1, progress=False))
""")


@pytest.mark.slow
def test_sweep_resumes_after_the_whole_process_group_is_killed(tmp_path, no_gpus):
    configs = [tiny(s) for s in range(4)]
    (tmp_path / "configs.json").write_text(json.dumps([c.to_dict() for c in configs]))
    (tmp_path / "sweep.py").write_text(SWEEP_SCRIPT)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "sweep.py"), str(tmp_path / "configs.json"),
                             str(results)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not record_files(results) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, mid-run
        except ProcessLookupError:  # it had ended already: the assertion below says how
            pass
        out = proc.communicate(timeout=60)[0].decode()
    written = len(record_files(results))
    assert 1 <= written < 4, f"killed with {written} of 4 records written; output:\n{out}"

    summary = run_sweep(configs, results=str(results), workers=2, progress=False)
    assert (summary.skipped_ok, summary.ran, summary.ok) == (written, 4 - written, 4 - written), summary
    records = assert_each_run_once(results, configs)
    assert all(r.status == "ok" for r in records)


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_restarted_and_each_record_written_once(tmp_path, no_gpus, monkeypatch):
    launch, killed = sweep._launch, []

    def kill_first_worker(run, *args):
        proc, log = launch(run, *args)
        if not killed:  # still importing torch 0.5 s in: well before any record is written
            killed.append(run.run_id)
            time.sleep(0.5)
            proc.kill()
        return proc, log

    monkeypatch.setattr(sweep, "_launch", kill_first_worker)
    configs = [tiny(s) for s in range(2)]
    summary = run_sweep(configs, results=str(tmp_path), workers=2, progress=False)
    assert (summary.ran, summary.ok, summary.worker_restarts) == (2, 2, 1), summary
    assert_each_run_once(tmp_path, configs)


def test_a_worker_that_keeps_dying_ends_as_a_failed_record(tmp_path, no_gpus, monkeypatch):
    launch = sweep._launch

    def kill_at_once(*args):
        proc, log = launch(*args)
        proc.kill()
        return proc, log

    monkeypatch.setattr(sweep, "_launch", kill_at_once)
    cfg = tiny(0)
    summary = run_sweep([cfg], results=str(tmp_path), progress=False)
    assert (summary.ran, summary.failed, summary.worker_restarts) == (1, 1, 2), summary
    [record] = Store(tmp_path).attempts(cfg.run_id)
    assert record.status == "failed" and "killed by SIGKILL" in record.error and "3 times" in record.error
    assert RunConfig.from_dict(record.config).run_id == cfg.run_id
    assert (record.mixer, record.task, record.seed) == ("attention", "mqar", 0)
    again = run_sweep([cfg], results=str(tmp_path), progress=False)  # resuming skips it, as any failure
    assert again.skipped_failed == 1
