"""The lm task: token files, the cache, the document split, bits per byte, and a tiny LM that learns."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from architectures import build_model
from tasks import TrainConfig, build_task
from tasks import lm_data
from tasks.lm import bits_per_byte, validation_docs

BASELINE = Path(__file__).parents[2] / "results" / "baselines" / "lm.json"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def text_corpus(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * (20 + i))
    return root


@pytest.mark.parametrize("vocab_size,dtype", [(256, np.uint16), (70000, np.uint32)], ids=["uint16", "uint32"])
def test_token_file_round_trips(tmp_path, vocab_size, dtype):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab_size, n) for n in (5, 0, 17)]
    token_bytes = rng.integers(1, 9, vocab_size).astype(np.uint32)
    path = tmp_path / "x.tok"
    lm_data.write_token_file(path, docs, [1, 2, 2**63 + 5], token_bytes, "bpe:70000@abc")
    tf = lm_data.read_token_file(path)
    assert tf.tokens.dtype == dtype and tf.vocab_size == vocab_size and tf.version == 1
    assert tf.tokenizer_id == "bpe:70000@abc"
    assert tf.doc_offsets.tolist() == [0, 5, 5, 22]
    assert tf.doc_keys.tolist() == [1, 2, 2**63 + 5]
    np.testing.assert_array_equal(tf.token_bytes, token_bytes)
    np.testing.assert_array_equal(np.asarray(tf.tokens), np.concatenate(docs))
    assert lm_data.is_token_file(path)


def test_bad_magic_raises(tmp_path):
    (tmp_path / "x.tok").write_bytes(b"not a token file" * 10)
    with pytest.raises(ValueError, match="bad magic"):
        lm_data.read_token_file(tmp_path / "x.tok")


def test_preparation_is_deterministic_and_cached(tmp_path):
    corpus = text_corpus(tmp_path / "c")
    before = lm_data.PREPARE_COUNT
    path, digest = lm_data.prepare_corpus(str(corpus), "byte")
    assert lm_data.PREPARE_COUNT == before + 1
    content = path.read_bytes()
    again, digest2 = lm_data.prepare_corpus(str(corpus), "byte")
    assert lm_data.PREPARE_COUNT == before + 1, "second preparation must hit the cache"
    assert (again, digest2) == (path, digest) and again.read_bytes() == content
    task = build_task("lm", corpus=str(corpus), seq_len=16, num_train_windows=32, num_val_windows=4,
                      eval_lengths=(32,), val_fraction=0.3)
    a, b = task.build(0), task.build(0)
    assert torch.equal(a.train.inputs, b.train.inputs) and task.corpus_hash == digest
    assert lm_data.PREPARE_COUNT == before + 1
    (corpus / "doc00.txt").write_text("changed")
    assert lm_data.prepare_corpus(str(corpus), "byte")[1] != digest


def test_token_file_as_corpus_and_byte_windows_are_the_text(tmp_path):
    corpus = text_corpus(tmp_path / "c")
    path, _ = lm_data.prepare_corpus(str(corpus), "byte")
    task = build_task("lm", corpus=str(path), seq_len=16, num_train_windows=8, num_val_windows=2,
                      eval_lengths=(), val_fraction=0.3)
    data = task.build(0)
    text = b"".join(p.read_bytes() for p in sorted(corpus.iterdir()))
    window = bytes(data.train.inputs[0].tolist())
    assert window in text
    assert torch.equal(data.train.inputs[:, 1:], data.train.labels[:, :-1])
    with pytest.raises(ValueError, match="tokenizer"):
        lm_data.prepare_corpus(str(path), "bpe:300")


def test_validation_is_held_out_by_document():
    keys = np.array([lm_data.doc_key(f"doc{i}") for i in range(200)], dtype=np.uint64)
    val = validation_docs(keys, 0.1, split_seed=0)
    assert 5 <= val.sum() <= 40 and not val.all()
    np.testing.assert_array_equal(val, validation_docs(keys, 0.1, split_seed=0))
    assert not np.array_equal(val, validation_docs(keys, 0.1, split_seed=1))
    assert validation_docs(keys[:1].repeat(2), 1e-9, 0).tolist() == [True, False]  # never empty, never all


def test_train_and_validation_share_no_document(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(20):  # each document is one distinct repeated byte
        (corpus / f"d{i:02d}").write_bytes(bytes([65 + i]) * 300)
    task = build_task("lm", corpus=str(corpus), seq_len=8, num_train_windows=2000, num_val_windows=50,
                      eval_lengths=(), val_fraction=0.25)
    data = task.build(0)
    train_bytes = set(data.train.inputs.unique().tolist())
    val_bytes = set(data.evals[""].inputs.unique().tolist())
    assert val_bytes and train_bytes and not train_bytes & val_bytes


class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def test_bits_per_byte_by_hand(tmp_path):
    assert bits_per_byte(math.log(2) * 10, 10) == pytest.approx(1.0)
    # a uniform model over 256 bytes pays log(256) nats per byte: exactly 8 bits per byte
    task = build_task("lm", corpus=str(text_corpus(tmp_path / "c")), seq_len=16, num_train_windows=8,
                      num_val_windows=4, eval_lengths=(32,), val_fraction=0.3)
    data = task.build(0)
    m = task.evaluate(Uniform(256), data.evals)
    assert m["bits_per_byte"] == pytest.approx(8.0) and m["bits_per_byte@len=32"] == pytest.approx(8.0)
    assert m["val_loss"] == pytest.approx(math.log(256)) and m["perplexity"] == pytest.approx(256)
    # tokens that stand for 2 bytes each halve bits per byte at the same loss
    task._token_bytes = torch.full((256,), 2)
    assert task.evaluate(Uniform(256), data.evals)["bits_per_byte"] == pytest.approx(4.0)


def test_bpe_tokenizer_trains_locally_and_counts_bytes(tmp_path):
    pytest.importorskip("tokenizers")
    corpus = text_corpus(tmp_path / "c")
    task = build_task("lm", corpus=str(corpus), tokenizer="bpe:300", seq_len=8, num_train_windows=8,
                      num_val_windows=2, eval_lengths=(), val_fraction=0.3)
    data = task.build(0)
    assert task.tokenizer_id.startswith("bpe:300@") and data.train.inputs.max() < 300
    tf = lm_data.read_token_file(task.token_file)
    total_bytes = sum(p.stat().st_size for p in corpus.iterdir())
    assert int(tf.token_bytes[np.asarray(tf.tokens)].sum()) == total_bytes  # exact bytes behind the tokens


@pytest.mark.parametrize("overrides,error,match", [
    (dict(tokenizer="wordpiece"), ValueError, "unknown tokenizer"),
    (dict(tokenizer="bpe:abc"), ValueError, "unknown tokenizer"),
    (dict(corpus="/no/such/corpus"), FileNotFoundError, "does not exist"),
    (dict(val_fraction=1.5), ValueError, "val_fraction"),
])
def test_bad_config_raises(overrides, error, match):
    with pytest.raises(error, match=match):
        build_task("lm", **overrides)


def test_lower_is_better_for_best_and_early_stop(tmp_path):
    task = build_task("lm", corpus=str(text_corpus(tmp_path / "c")), seq_len=16, num_train_windows=64,
                      num_val_windows=4, eval_lengths=(), val_fraction=0.3)
    assert task.higher_is_better is False
    model = build_model(task.vocab_size, 16, 1, mixer="attention", mlp=False, num_heads=2)
    r = task.run(model, TrainConfig(max_steps=6, batch_size=8, eval_every=2, progress=False, early_stop=100.0))
    assert r.steps == 2, "bits_per_byte <= 100 at the first evaluation must stop the run"
    r = task.run(model, TrainConfig(max_steps=6, batch_size=8, eval_every=2, progress=False, lr=3e-2))
    evals = [c["bits_per_byte"] for c in r.curve if "bits_per_byte" in c]
    assert r.best_metrics["bits_per_byte"] == min(evals)


def test_tiny_lm_learns_the_stdlib():
    """Attention, d_model 32, 2 layers, 60 steps on the first 300 kB of the standard library."""
    base = json.loads(BASELINE.read_text())
    torch.set_num_threads(2)
    task = build_task("lm", **base["task"])
    torch.manual_seed(base["seed"])
    m = base["model"]
    model = build_model(task.vocab_size, m["d_model"], m["n_layers"], mixer=m["mixer"], mlp=m["mlp"],
                        num_heads=m["num_heads"])
    r = task.run(model, TrainConfig(**base["optim"], eval_every=base["optim"]["max_steps"], progress=False),
                 seed=base["seed"])
    bpb = r.metrics["bits_per_byte"]
    assert bpb < base["must_be_below"]
    if task.corpus_hash == base["corpus_hash"]:  # another Python's stdlib is another corpus
        assert abs(bpb - base["bits_per_byte"]) < base["tolerance"], bpb
