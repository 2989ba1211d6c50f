"""Text NIAH (RULER-style): fitted lengths, needle depths, variants, seeds, both scores, the grid."""
from __future__ import annotations

import pytest

from arena.report.grids import length_curve, niah_grid
from tasks.text_niah import (
    VARIANTS,
    ByteTokenizer,
    as_tokenizer,
    build_prompt,
    exact_match,
    ruler_score,
    run_text_niah,
    score,
)
from tasks.text_niah_models import oracle_model_fn


@pytest.fixture(scope="module")
def bpe():
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=400, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    text = ["The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
            "One of the special magic numbers for wakeful-crayon is: 1234567.",
            "What are all the special magic numbers mentioned in the provided text?"] * 10
    tok.train_from_iterator(text, trainer)
    return tok


def _tokenizers(bpe):
    return {"byte": "byte", "bpe": bpe}


@pytest.mark.parametrize("tok_name", ["byte", "bpe"])
@pytest.mark.parametrize("haystack", ["noise", "stdlib"])
@pytest.mark.parametrize("target", [700, 1500, 4000])
def test_prompt_hits_the_requested_length(bpe, tok_name, haystack, target):
    tok = as_tokenizer(_tokenizers(bpe)[tok_name])
    p = build_prompt(tok, target, 0.5, "single", seed=3, haystack=haystack)
    assert p.num_tokens == len(tok.encode(p.text))
    assert target - 2 * p.unit_tokens - 2 <= p.num_tokens <= target
    assert p.num_tokens >= 0.95 * target


@pytest.mark.parametrize("tok_name", ["byte", "bpe"])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_needle_sits_at_the_requested_depth(bpe, tok_name, depth):
    tok = as_tokenizer(_tokenizers(bpe)[tok_name])
    p = build_prompt(tok, 3000, depth, "single", seed=1)
    assert p.needle_units[0] == int(depth * p.num_units + 0.5)
    (s, _), (c0, c1) = p.needle_spans[0], p.context_span
    before = len(tok.encode(p.text[c0:s]))  # haystack tokens before the needle
    needle = len(tok.encode(p.text[s:p.needle_spans[0][1]]))
    haystack = len(tok.encode(p.text[c0:c1])) - needle
    assert abs(before / haystack - depth) <= (p.unit_tokens + 2) / haystack
    assert p.text[s:].startswith("One of the special magic numbers for " + p.keys[0] + " is: " + p.values[0] + ".")


@pytest.mark.parametrize("variant,needles,keys,refs,queries", [
    ("single", 1, 1, 1, 1), ("multikey", 4, 4, 1, 1), ("multivalue", 4, 1, 4, 1), ("multiquery", 4, 4, 4, 4)])
@pytest.mark.parametrize("kinds", [("words", "numbers"), ("numbers", "uuids"), ("uuids", "words")])
def test_variants_have_their_needles_and_keys(variant, needles, keys, refs, queries, kinds):
    p = build_prompt("byte", 2500, 0.3, variant, seed=7, key_type=kinds[0], value_type=kinds[1])
    assert p.text.count("One of the special magic") == needles == len(p.keys) == len(p.needle_spans)
    assert len(set(p.keys)) == keys and len(set(p.values)) == needles
    assert len(p.references) == refs and len(p.query_keys) == queries
    assert not set(p.keys) & set(p.values)
    for k in p.query_keys:
        assert k in p.text[p.context_span[1]:]
    for k, v, (s, e) in zip(p.keys, p.values, p.needle_spans):
        assert p.text[s:e] == f"One of the special magic {kinds[1]} for {k} is: {v}."


def test_value_formats():
    p = build_prompt("byte", 2500, 0.3, "multiquery", seed=0, key_type="words", value_type="numbers")
    assert all(len(v) == 7 and v.isdigit() for v in p.values)
    assert all(k.count("-") == 1 for k in p.keys)
    p = build_prompt("byte", 2500, 0.3, "multiquery", seed=0, key_type="uuids", value_type="uuids")
    assert all(len(v) == 36 and v.count("-") == 4 for v in p.values + p.keys)


def test_seeds_reproduce_and_differ():
    a = build_prompt("byte", 1200, 0.4, "multikey", seed=5, haystack="stdlib")
    b = build_prompt("byte", 1200, 0.4, "multikey", seed=5, haystack="stdlib")
    c = build_prompt("byte", 1200, 0.4, "multikey", seed=6, haystack="stdlib")
    assert a.text == b.text and a.token_ids == b.token_ids
    assert a.text != c.text and a.values != c.values
    d = build_prompt("byte", 2400, 0.9, "multikey", seed=5)  # same seed: same needles at any cell
    assert (d.keys, d.values) == (a.keys, a.values)


def test_too_short_target_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="too short"):
        build_prompt("byte", 50, 0.5)
    with pytest.raises(ValueError, match="variant"):
        build_prompt("byte", 1000, 0.5, "multi")
    with pytest.raises(ValueError, match="depth"):
        build_prompt("byte", 1000, 1.5)
    with pytest.raises(ValueError, match="num_needles"):
        build_prompt("byte", 1000, 0.5, "single", num_needles=2)


