"""tasks.niah: the needle-in-a-haystack generator's promises (label positions, sub-vocabularies,
needle at the requested depth, the RULER variants), seeds, argument checks, the length x depth
grid and its metrics, and one short training run."""
from __future__ import annotations

import math

import pytest
import torch

from tasks import IGNORE, TrainConfig, build_task
from tasks.niah import (HAYSTACKS, NIAH, QUERY, SEP, VARIANTS, depth_key, eval_seed, grid_summary, niah,
                        niah_grid, niah_layout, niah_vocab)
from tasks.recall import train_seed

SMALL = dict(vocab_size=32, key_len=2, value_len=2)  # 9 tokens per sub-vocabulary
CASES = [(v, h) for v in VARIANTS for h in HAYSTACKS]
CASE_IDS = [f"{v}-{h}" for v, h in CASES]


def generate(variant="single", haystack="noise", seq_len=64, depth=None, n=64, seed=0, **kw):
    kw = {**SMALL, **kw}
    return niah(seq_len=seq_len, depth=depth, num_examples=n, variant=variant, haystack=haystack,
                seed=seed, **kw)


def pairs(row: torch.Tensor, haystack: str, lay, key_len: int) -> list[tuple[int, tuple, tuple]]:
    """(start, key, value) of every ``key SEP value`` in the context of one example: the needles
    (noise: SEP occurs nowhere else) or every pair of the kv grid."""
    ctx, n = row[:lay.context_len].tolist(), lay.needle_len
    if haystack == "noise":
        starts = [p - key_len for p, t in enumerate(ctx) if t == SEP]
    else:
        starts = list(range(lay.pad, lay.context_len, n))
    return [(s, tuple(ctx[s:s + key_len]), tuple(ctx[s + key_len + 1:s + n])) for s in starts]


def query_of(row: torch.Tensor, lay, key_len: int) -> tuple[tuple, tuple]:
    q = row[lay.context_len:].tolist()
    return tuple(q[1:1 + key_len]), tuple(q[-lay.answer_len:])


@pytest.mark.parametrize("variant,haystack", CASES, ids=CASE_IDS)
def test_labels_are_the_teacher_forced_answer(variant, haystack):
    x, y = generate(variant, haystack)
    lay = niah_layout(64, variant, haystack, None, SMALL["key_len"], SMALL["value_len"])
    assert x.shape == y.shape == (64, 64) and x.dtype == y.dtype == torch.long
    scored = torch.zeros(64, dtype=torch.bool)
    scored[lay.answer_start - 1:63] = True
    assert ((y != IGNORE) == scored).all()  # the same positions in every example
    assert torch.equal(y[:, scored], x[:, lay.answer_start:])  # next-token targets
    assert lay.answer_len == SMALL["value_len"] * (4 if variant == "multivalue" else 1)
    assert (x[:, lay.context_len] == QUERY).all() and (x[:, lay.answer_start - 1] == SEP).all()


@pytest.mark.parametrize("variant,haystack", CASES, ids=CASE_IDS)
def test_tokens_come_from_their_sub_vocabularies(variant, haystack):
    x, _ = generate(variant, haystack)
    voc, lay = niah_vocab(32), niah_layout(64, variant, haystack, None, 2, 2)
    assert voc.keys == range(3, 12) and voc.values == range(12, 21) and voc.filler == range(21, 32)
    assert 0 <= x.min() and x.max() < 32
    for row in x:
        found = pairs(row, haystack, lay, 2)
        assert all(set(k) <= set(voc.keys) and set(v) <= set(voc.values) for _, k, v in found)
        covered = {s + i for s, _, _ in found for i in range(lay.needle_len)}
        rest = [t for i, t in enumerate(row[:lay.context_len].tolist()) if i not in covered]
        if haystack == "noise":
            assert all(t in voc.filler for t in rest)
        else:
            assert rest == [voc.pad] * lay.pad
            assert not set(row[:lay.context_len].tolist()) & set(voc.filler)
        key, answer = query_of(row, lay, 2)
        assert set(key) <= set(voc.keys) and set(answer) <= set(voc.values)


