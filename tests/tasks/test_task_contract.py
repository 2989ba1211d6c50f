"""Registry-driven smoke tests: every registered task gets them the moment its file exists."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from architectures import build_model
from tasks import IGNORE, TASKS, TrainConfig, build_task

# Shrinks shapes only; a task missing here runs with its defaults and these example counts.
COUNTS = dict(num_train_examples=32, num_test_examples=8)
TINY_TASKS: dict[str, dict] = {
    "mqar": dict(vocab_size=64, seq_len=32, num_kv_pairs=4),
    "selective_copying": dict(seq_len=32, num_tokens=4),
    "induction_heads": dict(seq_len=32, eval_lengths=(32, 64)),
    "in_context_recall": dict(seq_len=32),
    "noisy_recall": dict(seq_len=32),
    "fuzzy_recall": dict(seq_len=32),
    "niah": dict(vocab_size=64, seq_len=48, eval_length_multipliers=(1, 2), eval_depths=(0.0, 1.0)),
    "lm": dict(max_corpus_bytes=200_000, val_fraction=0.3, seq_len=32, num_train_windows=64,
               num_val_windows=8, eval_lengths=(64,)),
}
NAMES = TASKS.names()


def tiny_task(name: str):
    fields = {f.name for f in dataclasses.fields(TASKS[name].Config)}
    counts = {k: v for k, v in COUNTS.items() if k in fields}
    return build_task(name, **counts, **TINY_TASKS.get(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_data_is_well_formed_and_deterministic(name):
    task = tiny_task(name)
    data, again = task.build(seed=0), task.build(seed=0)
    assert data.evals, f"{name} has no evaluation split"
    for key, split in [("train", data.train), *data.evals.items()]:
        x, y = split.inputs, split.labels
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape, key
        assert 0 <= x.min() and x.max() < task.vocab_size, f"{name}/{key}: token ids outside the vocabulary"
        scored = y != IGNORE
        assert scored.any(), f"{name}/{key}: nothing is scored"
        assert (y[scored] >= 0).all() and (y[scored] < task.vocab_size).all()
    assert torch.equal(data.train.inputs, again.train.inputs), "same seed must give the same data"
    assert not torch.equal(data.train.inputs, task.build(seed=1).train.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_model_trains_and_reports_the_primary_metric(name):
    task = tiny_task(name)
    torch.manual_seed(0)
    model = build_model(task.vocab_size, 16, 1, mixer="attention", mlp=False, num_heads=2)
    r = task.run(model, TrainConfig(max_steps=2, batch_size=8, eval_every=2, progress=False))
    assert r.status == "ok", r.error
    assert task.primary_metric in r.metrics
    if task.higher_is_better:  # accuracies; losses and bits per byte are unbounded above
        assert all(0.0 <= v <= 1.0 for v in r.metrics.values())
    else:
        assert all(v >= 0.0 and v == v for v in r.metrics.values())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_keys_raise(name):
    with pytest.raises(LookupError, match="Valid:"):
        build_task(name, not_a_key=1)
