"""Token-level needle-in-a-haystack for models trained from scratch: train at length L, test on
a length x depth grid (L..64L by 0..1), with RULER's needle variants (Hsieh et al. 2024,
"RULER: What's the Real Context Size of Your Long-Context Language Models?",
NVIDIA/RULER scripts/data/synthetic/niah.py) rewritten over abstract token sub-vocabularies.

One example of length T is a context, then a query region::

    [ haystack ... key SEP value ... haystack ]  QUERY key SEP value
                   ^ the needle, at depth D                 ^ scored (teacher-forced)

Vocabulary (``niah_vocab``): PAD 0, SEP 1, QUERY 2, then three disjoint thirds: key tokens,
value tokens and filler tokens (filler takes the rounding remainder). A key is ``key_len``
key tokens, a value ``value_len`` value tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from arena.report.grids import niah_grid  # noqa: F401  (re-exported: the heatmap rows of a run)
from tasks.recall import sample_distinct, test_seed, train_seed
from tasks.task import IGNORE, TASKS, Split, Task, TaskConfig, TaskData

PAD, SEP, QUERY = 0, 1, 2
NUM_SPECIAL = 3
VARIANTS = ("single", "multikey", "multivalue")
HAYSTACKS = ("noise", "kv")
RULER_NUM_NEEDLES = 4  # RULER's niah_multikey_1 (num_needle_k=4) and niah_multivalue (num_needle_v=4)


@dataclass(frozen=True)
class NiahVocab:
    """Token id ranges; ``keys``, ``values`` and ``filler`` are disjoint and skip the specials."""

    keys: range
    values: range
    filler: range
    pad: int = PAD
    sep: int = SEP
    query: int = QUERY


def niah_vocab(vocab_size: int) -> NiahVocab:
    third = (vocab_size - NUM_SPECIAL) // 3
    k0, v0, f0 = NUM_SPECIAL, NUM_SPECIAL + third, NUM_SPECIAL + 2 * third
    return NiahVocab(keys=range(k0, v0), values=range(v0, f0), filler=range(f0, vocab_size))


@dataclass(frozen=True)
class NiahLayout:
    """Where things go in a sequence of ``seq_len`` tokens (all lengths in tokens).

    ``context_len = pad + num_units * unit + num_needles * needle_len``: the haystack is
    ``num_units`` units of ``unit`` tokens (noise: 1 filler token; kv: one distractor pair of
    ``needle_len`` tokens), after ``pad`` PAD tokens (kv only: the remainder of the division)."""

    seq_len: int
    num_needles: int
    needle_len: int  # key_len + 1 (SEP) + value_len
    answer_len: int  # value_len, or num_needles * value_len for multivalue
    query_len: int  # QUERY + key + SEP + answer
    context_len: int
    unit: int
    num_units: int
    pad: int

    @property
    def answer_start(self) -> int:
        """Position of the first answer token in ``inputs`` (its label sits one position earlier)."""
        return self.seq_len - self.answer_len


def resolve_num_needles(variant: str, num_needles: int | None) -> int:
    """``None`` -> 1 for ``single``, RULER's 4 for ``multikey`` / ``multivalue``."""
    if num_needles is None:
        return 1 if variant == "single" else RULER_NUM_NEEDLES
    return num_needles


def niah_layout(seq_len: int, variant: str = "single", haystack: str = "noise",
                num_needles: int | None = None, key_len: int = 2, value_len: int = 3) -> NiahLayout:
    m = resolve_num_needles(variant, num_needles)
    needle_len = key_len + 1 + value_len
    answer_len = value_len * (m if variant == "multivalue" else 1)
    query_len = 1 + key_len + 1 + answer_len
    context_len = seq_len - query_len
    free = context_len - m * needle_len
    unit = 1 if haystack == "noise" else needle_len
    num_units = free // unit if free >= 0 else -1
    return NiahLayout(seq_len, m, needle_len, answer_len, query_len, context_len, unit, num_units,
                      free - max(num_units, 0) * unit)


