"""RULER-style text needle-in-a-haystack for pretrained language models (Hsieh et al. 2024,
"RULER: What's the Real Context Size of Your Long-Context Language Models?", after
NVIDIA/RULER scripts/data/synthetic/niah.py; written anew here).

One prompt (RULER's ``niah`` template, with the answer prefix for base models)::

    Some special magic numbers are hidden within the following text. Make sure to memorize it.
    I will quiz you about the numbers afterwards.
    The grass is green. The sky is blue. ... One of the special magic numbers for
    wakeful-crayon is: 4830117. ... There and back again.
    What are all the special magic numbers for wakeful-crayon mentioned in the provided text?
    The special magic numbers for wakeful-crayon mentioned in the provided text are

- haystack: ``"noise"`` (RULER's repeated filler sentences, one sentence a unit), ``"stdlib"``
  (the Python standard library corpus of ``tasks.lm_data``, one whitespace word a unit), or a
  path to a text file / directory (one word a unit);
- keys / values: ``"words"`` (adjective-noun pairs from a built-in list, e.g. ``wakeful-crayon``),
  ``"numbers"`` (7 digits) or ``"uuids"`` (``uuid.UUID`` from a seeded ``random.Random``);
- variants: ``single`` (one needle), ``multikey`` (the queried needle plus distractor needles
  with other keys), ``multivalue`` (one key, several values; all must be returned),
  ``multiquery`` (several keys asked at once; every value must be returned). ``num_needles``
  defaults to 1 / 4 / 4 / 4 as RULER's ``niah_single``, ``niah_multikey_1``,
  ``niah_multivalue`` and ``niah_multiquery``.

Length and depth: ``build_prompt`` binary-searches the number of haystack units so that the
tokenized prompt is the longest one not above ``target_tokens`` (so it falls short by at most
about one unit's tokens). Needle 0 (the anchor, a queried needle) is inserted after
``round(depth * units)`` haystack units; the other needles after a seeded uniform number of
units. Everything is a pure function of its arguments and the seed: for one seed, every
(length, depth) cell has the same keys and values.

Scoring, both ways (outputs are cut at the first ``stop`` string, ``"\\n"`` by default):

- ``ruler_score``: RULER's ``string_match_all``: the share of reference strings found
  (case-insensitive substring) in the output. Listing many candidates games it.
- ``exact_match``: the values the output names (every substring of the value format, minus
  the queried keys, deduplicated) equal the references as a set of the same size: 1.0 or 0.0.
  Order is free (RULER's prompt asks for no order).

Metric keys (``arena.records.metric_key``): ``exact_match@len=L,depth=D`` and
``ruler_score@len=L,depth=D`` per cell (``arena.report.grids.niah_grid`` reads them), the
means per length ``exact_match@len=L`` and over the grid ``exact_match`` (cells weigh equally),
and ``prompt_tokens@len=L`` (the mean actual prompt length).
"""
from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

VARIANTS = ("single", "multikey", "multivalue", "multiquery")
KINDS = ("words", "numbers", "uuids")
NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
RULER_NUM_NEEDLES = 4
DEFAULT_STOP = "\n"

TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {type_v} afterwards.\n{context}\n"
            "What are all the special magic {type_v} for {query} mentioned in the provided text? "
            "The special magic {type_v} for {query} mentioned in the provided text are")
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."