def test_scoring_exact_partial_and_gamed():
    refs = ["1234567", "7654321"]
    assert ruler_score(" 1234567 and 7654321.", refs) == 1.0
    assert exact_match(" 7654321, 1234567.", refs, "numbers") == 1.0  # order is free
    assert ruler_score(" 1234567.", refs) == 0.5 and exact_match(" 1234567.", refs, "numbers") == 0.0
    gamed = " " + ", ".join(str(1000000 + 111111 * i) for i in range(9)) + ", 1234567, 7654321."
    assert ruler_score(gamed, refs) == 1.0 and exact_match(gamed, refs, "numbers") == 0.0
    assert exact_match("", refs, "numbers") == 0.0 and ruler_score("", refs) == 0.0
    # an echoed key is not an extra value; a non-value word is ignored
    assert exact_match(" for wakeful-crayon: swift-otter.", ["swift-otter"], "words", ["wakeful-crayon"]) == 1.0
    assert exact_match(" swift-otter, calm-lake.", ["swift-otter"], "words") == 0.0
    u = "0f1e2d3c-4b5a-4987-8765-43210fedcba9"
    assert exact_match(f" {u.upper()}.", [u], "uuids") == 1.0
    assert exact_match(" 12345678.", ["1234567"], "numbers") == 0.0  # 8 digits is not the value


def test_score_cuts_at_the_first_newline():
    p = build_prompt("byte", 1000, 0.5, seed=2)
    v = p.references[0]
    assert score(f" {v}.\nThe special magic numbers are 1111111", p) == {"exact_match": 1.0, "ruler_score": 1.0}
    assert score(f"\n {v}.", p)["exact_match"] == 1.0  # leading whitespace is not a stop
    assert score(f" {v}. 1111111", p)["exact_match"] == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_grid_with_an_oracle_is_perfect_and_readable(variant):
    lengths, depths = [800, 1600], [0.0, 0.5, 1.0]
    m = run_text_niah(oracle_model_fn("byte"), "byte", lengths, depths, variant, num_samples=2, seed=1)
    assert m["exact_match"] == 1.0 and m["ruler_score"] == 1.0
    rows = niah_grid(m, "exact_match")
    assert [(r["length"], r["depth"]) for r in rows] == [(L, D) for L in lengths for D in depths]
    assert all(r["exact_match"] == 1.0 for r in rows)
    assert len(niah_grid(m, "ruler_score")) == 6
    assert [r["length"] for r in length_curve(m, "exact_match")] == lengths
    assert "exact_match@len=800,depth=0.5" in m
    assert 0.95 * 1600 <= m["prompt_tokens@len=1600"] <= 1600


def test_grid_with_a_bpe_oracle(bpe):
    m = run_text_niah(oracle_model_fn(bpe), bpe, [600], [0.25], "multikey", num_samples=2, seed=0,
                      haystack="stdlib", value_type="uuids")
    assert m["exact_match"] == 1.0


def test_a_wrong_model_scores_zero():
    tok = ByteTokenizer()
    m = run_text_niah(lambda ids, n: tok.encode(" 1111111."), tok, [800], [0.5], num_samples=2)
    assert m["exact_match"] == 0.0 and m["ruler_score"] == 0.0


def test_tiny_untrained_arena_model_end_to_end(tmp_path):
    torch = pytest.importorskip("torch")
    from architectures import build_model
    from tasks.text_niah_models import arena_model_fn

    torch.manual_seed(0)
    model = build_model(256, 16, 1, mixer="attention", mlp=False).eval()
    seen = []

    def fn(ids, n):
        out = arena_model_fn(model)(ids, n)
        seen.append((len(ids), len(out), n))
        return out

    m = run_text_niah(fn, "byte", [400], [0.5], num_samples=1, seed=0, max_new_tokens=8)
    assert seen and all(0.95 * 400 <= t <= 400 and g == n == 8 for t, g, n in seen)
    assert set(m) >= {"exact_match@len=400,depth=0.5", "ruler_score@len=400,depth=0.5", "exact_match"}
    assert 0.0 <= m["exact_match"] <= 1.0


def test_cli_writes_an_eval_record(tmp_path):
    pytest.importorskip("torch")
    from arena.checkpoint import save_checkpoint
    from arena.config import RunConfig
    from arena.execute import build_run
    from arena.store import Store
    from arena.text_niah_cli import main

    cfg = RunConfig.create(task="lm", mixer="attention", d_model=16, n_layers=1, seed=0)
    _, model = build_run(cfg)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, cfg.to_dict(), backend="torch")
    rc = main([str(ckpt), "--lengths", "400", "--depths", "0.5", "--samples", "1", "--max-new-tokens", "4",
               "--results", str(tmp_path / "results")])
    assert rc == 0
    (record,) = Store(tmp_path / "results").records("eval")
    assert record.task == "text_niah" and record.kind == "eval" and record.status == "ok"
    assert niah_grid(record.metrics, "exact_match")[0]["length"] == 400


def test_hugging_face_adapter_names_the_kernels_clash(tmp_path, monkeypatch):
    """Where transformers would import Hugging Face's `kernels` (arena's own package shadows it),
    the adapter says so and names the fix, instead of failing inside transformers."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed: the HF adapter is optional")
    from tasks.text_niah_models import hf_model_fn

    monkeypatch.setattr(transformers.utils.import_utils, "is_kernels_available", lambda *a, **kw: True)
    with pytest.raises(ImportError, match="pip uninstall -y kernels"):
        hf_model_fn(tmp_path / "m")


def test_hugging_face_adapter(tmp_path, bpe):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed: the HF adapter is optional")
    from tasks.text_niah_models import hf_model_fn

    # a tiny random GPT-2 and the test's BPE, saved locally: nothing is downloaded
    config = transformers.GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=1024, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "m")
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(tmp_path / "m")
    fn, tok = hf_model_fn(tmp_path / "m")
    m = run_text_niah(fn, tok, [600], [0.5], num_samples=1, max_new_tokens=4)
    assert "exact_match@len=600,depth=0.5" in m