def _check_args(vocab_size, seq_len, depth, num_examples, variant, haystack, m, key_len, value_len) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"niah: variant={variant!r} is not one of {VARIANTS}")
    if haystack not in HAYSTACKS:
        raise ValueError(f"niah: haystack={haystack!r} is not one of {HAYSTACKS}")
    if variant == "single" and m != 1:
        raise ValueError(f"niah: variant='single' has one needle, got num_needles={m}; use 'multikey' "
                         f"or 'multivalue' for several, or leave num_needles=None")
    if variant != "single" and m < 2:
        raise ValueError(f"niah: variant={variant!r} needs num_needles >= 2, got {m}; use 'single' for one")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"niah: depth={depth} must lie in [0, 1] (or be None: uniform per example)")
    if key_len < 1 or value_len < 1 or num_examples < 0:
        raise ValueError(f"niah: key_len={key_len} and value_len={value_len} must be >= 1, "
                         f"num_examples={num_examples} >= 0")
    third = (vocab_size - NUM_SPECIAL) // 3
    if third < 2:
        raise ValueError(f"niah: vocab_size={vocab_size} is too small; need >= {NUM_SPECIAL + 6} "
                         f"(3 specials and at least 2 tokens each for keys, values and filler)")
    num_keys, num_values = third ** key_len, third ** value_len
    if max(num_keys, num_values) >= 2 ** 62:
        raise ValueError(f"niah: {third} tokens ** key_len={key_len} / value_len={value_len} overflow "
                         f"int64 ids; lower key_len / value_len")
    if num_keys < m or num_values < m:
        raise ValueError(f"niah: num_needles={m} distinct keys/values do not exist with {third} tokens per "
                         f"sub-vocabulary; raise vocab_size, key_len or value_len")
    lay = niah_layout(seq_len, variant, haystack, m, key_len, value_len)
    if lay.num_units < 0:
        need = lay.query_len + m * lay.needle_len
        raise ValueError(f"niah: seq_len={seq_len} cannot hold {m} needle(s) of {lay.needle_len} tokens plus "
                         f"a query region of {lay.query_len}; raise seq_len to >= {need}")


def _write_digits(out: Tensor, ids: Tensor, base: int, first_token: int) -> Tensor:
    """Write integer ids ``[...]`` into ``out [..., length]`` as token tuples (base-``base``
    digits, most significant first, offset by ``first_token``); in place, so ``out`` may be a
    view of the sequence. Returns ``out``."""
    for i in reversed(range(out.shape[-1])):  # a few digit positions, not tokens
        out[..., i] = ids % base + first_token
        ids = ids // base
    return out


def _digits(ids: Tensor, base: int, length: int, first_token: int) -> Tensor:
    return _write_digits(torch.empty(*ids.shape, length, dtype=torch.long), ids, base, first_token)


def _fill_haystack(context: Tensor, lay: NiahLayout, haystack: str, voc: NiahVocab, key_len: int,
                   queried: Tensor, g: torch.Generator) -> None:
    """Fill ``context [N, context_len]`` (a view of the inputs) with haystack everywhere, needle
    slots included: the needles overwrite theirs afterwards. Haystack units are i.i.d. and the
    needle slots lie on the unit grid, so this is the same distribution as inserting the needles
    into a shorter haystack, at one write per token instead of a scatter."""
    if haystack == "noise":
        context.random_(voc.filler.start, voc.filler.stop, generator=g)
        return
    n, units = context.shape[0], lay.num_units + lay.num_needles
    K, V = len(voc.keys), len(voc.values)
    context[:, :lay.pad] = PAD
    pairs = context[:, lay.pad:].view(n, units, lay.needle_len)
    keys = torch.randint(0, K ** key_len - 1, (n, units), generator=g)
    keys += keys >= queried[:, None]  # uniform over every key but the queried one
    _write_digits(pairs[..., :key_len], keys, K, voc.keys.start)
    pairs[..., key_len] = SEP
    values = torch.randint(0, V ** (lay.needle_len - key_len - 1), (n, units), generator=g)
    _write_digits(pairs[..., key_len + 1:], values, V, voc.values.start)