@pytest.mark.parametrize("variant,haystack", CASES, ids=CASE_IDS)
def test_needles_follow_the_variant(variant, haystack):
    x, _ = generate(variant, haystack, depth=0.5)
    lay = niah_layout(64, variant, haystack, None, 2, 2)
    for row in x:
        key, answer = query_of(row, lay, 2)
        found = pairs(row, haystack, lay, 2)
        hits = [(s, v) for s, k, v in found if k == key]
        if variant == "multivalue":  # one key, four distinct values, answered in order of position
            assert len(hits) == 4 and len({v for _, v in hits}) == 4
            assert answer == sum((v for _, v in sorted(hits)), ())
        else:  # the queried key occurs once in the context (never in a kv distractor) and holds the answer
            assert len(hits) == 1 and hits[0][1] == answer
        if haystack == "noise":
            assert len(found) == lay.num_needles
            if variant == "multikey":
                assert len({k for _, k, _ in found}) == 4  # distinct keys: three distractors


@pytest.mark.parametrize("haystack", HAYSTACKS)
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_single_needle_sits_at_the_requested_depth(haystack, depth):
    x, _ = generate("single", haystack, seq_len=100, depth=depth, n=16)
    lay = niah_layout(100, "single", haystack, None, 2, 2)
    want = lay.pad + math.floor(depth * lay.num_units + 0.5) * lay.unit
    for row in x:
        key, _ = query_of(row, lay, 2)
        assert [s for s, k, _ in pairs(row, haystack, lay, 2) if k == key] == [want]
    if depth == 0.0:
        assert want == lay.pad
    if depth == 1.0:  # just before the query region
        assert want + lay.needle_len == lay.context_len


@pytest.mark.parametrize("haystack", HAYSTACKS)
@pytest.mark.parametrize("variant", ["multikey", "multivalue"])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_the_anchor_needle_sits_at_depth_among_the_others(variant, haystack, depth):
    """Depth counts haystack units before the anchor; at 0 / 1 it is the first / last needle."""
    x, _ = generate(variant, haystack, seq_len=128, depth=depth, n=32)
    lay = niah_layout(128, variant, haystack, None, 2, 2)
    units_before = math.floor(depth * lay.num_units + 0.5)
    for row in x:
        key, answer = query_of(row, lay, 2)
        found = pairs(row, haystack, lay, 2)
        if depth == 0.0:
            assert found[0][0] == lay.pad and found[0][1] == key
        if depth == 1.0:
            assert found[-1][0] == lay.context_len - lay.needle_len and found[-1][1] == key
        if variant == "multikey" and haystack == "kv":
            continue  # its distractor needles look like haystack pairs: the extremes are what can be told
        needles = [p for p in found if haystack == "noise" or p[1] == key]
        at_depth = [(k, v) for r, (s, k, v) in enumerate(needles)  # start = pad + units + needles before
                    if s - lay.pad - r * lay.needle_len == units_before * lay.unit]
        if variant == "multikey":  # the queried needle is at depth (a distractor may tie with it)
            assert (key, answer) in at_depth
        else:  # one of the key's needles is at depth
            assert key in [k for k, _ in at_depth]


@pytest.mark.parametrize("variant", VARIANTS)
def test_depths_of_one_seed_differ_only_in_needle_slots(variant):
    lay = niah_layout(64, variant, "noise", None, 2, 2)

    def needle_slots(x):
        slots = torch.zeros_like(x, dtype=torch.bool)
        for i, row in enumerate(x):
            for s, _, _ in pairs(row, "noise", lay, 2):
                slots[i, s:s + lay.needle_len] = True
        return slots

    (x0, y0), *rest = (generate(variant, "noise", depth=d, n=8) for d in (0.0, 0.5, 1.0))
    for x, y in rest:
        free = ~(needle_slots(x) | needle_slots(x0))  # includes the query region: same query, same answer
        assert torch.equal(x[free], x0[free]) and torch.equal(y, y0) and not torch.equal(x, x0)


def test_training_depths_are_uniform():
    x, _ = generate("single", "noise", seq_len=128, n=4000)
    lay = niah_layout(128, "single", "noise", None, 2, 2)
    depth = ((x[:, :lay.context_len] == SEP).nonzero()[:, 1] - 2).double() / lay.num_units
    assert abs(depth.mean().item() - 0.5) < 0.02 and abs(depth.var().item() - 1 / 12) < 0.01
    assert depth.min() == 0 and depth.max() == 1


