"""The Ray executor gives the records the local one gives: same runs, statuses, metrics and
curves, bit for bit (CPU training is deterministic at a fixed thread count).

Ray runs in its own network namespace (``unshare -n`` with only loopback up): this machine
forbids traffic to non-loopback addresses, and Ray contacts the host's own address even when
started with ``_node_ip_address="127.0.0.1"``. Skipped when Ray is not installed or the
namespace cannot be made (it needs root or user namespaces).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from arena.store import Store
from arena.sweep import run_sweep
from tests.arena.tiny import tiny

REPO = Path(__file__).resolve().parents[2]
RAY_TIMEOUT_S = 240




def _netns_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) for a private network namespace"
    try:
        done = subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"unshare -n failed: {err}"
    if done.returncode != 0:
        return f"unshare -n is not permitted here: {done.stderr.strip()}"
    return None


RAY_SCRIPT = textwrap.dedent("""
    import json, sys
    from arena.config import RunConfig
    from arena.sweep import run_sweep
    configs = [RunConfig.from_dict(d) for d in json.load(open(sys.argv[1]))]
    summary = run_sweep(configs, results=sys.argv[2], executor="ray", workers=2, progress=False)
    print("SUMMARY", json.dumps({"ran": summary.ran, "ok": summary.ok, "failed": summary.failed}))
""")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray is not installed: pip install 'arena[ray]'")
def test_ray_and_local_executors_write_identical_records(tmp_path, monkeypatch):
    problem = _netns_problem()
    if problem:
        pytest.skip(f"Ray needs a private network namespace on this machine; {problem}")
    # One thread per run in both executors (Ray gives a num_cpus=1 task OMP_NUM_THREADS=1), so
    # the float reductions, and hence the numbers, are the same.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    configs = [tiny(0), tiny(1, lr=3e-3)]
    (tmp_path / "configs.json").write_text(json.dumps([c.to_dict() for c in configs]))
    (tmp_path / "ray_sweep.py").write_text(RAY_SCRIPT)
    # Ray's session files go to a short private directory (its socket paths must stay under
    # 107 characters, too short for pytest's tmp_path), removed afterwards.
    ray_tmp = tempfile.mkdtemp(prefix="arena-ray-")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
    script = f"ip link set lo up; exec {sys.executable} {tmp_path / 'ray_sweep.py'} " \
             f"{tmp_path / 'configs.json'} {tmp_path / 'ray'}"
    ray_proc = subprocess.Popen(["unshare", "-n", "sh", "-c", script], cwd=REPO, env=env,
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:  # the local sweep runs meanwhile
        local = run_sweep(configs, results=str(tmp_path / "local"), workers=2, progress=False)
        out = ray_proc.communicate(timeout=RAY_TIMEOUT_S)[0].decode()
    finally:
        if ray_proc.poll() is None:  # Ray did not finish in time: take down all it started
            os.killpg(ray_proc.pid, signal.SIGKILL)
            ray_proc.communicate()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert ray_proc.returncode == 0, f"the Ray sweep failed:\n{out[-6000:]}"
    assert 'SUMMARY {"ran": 2, "ok": 2, "failed": 0}' in out, out[-6000:]
    assert (local.ran, local.ok) == (2, 2), local

    def view(results: Path) -> dict:
        return {r.run_id: (r.status, r.metrics, r.curve) for r in Store(results).records("train")}

    from_ray, from_local = view(tmp_path / "ray"), view(tmp_path / "local")
    assert sorted(from_ray) == sorted(c.run_id for c in configs)
    assert from_ray == from_local
