"""Every Triton launch of the Gated DeltaNet chunk kernels, at the mixer's d_model-1024 head
shape (K = 256, V = 512), compiles for sm_90 within the H100's shared memory: a config over it
fails only at its first launch on the GPU (OutOfResources, seen on an H100 before the state
passes dropped to two pipeline stages at K = 256). Compiles with Triton's own ptxas, on the CPU,
in a fresh process without TRITON_INTERPRET (the kernels must be decorated as compiled ones)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _run_check(*args: str, interpret: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-m", "kernels.sm90_check", *args], capture_output=True, text=True,
                          check=False, env=env, timeout=600)


def test_gated_delta_rule_kernels_fit_h100_shared_memory_at_k256():
    out = _run_check("gated_delta_rule", "--K", "256", "--V", "512")
    assert out.returncode == 0, out.stdout + out.stderr
    compiled = [line for line in out.stdout.splitlines() if line.startswith("ok ")]
    kernels = {line.split()[5] for line in compiled}  # ok, bytes, B, seconds, s, kernel
    # forward (kkt, solve, wu, h, o; the fused prep and ho) and backward (dv_local, dh, dqkwg, wy): all
    # eleven, every config
    assert len(kernels) == 11, out.stdout
    assert "0 over" in out.stdout


@pytest.mark.parametrize("op", ["ssd", "mlstm"])
def test_the_other_chunked_kernels_fit_at_the_mixers_shapes(op):
    out = _run_check(op)
    assert out.returncode == 0 and "0 over" in out.stdout, out.stdout + out.stderr


def test_refuses_to_run_under_the_interpreter():
    out = _run_check("gated_delta_rule", interpret=True)
    assert out.returncode != 0 and "without TRITON_INTERPRET" in out.stderr


def test_gated_delta_rule_kernels_fit_with_fp32_queries_and_keys():
    # q, k in fp32 with bf16 values (the op allows mixed dtypes): the state passes' fp32 tiles took
    # 246 KB of shared memory at three stages before blocks.state_pass_stages counted bytes
    out = _run_check("gated_delta_rule", "--K", "128", "--V", "256", "--qk-dtype", "fp32")
    assert out.returncode == 0 and "0 over" in out.stdout, out.stdout + out.stderr