@pytest.mark.parametrize("variant,haystack", CASES, ids=CASE_IDS)
def test_seeds(variant, haystack):
    a, b, c = (generate(variant, haystack, seed=s) for s in (3, 3, 4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_eval_seeds_are_never_training_seeds():
    trains = {train_seed(s) for s in range(100)}
    evals = {eval_seed(s, length) for s in range(100) for length in (32, 64, 128, 8192)}
    assert len(evals) == 400 and not trains & evals


@pytest.mark.parametrize("kw,match", [
    (dict(variant="multiquery"), "variant='multiquery'"),
    (dict(haystack="essay"), "haystack='essay'"),
    (dict(num_needles=2), "variant='single' has one needle"),
    (dict(variant="multikey", num_needles=1), "needs num_needles >= 2"),
    (dict(depth=1.5), "depth=1.5"),
    (dict(depth=-0.1), "depth=-0.1"),
    (dict(key_len=0), "key_len=0"),
    (dict(vocab_size=8), "vocab_size=8 is too small"),
    (dict(seq_len=8), "seq_len=8 cannot hold"),
    (dict(variant="multikey", num_needles=10, key_len=1, seq_len=200), "num_needles=10 distinct"),
    (dict(key_len=40), "overflow"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        generate(**kw)


def test_niah_grid_and_summary():
    metrics = {"exact_match@len=64,depth=0.5": 0.5, "exact_match@len=64,depth=0.0": 1.0,
               "exact_match@len=32,depth=1.0": 0.25, "accuracy@len=32,depth=1.0": 0.75,
               "exact_match@len=32": 9.0, "exact_match": 9.0, "loss": 1.0}
    assert niah_grid(metrics) == [{"length": 32, "depth": 1.0, "exact_match": 0.25},
                                  {"length": 64, "depth": 0.0, "exact_match": 1.0},
                                  {"length": 64, "depth": 0.5, "exact_match": 0.5}]
    assert niah_grid(metrics, "accuracy") == [{"length": 32, "depth": 1.0, "accuracy": 0.75}]
    assert grid_summary(metrics) == {"exact_match": 1.75 / 3, "exact_match@len=32": 0.25,
                                     "exact_match@len=64": 0.75, "accuracy": 0.75, "accuracy@len=32": 0.75}
    assert niah_grid({f"exact_match@{depth_key(128, 0.25)}": 0.0}) == [{"length": 128, "depth": 0.25,
                                                                          "exact_match": 0.0}]


def small_task(**kw) -> NIAH:
    cfg = dict(vocab_size=32, seq_len=32, key_len=2, value_len=2, num_train_examples=256, num_test_examples=8,
               eval_length_multipliers=(1, 2), eval_depths=(0.0, 0.5, 1.0))
    return build_task("niah", **{**cfg, **kw})  # a 2 x 3 grid


def test_build_makes_the_grid_without_leaking_test_examples():
    data = small_task().build(0)
    assert data.train.inputs.shape == (256, 32)
    assert list(data.evals) == [f"len={n},depth={d}" for n in (32, 64) for d in (0.0, 0.5, 1.0)]
    assert data.evals["len=64,depth=0.5"].inputs.shape == (8, 64)
    train = {tuple(r) for r in data.train.inputs.tolist()}
    tests = [tuple(r) for d in (0.0, 0.5, 1.0) for r in data.evals[f"len=32,depth={d}"].inputs.tolist()]
    assert not train & set(tests)
    assert list(small_task(eval_lengths=(40, 40, 33)).build(0).evals)[0] == "len=33,depth=0.0"
    with pytest.raises(ValueError, match="eval_depths"):
        small_task(eval_depths=(0.5, 2.0)).build(0)


def test_evaluate_keeps_tokens_per_batch_and_reports_the_grid():
    task, data = small_task(), small_task().build(0)
    seen = []

    def model(x):  # an oracle: predicts every label, and records the batch shapes it was given
        seen.append(tuple(x.shape))
        logits = torch.zeros(*x.shape, 32)
        return logits.scatter_(-1, torch.roll(x, -1, dims=1)[..., None], 1.0)

    metrics = task.evaluate(model, data.evals, batch_size=4)
    assert max(b * t for b, t in seen) <= 4 * 32 and (2, 64) in seen
    assert metrics["exact_match"] == metrics["exact_match@len=64"] == metrics["accuracy"] == 1.0
    assert len(niah_grid(metrics)) == 6 and task.primary_metric in metrics


def test_task_trains_a_tiny_attention_model():
    from architectures import build_model

    task = small_task(variant="multivalue", haystack="kv", num_needles=2, eval_depths=(0.0, 1.0))
    model = build_model(task.vocab_size, 32, 2, mixer="attention", mlp=False)
    result = task.run(model, TrainConfig(max_steps=3, batch_size=8, eval_every=3, progress=False))
    assert result.status == "ok" and 0.0 <= result.metrics["exact_match"] <= 1.0
    assert "exact_match@len=64,depth=1.0" in result.metrics and "accuracy@len=32" in result.metrics
