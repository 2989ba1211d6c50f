"""Corpora for the ``lm`` task: documents, tokenizers, and the memory-mapped token file.

A corpus is an ordered list of documents (files). It is tokenised once into a token file,
cached under ``$ARENA_CACHE/corpora`` (default ``~/.cache/arena/corpora``) by the sha256 of
the corpus bytes and the tokenizer id, and memory-mapped on every later use.

Token file format (version 1, little-endian)::

    offset  size  field
         0     8  magic            b"ARNATOK\\0"
         8     4  version          uint32, 1
        12     4  dtype code       uint32, 2 = uint16 tokens, 4 = uint32 tokens
        16     8  token count      uint64
        24     8  vocab size       uint64 (every token id is < vocab size)
        32     8  num_docs         uint64
        40     8  data offset      uint64, byte offset of the token array (64-byte aligned)
        48    64  tokenizer id     utf-8, NUL-padded ("byte", "bpe:8192@<12 hex>")
       112    16  reserved         zeros
       128        doc offsets      uint64[num_docs + 1], token offset of each document's start, then the count
                  doc keys         uint64[num_docs], first 8 bytes of sha256(document name): the split key
                  token bytes      uint32[vocab size], raw bytes each token id stands for (bits per byte)
    data offset   tokens           dtype[token count]
"""
from __future__ import annotations

import hashlib
import os
import struct
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"ARNATOK\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQQQQ64s16s")  # 128 bytes
DTYPES = {2: np.uint16, 4: np.uint32}
STDLIB_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
PREPARE_COUNT = 0  # times a corpus was tokenised in this process (tests check the cache with it)


def cache_dir() -> Path:
    return Path(os.environ.get("ARENA_CACHE", Path.home() / ".cache" / "arena")) / "corpora"


# -- documents ----------------------------------------------------------------------------------
def stdlib_documents() -> list[Path]:
    """The running Python's standard library ``.py`` files, sorted by path, without test
    directories or site-packages (CPython 3.11: 734 files, 12.1 MB; PSF License)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def corpus_documents(corpus: str, max_bytes: int = 0) -> list[tuple[str, bytes]]:
    """``(name, raw bytes)`` per document, in a fixed order: ``"stdlib"``, a text file, or a
    directory (every non-hidden file under it, sorted). ``max_bytes > 0`` keeps the leading
    whole documents up to that many bytes (at least one)."""
    if corpus == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        paths = stdlib_documents()
    else:
        root = Path(corpus).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"lm: corpus {corpus!r} does not exist; give 'stdlib', a text file, "
                                    f"a directory or a token file")
        paths = [root] if root.is_file() else sorted(
            (p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)),
            key=lambda p: p.relative_to(root).as_posix())
        root = root.parent if root.is_file() else root
    docs, total = [], 0
    for p in paths:
        if max_bytes and docs and total >= max_bytes:
            break
        data = p.read_bytes()
        docs.append((p.relative_to(root).as_posix(), data))
        total += len(data)
    if not docs:
        raise ValueError(f"lm: corpus {corpus!r} holds no documents")
    return docs


def corpus_hash(docs: list[tuple[str, bytes]]) -> str:
    """sha256 over every document's name and bytes, length-prefixed so boundaries count."""
    h = hashlib.sha256()
    for name, data in docs:
        n = name.encode()
        h.update(struct.pack("<QQ", len(n), len(data)))
        h.update(n)
        h.update(data)
    return h.hexdigest()


def doc_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


# -- tokenizers ---------------------------------------------------------------------------------
def parse_tokenizer(spec: str) -> tuple[str, int]:
    """``"byte"`` -> ("byte", 256); ``"bpe:8192"`` -> ("bpe", 8192). Anything else raises."""
    if spec == "byte":
        return "byte", 256
    kind, _, size = spec.partition(":")
    if kind == "bpe" and size.isdigit() and 257 <= int(size) <= 2**32 - 1:
        return "bpe", int(size)
    raise ValueError(f"lm: unknown tokenizer {spec!r}; use 'byte' or 'bpe:<vocab_size>' (vocab_size > 256)")


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as err:
        raise ImportError("lm: tokenizer 'bpe:N' needs the `tokenizers` package: pip install 'arena[lm]'") from err
    return tokenizers


