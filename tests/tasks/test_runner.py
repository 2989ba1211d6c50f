"""The training runner: determinism, statuses, schedule, early stop, and MQAR end to end."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from architectures import build_model
from tasks import TrainConfig, build_task, train
from tasks.runner import lr_at, make_optimizer

QUICK = dict(max_steps=6, batch_size=8, eval_every=3, log_every=1, progress=False)


def _tiny_task():
    return build_task("mqar", vocab_size=40, seq_len=16, num_kv_pairs=2, num_train_examples=64,
                      num_test_examples=16)


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(40, 16, 1, mixer="attention", mlp=False, num_heads=2)


def test_same_seed_same_losses_bit_for_bit():
    runs = [train(_tiny_model(), _tiny_task(), TrainConfig(**QUICK), seed=5) for _ in range(2)]
    losses = [[c["loss"] for c in r.curve if "loss" in c] for r in runs]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    assert runs[0].metrics == runs[1].metrics
    other = train(_tiny_model(), _tiny_task(), TrainConfig(**QUICK), seed=6)
    assert [c["loss"] for c in other.curve if "loss" in c] != losses[0]


def test_result_says_what_happened():
    r = train(_tiny_model(), _tiny_task(), TrainConfig(**QUICK), seed=0)
    assert r.status == "ok" and r.error == ""
    assert r.steps == 6 and r.tokens == 6 * 8 * 16
    assert set(r.metrics) == {"accuracy", "exact_match"} and r.best_metrics
    assert r.wall_time_s > 0 and r.peak_mem_bytes > 0
    evals = [c for c in r.curve if "accuracy" in c]
    assert [c["step"] for c in evals] == [3, 6]


class _NaNAfter(nn.Module):
    """Wraps a model; its logits become NaN from the n-th forward on."""

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x):
        self.calls += 1
        logits = self.model(x)
        return logits * math.nan if self.calls >= self.n and self.training else logits


def test_nan_loss_ends_the_run_as_diverged_without_raising():
    r = train(_NaNAfter(_tiny_model(), 4), _tiny_task(), TrainConfig(**QUICK), seed=0)
    assert r.status == "diverged" and r.steps == 4
    assert "loss became nan at step 4" in r.error


class _OOM(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")


def test_out_of_memory_returns_status_oom():
    r = train(_OOM(_tiny_model()), _tiny_task(), TrainConfig(**QUICK), seed=0)
    assert r.status == "oom" and "out of memory" in r.error and r.steps == 0


def test_other_errors_surface():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        train(Broken(), _tiny_task(), TrainConfig(**QUICK), seed=0)


def test_early_stop_at_target():
    r = train(_tiny_model(), _tiny_task(), TrainConfig(**{**QUICK, "early_stop": 0.0}), seed=0)
    assert r.status == "ok" and r.steps == 3


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, max_steps=100, warmup_frac=0.1, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_weight_decay_only_on_matrices():
    model = _tiny_model()
    groups = make_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_bad_settings_raise_clearly():
    with pytest.raises(ValueError, match="exceeds the 64 training examples"):
        train(_tiny_model(), _tiny_task(), TrainConfig(**{**QUICK, "batch_size": 65}))
    with pytest.raises(ValueError, match="precision='fp32'"):
        train(_tiny_model(), _tiny_task(), TrainConfig(**{**QUICK, "precision": "bf16"}), device="cpu")


@pytest.mark.slow
def test_attention_learns_mqar_on_cpu():
    """End to end: a 2-layer attention model reaches >= 0.95 MQAR accuracy on a small setting."""
    task = build_task("mqar", vocab_size=64, seq_len=32, num_kv_pairs=4, num_train_examples=20_000,
                      num_test_examples=500)
    torch.manual_seed(0)
    model = build_model(64, 64, 2, mixer="attention", mlp=False, num_heads=2)
    cfg = TrainConfig(lr=3e-3, max_steps=1500, batch_size=64, eval_every=100, early_stop=0.95, progress=False)
    r = task.run(model, cfg, seed=0)
    assert r.status == "ok" and r.metrics["accuracy"] >= 0.95, r.metrics


def test_token_and_flop_budgets_set_the_number_of_steps():
    model, task = _tiny_model(), _tiny_task()
    quick = {k: v for k, v in QUICK.items() if k != "max_steps"}
    r = train(model, task, TrainConfig(**quick, budget_tokens=5 * 8 * 16), seed=0)
    assert r.steps == 5 and r.tokens == 5 * 8 * 16
    flops_per_step = 3 * 8 * model.flops(16)
    r = train(_tiny_model(), task, TrainConfig(**quick, budget_flops=4.5 * flops_per_step), seed=0)
    assert r.steps == 4  # whole steps within the budget
    with pytest.raises(ValueError, match="not both"):
        train(_tiny_model(), task, TrainConfig(**quick, budget_tokens=1, budget_flops=1.0))
