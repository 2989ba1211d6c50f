"""Wall-clock benches of the CPU paths (pytest-benchmark): the reference mixers and the data
generators. Reported, never gated in CI: a shared 2-core runner's timings move by 2x with its
neighbours' load, so a threshold there would fail at random. On a dedicated, quiet runner, gate
with ``make bench-cpu BENCH_FLAGS="--benchmark-compare --benchmark-compare-fail=median:10%"``.

    make bench-cpu                     # run and compare with the last saved run (report only)
    make bench-cpu-save                # save this machine's numbers as the new reference
"""
from __future__ import annotations

import pytest
import torch

from architectures import MIXERS, build_mixer
from tasks.recall import mqar

torch.set_num_threads(2)
D_MODEL, T = 64, 512


@pytest.mark.parametrize("name", MIXERS.names())
def test_reference_forward(benchmark, name):
    torch.manual_seed(0)
    mixer = build_mixer(name, D_MODEL, impl="reference").eval()
    x = torch.randn(1, T, D_MODEL)
    with torch.no_grad():
        benchmark.pedantic(mixer, args=(x,), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("name", MIXERS.names())
def test_reference_forward_backward(benchmark, name):
    torch.manual_seed(0)
    mixer = build_mixer(name, D_MODEL, impl="reference")
    x = torch.randn(1, T, D_MODEL, requires_grad=True)

    def step():
        y, _ = mixer(x)
        y.sum().backward()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


def test_mqar_generation(benchmark):
    benchmark.pedantic(mqar, kwargs=dict(vocab_size=8192, seq_len=256, num_kv_pairs=16, num_examples=10_000),
                       rounds=3, warmup_rounds=1)
