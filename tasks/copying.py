"""The Mamba paper's synthetic copying tasks (Gu & Dao 2023, Sec. 4.1 and App. E.1): selective
copying and induction heads. Generators are pure, vectorised functions of their arguments returning
``(inputs, labels)`` LongTensors with labels -100 where unscored; the label at position t is what
the model should output after reading ``inputs[:, :t + 1]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tasks.recall import sample_distinct, test_seed, train_seed
from tasks.task import IGNORE, TASKS, Split, Task, TaskConfig, TaskData

BLANK = 0  # selective copying's noise ("white") token; the marker is vocab_size - 1


def selective_copying(vocab_size: int, seq_len: int, num_tokens: int = 16, *, num_examples: int,
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """Selective copying, laid out as the S4 repository's ``torch_copying_data(variable=True)``
    (state-spaces/s4 src/dataloaders/datasets/copying.py), which the Mamba paper's task follows.

    Tokens: ``0`` blank (noise), ``vocab_size - 1`` the copy marker, data from ``[1, vocab_size - 1)``.
    A region of ``seq_len`` positions holds ``num_tokens`` data tokens (uniform, with replacement) at
    distinct uniformly random positions, in order, blanks elsewhere; then ``num_tokens`` markers.
    Inputs and labels are ``[num_examples, seq_len + num_tokens]``: the label at the i-th marker is
    the i-th data token, -100 in the region. (S4's ``l_noise`` is ``seq_len - num_tokens`` here.)

    >>> selective_copying(vocab_size=6, seq_len=8, num_tokens=3, num_examples=1, seed=0)
    (tensor([[1, 4, 0, 2, 0, 0, 0, 0, 5, 5, 5]]),
     tensor([[-100, -100, -100, -100, -100, -100, -100, -100, 1, 4, 2]]))
    """
    if vocab_size < 3:
        raise ValueError(f"selective_copying: vocab_size={vocab_size} must be >= 3 (blank, marker and a "
                         f"data token)")
    if not 1 <= num_tokens <= seq_len:
        raise ValueError(f"selective_copying: num_tokens={num_tokens} must be in [1, seq_len={seq_len}]: "
                         f"the data tokens need distinct positions in the region")
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(1, vocab_size - 1, (num_examples, num_tokens), generator=g)
    where = sample_distinct(num_examples, 0, seq_len, num_tokens, g).sort(dim=1).values  # order kept
    inputs = torch.full((num_examples, seq_len + num_tokens), BLANK, dtype=torch.long)
    inputs.scatter_(1, where, data)
    inputs[:, seq_len:] = vocab_size - 1
    labels = torch.full_like(inputs, IGNORE)
    labels[:, seq_len:] = data
    return inputs, labels


def induction_heads(vocab_size: int, seq_len: int, *, num_examples: int,
                    seed: int = 0) -> tuple[Tensor, Tensor]:
    """Induction heads, laid out as H3/safari's ``generate_induction_head`` (HazyResearch/safari
    src/dataloaders/synthetics.py, one trigger), which the Mamba paper's task follows.

    Tokens: ``vocab_size - 1`` is the trigger, the rest uniform from ``[0, vocab_size - 1)``. The
    trigger sits once at a uniform position ``p`` in ``[0, seq_len - 3)``, followed by the answer
    token ``inputs[p + 1]``, and again as the last input token, where the label is the answer (-100
    elsewhere). It appears nowhere else; at least one token separates the answer from the final
    trigger. Inputs and labels are ``[num_examples, seq_len]``.

    >>> induction_heads(vocab_size=6, seq_len=8, num_examples=1, seed=0)
    (tensor([[4, 4, 5, 0, 3, 4, 2, 5]]), tensor([[-100, -100, -100, -100, -100, -100, -100, 0]]))
    """
    if vocab_size < 2:
        raise ValueError(f"induction_heads: vocab_size={vocab_size} must be >= 2 (a trigger and a "
                         f"content token)")
    if seq_len < 4:
        raise ValueError(f"induction_heads: seq_len={seq_len} must be >= 4 (trigger, answer, a gap, trigger)")
    g = torch.Generator().manual_seed(seed)
    trigger = vocab_size - 1
    inputs = torch.randint(0, trigger, (num_examples, seq_len), generator=g)
    at = torch.randint(0, seq_len - 3, (num_examples, 1), generator=g)
    inputs.scatter_(1, at, trigger)
    inputs[:, -1] = trigger
    labels = torch.full_like(inputs, IGNORE)
    labels[:, -1] = inputs.gather(1, at + 1).squeeze(1)
    return inputs, labels


# The Mamba paper's selective copying is long (region 4096) for a CPU; this is the CPU preset,
# MAD's selective-copying baseline sizes (athms/mad-lab configs/tasks/selective-copying.yml):
#     build_task("selective_copying", **SELECTIVE_COPYING_CPU)
SELECTIVE_COPYING_CPU = dict(seq_len=256, num_tokens=16, vocab_size=16)


@TASKS.register("selective_copying")
class SelectiveCopying(Task):
    """Selective copying (see ``selective_copying``). ``accuracy``: per test example, the fraction of
    the ``num_tokens`` data tokens reproduced at the marker positions exactly, averaged over
    examples; ``exact_match``: the fraction of examples copied entirely right. Inputs are
    ``seq_len + num_tokens`` long. For CPU runs use ``SELECTIVE_COPYING_CPU`` (seq_len 256)."""

    @dataclass(kw_only=True)
    class Config(TaskConfig):
        # Mamba (Gu & Dao 2023, App. E.1): length 4096, 16 tokens in the vocabulary (the noise
        # token included), 16 data tokens to copy. Mamba draws fresh data every step (400K steps
        # of batch 64); a fixed set of MAD's size is used here.
        vocab_size: int = 16
        seq_len: int = 4096
        num_tokens: int = 16
        num_train_examples: int = 12_800
        num_test_examples: int = 1_280

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def build(self, seed: int) -> TaskData:
        c = self.cfg
        common = dict(vocab_size=c.vocab_size, seq_len=c.seq_len, num_tokens=c.num_tokens)
        train = selective_copying(num_examples=c.num_train_examples, seed=train_seed(seed), **common)
        test = selective_copying(num_examples=c.num_test_examples, seed=test_seed(seed), **common)
        return TaskData(train=Split(*train), evals={"": Split(*test)})


def length_seed(seed: int, length: int) -> int:
    """Seed of the evaluation set at ``length`` for run seed ``seed``: odd, so never a training seed
    (those are even, ``train_seed``), and distinct from ``test_seed(seed)`` and across lengths."""
    return test_seed(seed * 1_000_003 + length)


@TASKS.register("induction_heads")
class InductionHeads(Task):
    """Induction heads (see ``induction_heads``): trained at ``seq_len``, tested there (``accuracy``,
    the primary metric) and at every length in ``eval_lengths`` (``accuracy@len=L``). With one
    scored position per example, ``accuracy`` is the fraction of test examples whose answer is
    predicted exactly (``exact_match`` is the same number)."""

    @dataclass(kw_only=True)
    class Config(TaskConfig):
        # Mamba (Gu & Dao 2023, Sec. 4.1.2, App. E.1): vocabulary 16, train at 256, test at
        # 2^6 .. 2^20; fresh data every step (batch 8). eval_lengths is a CPU-sized slice of that
        # range; the paper's is tuple(2 ** k for k in range(6, 21)).
        vocab_size: int = 16
        seq_len: int = 256
        eval_lengths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
        num_train_examples: int = 50_000
        num_test_examples: int = 512  # per evaluation length

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def build(self, seed: int) -> TaskData:
        c = self.cfg
        if any(not isinstance(n, int) or n < 4 for n in c.eval_lengths):
            raise ValueError(f"induction_heads: eval_lengths={tuple(c.eval_lengths)} must be integers >= 4")
        train = induction_heads(c.vocab_size, c.seq_len, num_examples=c.num_train_examples,
                                seed=train_seed(seed))
        test = Split(*induction_heads(c.vocab_size, c.seq_len, num_examples=c.num_test_examples,
                                      seed=test_seed(seed)))
        evals = {"": test}
        for n in dict.fromkeys(c.eval_lengths):  # the training length reuses the plain test set
            evals[f"len={n}"] = test if n == c.seq_len else Split(*induction_heads(
                c.vocab_size, n, num_examples=c.num_test_examples, seed=length_seed(seed, n)))
        return TaskData(train=Split(*train), evals=evals)

    def evaluate(self, model, evals: dict[str, Split], batch_size: int = 256,
                 device=None) -> dict[str, float]:
        """As ``Task.evaluate``, but a split filed under two keys (the training length) runs once."""
        first = {}  # id(split) -> the first key it is filed under
        for key, split in evals.items():
            first.setdefault(id(split), key)
        metrics = super().evaluate(model, {key: evals[key] for key in first.values()}, batch_size, device)
        for key, split in evals.items():
            if first[id(split)] != key:
                for name in ("accuracy", "exact_match"):
                    metrics[_metric(name, key)] = metrics[_metric(name, first[id(split)])]
        return metrics


def _metric(name: str, suffix: str) -> str:
    return f"{name}@{suffix}" if suffix else name