# A fixed word list (no download): keys and word values are "adjective-noun" pairs.
_ADJECTIVES_TEXT = """
able acid adorable agile alert amber ancient angry arctic ashen austere awake bashful bitter blithe
bold brave brief bright brisk broad bumpy calm candid careful cheap chilly civic clever cloudy
clumsy coastal cold cosmic crisp cubic curly damp daring dark dear deep dense dizzy dreary dry dusty
eager early earthy easy elated elder empty epic equal exotic faint fancy fast fierce fiery flat
fluffy fond frail free fresh frosty fuzzy gentle giant glad glossy golden grand grassy great green
grumpy hairy handy happy hardy hasty hazy hearty heavy hidden hollow humble hungry icy idle jagged
jolly jumpy keen kind lame large lazy light limber lively lofty loud lucky lunar mellow merry mighty
mild misty modern modest moist muddy mute narrow neat nimble noble noisy odd oily olive orange pale
plain plucky polite proud pure quick quiet rainy rapid rare raw ready regal rich rigid ripe rocky
rosy rough round royal rural rusty sad salty sandy scarlet shaggy sharp shiny short shy silent silky
silly sleek sleepy slim slow smoky smooth snowy soft solar solid sour spare spicy stale steady steep
stern sticky stout strict sunny super sweet swift tall tame tart tender thick thin tidy tiny tough
tranquil upbeat urban vague vast velvet vivid wakeful warm wary weary wet whole wide wild windy wise
witty wooden woolly young zany zealous
"""
ADJECTIVES = tuple(_ADJECTIVES_TEXT.split())
_NOUNS_TEXT = """
acorn anchor ant apple apron arch arrow atlas badge bagel ball banjo barn basket beacon beaver bell
bench berry bicycle birch biscuit blanket boat bonnet book bottle boulder bracelet branch bread
breeze brick bridge brook broom bucket bugle butter button cabin cactus camel candle canoe canyon
carpet carrot castle cello chalk cherry chimney cider circus clock cloud clover coat comet compass
cookie copper coral cotton crayon cricket crown cup curtain daisy desk dolphin donkey door dragon
drum eagle easel ember engine falcon feather fern fiddle fig flag flute forest fossil fountain fox
garden garlic gate glacier glove goat grape guitar hammer harbor harp hat hazel helmet hill honey
horse island ivory jacket jar jelly kettle kite ladder lake lamp lantern lemon lily lizard lobster
locket magnet mango maple marble meadow melon mirror mitten moon mountain mug nectar needle nest oak
oar ocean olive onion orchard otter owl paddle panda paper parrot peach pearl pebble pencil pepper
piano pillow pine planet plum pond poppy potato puzzle quill rabbit radio raven ribbon river robin
rocket saddle sail salmon sandal scarf shell shovel silo sled slipper spoon squirrel star stone
stove straw sugar summit swan table teapot tiger timber tomato torch tower tractor trumpet tulip
turtle umbrella valley vase violin wagon walnut whale whistle willow window wizard wolf yacht zebra
"""
NOUNS = tuple(_NOUNS_TEXT.split())
_ADJ_SET, _NOUN_SET = frozenset(ADJECTIVES), frozenset(NOUNS)
_PATTERNS = {
    "numbers": re.compile(r"(?<!\d)\d{7}(?!\d)"),
    "uuids": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "words": re.compile(r"(?<![a-z-])[a-z]+-[a-z]+(?![a-z-])"),
}


