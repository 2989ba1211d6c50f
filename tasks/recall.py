"""Synthetic recall tasks: MQAR exactly as Zoology defines it (Arora, Eyuboglu et al. 2023),
and its relatives. Every generator is a pure, vectorised function of its arguments returning
``(inputs, labels)``, LongTensors ``[num_examples, seq_len]`` with labels -100 where unscored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tasks.task import IGNORE, TASKS, Split, Task, TaskConfig, TaskData


def train_seed(seed: int) -> int:
    """Training data of run seed s uses 2s, test data 2s + 1: no test seed is ever a training seed."""
    return 2 * seed


def test_seed(seed: int) -> int:
    return 2 * seed + 1


def sample_distinct(num_rows: int, low: int, high: int, k: int, g: torch.Generator) -> Tensor:
    """Per row, ``k`` distinct integers from ``[low, high)`` in uniformly random order, ``[num_rows, k]``.

    Floyd's algorithm vectorised over rows (k steps, no [num_rows, high - low] table), then a
    random shuffle of each row, since Floyd's insertion order is not uniform."""
    size = high - low
    if not 0 <= k <= size:
        raise ValueError(f"cannot draw {k} distinct values from [{low}, {high})")
    picks = torch.empty(num_rows, k, dtype=torch.long)
    for i, j in enumerate(range(size - k, size)):
        t = torch.randint(0, j + 1, (num_rows,), generator=g)
        taken = (picks[:, :i] == t[:, None]).any(dim=1)
        picks[:, i] = torch.where(taken, j, t)
    order = torch.rand(num_rows, k, generator=g).argsort(dim=1)
    return picks.gather(1, order) + low


def weighted_without_replacement(log_p: Tensor, num_rows: int, k: int, g: torch.Generator) -> Tensor:
    """Per row, ``k`` distinct indices drawn one after another with probability proportional to
    ``exp(log_p)`` among those left (the Gumbel top-k trick: the same distribution as repeated
    ``np.random.choice(..., replace=False, p=p)``), ``[num_rows, k]`` in draw order."""
    u = torch.rand(num_rows, log_p.numel(), generator=g, dtype=torch.float64).clamp_min(1e-300)
    return (log_p.double() - torch.log(-torch.log(u))).topk(k, dim=1).indices


