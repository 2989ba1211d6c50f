"""Property tests for the MQAR relatives: MAD's in-context / noisy / fuzzy recall (tasks.recall)
and the Mamba paper's selective copying and induction heads (tasks.copying)."""
from __future__ import annotations

import pytest
import torch

from tasks import IGNORE, TASKS, TrainConfig, build_task
from tasks.copying import BLANK, induction_heads, length_seed, selective_copying
from tasks import recall
from tasks.recall import first_occurrence, fuzzy_recall, in_context_recall

GENERATORS = {
    "selective_copying": lambda **kw: selective_copying(vocab_size=8, seq_len=24, num_tokens=4, **kw),
    "induction_heads": lambda **kw: induction_heads(vocab_size=8, seq_len=24, **kw),
    "in_context_recall": lambda **kw: in_context_recall(16, 32, **kw),
    "noisy_recall": lambda **kw: in_context_recall(24, 32, noise_vocab_size=8, frac_noise=0.3, **kw),
    "fuzzy_recall": lambda **kw: fuzzy_recall(16, 48, 3, 3, **kw),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_seed_determinism(name):
    gen = GENERATORS[name]
    a, b, c = (gen(num_examples=64, seed=s) for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == a[1].dtype == torch.long and a[0].shape == a[1].shape


# ---------------------------------------------------------------------------------------------
# selective copying


def test_selective_copying_structure():
    V, L, M = 10, 40, 6
    x, y = selective_copying(vocab_size=V, seq_len=L, num_tokens=M, num_examples=500, seed=0)
    assert x.shape == y.shape == (500, L + M)
    region = x[:, :L]
    data = region != BLANK
    assert (data.sum(1) == M).all()
    assert ((region[data] >= 1) & (region[data] < V - 1)).all()  # never the marker, never blank
    assert (x[:, L:] == V - 1).all() and (y[:, :L] == IGNORE).all()
    assert torch.equal(y[:, L:], region[data].view(500, M))  # the data tokens, in order
    positions = data.nonzero()[:, 1].view(500, M)
    assert positions[:, 0].float().mean() > 1 and positions[:, -1].float().mean() < L - 2  # spread out
    assert set(x[:, :L][data].unique().tolist()) == set(range(1, V - 1))


@pytest.mark.parametrize("kw, match", [
    (dict(vocab_size=2, seq_len=8, num_tokens=2), "vocab_size=2"),
    (dict(vocab_size=8, seq_len=8, num_tokens=9), "num_tokens=9"),
    (dict(vocab_size=8, seq_len=8, num_tokens=0), "num_tokens=0"),
])
def test_selective_copying_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        selective_copying(num_examples=1, **kw)


# ---------------------------------------------------------------------------------------------
# induction heads


def test_induction_heads_structure():
    V, L, N = 8, 30, 2000
    x, y = induction_heads(V, L, num_examples=N, seed=0)
    trig = x == V - 1
    assert (trig.sum(1) == 2).all() and trig[:, -1].all()  # once inside, once as the last token
    at = trig[:, :-1].int().argmax(1)
    assert (at < L - 3).all() and at.min() == 0 and at.max() == L - 4  # covers [0, L - 3)
    answer = x[torch.arange(N), at + 1]
    assert (answer < V - 1).all()
    assert torch.equal(y[:, -1], answer) and (y[:, :-1] == IGNORE).all()
    assert (x[~trig] < V - 1).all() and (x >= 0).all()


def test_induction_heads_validation():
    with pytest.raises(ValueError, match="seq_len=3"):
        induction_heads(8, 3, num_examples=1)
    with pytest.raises(ValueError, match="vocab_size=1"):
        induction_heads(1, 8, num_examples=1)


# ---------------------------------------------------------------------------------------------
# MAD in-context recall and noisy recall


def check_in_context_recall(x, y, vocab_size, noise_vocab_size):
    """Replay each sequence pair by pair: keys and values in range, a key's value fixed, a value
    scored exactly when its key came earlier, the final pair asked about a shown key."""
    data = vocab_size - noise_vocab_size
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        seen = {}
        pairs = list(zip(row_x[0::2], row_x[1::2], row_y[0::2], row_y[1::2]))
        for i, (k, v, label_k, label_v) in enumerate(pairs):
            assert label_v == IGNORE
            if k >= data:  # noise pair
                assert data <= v < vocab_size and label_k == IGNORE and i < len(pairs) - 1
                continue
            assert 0 <= k < data // 2 <= v < data
            assert label_k == (v if k in seen else IGNORE)
            assert seen.setdefault(k, v) == v
        assert pairs[-1][0] in seen and pairs[-1][2] != IGNORE


@pytest.mark.parametrize("V, L, noise, frac", [(16, 32, 0, 0.0), (24, 64, 8, 0.3), (12, 4, 4, 0.5)])
def test_in_context_recall_structure(V, L, noise, frac):
    x, y = in_context_recall(V, L, num_examples=300, noise_vocab_size=noise, frac_noise=frac, seed=1)
    assert x.shape == y.shape == (300, L)
    check_in_context_recall(x, y, V, noise)
    xt, yt = in_context_recall(V, L, num_examples=300, noise_vocab_size=noise, frac_noise=frac, seed=1,
                               training=True)
    assert torch.equal(xt, x)  # same sequences, MAD's training targets: every next token
    assert torch.equal(yt[:, :-1], x[:, 1:]) and (yt[:, -1] == IGNORE).all()


def test_in_context_recall_statistics():
    x, y = in_context_recall(16, 128, num_examples=2000, seed=0)
    keys = x[:, 0::2]
    assert (keys.sort(1).values.diff(1) == 0).any(1).all()  # with replacement: repeats in every row
    assert abs((y != IGNORE).sum(1).float().mean().item() - 56.0) < 1.0  # 63 pairs over 8 keys, + probe
    xn, _ = in_context_recall(32, 128, num_examples=2000, noise_vocab_size=16, frac_noise=0.2, seed=0)
    noisy = (xn[:, 0:-2:2] >= 16).float().mean().item()  # slot noise rate; one slot in 64 spared
    assert abs(noisy - 0.2 * (1 - 1 / 64)) < 0.01


@pytest.mark.parametrize("kw, match", [
    (dict(vocab_size=16, seq_len=31), "seq_len=31"),
    (dict(vocab_size=16, seq_len=2), "seq_len=2"),
    (dict(vocab_size=16, seq_len=8, frac_noise=0.2), "noise_vocab_size > 0"),
    (dict(vocab_size=16, seq_len=8, noise_vocab_size=4, frac_noise=1.0), "frac_noise=1.0"),
    (dict(vocab_size=4, seq_len=8, noise_vocab_size=3), "vocab_size=4"),
])
def test_in_context_recall_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        in_context_recall(num_examples=1, **kw)


def test_first_occurrence_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 5, (50, 20), generator=g)
    valid = torch.rand(50, 20, generator=g) < 0.7
    first = first_occurrence(codes, valid)
    for n in range(50):
        for i in range(20):
            same = [j for j in range(i + 1) if valid[n, j] and codes[n, j] == codes[n, i]]
            assert first[n, i] == (same[0] if valid[n, i] else i)


# ---------------------------------------------------------------------------------------------
# MAD fuzzy recall


def parse_fuzzy(row, vocab_size, noise_vocab_size):
    """Split a stream into (kind, start, tokens) runs: 'pad', 'key', 'value', 'noise'. Key, value
    and noise tokens come from disjoint ranges, so the split is unique."""
    data = vocab_size - 1 - noise_vocab_size

    def kind(t):
        return "pad" if t == vocab_size - 1 else "noise" if t >= data else "key" if t < data // 2 else "value"

    runs = []
    for i, t in enumerate(row):
        if runs and runs[-1][0] == kind(t):
            runs[-1][2].append(t)
        else:
            runs.append((kind(t), i, [t]))
    return runs


def check_fuzzy(x, y, V, Km, Vm, noise, training):
    """Replay each stream: pads in front, then pairs (noise aside) of distinct-token motifs, a
    key's value fixed, a value scored exactly when its key came earlier (the final probe too).
    The stream's last token (the probe value's last) is not an input; it is the last label when
    scored."""
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        runs = parse_fuzzy(row_x, V, noise)
        assert runs[0][0] == "pad" and all(r[0] != "pad" for r in runs[1:])
        runs = [r for r in runs[1:] if r[0] != "noise"]
        if runs[-1][0] == "key":  # a one-token final value lies wholly past the inputs
            runs.append(("value", len(row_x), []))
        assert [r[0] for r in runs] == ["key", "value"] * (len(runs) // 2)
        seen, labels = {}, [IGNORE] * len(row_x)
        for i, ((_, _, key), (_, start, value)) in enumerate(zip(runs[0::2], runs[1::2])):
            if 2 * i + 2 == len(runs):  # the final probe; its key may not have been shown
                if training or tuple(key) in seen:
                    value = value + [row_y[-1]]
                else:
                    assert row_y[-1] == IGNORE
            assert (len(key) == Km or training and len(key) <= Km) and len(value) <= Vm
            assert len(set(key)) == len(key) and len(set(value)) == len(value)
            if tuple(key) in seen:
                assert seen[tuple(key)] == value
                labels[start - 1:start - 1 + len(value)] = value  # from the key's last token on
            seen.setdefault(tuple(key), value)
        if training:
            assert row_y[:-1] == row_x[1:]
        else:
            assert row_y == labels


@pytest.mark.parametrize("V, L, Km, Vm, noise, frac", [(16, 64, 3, 3, 0, 0.0), (10, 20, 2, 2, 0, 0.0),
                                                       (20, 48, 2, 3, 4, 0.3)])
@pytest.mark.parametrize("training", [False, True], ids=["test", "train"])
def test_fuzzy_recall_structure(V, L, Km, Vm, noise, frac, training):
    x, y = fuzzy_recall(V, L, Km, Vm, num_examples=200, noise_vocab_size=noise, frac_noise=frac,
                        training=training, seed=2)
    assert x.shape == y.shape == (200, L)
    assert (x >= 0).all() and (x < V).all()
    check_fuzzy(x, y, V, Km, Vm, noise, training)


def test_fuzzy_recall_final_probe_mostly_shown():
    # MAD scores the final value always; here only when its key was shown (the loop can end first)
    _, y = fuzzy_recall(num_examples=2000, seed=0)
    assert 0.95 < (y[:, -1] != IGNORE).float().mean() < 1.0


@pytest.mark.parametrize("kw, match", [
    (dict(seq_len=12), "seq_len=12"),
    (dict(k_motif_size=0), "k_motif_size"),
    (dict(vocab_size=8, k_motif_size=4), "vocab_size=8"),
    (dict(frac_noise=0.1), "noise_vocab_size > 0"),
])
def test_fuzzy_recall_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        fuzzy_recall(num_examples=1, **kw)


# ---------------------------------------------------------------------------------------------
# tasks


SMALL = {
    "selective_copying": dict(seq_len=24, num_tokens=4, vocab_size=8),
    "induction_heads": dict(seq_len=16, eval_lengths=(8, 16, 32)),
    "in_context_recall": dict(seq_len=16),
    "noisy_recall": dict(seq_len=16),
    "fuzzy_recall": dict(seq_len=32),
}


@pytest.mark.parametrize("name", SMALL)
def test_task_builds_without_leakage(name):
    task = build_task(name, num_train_examples=256, num_test_examples=64, **SMALL[name])
    data = task.build(seed=3)
    train = {tuple(r) for r in data.train.inputs.tolist()}
    for split in data.evals.values():
        assert split.inputs.max() < task.vocab_size and (split.labels != IGNORE).any()
        assert not train & {tuple(r) for r in split.inputs.tolist()}
    again = task.build(seed=3)
    assert torch.equal(again.train.inputs, data.train.inputs)


def test_seeds_are_disjoint():
    train = {recall.train_seed(s) for s in range(100)}
    tests = {recall.test_seed(s) for s in range(100)}
    tests |= {length_seed(s, n) for s in range(100) for n in (4, 64, 2 ** 20)}
    assert not train & tests
    assert len({length_seed(3, n) for n in (8, 16, 32)} | {recall.test_seed(3)}) == 4


def test_induction_heads_evaluates_every_length():
    task = build_task("induction_heads", seq_len=16, eval_lengths=(8, 16, 32), num_train_examples=64,
                      num_test_examples=16)
    data = task.build(seed=0)
    assert set(data.evals) == {"", "len=8", "len=16", "len=32"}
    assert data.evals["len=16"] is data.evals[""]
    lengths = {k: s.inputs.shape[1] for k, s in data.evals.items()}
    assert lengths == {"": 16, "len=8": 8, "len=16": 16, "len=32": 32}
    with pytest.raises(ValueError, match="eval_lengths"):
        build_task("induction_heads", eval_lengths=(2,)).build(0)


def test_mad_configs_follow_mad():
    noisy = TASKS["noisy_recall"].Config()
    assert (noisy.vocab_size, noisy.noise_vocab_size, noisy.frac_noise, noisy.seq_len) == (32, 16, 0.2, 128)
    fuzzy = TASKS["fuzzy_recall"].Config()
    assert (fuzzy.vocab_size, fuzzy.seq_len, fuzzy.k_motif_size, fuzzy.v_motif_size) == (16, 128, 3, 3)


@pytest.mark.parametrize("name", SMALL)
def test_task_runs_with_attention(name):
    from architectures import build_model

    task = build_task(name, num_train_examples=32, num_test_examples=16, **SMALL[name])
    torch.manual_seed(0)
    model = build_model(task.vocab_size, 32, 2, mixer="attention", mlp=False)
    result = task.run(model, TrainConfig(max_steps=3, batch_size=8, eval_every=3, progress=False))
    assert result.status == "ok"
    assert task.primary_metric in result.metrics
    if name == "induction_heads":
        assert {"accuracy@len=8", "accuracy@len=16", "accuracy@len=32"} <= set(result.metrics)
        assert result.metrics["accuracy@len=16"] == result.metrics["accuracy"]