def _needle_order(lay: NiahLayout, depth: float | None, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Needle 0 (the anchor: the queried needle) goes after ``floor(D * num_units + 0.5)`` haystack
    units, the others after a uniform number in ``[0, num_units]``. Returns ``order [N, m]`` (needle index
    by position rank, anchor first among exact ties) and ``starts [N, m]`` (start token of rank r)."""
    m, U = lay.num_needles, lay.num_units
    others = torch.randint(0, U + 1, (n, m - 1), generator=g)
    tiebreak = torch.rand(n, m - 1, generator=g, dtype=torch.float64)  # vs the anchor's D at equal units
    # d is the generator's last draw: a fixed depth draws nothing, so all fixed depths share the rest
    if depth is None:
        d = torch.rand(n, generator=g, dtype=torch.float64)
    else:
        d = torch.full((n,), float(depth), dtype=torch.float64)
    anchor = torch.floor(d * U + 0.5).long()
    units = torch.cat([anchor[:, None], others], dim=1)
    rank_key = torch.cat([2 * anchor[:, None] + d[:, None], 2 * others + tiebreak], dim=1)  # (units, tie)
    order = rank_key.argsort(dim=1, stable=True)
    starts = lay.pad + units.gather(1, order) * lay.unit + torch.arange(m) * lay.needle_len
    return order, starts


def niah(vocab_size: int, seq_len: int, depth: float | None, num_examples: int, variant: str = "single",
         haystack: str = "noise", num_needles: int | None = None, key_len: int = 2, value_len: int = 3,
         seed: int = 0) -> tuple[Tensor, Tensor]:
    """Needle-in-a-haystack examples, ``(inputs, labels)`` LongTensors ``[num_examples, seq_len]``.

    - ``depth``: the queried needle's relative depth, the fraction of haystack units before it
      (RULER's ``depth_percent`` / 100): 0 = first in the context, 1 = just before the query
      region. ``None`` draws it uniformly in [0, 1] per example (training).
    - ``variant``: ``single`` (S-NIAH: one needle), ``multikey`` (MK-NIAH: ``num_needles``
      distinct keys, one value each; the first is queried, the rest are distractors at uniform
      positions), ``multivalue`` (MV-NIAH: one key inserted ``num_needles`` times with distinct
      values; the answer is every value in order of position). ``num_needles=None``: 1 / 4 / 4.
    - ``haystack``: ``noise`` (i.i.d. filler tokens) or ``kv`` (distractor ``key SEP value``
      pairs with uniform keys other than the queried one; needles go between pairs and the
      remainder of the division is left PAD at the start, as RULER's ``needle`` haystack).
    - Labels: the answer tokens, at the positions one before them (next-token targets); IGNORE
      elsewhere, so the last input token (the last answer token) is unscored.

    For a fixed ``seed``, every fixed ``depth`` draws the same keys, values, distractor offsets
    and haystack (drawn for the whole context; the needles overwrite their slots), so the
    examples differ only in the slots of the anchor and of the needles it passes: a depth grid
    is a paired comparison, with the same query and answer in every cell.

    >>> x, y = niah(vocab_size=15, seq_len=16, depth=0.5, num_examples=1, key_len=1, value_len=2)
    >>> x  # keys 3..6, values 7..10, filler 11..14: 4 filler | 3 SEP 8 8 | 3 filler | QUERY 3 SEP 8 8
    tensor([[14, 14, 14, 14,  3,  1,  8,  8, 11, 14, 13,  2,  3,  1,  8,  8]])
    >>> y  # the value 8 8, scored at the positions of SEP and the first 8 of the query region
    tensor([[-100, ..., -100,    8,    8, -100]])
    """
    m = resolve_num_needles(variant, num_needles)
    _check_args(vocab_size, seq_len, depth, num_examples, variant, haystack, m, key_len, value_len)
    voc, lay = niah_vocab(vocab_size), niah_layout(seq_len, variant, haystack, m, key_len, value_len)
    g = torch.Generator().manual_seed(seed)
    n, K, V = num_examples, len(voc.keys), len(voc.values)

    key_ids = sample_distinct(n, 0, K ** key_len, m if variant == "multikey" else 1, g)  # column 0 is queried
    value_ids = sample_distinct(n, 0, V ** value_len, m, g)
    keys = _digits(key_ids.expand(n, m) if variant != "multikey" else key_ids, K, key_len, voc.keys.start)
    values = _digits(value_ids, V, value_len, voc.values.start)
    needles = torch.cat([keys, torch.full((n, m, 1), SEP), values], dim=2)  # [N, m, needle_len]
    inputs = torch.empty(n, seq_len, dtype=torch.long)
    _fill_haystack(inputs[:, :lay.context_len], lay, haystack, voc, key_len, key_ids[:, 0], g)
    order, starts = _needle_order(lay, depth, n, g)
    if variant != "multivalue":  # multivalue needles differ only in value: value r goes to rank r
        needles = needles.gather(1, order[..., None].expand(-1, -1, lay.needle_len))  # by position
    inputs.scatter_(1, (starts[..., None] + torch.arange(lay.needle_len)).flatten(1), needles.flatten(1))

    answer = values.flatten(1) if variant == "multivalue" else values[:, 0]  # every value / the anchor's
    query = inputs[:, lay.context_len:]
    query[:, 0], query[:, -lay.answer_len - 1] = QUERY, SEP
    query[:, 1:1 + key_len], query[:, -lay.answer_len:] = keys[:, 0], answer
    labels = torch.full_like(inputs, IGNORE)
    labels[:, lay.answer_start - 1: seq_len - 1] = answer
    return inputs, labels


def depth_key(length: int, depth: float) -> str:
    """The evals suffix of one grid cell: ``len=2048,depth=0.25``."""
    return f"len={length},depth={float(depth)!r}"


def grid_summary(metrics: dict[str, float]) -> dict[str, float]:
    """Means over the grid (``exact_match``, ``accuracy``) and over depths per length
    (``exact_match@len=L``, ``accuracy@len=L``); cells weigh equally."""
    out = {}
    for metric in ("exact_match", "accuracy"):
        rows = niah_grid(metrics, metric)
        if not rows:
            continue
        out[metric] = sum(r[metric] for r in rows) / len(rows)
        for length in sorted({r["length"] for r in rows}):
            cells = [r[metric] for r in rows if r["length"] == length]
            out[f"{metric}@len={length}"] = sum(cells) / len(cells)
    return out


def eval_seed(seed: int, length: int) -> int:
    """Test data of run seed s at length L: ``test_seed(s) + L * 2**33``, odd like every test seed
    (training seeds are even), distinct per length, and shared by every depth at that length."""
    return test_seed(seed) + (length << 33)


@TASKS.register("niah")
class NIAH(Task):
    """Needle-in-a-haystack trained at ``seq_len`` (depths uniform in [0, 1]) and tested on the
    grid ``eval_lengths x eval_depths``, ``num_test_examples`` per cell.

    Metrics, per cell ``len=L,depth=D``: ``exact_match@len=L,depth=D``, the fraction of examples
    whose whole answer (every value token; for multivalue all values, in order) is predicted
    exactly, argmax at each teacher-forced answer position; ``accuracy@...``, the fraction of
    answer tokens predicted exactly, per example, averaged. Aggregates: ``exact_match`` (primary)
    and ``accuracy``, the mean over all cells; ``exact_match@len=L`` / ``accuracy@len=L``, the
    mean over depths. ``niah_grid(metrics)`` turns them back into heatmap rows.

    Evaluation cost at long lengths: ``evaluate`` shrinks the batch to
    ``max(1, eval_batch_size * seq_len // L)`` rows so a batch holds as many tokens at 64L as at
    L, which keeps the logits (``B * L * vocab_size`` floats: 256 x 256 x 1024 x 4 B = 268 MB
    at the defaults) and every per-token activation the same size at every length. Attention is
    the exception. A backend that materialises scores (``backend="math"``) holds
    ``B * heads * L**2`` floats per layer, i.e. ``eval_batch_size * seq_len * heads * L`` once
    the batch is shrunk: 64x more at 64L than at L, and at the defaults (256 x 256 tokens a
    batch, 4 heads) with L = 64 x 256 = 16384 that is 256 x 256 x 4 x 16384 x 4 B = 17 GB per
    layer; lower ``eval_batch_size`` or use SDPA. SDPA's flash / memory-efficient kernels (CPU
    and GPU) are O(L) in memory but O(L**2) in time: a token at 64L costs 64x the attention
    FLOPs of a token at L. Recurrent mixers are linear in both. The CPU default grid therefore
    stops at 8L; set ``eval_length_multipliers=(1, 2, 4, 8, 16, 32, 64)`` on a GPU for the full
    grid (its 64L test data at the defaults: 5 x 100 x 16384 tokens x 2 tensors x 8 B = 131 MB).
    """

    primary_metric = "exact_match"

    @dataclass(kw_only=True)
    class Config(TaskConfig):
        # Variants, needle counts (4) and the noise / kv ("needle") haystacks: RULER (Hsieh et al.
        # 2024, NVIDIA/RULER scripts/data/synthetic/niah.py). key_len 2 / value_len 3 over 340-token
        # sub-vocabularies carry ~17 / ~25 bits, like RULER's word keys and 7-digit values (~23 bits).
        # Sizes below are ours, CPU-sized: the paper evaluates pretrained models, not a training set.
        vocab_size: int = 1024
        seq_len: int = 256  # the training length L
        variant: Literal["single", "multikey", "multivalue"] = "single"
        haystack: Literal["noise", "kv"] = "noise"
        num_needles: int | None = None  # None: 1 for single, RULER's 4 otherwise
        key_len: int = 2
        value_len: int = 3
        num_train_examples: int = 20_000
        num_test_examples: int = 100  # per (length, depth) cell
        # The grid users want is L..64L, (1, 2, 4, 8, 16, 32, 64): GPU-sized (see the class docstring)
        eval_length_multipliers: tuple[int, ...] = (1, 2, 4, 8)
        eval_lengths: tuple[int, ...] | None = None  # explicit lengths; overrides the multipliers
        eval_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # Kamradt-style quartiles

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def grid_lengths(self) -> list[int]:
        """The evaluation lengths, sorted and deduplicated (after checking the grid config)."""
        c = self.cfg
        lengths = list(c.eval_lengths) if c.eval_lengths is not None else [c.seq_len * k for k in
                                                                            c.eval_length_multipliers]
        if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
            raise ValueError(f"niah: eval lengths {lengths} must be a non-empty list of positive ints; "
                             f"set eval_length_multipliers (e.g. (1, 2, 4)) or eval_lengths")
        if not c.eval_depths or any(not 0.0 <= d <= 1.0 for d in c.eval_depths):
            raise ValueError(f"niah: eval_depths={c.eval_depths} must be non-empty, each in [0, 1]")
        return sorted(set(lengths))

    def build(self, seed: int) -> TaskData:
        c = self.cfg
        common = dict(vocab_size=c.vocab_size, variant=c.variant, haystack=c.haystack,
                      num_needles=c.num_needles, key_len=c.key_len, value_len=c.value_len)
        lengths = self.grid_lengths()
        train = niah(seq_len=c.seq_len, depth=None, num_examples=c.num_train_examples,
                     seed=train_seed(seed), **common)
        evals = {depth_key(length, d): Split(*niah(seq_len=length, depth=d, seed=eval_seed(seed, length),
                                                   num_examples=c.num_test_examples, **common))
                 for length in lengths for d in c.eval_depths}
        return TaskData(train=Split(*train), evals=evals)

    @torch.no_grad()
    def evaluate(self, model, evals: dict[str, Split], batch_size: int = 256, device=None) -> dict[str, float]:
        """Per cell as ``Task.evaluate``, with the batch shrunk to hold ``batch_size * seq_len``
        tokens, then the grid aggregates of ``grid_summary``."""
        metrics = {}
        for suffix, split in evals.items():
            rows = max(1, batch_size * self.cfg.seq_len // split.inputs.shape[1])
            metrics.update(super().evaluate(model, {suffix: split}, rows, device))
        metrics.update(grid_summary(metrics))
        return metrics