def mqar(vocab_size: int, seq_len: int, num_kv_pairs: int, num_examples: int, power_a: float = 0.01,
         random_non_queries: bool = False, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Multi-query associative recall, as Zoology's ``multiquery_ar`` (one pass).

    ``k1 v1 ... kn vn`` with n distinct keys from ``[1, V/2)`` and distinct values from
    ``[V/2, V)``, then a query region of ``(seq_len - 2n) / 2`` even slots where each key appears
    exactly once, at slot g chosen without replacement with probability proportional to
    ``(g + 1) ** (power_a - 1)`` (recent-gap power law). Filler is 0, or random tokens when
    ``random_non_queries``. The label at a query key's own position is its value (next-token
    prediction), -100 elsewhere.

    >>> x, y = mqar(vocab_size=12, seq_len=16, num_kv_pairs=2, num_examples=1)
    """
    if seq_len % 2:
        raise ValueError(f"mqar: seq_len={seq_len} must be even (keys and values come in pairs)")
    if vocab_size <= seq_len:
        raise ValueError(f"mqar: vocab_size={vocab_size} must exceed seq_len={seq_len} (Zoology's rule)")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(f"mqar: 4 * num_kv_pairs={4 * num_kv_pairs} must be <= seq_len={seq_len}: the "
                         f"pairs and one query slot per key must fit; lower num_kv_pairs or raise seq_len")
    g = torch.Generator().manual_seed(seed)
    n, N, context = num_kv_pairs, num_examples, 2 * num_kv_pairs
    keys = sample_distinct(N, 1, vocab_size // 2, n, g)
    values = sample_distinct(N, vocab_size // 2, vocab_size, n, g)
    space = (seq_len - context) // 2
    log_p = (power_a - 1) * torch.log(torch.arange(1, space + 1, dtype=torch.float64))
    gaps = weighted_without_replacement(log_p, N, n, g)

    inputs = torch.zeros(N, seq_len + 1, dtype=torch.long)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    inputs.scatter_(1, context + 2 * gaps, keys)
    labels = torch.full((N, seq_len + 1), IGNORE, dtype=torch.long)
    labels.scatter_(1, context + 2 * gaps + 1, values)
    inputs, labels = inputs[:, :-1], labels[:, 1:]
    if random_non_queries:
        noise = torch.randint(0, vocab_size, inputs.shape, generator=g)
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, labels


@TASKS.register("mqar")
class MQAR(Task):
    """Zoology's MQAR. ``accuracy``: per example, the fraction of queried values predicted
    exactly, averaged over the test examples."""

    @dataclass(kw_only=True)
    class Config(TaskConfig):
        # Zoology (Arora et al. 2023, Fig. 2 and zoology/data/multiquery_ar.py)
        vocab_size: int = 8192
        seq_len: int = 64
        num_kv_pairs: int = 4
        power_a: float = 0.01
        random_non_queries: bool = False
        num_train_examples: int = 100_000
        num_test_examples: int = 3_000

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def build(self, seed: int) -> TaskData:
        c = self.cfg
        common = dict(vocab_size=c.vocab_size, seq_len=c.seq_len, num_kv_pairs=c.num_kv_pairs,
                      power_a=c.power_a, random_non_queries=c.random_non_queries)
        train = mqar(num_examples=c.num_train_examples, seed=train_seed(seed), **common)
        test = mqar(num_examples=c.num_test_examples, seed=test_seed(seed), **common)
        return TaskData(train=Split(*train), evals={"": Split(*test)})


# ---------------------------------------------------------------------------------------------
# MAD's recall tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"),
# as athms/mad-lab writes them (mad/data/instances.py, commit 0f49a45) in the form its benchmark
# runs: multi_query=True (every recalled value is scored; no copy-prefix token).


def first_occurrence(codes: Tensor, valid: Tensor) -> Tensor:
    """Per slot, the index of the earliest valid slot of its row holding the same code (itself if
    it is the first); invalid slots match nothing and map to themselves. ``[N, S] -> [N, S]``.

    A stable sort lines equal codes up in slot order, so each run's head is the first occurrence:
    O(S log S) per row, with neither an [N, S, S] comparison nor an [N, num_codes] table."""
    N, S = codes.shape
    idx = torch.arange(S).expand(N, S)
    codes = torch.where(valid, codes, -1 - idx)  # real codes are >= 0, so these are unique
    sorted_codes, order = codes.sort(dim=1, stable=True)
    head = torch.ones(N, S, dtype=torch.bool)
    head[:, 1:] = sorted_codes[:, 1:] != sorted_codes[:, :-1]
    head_at = torch.where(head, idx, 0).cummax(dim=1).values
    first = torch.empty_like(order)
    return first.scatter_(1, order, order.gather(1, head_at))


def _check_mad_vocab(name: str, vocab_size: int, noise_vocab_size: int, frac_noise: float,
                     specials: int, need_keys: int = 1, need_values: int = 1) -> None:
    if noise_vocab_size < 0 or not 0 <= frac_noise < 1:
        raise ValueError(f"{name}: need noise_vocab_size >= 0 and 0 <= frac_noise < 1 (MAD's rule), got "
                         f"noise_vocab_size={noise_vocab_size}, frac_noise={frac_noise}")
    if frac_noise > 0 and noise_vocab_size == 0:
        raise ValueError(f"{name}: frac_noise={frac_noise} needs noise tokens; set noise_vocab_size > 0")
    data = vocab_size - specials - noise_vocab_size
    if data // 2 < need_keys or data - data // 2 < need_values:
        raise ValueError(f"{name}: vocab_size={vocab_size} leaves {data // 2} key and {data - data // 2} "
                         f"value tokens after {noise_vocab_size} noise and {specials} special tokens; need "
                         f"at least {need_keys} and {need_values}: raise vocab_size")


def _noise_slots(num_rows: int, num_pairs: int, frac_noise: float, g: torch.Generator) -> Tensor:
    """MAD: each of the ``num_pairs - 1`` pair slots before the probe is noise with probability
    ``frac_noise``, except one spared slot drawn from all ``num_pairs`` (so when the draw lands on
    the probe slot none is spared). Where every slot came out noise, MAD fails (no key to probe);
    those rows keep slot 0 as a pair. ``[num_rows, num_pairs - 1]`` bool."""
    if frac_noise == 0:
        return torch.zeros(num_rows, num_pairs - 1, dtype=torch.bool)
    noise = torch.rand(num_rows, num_pairs - 1, generator=g) < frac_noise
    spared = torch.randint(0, num_pairs, (num_rows, 1), generator=g)
    noise &= torch.arange(num_pairs - 1) != spared
    noise[noise.all(dim=1), 0] = False
    return noise


def in_context_recall(vocab_size: int = 16, seq_len: int = 128, *, num_examples: int,
                      noise_vocab_size: int = 0, frac_noise: float = 0.0, training: bool = False,
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """MAD's in-context recall (``generate_in_context_recall_instance``, multi_query=True); with
    noise, MAD's noisy in-context recall. ``[num_examples, seq_len]`` inputs and labels.

    ``seq_len / 2`` slots of two tokens. The first ``seq_len/2 - 1`` are key-value pairs ``k v``:
    keys drawn uniformly WITH replacement from ``[0, K)``, ``K = (V - noise_vocab_size) // 2``; a
    key's value is drawn from ``[K, V - noise_vocab_size)`` where the key first appears and is kept
    for the rest of the sequence. With probability ``frac_noise`` a slot is two noise tokens from
    ``[V - noise_vocab_size, V)`` instead. The last slot repeats a key already shown (uniformly over
    the distinct keys shown) and its value. No special tokens.

    Labels, ``training=False`` (MAD's test targets): at a key's position its value if that key
    appeared earlier in the sequence (first appearances cannot be recalled), -100 elsewhere.
    ``training=True`` (MAD's training targets): the next token at every position but the last.
    MAD's inputs stop one token earlier; the final value kept here is never scored, and a causal
    model's scored predictions cannot see it.

    >>> in_context_recall(vocab_size=6, seq_len=10, num_examples=1, seed=0)  # keys 0-2, values 3-5
    (tensor([[2, 4, 0, 3, 2, 4, 0, 3, 0, 3]]),
     tensor([[-100, -100, -100, -100, 4, -100, 3, -100, 3, -100]]))
    """
    if seq_len % 2 or seq_len < 4:
        raise ValueError(f"in_context_recall: seq_len={seq_len} must be even (key-value pairs) and >= 4 "
                         f"(one pair, then the probe)")
    _check_mad_vocab("in_context_recall", vocab_size, noise_vocab_size, frac_noise, specials=0)
    g = torch.Generator().manual_seed(seed)
    N, P, data = num_examples, seq_len // 2, vocab_size - noise_vocab_size
    keys = torch.randint(0, data // 2, (N, P - 1), generator=g)
    fresh = torch.randint(data // 2, data, (N, P - 1), generator=g)  # the value a key gets if it is new
    noise = _noise_slots(N, P, frac_noise, g)
    slot = torch.arange(P - 1)
    first = first_occurrence(keys, ~noise)
    values = fresh.gather(1, first)
    heads = ~noise & (first == slot)  # one slot per distinct key shown
    probe = torch.where(heads, torch.rand(N, P - 1, generator=g), -1.0).argmax(dim=1, keepdim=True)

    pairs = torch.stack([torch.cat([keys, keys.gather(1, probe)], 1),
                         torch.cat([values, values.gather(1, probe)], 1)], dim=2)  # [N, P, 2]
    if frac_noise > 0:
        noise_tokens = torch.randint(data, vocab_size, (N, P - 1, 2), generator=g)
        pairs[:, :-1] = torch.where(noise[..., None], noise_tokens, pairs[:, :-1])
    inputs = pairs.flatten(1)
    if training:
        return inputs, _next_token_labels(inputs)
    recalled = torch.cat([~noise & (first < slot), torch.ones(N, 1, dtype=torch.bool)], dim=1)
    labels = torch.full((N, P, 2), IGNORE, dtype=torch.long)
    labels[..., 0] = torch.where(recalled, pairs[..., 1], IGNORE)
    return inputs, labels.flatten(1)


def _next_token_labels(inputs: Tensor) -> Tensor:
    labels = torch.full_like(inputs, IGNORE)
    labels[:, :-1] = inputs[:, 1:]
    return labels


def fuzzy_recall(vocab_size: int = 16, seq_len: int = 128, k_motif_size: int = 3, v_motif_size: int = 3, *,
                 num_examples: int, noise_vocab_size: int = 0, frac_noise: float = 0.0,
                 training: bool = False, seed: int = 0) -> tuple[Tensor, Tensor]:
    """MAD's fuzzy in-context recall (``generate_fuzzy_in_context_recall_instance``, multi_query=True):
    keys and values are motifs of several tokens. ``[num_examples, seq_len]`` inputs and labels.

    Token ids: keys from ``[0, K)``, values from ``[K, D)`` (``D = V - 1 - noise_vocab_size``,
    ``K = D // 2``), noise from ``[D, V - 1)``, and ``V - 1`` pads the front of the sequence. A key is
    an ordered tuple of distinct key tokens, 1..k_motif_size long when ``training`` and always
    k_motif_size long in the test form; a value likewise 1..v_motif_size tokens. MAD's loop: pairs
    ``key value`` (keys with replacement, a key's value fixed at its first appearance) or, with
    probability ``frac_noise``, noise as long as a pair, until the stream reaches
    ``seq_len - |probe| - (k_motif_size + v_motif_size)`` tokens. A probe pair is placed in the slot
    starting at a random offset in ``[0, seq_len - 2 |probe|)`` (unless its key came up by chance
    first) and asked again at the end; the front is padded to ``seq_len + 1`` tokens and shifted.

    Labels, ``training=False``: the next value token at each token whose successor is part of a value
    whose key appeared earlier (so at a key's last token, the value's first), -100 elsewhere.
    ``training=True``: the next token everywhere, padding included (MAD's training targets). One
    departure: MAD scores the final value even when the loop ended before the probe was placed
    (its key then never appeared, ~2% of test sequences at the defaults); here it is not scored.

    >>> fuzzy_recall(8, 16, 2, 2, num_examples=1, seed=1)  # keys 0-2, values 3-6, pad 7
    (tensor([[7, 7, 7, 7, 7, 0, 1, 6, 4, 0, 1, 6, 4, 0, 1, 6]]),
     tensor([[-100, -100, -100, -100, -100, -100, -100, -100, -100, -100, 6, 4, -100, -100, 6, 4]]))
    """
    Km, Vm = k_motif_size, v_motif_size
    if Km < 1 or Vm < 1 or seq_len <= 2 * (Km + Vm):
        raise ValueError(f"fuzzy_recall: need k_motif_size, v_motif_size >= 1 and seq_len > 2 * "
                         f"(k_motif_size + v_motif_size) (MAD's probe window), got k_motif_size={Km}, "
                         f"v_motif_size={Vm}, seq_len={seq_len}")
    _check_mad_vocab("fuzzy_recall", vocab_size, noise_vocab_size, frac_noise, specials=1, need_keys=Km,
                     need_values=Vm)
    data = vocab_size - 1 - noise_vocab_size
    if (data // 2 + 1) ** Km >= 2 ** 62:
        raise ValueError(f"fuzzy_recall: (keys + 1) ** k_motif_size = {(data // 2 + 1) ** Km} overflows "
                         f"int64 key codes; lower vocab_size or k_motif_size")
    g = torch.Generator().manual_seed(seed)
    probe, slots = _fuzzy_draws(num_examples, seq_len, Km, Vm, data, vocab_size - 1, frac_noise, training, g)
    budget = seq_len - (Km + Vm) - probe["k_len"] - probe["v_len"]  # MAD loops while len(inputs) < budget
    active, recalled = _fuzzy_resolve(slots, probe, budget)
    stream, targets = _fuzzy_stream(slots, probe, active, recalled, seq_len, pad=vocab_size - 1)
    return stream[:, :-1], (stream if training else targets)[:, 1:]


def _motif_code(key: Tensor, k_len: Tensor, num_keys: int) -> Tensor:
    """One integer per key motif (its first ``k_len`` tokens, base ``num_keys + 1``, 0 = absent), so
    motifs of different lengths never collide. ``[..., Km], [...] -> [...]``."""
    j = torch.arange(key.shape[-1])
    digits = torch.where(j < k_len[..., None], key + 1, 0)
    return (digits * torch.tensor(num_keys + 1) ** j).sum(-1)


def _fuzzy_draws(N: int, seq_len: int, Km: int, Vm: int, data: int, pad: int, frac_noise: float,
                 training: bool, g: torch.Generator) -> tuple[dict, dict]:
    """Everything MAD's loop draws, for ``seq_len // 2`` slots (more than it can fill: a pair has at
    least 2 tokens). The first ``k_len`` tokens of a uniform ordered tuple of ``Km`` distinct tokens
    are a uniform ordered tuple of ``k_len``, as MAD's ``permutations(vocab, k_len)`` draw."""
    num_keys, S = data // 2, seq_len // 2

    def motifs(shape: tuple[int, int]) -> dict:
        rows = shape[0] * shape[1]
        return dict(k_len=torch.randint(1, Km + 1, shape, generator=g) if training else torch.full(shape, Km),
                    v_len=torch.randint(1, Vm + 1, shape, generator=g),
                    key=sample_distinct(rows, 0, num_keys, Km, g).view(*shape, Km),
                    value=sample_distinct(rows, num_keys, data, Vm, g).view(*shape, Vm))

    probe, slots = motifs((N, 1)), motifs((N, S))
    window = seq_len - 2 * (probe["k_len"] + probe["v_len"])  # MAD: probe_idx = rng.choice(window)
    probe["at"] = (torch.rand(N, 1, generator=g, dtype=torch.float64) * window).long()
    slots["noise"] = torch.rand(N, S, generator=g) < frac_noise
    slots["noise_tokens"] = (torch.randint(data, pad, (N, S, Km + Vm), generator=g) if frac_noise > 0
                             else torch.zeros(N, S, Km + Vm, dtype=torch.long))
    for d in (probe, slots):
        d["code"] = _motif_code(d["key"], d["k_len"], num_keys)
    slots["new_value"], slots["new_v_len"] = slots.pop("value"), slots.pop("v_len")  # what a new key gets
    return probe, slots


def _fuzzy_values(slots: dict, probe: dict) -> None:
    """Each slot's value (the one drawn where its key first appeared; the probe key's is always the
    probe value, as in MAD), its length in tokens and its start offset, in place."""
    is_probe = slots["code"] == probe["code"]
    new_value = torch.where(is_probe[..., None], probe["value"], slots["new_value"])
    new_v_len = torch.where(is_probe, probe["v_len"], slots["new_v_len"])
    first = first_occurrence(slots["code"], ~slots["noise"])
    slots["first"] = first
    slots["value"] = new_value.gather(1, first[..., None].expand_as(new_value))
    # a noise slot is as long as the key and value sizes drawn for it
    v_len = torch.where(slots["noise"], slots["new_v_len"], new_v_len.gather(1, first))
    slots["len"] = slots["k_len"] + v_len
    slots["start"] = slots["len"].cumsum(dim=1) - slots["len"]


def _fuzzy_resolve(slots: dict, probe: dict, budget: Tensor) -> tuple[Tensor, Tensor]:
    """Run MAD's loop over the drawn slots: place the probe, find where the stream stops. Returns
    ``(active, recalled)``, ``[N, S]`` bool (in the stream; a pair whose key came earlier), and
    sets ``probe["shown"]`` (``[N, 1]``: its key is in the stream)."""
    idx = torch.arange(slots["code"].shape[1])
    _fuzzy_values(slots, probe)
    # MAD puts the probe in the first slot that starts at or after probe_at, unless its key came up
    # by chance before (it then got the probe value and counted as placed)
    late = slots["start"] >= probe["at"]
    at = late.int().argmax(dim=1, keepdim=True)
    by_chance = (~slots["noise"] & (slots["code"] == probe["code"]) & (idx < at)).any(dim=1, keepdim=True)
    place = (idx == at) & late.any(dim=1, keepdim=True) & ~by_chance
    for name, new in (("key", "key"), ("k_len", "k_len"), ("code", "code"), ("new_value", "value"),
                      ("new_v_len", "v_len")):
        where = place[..., None] if slots[name].dim() == 3 else place
        slots[name] = torch.where(where, probe[new], slots[name])
    slots["noise"] &= ~place
    _fuzzy_values(slots, probe)  # again: later repeats of the displaced key now meet it as new
    active = slots["start"] < budget
    pair = active & ~slots["noise"]
    probe["shown"] = (pair & (slots["code"] == probe["code"])).any(dim=1, keepdim=True)
    return active, pair & (slots["first"] < idx)


def _motif_tokens(key: Tensor, k_len: Tensor, value: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lay each ``key value`` pair out in ``Km + Vm`` columns: ``(tokens, is_value, valid)``, all
    ``[..., Km + Vm]``; columns at or past ``length`` are not part of the stream."""
    Km, Vm = key.shape[-1], value.shape[-1]
    w = torch.arange(Km + Vm)
    k_len = k_len[..., None]
    key_part = key.gather(-1, w.clamp(max=Km - 1).expand(*key.shape[:-1], -1))
    value_part = value.gather(-1, (w - k_len).clamp(0, Vm - 1))
    is_value = w >= k_len
    return torch.where(is_value, value_part, key_part), is_value, w < length[..., None]


def _fuzzy_stream(slots: dict, probe: dict, active: Tensor, recalled: Tensor, seq_len: int,
                  pad: int) -> tuple[Tensor, Tensor]:
    """MAD's stream: the active slots, then the probe pair, front-padded to ``seq_len + 1`` tokens.
    Returns ``(stream, targets)``, ``[N, seq_len + 1]``; targets hold the value tokens of recalled
    pairs (and of the probe, when its key was shown) at their own positions, -100 elsewhere."""
    N, Km, Vm = slots["key"].shape[0], slots["key"].shape[-1], slots["value"].shape[-1]
    w = torch.arange(Km + Vm)
    probe_len = probe["k_len"] + probe["v_len"]
    end = (slots["len"] * active).sum(dim=1, keepdim=True)
    offset = seq_len + 1 - probe_len - end  # the front padding, >= 2: the last slot starts < budget
    stream = torch.full((N, seq_len + 2), pad, dtype=torch.long)  # column -1 takes the unused columns
    targets = torch.full_like(stream, IGNORE)
    tokens, is_value, valid = _motif_tokens(slots["key"], slots["k_len"], slots["value"], slots["len"])
    tokens = torch.where(slots["noise"][..., None], slots["noise_tokens"], tokens)
    pos = offset[..., None] + slots["start"][..., None] + w
    _scatter(stream, targets, pos, valid & active[..., None], tokens, recalled[..., None] & is_value)
    tokens, is_value, valid = _motif_tokens(probe["key"], probe["k_len"], probe["value"], probe_len)
    pos = (seq_len + 1 - probe_len)[..., None] + w
    _scatter(stream, targets, pos, valid, tokens, probe["shown"][..., None] & is_value)
    return stream[:, :-1], targets[:, :-1]


def _scatter(stream: Tensor, targets: Tensor, pos: Tensor, valid: Tensor, tokens: Tensor,
             scored: Tensor) -> None:
    """Write ``tokens`` (and, where ``scored``, into ``targets``) at ``pos`` where ``valid``; the
    other columns land in the discard column -1."""
    pos = torch.where(valid, pos, stream.shape[1] - 1).flatten(1)
    stream.scatter_(1, pos, tokens.flatten(1))
    targets.scatter_(1, pos, torch.where(scored, tokens, IGNORE).flatten(1))


@TASKS.register("in_context_recall")
class InContextRecall(Task):
    """MAD's in-context recall (Poli et al. 2024; mad-lab configs/tasks/in-context-recall.yml and
    ``MADConfig`` defaults). Training uses MAD's training targets (next token everywhere); the test
    set scores only recalled values (see ``in_context_recall``).

    ``accuracy``: per test example, the fraction of scored value tokens predicted exactly,
    averaged over examples; ``exact_match``: the fraction of examples with all of them right.
    (MAD itself reports torchmetrics' MulticlassAccuracy, class-macro-averaged, over the scored
    tokens: a close but not identical number.)"""

    @dataclass(kw_only=True)
    class Config(TaskConfig):
        # mad-lab configs/tasks/*.yml baselines and MADConfig's example counts; MAD trains them
        # for 200 epochs at batch 128, AdamW, lr in {1e-4, 5e-4, 1e-3} (mad/configs.py)
        vocab_size: int = 16
        seq_len: int = 128
        noise_vocab_size: int = 0
        frac_noise: float = 0.0
        num_train_examples: int = 12_800
        num_test_examples: int = 1_280

    generator = staticmethod(in_context_recall)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def build(self, seed: int) -> TaskData:
        c = self.cfg.to_dict()
        n_train, n_test = c.pop("num_train_examples"), c.pop("num_test_examples")
        train = self.generator(num_examples=n_train, training=True, seed=train_seed(seed), **c)
        test = self.generator(num_examples=n_test, training=False, seed=test_seed(seed), **c)
        return TaskData(train=Split(*train), evals={"": Split(*test)})


@TASKS.register("noisy_recall")
class NoisyRecall(InContextRecall):
    """MAD's noisy in-context recall (configs/tasks/noisy-in-context-recall.yml): in-context recall
    where each pair slot is, with probability ``frac_noise``, two tokens from a separate noise
    vocabulary ``[vocab_size - noise_vocab_size, vocab_size)``. Metrics as ``in_context_recall``."""

    @dataclass(kw_only=True)
    class Config(InContextRecall.Config):
        vocab_size: int = 32
        noise_vocab_size: int = 16
        frac_noise: float = 0.2


@TASKS.register("fuzzy_recall")
class FuzzyRecall(InContextRecall):
    """MAD's fuzzy in-context recall (configs/tasks/fuzzy-in-context-recall.yml): keys and values of
    1..3 tokens; the test set asks 3-token keys. Metrics as ``in_context_recall``, over value tokens."""

    @dataclass(kw_only=True)
    class Config(InContextRecall.Config):
        k_motif_size: int = 3
        v_motif_size: int = 3

    generator = staticmethod(fuzzy_recall)