def train_bpe(docs: list[tuple[str, bytes]], vocab_size: int, path: Path):
    """A byte-level BPE (GPT-2 style: every byte is a base symbol, so nothing is out of
    vocabulary) trained locally on all documents and saved as JSON at ``path``; reused if there."""
    tk = _require_tokenizers()
    if path.exists():
        return tk.Tokenizer.from_file(str(path))
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=[], show_progress=False)
    tok.train_from_iterator((d.decode("utf-8", errors="replace") for _, d in docs), trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return tok


def bpe_token_bytes(tok) -> np.ndarray:
    """Bytes per token id: byte-level BPE maps each byte to one character, so it is the length."""
    vocab = tok.get_vocab()
    out = np.zeros(max(vocab.values()) + 1, dtype=np.uint32)
    for s, i in vocab.items():
        out[i] = len(s)
    return out


# -- token files --------------------------------------------------------------------------------
@dataclass
class TokenFile:
    """A memory-mapped token file (see the module docstring for the layout)."""

    tokens: np.ndarray  # [token count], uint16 or uint32 memmap
    doc_offsets: np.ndarray  # [num_docs + 1] int64
    doc_keys: np.ndarray  # [num_docs] uint64
    token_bytes: np.ndarray  # [vocab size] uint32
    vocab_size: int
    tokenizer_id: str
    version: int = VERSION


def write_token_file(path: Path, docs_tokens: list[np.ndarray], doc_keys: list[int], token_bytes: np.ndarray,
                     tokenizer_id: str) -> None:
    """Write atomically (temp file, then rename) so a crash never leaves a half file in the cache."""
    vocab_size = len(token_bytes)
    code = 2 if vocab_size <= 2**16 else 4
    offsets = np.zeros(len(docs_tokens) + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum([len(t) for t in docs_tokens])
    tid = tokenizer_id.encode()
    if len(tid) > 64:
        raise ValueError(f"tokenizer id {tokenizer_id!r} is longer than 64 bytes")
    tables = offsets.tobytes() + np.asarray(doc_keys, dtype=np.uint64).tobytes() + token_bytes.astype("<u4").tobytes()
    data_offset = -(-(HEADER.size + len(tables)) // 64) * 64
    header = HEADER.pack(MAGIC, VERSION, code, int(offsets[-1]), vocab_size, len(docs_tokens), data_offset, tid, b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header + tables + b"\0" * (data_offset - HEADER.size - len(tables)))
        for t in docs_tokens:
            f.write(np.asarray(t, dtype=DTYPES[code]).astype(np.dtype(DTYPES[code]).newbyteorder("<")).tobytes())
    tmp.replace(path)


def is_token_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(8) == MAGIC


def read_token_file(path: Path) -> TokenFile:
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise ValueError(f"{path}: not an arena token file (bad magic)")
    _, version, code, count, vocab, ndocs, data_offset, tid, _ = HEADER.unpack(raw)
    if version != VERSION:
        raise ValueError(f"{path}: token file version {version}, this arena reads version {VERSION}")
    if code not in DTYPES:
        raise ValueError(f"{path}: unknown dtype code {code} (2 = uint16, 4 = uint32)")
    tables = np.memmap(path, dtype="<u8", mode="r", offset=HEADER.size, shape=(2 * ndocs + 1,))
    token_bytes = np.memmap(path, dtype="<u4", mode="r", offset=HEADER.size + 8 * (2 * ndocs + 1), shape=(vocab,))
    tokens = np.memmap(path, dtype=np.dtype(DTYPES[code]).newbyteorder("<"), mode="r", offset=data_offset,
                       shape=(count,))
    return TokenFile(tokens=tokens, doc_offsets=np.asarray(tables[:ndocs + 1], dtype=np.int64),
                     doc_keys=np.asarray(tables[ndocs + 1:]), token_bytes=np.asarray(token_bytes),
                     vocab_size=int(vocab), tokenizer_id=tid.rstrip(b"\0").decode(), version=version)


# -- preparation --------------------------------------------------------------------------------
def prepare_corpus(corpus: str, tokenizer: str, max_bytes: int = 0) -> tuple[Path, str]:
    """The token file of ``corpus`` under ``tokenizer``, tokenising only on a cache miss.
    Returns ``(path, corpus_hash)``; a token file given as the corpus is used as is (its hash is
    the sha256 of the file)."""
    kind, vocab_size = parse_tokenizer(tokenizer)
    path = Path(corpus).expanduser()
    if corpus != "stdlib" and is_token_file(path):
        tf = read_token_file(path)
        if tf.tokenizer_id.split("@")[0] != tokenizer:
            raise ValueError(f"lm: token file {corpus} was made with tokenizer {tf.tokenizer_id!r}; "
                             f"set task.tokenizer={tf.tokenizer_id.split('@')[0]}")
        return path, _file_sha256(path)
    docs = corpus_documents(corpus, max_bytes)
    digest = corpus_hash(docs)
    key = hashlib.sha256(f"{digest}:{tokenizer}".encode()).hexdigest()[:24]
    out = cache_dir() / f"{key}.tok"
    if out.exists():
        return out, digest
    if kind == "byte":
        tokens = [np.frombuffer(d, dtype=np.uint8) for _, d in _progress(docs, "tokenising (byte)")]
        token_bytes, tid = np.ones(256, dtype=np.uint32), "byte"
    else:
        tok_path = cache_dir() / f"{digest[:24]}-bpe{vocab_size}.json"
        tok = train_bpe(docs, vocab_size, tok_path)
        tid = f"{tokenizer}@{_file_sha256(tok_path)[:12]}"
        tokens = [np.asarray(tok.encode(d.decode("utf-8", errors="replace")).ids, dtype=np.uint32)
                  for _, d in _progress(docs, f"tokenising ({tokenizer})")]
        token_bytes = bpe_token_bytes(tok)
    global PREPARE_COUNT
    PREPARE_COUNT += 1
    write_token_file(out, tokens, [doc_key(n) for n, _ in docs], token_bytes, tid)
    return out, digest


def _progress(docs, desc):
    from tqdm.auto import tqdm

    return tqdm(docs, desc=desc, unit="doc", leave=False, mininterval=1.0)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