# -- tokenizers ---------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255: the tokenizer of arena's byte-level models."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class _Wrapped:
    def __init__(self, tok, kind: str):
        self.tok, self.kind = tok, kind

    def encode(self, text: str) -> list[int]:
        if self.kind == "hf":
            return list(self.tok.encode(text, add_special_tokens=False))
        return list(self.tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        if self.kind == "hf":
            return self.tok.decode(list(ids), skip_special_tokens=True)
        return self.tok.decode(list(ids))


def as_tokenizer(tok):
    """An object with ``encode(text) -> list[int]`` and ``decode(ids) -> str``: ``"byte"`` (or
    None) gives ``ByteTokenizer``; a ``tokenizers.Tokenizer`` and a Hugging Face tokenizer are
    wrapped (no special tokens added); anything else with list-returning ``encode`` is used as is."""
    if tok is None or tok == "byte":
        return ByteTokenizer()
    if isinstance(tok, (ByteTokenizer, _Wrapped)):
        return tok
    if hasattr(tok, "convert_tokens_to_ids"):  # transformers PreTrainedTokenizer(Fast)
        return _Wrapped(tok, "hf")
    if hasattr(tok.encode("a"), "ids"):  # tokenizers.Tokenizer
        return _Wrapped(tok, "tokenizers")
    return tok


# -- samples ------------------------------------------------------------------------------------
@dataclass
class NiahPrompt:
    """One prompt and what it hides. Offsets are in characters of ``text``."""

    text: str
    token_ids: list[int]
    variant: str
    key_type: str
    value_type: str
    keys: list[str]  # every needle's key, in needle order (needle 0 is the anchor)
    values: list[str]  # every needle's value, in needle order
    query_keys: list[str]  # the keys the question asks for
    references: list[str]  # the values the answer must hold
    depth: float
    num_units: int  # haystack units in the context
    needle_units: list[int]  # haystack units before each needle (needle order)
    needle_spans: list[tuple[int, int]]  # (start, end) of each needle sentence in ``text``
    context_span: tuple[int, int]  # (start, end) of the context (haystack + needles) in ``text``
    unit_tokens: int = 0  # the most tokens one haystack unit takes (the length tolerance)
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def _rng(seed) -> random.Random:
    return random.Random(f"text_niah:{seed}")


def _draw(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    raise ValueError(f"text_niah: kind {kind!r} is not one of {KINDS}")


def _distinct(kind: str, n: int, rng: random.Random, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        s = _draw(kind, rng)
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


def resolve_num_needles(variant: str, num_needles: int | None) -> int:
    if variant not in VARIANTS:
        raise ValueError(f"text_niah: variant={variant!r} is not one of {VARIANTS}")
    m = (1 if variant == "single" else RULER_NUM_NEEDLES) if num_needles is None else int(num_needles)
    if variant == "single" and m != 1:
        raise ValueError(f"text_niah: variant 'single' has one needle, got num_needles={m}")
    if variant != "single" and m < 2:
        raise ValueError(f"text_niah: variant {variant!r} needs num_needles >= 2, got {m}")
    return m


def needles_for(variant: str, seed, key_type: str = "words", value_type: str = "numbers",
                num_needles: int | None = None) -> tuple[list[str], list[str], list[str], list[float]]:
    """``(keys, values, query_keys, distractor_fractions)`` of one sample, from ``seed`` alone:
    needle i says ``keys[i]`` -> ``values[i]``; ``fractions[i]`` in [0, 1] places needle i >= 1."""
    m = resolve_num_needles(variant, num_needles)
    for kind in (key_type, value_type):
        if kind not in KINDS:
            raise ValueError(f"text_niah: key/value type {kind!r} is not one of {KINDS}")
    rng, taken = _rng(seed), set()
    if variant == "multivalue":
        keys = _distinct(key_type, 1, rng, taken) * m
    else:
        keys = _distinct(key_type, m, rng, taken)
    values = _distinct(value_type, m, rng, taken)
    query = keys if variant == "multiquery" else keys[:1]
    fractions = [0.0] + [rng.random() for _ in range(m - 1)]
    return keys, values, query, fractions


# -- haystacks ----------------------------------------------------------------------------------
_CORPUS_WORDS: dict[str, list[str]] = {}


def haystack_units(haystack: str = "noise", max_bytes: int = 4_000_000) -> list[str]:
    """The unit sequence a haystack cycles through: RULER's five noise sentences, or the
    whitespace words of a corpus (``"stdlib"``, a text file or a directory; see
    ``tasks.lm_data.corpus_documents``), cached per process."""
    if haystack == "noise":
        return list(NOISE)
    if haystack not in _CORPUS_WORDS:
        from tasks.lm_data import corpus_documents

        words = []
        for _, data in corpus_documents(haystack, max_bytes):
            words += data.decode("utf-8", errors="replace").split()
        if not words:
            raise ValueError(f"text_niah: haystack {haystack!r} holds no words")
        _CORPUS_WORDS[haystack] = words
    return _CORPUS_WORDS[haystack]


def _type_name(kind: str) -> str:
    return kind  # RULER's type_needle_v: "words", "numbers", "uuids"


def _query_text(keys: list[str]) -> str:
    if len(keys) == 1:
        return keys[0]
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _render(units: list[str], start: int, n: int, needles: list[str], positions: list[int],
            type_v: str, query: str) -> tuple[str, list[tuple[int, int]], tuple[int, int]]:
    """Prompt text with ``n`` units (cycled from ``start``) and needle i after ``positions[i]`` units."""
    L = len(units)
    order = sorted(range(len(needles)), key=lambda i: (positions[i], i))
    pieces: list[str] = []
    needle_piece = {}
    u = 0
    for i in order:
        while u < positions[i]:
            pieces.append(units[(start + u) % L])
            u += 1
        needle_piece[i] = len(pieces)
        pieces.append(needles[i])
    while u < n:
        pieces.append(units[(start + u) % L])
        u += 1
    context = " ".join(pieces)
    head, tail = TEMPLATE.split("{context}")
    head = head.format(type_v=type_v)
    text = head + context + tail.format(type_v=type_v, query=query)
    # character spans of the needles
    offsets, pos = [], len(head)
    for p in pieces:
        offsets.append(pos)
        pos += len(p) + 1
    spans = [(offsets[needle_piece[i]], offsets[needle_piece[i]] + len(needles[i])) for i in range(len(needles))]
    return text, spans, (len(head), len(head) + len(context))


def build_prompt(tokenizer, target_tokens: int, depth: float, variant: str = "single", seed=0,
                 haystack: str = "noise", key_type: str = "words", value_type: str = "numbers",
                 num_needles: int | None = None) -> NiahPrompt:
    """The longest prompt whose token count under ``tokenizer`` is <= ``target_tokens``, with the
    anchor needle after ``round(depth * units)`` haystack units. Raises ValueError when even an
    empty haystack does not fit."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"text_niah: depth={depth} must lie in [0, 1]")
    tok = as_tokenizer(tokenizer)
    keys, values, query_keys, fractions = needles_for(variant, seed, key_type, value_type, num_needles)
    type_v = _type_name(value_type)
    needles = [NEEDLE.format(type_v=type_v, key=k, value=v) for k, v in zip(keys, values)]
    query = _query_text(query_keys)
    units = haystack_units(haystack)
    start = 0 if haystack == "noise" else _rng(f"{seed}:start").randrange(len(units))

    def positions(n: int) -> list[int]:
        return [int(depth * n + 0.5)] + [int(f * n + 0.5) for f in fractions[1:]]

    cache: dict[int, int] = {}

    def length(n: int) -> int:
        if n not in cache:
            cache[n] = len(tok.encode(_render(units, start, n, needles, positions(n), type_v, query)[0]))
        return cache[n]

    if length(0) > target_tokens:
        raise ValueError(f"text_niah: target_tokens={target_tokens} is too short: the prompt without "
                         f"haystack already takes {length(0)} tokens")
    lo, hi = 0, 1
    while length(hi) <= target_tokens:  # grow: lo fits, hi does not
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if length(mid) <= target_tokens:
            lo = mid
        else:
            hi = mid
    n = lo
    text, spans, ctx = _render(units, start, n, needles, positions(n), type_v, query)
    used = {(start + u) % len(units) for u in range(min(n, len(units)))} or {start % len(units)}
    unit_tokens = max(len(tok.encode(" " + units[u])) for u in used)
    references = list(values) if variant in ("multivalue", "multiquery") else values[:1]
    return NiahPrompt(text=text, token_ids=tok.encode(text), variant=variant, key_type=key_type,
                      value_type=value_type, keys=keys, values=values, query_keys=list(query_keys),
                      references=references, depth=float(depth), num_units=n, needle_units=positions(n),
                      needle_spans=spans, context_span=ctx, unit_tokens=unit_tokens)


# -- scoring ------------------------------------------------------------------------------------
def cut(output: str, stop: str | None = DEFAULT_STOP) -> str:
    """``output`` up to (not including) the first ``stop`` after its first non-space character."""
    if not stop:
        return output
    lead = len(output) - len(output.lstrip())
    i = output.find(stop, lead)
    return output if i < 0 else output[:i]


def ruler_score(output: str, references: Sequence[str]) -> float:
    """RULER's ``string_match_all``: the share of ``references`` found in ``output``
    (case-insensitive substrings), in [0, 1]."""
    if not references:
        raise ValueError("ruler_score: no references")
    low = output.lower()
    return sum(r.lower() in low for r in references) / len(references)


def extract_values(output: str, value_type: str, exclude: Sequence[str] = ()) -> list[str]:
    """The distinct values of ``value_type``'s format named in ``output`` (lowercased, in order
    of first appearance), minus ``exclude`` (the queried keys, which an answer may echo). Word
    values must be adjective-noun pairs of the built-in list."""
    if value_type not in _PATTERNS:
        raise ValueError(f"text_niah: value type {value_type!r} is not one of {KINDS}")
    skip = {e.lower() for e in exclude}
    found = []
    for s in _PATTERNS[value_type].findall(output.lower()):
        if value_type == "words":
            a, _, b = s.partition("-")
            if a not in _ADJ_SET or b not in _NOUN_SET:
                continue
        if s not in skip and s not in found:
            found.append(s)
    return found


def exact_match(output: str, references: Sequence[str], value_type: str, exclude: Sequence[str] = ()) -> float:
    """1.0 when the values ``output`` names (``extract_values``) are exactly ``references``
    (as a set of the same size: none missing, none extra), else 0.0."""
    got = extract_values(output, value_type, exclude)
    want = [r.lower() for r in references]
    return float(len(got) == len(set(want)) and set(got) == set(want))


def score(output: str, prompt: NiahPrompt, stop: str | None = DEFAULT_STOP) -> dict[str, float]:
    out = cut(output, stop)
    return {"exact_match": exact_match(out, prompt.references, prompt.value_type, prompt.query_keys),
            "ruler_score": ruler_score(out, prompt.references)}


# -- the grid -----------------------------------------------------------------------------------
ModelFn = Callable[[list[int], int], Sequence[int]]


def _fmt_depth(depth: float) -> float:
    return float(depth)


def run_text_niah(model_fn: ModelFn, tokenizer, lengths: Sequence[int], depths: Sequence[float],
                  variant: str = "single", num_samples: int = 4, seed: int = 0, haystack: str = "noise",
                  key_type: str = "words", value_type: str = "numbers", num_needles: int | None = None,
                  max_new_tokens: int | None = None, stop: str | None = DEFAULT_STOP,
                  progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Score ``model_fn`` on every (length, depth) cell with ``num_samples`` prompts each.

    ``model_fn(prompt_ids, max_new_tokens)`` returns the generated ids only (greedy decoding is
    the adapters' default). Sample s of every cell uses seed ``f"{seed}:{s}"`` (same needles
    across the grid). ``max_new_tokens=None``: the answer's token count plus 16.
    Returns ``{metric_key: value}`` (see the module docstring)."""
    from arena.records import metric_key

    tok = as_tokenizer(tokenizer)
    if num_samples < 1 or not lengths or not depths:
        raise ValueError("text_niah: need num_samples >= 1 and at least one length and one depth")
    metrics: dict[str, float] = {}
    names = ("exact_match", "ruler_score")
    for L in lengths:
        per_len = {n: [] for n in names}
        prompt_tokens = []
        for D in depths:
            cell = {n: [] for n in names}
            for s in range(num_samples):
                p = build_prompt(tok, int(L), float(D), variant, f"{seed}:{s}", haystack, key_type, value_type,
                                 num_needles)
                budget = max_new_tokens or len(tok.encode(" " + ", ".join(p.references) + ".")) + 16
                out = tok.decode(list(model_fn(list(p.token_ids), budget)))
                for n, v in score(out, p, stop).items():
                    cell[n].append(v)
                prompt_tokens.append(p.num_tokens)
            for n in names:
                metrics[metric_key(n, len=int(L), depth=_fmt_depth(D))] = sum(cell[n]) / len(cell[n])
                per_len[n].append(metrics[metric_key(n, len=int(L), depth=_fmt_depth(D))])
            if progress:
                progress(f"len={L} depth={D}: exact_match {metrics[metric_key('exact_match', len=int(L), depth=_fmt_depth(D))]:.3f}")
        for n in names:
            metrics[metric_key(n, len=int(L))] = sum(per_len[n]) / len(per_len[n])
        metrics[metric_key("prompt_tokens", len=int(L))] = sum(prompt_tokens) / len(prompt_tokens)
    for n in names:
        cells = [v for k, v in metrics.items() if k.startswith(n + "@") and ",depth=" in k]
        metrics[n] = sum(cells) / len(cells)
    return metrics


__all__ = [
    "KINDS",
    "NOISE",
    "VARIANTS",
    "ByteTokenizer",
    "NiahPrompt",
    "as_tokenizer",
    "build_prompt",
    "cut",
    "exact_match",
    "extract_values",
    "haystack_units",
    "needles_for",
    "ruler_score",
    "run_text_niah",
    "score",
]
