"""Compile every Triton launch of an op for a Hopper GPU (sm_90) on a machine without one.

``python -m kernels.sm90_check gated_delta_rule --K 256 --V 512 [--dtype fp32]`` (or ``ssd``,
``mlstm``) runs the op's forward and backward on CPU tensors with every kernel launch
intercepted: each launch (each autotune config that survives pruning) is compiled for sm_90 by
Triton's own compiler and ptxas, nothing runs, and the shared memory each compiled config asks
for is checked against the H100's per-block limit; each config's compile seconds are printed
(the first-call cost on a GPU machine, less the tuning benchmark). A config over the limit fails
on the GPU with ``OutOfResources`` at its first launch (seen on an H100: Gated DeltaNet at
K = 256); this finds it on a CPU, in CI. Register counts need the GPU driver and are not checked.

It must run in a fresh process without ``TRITON_INTERPRET`` (the kernels have to be decorated as
compiled kernels, with all their autotune configs); it sets the variable itself afterwards, only
so that the ops' device checks accept CPU tensors.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

H100_SHARED_BYTES = 232448  # cudaDevAttrMaxSharedMemoryPerBlockOptin on an H100 (227 KiB)


@dataclass
class Compiled:
    kernel: str
    config: str
    shared: int
    seconds: float  # compile time here (ptxas included); 0 when Triton's cache already held it

    @property
    def fits(self) -> bool:
        return self.shared <= H100_SHARED_BYTES


class _CompileOnlyDriver:
    """The parts of Triton's CUDA driver that compiling needs, for a machine without a GPU."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", capability, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def intercept(capability: int = 90) -> list[Compiled]:
    """Make every Triton launch compile (each surviving autotune config) instead of running;
    the returned list fills up as launches happen."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("kernels.sm90_check: run it in a process without TRITON_INTERPRET=1 "
                           "(the kernels must be compiled kernels, not interpreted ones)")
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    driver.set_active(_CompileOnlyDriver(capability))
    seen: list[Compiled] = []
    compile_run = JITFunction.run

    def tuned_run(self, *args, **kwargs):
        kwargs.pop("warmup", None)
        self.nargs = dict(zip(self.arg_names, args))
        for cfg in self.prune_configs(kwargs):
            JITFunction.run(self.fn, *args, warmup=True, **kwargs, **cfg.all_kwargs(), _arena_config=str(cfg))
        self.nargs = None

    def compile_only_run(self, *args, grid, warmup, _arena_config=None, **kwargs):
        t0 = time.perf_counter()
        kernel = compile_run(self, *args, grid=grid, warmup=True, **kwargs)
        seen.append(Compiled(self.fn.__name__, _arena_config or "single config", kernel.metadata.shared,
                             time.perf_counter() - t0))
        return kernel

    JITFunction.run = compile_only_run
    Autotuner.run = tuned_run
    return seen


def _dtype(name: str):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _accept_cpu_tensors() -> None:
    """After the kernels are imported (decorated as compiled kernels): let the ops' device
    checks accept CPU tensors (``kernels.triton_utils.check_device``). Nothing runs on them."""
    os.environ["TRITON_INTERPRET"] = "1"


def _gated_delta_rule(a) -> None:
    import torch
    import torch.nn.functional as F

    from kernels.gated_delta_rule.chunk import chunk_gated_delta_rule, fused_prepare
    _accept_cpu_tensors()
    B, T, H, K, V = 1, 2 * a.chunk, 1, a.K, a.V
    dt = _dtype(a.dtype)
    qk = _dtype(a.qk_dtype or a.dtype)
    q, k = (F.normalize(torch.randn(B, T, H, K), dim=-1).to(qk).requires_grad_() for _ in range(2))
    v = torch.randn(B, T, H, V, dtype=dt, requires_grad=True)
    g = torch.full((B, T, H), -0.1, dtype=dt, requires_grad=True)
    beta = torch.full((B, T, H), 0.5, dtype=dt, requires_grad=True)
    h0 = torch.zeros(B, H, K, V, requires_grad=True)
    with torch.no_grad():  # the two-launch forward (the fused one runs below, with the backward)
        chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=a.chunk, initial_state=h0, fused_forward=False)
        with fused_prepare(True):  # and fwd_prep, not yet the default
            chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=a.chunk, initial_state=h0)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=a.chunk, initial_state=h0, fused_forward=True)
    (o.float().sum() + s.sum()).backward()


def _ssd(a) -> None:
    """Mamba-2's chunked SSD: N = --K (d_state), P = --V (headdim), x, B, C in --dtype."""
    import torch

    from kernels.ssd.bench import make
    from kernels.ssd.chunk import chunk_ssd
    _accept_cpu_tensors()
    t = make(1, 2 * a.chunk, 2, 1, a.V, a.K, _dtype(a.dtype), dev="cpu")
    args = [t[n] for n in ("x", "dt", "A", "B", "C", "D")]
    with torch.no_grad():  # the two-kernel forward (the fused one runs below, with the backward)
        chunk_ssd(*args, chunk_size=a.chunk, initial_state=t["h0"], fused_forward=False)
    y, s = chunk_ssd(*args, chunk_size=a.chunk, initial_state=t["h0"], fused_forward=True)
    (y.float().sum() + s.sum()).backward()


