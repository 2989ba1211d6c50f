"""The task contract, the ``TASKS`` registry and the metrics every token-level task shares.

A task is a ``Config`` dataclass plus ``build(seed) -> TaskData`` (deterministic data, a pure
function of config and seed), a loss, and exact metrics. Labels are -100 wherever a position is
not scored; a prediction at position t is the model's next-token guess for t + 1 (the label at t).

Metric keys: a name (``accuracy``), or a name at a setting, ``accuracy@len=1024`` /
``exact_match@len=1024,depth=0.25``; the reporter splits on ``@``, ``,`` and ``=``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from arena.registry import Registry

IGNORE = -100  # label of an unscored position (PyTorch's cross-entropy ignore_index)


@dataclass(kw_only=True)
class TaskConfig:
    """Base of every task's nested ``Config``: keyword-only, strict (see arena.registry.build_config)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    """Token ids and labels, both ``[N, T]`` LongTensors."""

    inputs: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class TaskData:
    """The training split and the evaluation splits, keyed by the metric suffix they report
    under (``""`` for the plain test set, ``"len=1024"`` for a longer evaluation length)."""

    train: Split
    evals: dict[str, Split] = field(default_factory=dict)


def scored_accuracy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per example: the fraction of scored positions predicted exactly (``accuracy``) and whether
    all of them are (``exact_match``). Examples with no scored position are skipped. Returns
    ``(accuracy [N'], exact_match [N'])``."""
    scored = labels != IGNORE
    correct = (logits.argmax(-1) == labels) & scored
    n = scored.sum(-1)
    keep = n > 0
    acc = correct.sum(-1)[keep].double() / n[keep].double()
    return acc, (correct.sum(-1) == n)[keep].double()


class Task(ABC):
    """A trainable, evaluable task. Subclasses set ``Config``, ``primary_metric`` and ``build``."""

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True  # of the primary metric (False for losses, bits per byte)
    registry_name: ClassVar[str] = "?"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the token vocabulary the model must embed."""

    @abstractmethod
    def build(self, seed: int) -> TaskData:
        """Deterministic data from ``(self.cfg, seed)``; evaluation data from seeds disjoint
        from the training seed's."""

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy over scored positions only (MQAR: the queried values)."""
        return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE)

    @torch.no_grad()
    def evaluate(self, model, evals: dict[str, Split], batch_size: int = 256, device=None) -> dict[str, float]:
        """``accuracy`` and ``exact_match`` (see ``scored_accuracy``) averaged over examples, per split."""
        metrics = {}
        for suffix, split in evals.items():
            accs, exact = [], []
            for i in range(0, len(split), batch_size):
                x = split.inputs[i:i + batch_size].to(device)
                y = split.labels[i:i + batch_size].to(device)
                a, e = scored_accuracy(model(x), y)
                accs.append(a.cpu())
                exact.append(e.cpu())
            at = f"@{suffix}" if suffix else ""
            metrics[f"accuracy{at}"] = torch.cat(accs).mean().item()
            metrics[f"exact_match{at}"] = torch.cat(exact).mean().item()
        return metrics

    def record_extra(self) -> dict:
        """Facts about the data that a run's record should carry (e.g. a corpus hash)."""
        return {}

    def run(self, model, train, seed: int = 0, device: str = "auto"):
        """Train ``model`` with ``train`` (a ``tasks.runner.TrainConfig``) and evaluate it."""
        from tasks.runner import train as train_model

        return train_model(model, self, train, seed=seed, device=device)


TASKS: Registry[type[Task]] = Registry("task", base=Task, entry_point_group="arena.tasks")


def build_task(name: str, **overrides) -> Task:
    """``build_task("mqar", seq_len=128, num_kv_pairs=8)``; unknown names and keys raise."""
    from arena.registry import build_config

    cls = TASKS[name]
    return cls(build_config(cls.Config, overrides, where=f"task {name!r}"))
