"""Host time of each decode step, the kernel launch itself left out: ``python -m kernels.step_host``.

At batch 1 a decode step's GPU work is a few microseconds, so the Python around the launch (input
checks, allocations, launch-config arithmetic) can bound its latency. This runs every op's one-token
step, in place, on CPU tensors under the Triton interpreter with every ``*_kernel`` of the step's
module replaced by a launcher that does nothing, and prints the best of 5 timeit runs of 2000 calls.
It measures the wrapper alone; the launch's own cost (Triton's argument binding, the driver call)
and the GPU time come on top, and only the benches' ``decode`` rows on a GPU show those.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"   # before the kernel modules are imported: CPU tensors pass

import importlib
import timeit

import torch
import triton


class _NoLaunch:
    """A kernel, plain or autotuned (``fn``, the tuned ``best_config``), whose launches do nothing."""
    best_config = triton.Config({}, num_warps=4)

    @property
    def fn(self):
        return self

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stub_kernels(module) -> None:
    for name in dir(module):
        if name.endswith("_kernel"):
            setattr(module, name, _NoLaunch())


def _steps():
    """(name, module, call) of each op's in-place step at a decode shape of the benches, B = 1."""
    r = torch.randn
    gdn = (r(1, 16, 128), r(1, 16, 128), r(1, 16, 128), -r(1, 16).abs(), r(1, 16).sigmoid())
    s_gdn = torch.zeros(1, 16, 128, 128)
    ssd = (r(1, 64, 64), r(1, 64).exp(), -r(64).abs(), r(1, 1, 128), r(1, 1, 128))
    s_ssd, d_ssd = torch.zeros(1, 64, 64, 128), r(64)
    ml = (r(1, 4, 128), r(1, 4, 128), r(1, 4, 256), r(1, 4), r(1, 4))
    s_ml = (torch.zeros(1, 4, 128, 256), torch.zeros(1, 4, 128), torch.zeros(1, 4))
    ss = (r(1, 2048), r(1, 2048), -r(2048, 16).abs(), r(1, 16), r(1, 16))
    s_ss, d_ss = torch.zeros(1, 2048, 16), r(2048)
    return [
        ("gated_delta_rule (H 16, K = V = 128)", "kernels.gated_delta_rule.recurrent",
         lambda m: m.fused_gated_delta_rule_step(*gdn, s_gdn, out_state=s_gdn)),
        ("ssd (H 64, P 64, N 128)", "kernels.ssd.recurrent",
         lambda m: m.fused_ssd_step(*ssd, s_ssd, d_ssd, out_state=s_ssd)),
        ("mlstm (H 4, K 128, V 256)", "kernels.mlstm.recurrent",
         lambda m: m.fused_mlstm_step(*ml, s_ml, out_state=s_ml)),
        ("selective_scan (D 2048, N 16)", "kernels.selective_scan.recurrent",
         lambda m: m.fused_selective_scan_step(*ss, s_ss, d_ss, ss[0], d_ss, True, out_state=s_ss)),
    ]


def main() -> None:
    torch.manual_seed(0)
    for name, module_name, call in _steps():
        module = importlib.import_module(module_name)
        _stub_kernels(module)
        call(module)
        best = min(timeit.repeat(lambda m=module, c=call: c(m), number=2000, repeat=5)) / 2000
        print(f"{name}: {best * 1e6:.1f} us host per step", flush=True)


if __name__ == "__main__":
    main()
