"""MQAR as Zoology defines it: structure, ranges, power-law placement, seeds, validation."""
from __future__ import annotations

import math

import pytest
import torch

from tasks import IGNORE, build_task
from tasks.recall import mqar, sample_distinct, weighted_without_replacement

V, L, N_KV = 128, 64, 8


@pytest.fixture(scope="module")
def data():
    return mqar(V, L, N_KV, num_examples=500, seed=3)


def test_shapes_and_context_layout(data):
    x, y = data
    assert x.shape == y.shape == (500, L) and x.dtype == y.dtype == torch.long
    keys, values = x[:, 0:2 * N_KV:2], x[:, 1:2 * N_KV:2]
    assert ((keys >= 1) & (keys < V // 2)).all(), "keys come from [1, V/2)"
    assert ((values >= V // 2) & (values < V)).all(), "values come from [V/2, V)"
    assert (keys.sort(1).values.diff(dim=1) > 0).all(), "keys are distinct within an example"
    assert (values.sort(1).values.diff(dim=1) > 0).all(), "values are distinct within an example"


def test_each_key_queried_once_at_even_offsets_with_its_value_as_label(data):
    x, y = data
    context = 2 * N_KV
    query = x[:, context:]
    assert ((query == 0) | (query < V // 2)).all(), "query region holds keys and filler only"
    for i in range(0, 500, 37):
        keys, values = x[i, 0:context:2], x[i, 1:context:2]
        pos = (query[i] != 0).nonzero().flatten()
        assert sorted(query[i, pos].tolist()) == sorted(keys.tolist()), "each key exactly once"
        assert (pos % 2 == 0).all(), "queries sit at even offsets of the query region"
        scored = (y[i] != IGNORE).nonzero().flatten()
        assert torch.equal(scored, pos + context), "labels sit at the query keys' own positions"
        value_of = dict(zip(keys.tolist(), values.tolist()))
        assert [value_of[k] for k in x[i, scored].tolist()] == y[i, scored].tolist()
    assert ((y != IGNORE).sum(1) == N_KV).all()
    assert (y[:, :context] == IGNORE).all()


def test_query_slots_follow_the_power_law():
    """One pair: the slot g is drawn with probability proportional to (g + 1) ** (a - 1)."""
    a, n = 0.01, 40_000
    x, _ = mqar(V, 24, 1, num_examples=n, power_a=a, seed=0)
    slot = ((x[:, 2:] != 0).float().argmax(1) // 2)
    p = torch.arange(1, 12, dtype=torch.float64) ** (a - 1)
    p = p / p.sum()
    freq = torch.bincount(slot, minlength=11).double() / n
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 5 * sigma).all(), f"slot frequencies {freq} vs {p}"


def test_weighted_draws_are_distinct_and_favour_heavy_items():
    g = torch.Generator().manual_seed(0)
    log_p = torch.tensor([0.0, -1.0, -2.0, -30.0])
    idx = weighted_without_replacement(log_p, 2000, 3, g)
    assert (idx.sort(1).values.diff(dim=1) > 0).all()
    assert (idx == 3).float().mean() < 1e-3  # weight e^-30 almost never drawn
    first = torch.bincount(idx[:, 0], minlength=4).double() / 2000
    expect = log_p.exp() / log_p.exp().sum()
    assert (first - expect).abs().max() < 0.05


def test_sample_distinct_is_uniform_and_distinct():
    g = torch.Generator().manual_seed(0)
    s = sample_distinct(20_000, 5, 15, 3, g)
    assert ((s >= 5) & (s < 15)).all() and (s.sort(1).values.diff(dim=1) > 0).all()
    counts = torch.bincount(s.flatten() - 5, minlength=10).double()
    assert (counts / counts.sum() - 0.1).abs().max() < 0.01
    first = torch.bincount(s[:, 0] - 5, minlength=10).double() / 20_000  # order is uniform too
    assert (first - 0.1).abs().max() < 0.015


def test_random_non_queries_only_replaces_filler():
    x0, y0 = mqar(V, L, N_KV, 50, seed=1)
    x1, y1 = mqar(V, L, N_KV, 50, random_non_queries=True, seed=1)
    assert torch.equal(y0, y1)
    kept = x0 != 0
    assert torch.equal(x1[kept], x0[kept])
    assert (x1[~kept] != 0).float().mean() > 0.9


def test_seeds_reproduce_and_differ():
    a, b = mqar(V, L, N_KV, 20, seed=7), mqar(V, L, N_KV, 20, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], mqar(V, L, N_KV, 20, seed=8)[0])


def test_task_train_and_test_are_disjoint():
    task = build_task("mqar", vocab_size=V, seq_len=L, num_kv_pairs=N_KV, num_train_examples=2000,
                      num_test_examples=300)
    data = task.build(seed=0)
    train = {tuple(r) for r in data.train.inputs.tolist()}
    assert not any(tuple(r) in train for r in data.evals[""].inputs.tolist())
    seeds_0, seeds_1 = task.build(0), task.build(1)
    assert not torch.equal(seeds_0.train.inputs, seeds_1.train.inputs)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(vocab_size=128, seq_len=63, num_kv_pairs=4), "must be even"),
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=4), "must exceed seq_len"),
        (dict(vocab_size=128, seq_len=64, num_kv_pairs=17), "4 \\* num_kv_pairs=68 must be <= seq_len=64"),
    ],
    ids=["odd-length", "small-vocab", "too-many-pairs"],
)
def test_bad_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        mqar(num_examples=1, **args)


def test_largest_zoology_setting_fits():
    x, y = mqar(8192, 256, 64, num_examples=4)  # 4 * 64 == 256: the boundary is allowed
    assert ((y != IGNORE).sum(1) == 64).all() and not math.isnan(x.float().mean().item())
