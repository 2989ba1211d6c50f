"""Language modelling: next-token training on a real corpus, bits per byte, length extrapolation.

The default corpus is the running Python's standard library source (``corpus="stdlib"``: real
code, offline everywhere, 734 files / 12.1 MB on CPython 3.11, PSF License), byte-level
tokenised. See ``tasks.lm_data`` for other corpora, BPE, the token-file format and the cache.

Data, all pure functions of (config, seed):

- validation = the documents whose ``sha256(split_seed, doc key)`` falls below
  ``val_fraction`` (at least one document, at least one left for training): held out by file,
  never by token window; it does not depend on the run seed, so seeds share one validation set.
- train = ``num_train_windows`` windows of ``seq_len + 1`` tokens at seeded random offsets of
  the training documents' concatenated token stream. The runner draws batches from these, so a
  run sees ``max_steps * batch_size * seq_len`` training tokens. For equal compute across mixers
  set a budget instead of steps: ``optim.budget_tokens`` or ``optim.budget_flops`` (3x the
  model's analytic forward FLOPs per step; ``tasks.runner.steps_for_budget``).
- eval: ``num_val_windows`` evenly spaced windows of ``seq_len`` over the validation stream,
  and for each L in ``eval_lengths`` as many windows of L as hold the same number of tokens.

Metrics (every validation token scored): ``val_loss`` (mean nats per token), ``perplexity``
(exp of it) and ``bits_per_byte`` = sum of nats / (ln 2 * raw bytes the scored tokens stand
for), exact and comparable across tokenizers; ``val_loss@len=L`` and ``bits_per_byte@len=L``
at the longer lengths. Lower is better: the task sets ``higher_is_better = False``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.lm_data import parse_tokenizer, prepare_corpus, read_token_file
from tasks.task import IGNORE, TASKS, Split, Task, TaskConfig, TaskData

EVAL_CHUNK_ELEMENTS = 1 << 25  # logits elements per evaluation forward (128 MiB of fp32)


def validation_docs(doc_keys: np.ndarray, val_fraction: float, split_seed: int) -> np.ndarray:
    """Boolean ``[num_docs]``: True for held-out documents. A document is held out when the hash
    of (split_seed, its key) maps below ``val_fraction``; the lowest-scoring document is held
    out if none is, and the highest kept for training if all are."""
    scores = np.array([int.from_bytes(hashlib.sha256(f"{split_seed}:{int(k)}".encode()).digest()[:8], "little")
                       for k in doc_keys], dtype=np.float64) / 2.0**64
    val = scores < val_fraction
    if not val.any():
        val[scores.argmin()] = True
    if val.all():
        val[scores.argmax()] = False
    return val


def concat_docs(tokens: np.ndarray, offsets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The tokens of the kept documents, concatenated in file order."""
    parts = [tokens[offsets[i]:offsets[i + 1]] for i in np.flatnonzero(keep)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=tokens.dtype)


def windows(stream: np.ndarray, starts: np.ndarray, length: int) -> Tensor:
    """``[len(starts), length]`` int64 windows of ``stream`` (vectorised gather)."""
    idx = starts[:, None] + np.arange(length)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


def to_split(w: Tensor) -> Split:
    """Windows of length T + 1 -> inputs ``w[:, :-1]``, next-token labels ``w[:, 1:]``."""
    return Split(inputs=w[:, :-1], labels=w[:, 1:])


def bits_per_byte(nats: float, num_bytes: int) -> float:
    return nats / (math.log(2) * num_bytes)