def _mlstm(a) -> None:
    """The chunkwise mLSTM: q, k, v in --dtype, K = --K, V = --V, with an initial state."""
    import torch

    from kernels.mlstm.chunk import chunk_mlstm, fused_forward_fits
    _accept_cpu_tensors()
    dt, T = _dtype(a.dtype), 2 * a.chunk
    fused = fused_forward_fits(a.K, a.chunk, dt)  # where the fused walk does not fit, chunk_mlstm refuses it
    q, k = (torch.randn(1, T, 2, a.K, dtype=dt, requires_grad=True) for _ in range(2))
    v = torch.randn(1, T, 2, a.V, dtype=dt, requires_grad=True)
    i, f = (torch.randn(1, T, 2, dtype=dt, requires_grad=True) for _ in range(2))
    state = (torch.zeros(1, 2, a.K, a.V, requires_grad=True), torch.zeros(1, 2, a.K, requires_grad=True),
             torch.zeros(1, 2, requires_grad=True))
    # training with the two passes (both state passes: sequential walks, chunk-parallel) and with the
    # fused walk where it fits (SAVE), and the fused walk without SAVE (inference)
    for kw in (dict(parallel_states=False), dict(parallel_states=True), dict(fused_forward=fused)):
        h, (C, n, m) = chunk_mlstm(q, k, v, i, f, chunk_size=a.chunk, initial_state=state, **kw)
        (h.float().sum() + C.sum() + n.sum() + m.sum()).backward()
    if fused:
        with torch.no_grad():
            chunk_mlstm(q, k, v, i, f, chunk_size=a.chunk, initial_state=state, fused_forward=True)


# op: (runner, defaults: the mixers' chunk and head sizes at d_model 1024 or the kernel bench's)
OPS = {"gated_delta_rule": (_gated_delta_rule, {"chunk": 64, "K": 128, "V": 128}),
       "ssd": (_ssd, {"chunk": 256, "K": 128, "V": 64}),
       "mlstm": (_mlstm, {"chunk": 64, "K": 128, "V": 256})}


def check(op: str, argv: list[str]) -> list[Compiled]:
    p = argparse.ArgumentParser(prog=f"kernels.sm90_check {op}")
    runner, defaults = OPS[op]
    p.add_argument("--K", type=int, default=defaults["K"], help="key head dim (ssd: d_state N)")
    p.add_argument("--V", type=int, default=defaults["V"], help="value head dim (ssd: headdim P)")
    p.add_argument("--chunk", type=int, default=defaults["chunk"])
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--qk-dtype", choices=["bf16", "fp16", "fp32"],
                   help="gated_delta_rule's q and k alone (default --dtype)")
    a = p.parse_args(argv)
    seen = intercept()
    runner(a)
    return seen


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in OPS:
        print(f"usage: python -m kernels.sm90_check {{{','.join(OPS)}}} [--K N --V N --chunk N --dtype D]",
              file=sys.stderr)
        return 2
    rows = check(argv[0], argv[1:])
    if not rows:
        print("no Triton launch was intercepted: were the kernels imported before the check?", file=sys.stderr)
        return 1
    for r in rows:
        print(f"{'ok  ' if r.fits else 'OVER'} {r.shared:>7d} B  {r.seconds:6.1f} s  {r.kernel}  [{r.config}]",
              flush=True)
    over = [r for r in rows if not r.fits]
    print(f"{len(rows)} compiled for sm_90 in {sum(r.seconds for r in rows):.1f} s, {len(over)} over the "
          f"{H100_SHARED_BYTES} B shared-memory limit")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