@TASKS.register("lm")
class LMTask(Task):
    """Next-token language modelling on a token corpus."""

    @dataclass(kw_only=True)
    class Config(TaskConfig):
        corpus: str = "stdlib"  # "stdlib", a text file, a directory, or an arena token file
        tokenizer: str = "byte"  # "byte" (vocab 256) or "bpe:<vocab_size>" trained locally
        max_corpus_bytes: int = 0  # > 0: only the leading whole documents up to this many bytes
        val_fraction: float = 0.05  # share of documents held out
        split_seed: int = 0  # which documents are held out (independent of the run seed)
        seq_len: int = 256
        num_train_windows: int = 16384  # bounds memory (16384 x 257 int64 = 34 MB) and build time
        num_val_windows: int = 64
        eval_lengths: tuple[int, ...] = (1024,)  # length extrapolation: val_loss@len=L

    primary_metric = "bits_per_byte"
    higher_is_better = False

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self._kind, self._vocab = parse_tokenizer(cfg.tokenizer)
        if not 0.0 < cfg.val_fraction < 1.0:
            raise ValueError(f"lm: val_fraction={cfg.val_fraction} must lie in (0, 1)")
        if cfg.seq_len < 1 or cfg.num_train_windows < 1 or cfg.num_val_windows < 1:
            raise ValueError("lm: seq_len, num_train_windows and num_val_windows must be >= 1")
        if cfg.corpus != "stdlib" and not Path(cfg.corpus).expanduser().exists():
            raise FileNotFoundError(f"lm: corpus {cfg.corpus!r} does not exist; give 'stdlib', a text file, "
                                    f"a directory or a token file")
        self.corpus_hash: str | None = None  # sha256 of the corpus, set by build()
        self.token_file: Path | None = None
        self.tokenizer_id: str | None = None
        self._token_bytes: Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def record_extra(self) -> dict:
        """What a run record should carry about the data (after ``build``)."""
        return {"corpus": self.cfg.corpus, "corpus_hash": self.corpus_hash, "tokenizer_id": self.tokenizer_id}

    def build(self, seed: int) -> TaskData:
        cfg = self.cfg
        self.token_file, self.corpus_hash = prepare_corpus(cfg.corpus, cfg.tokenizer, cfg.max_corpus_bytes)
        tf = read_token_file(self.token_file)
        if tf.vocab_size > self._vocab:
            raise ValueError(f"lm: token file vocab {tf.vocab_size} exceeds the tokenizer's {self._vocab}")
        self.tokenizer_id = tf.tokenizer_id
        self._token_bytes = torch.zeros(self._vocab, dtype=torch.long)
        self._token_bytes[:tf.vocab_size] = torch.from_numpy(tf.token_bytes.astype(np.int64))

        val = validation_docs(tf.doc_keys, cfg.val_fraction, cfg.split_seed)
        train_stream = concat_docs(tf.tokens, tf.doc_offsets, ~val)
        val_stream = concat_docs(tf.tokens, tf.doc_offsets, val)
        T = cfg.seq_len
        if len(train_stream) < T + 1:
            raise ValueError(f"lm: {len(train_stream)} training tokens < seq_len + 1 = {T + 1}; "
                             f"use a larger corpus or a shorter seq_len")
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(train_stream) - T, (cfg.num_train_windows,), generator=g).numpy()
        data = TaskData(train=to_split(windows(train_stream, starts, T + 1)))
        for length in (T, *cfg.eval_lengths):
            n = max(1, cfg.num_val_windows * T // length)
            if len(val_stream) < length + 1:
                raise ValueError(f"lm: the validation documents hold {len(val_stream)} tokens, fewer than "
                                 f"{length + 1}; raise val_fraction or lower eval_lengths")
            val_starts = np.linspace(0, len(val_stream) - length - 1, n).round().astype(np.int64)
            data.evals["" if length == T else f"len={length}"] = to_split(windows(val_stream, val_starts, length + 1))
        return data

    @torch.no_grad()
    def evaluate(self, model, evals: dict[str, Split], batch_size: int = 256, device=None) -> dict[str, float]:
        """Exact sums over every scored token: val_loss (nats/token), perplexity, bits_per_byte."""
        if self._token_bytes is None:
            raise RuntimeError("lm: evaluate() needs build() first (it reads the token byte lengths)")
        metrics = {}
        for suffix, split in evals.items():
            T = split.inputs.shape[1]
            step = max(1, min(batch_size, EVAL_CHUNK_ELEMENTS // (T * self._vocab)))
            nats, tokens, nbytes = 0.0, 0, 0
            for i in range(0, len(split), step):
                x = split.inputs[i:i + step].to(device)
                y = split.labels[i:i + step].to(device)
                logits = model(x).float()
                nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                        reduction="sum").item()
                scored = y != IGNORE
                tokens += int(scored.sum())
                nbytes += int(self._token_bytes.to(y.device)[y[scored]].sum())
            at = f"@{suffix}" if suffix else ""
            metrics[f"val_loss{at}"] = nats / tokens
            metrics[f"bits_per_byte{at}"] = bits_per_byte(nats, nbytes)
            if not suffix:
                metrics["perplexity"] = math.exp(min(nats / tokens, 700.0))
        return metrics
