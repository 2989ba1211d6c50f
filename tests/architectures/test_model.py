"""The LanguageModel over every registered mixer and one hybrid: fitting, decoding, bookkeeping."""
from __future__ import annotations

import pytest
import torch

from arena.registry import ConfigError, UnknownNameError
from architectures import MIXERS, build_model
from tests.architectures.tiny import TINY_D_MODEL, TINY_OVERRIDES, tiny_model

NAMES = MIXERS.names()
HYBRID = ["gated_deltanet", "gated_deltanet", "gated_deltanet", "attention"]


def _hybrid(**kw):
    over = {n: TINY_OVERRIDES[n] for n in set(HYBRID) if n in TINY_OVERRIDES}
    return build_model(16, TINY_D_MODEL, 4, pattern=HYBRID, **over, **kw)


def _fit(model, steps: int = 40) -> tuple[float, float]:
    """Memorise one fixed batch of random tokens; returns (first loss, last loss)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (4, 33), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("name", NAMES + ["hybrid"])
def test_model_fits_a_tiny_batch(name):
    model = _hybrid() if name == "hybrid" else tiny_model(name)
    first, last = _fit(model)
    assert last < 0.6 * first, f"{name}: loss {first:.3f} -> {last:.3f} did not fall"


@pytest.mark.parametrize("name", NAMES + ["hybrid"])
def test_generate_recurrent_equals_recompute(name):
    model = (_hybrid() if name == "hybrid" else tiny_model(name)).double().eval()
    prompt = torch.randint(0, 16, (2, 5))
    out = model.generate(prompt, max_new_tokens=8)
    tokens = prompt
    with torch.no_grad():
        for _ in range(8):  # recompute the whole forward for every new token
            nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
    assert torch.equal(out, tokens)


def test_hybrid_pattern_repeats_to_n_layers():
    model = _hybrid()
    assert [m.registry_name for m in model.mixers] == HYBRID
    assert model.impl_label() == "gated_deltanet:reference,attention:reference"
    assert tiny_model("mamba").impl_label() == "reference"
    model6 = build_model(16, TINY_D_MODEL, 6, pattern=["mamba2", "attention"], mamba2=TINY_OVERRIDES["mamba2"])
    assert [m.registry_name for m in model6.mixers] == ["mamba2", "attention"] * 3
    assert [m.layer_idx for m in model6.mixers] == list(range(6))


def test_model_bookkeeping_adds_up():
    model = _hybrid(mlp=False)
    T, d, V = 100, TINY_D_MODEL, 16
    assert model.state_size(T) == sum(m.state_size(T) for m in model.mixers)
    assert model.flops(T) == sum(m.flops(T) for m in model.mixers) + 2 * T * d * V
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.num_params(exclude_embedding=True) == model.num_params() - V * d
    assert model.embedding.weight is not None and not hasattr(model, "lm_head")  # tied head


def test_mlp_flops_and_switch():
    with_mlp, without = tiny_model("attention", mlp=True), tiny_model("attention", mlp=False)
    mlp = with_mlp.blocks[0].mlp
    assert with_mlp.flops(10) - without.flops(10) == 2 * 2 * 10 * 3 * TINY_D_MODEL * mlp.hidden
    assert without.blocks[0].mlp is None


def test_prefill_then_step_equals_forward():
    model = _hybrid().double().eval()
    tokens = torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        logits, state = model.prefill(tokens[:, :7])
        steps = [logits]
        for t in range(7, 12):
            lt, state = model.step(tokens[:, t], state)
            steps.append(lt[:, None])
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-9)


def test_bad_model_arguments_raise():
    with pytest.raises(UnknownNameError, match="Did you mean 'mamba2'"):
        build_model(16, 32, 2, mixer="mamba22")
    with pytest.raises(UnknownNameError, match="config key"):
        build_model(16, 32, 2, mixer="attention", num_head=2)
    with pytest.raises(ConfigError, match="expected int"):
        build_model(16, 32, 2, mixer="attention", num_heads="two")
    with pytest.raises(ValueError, match="exactly one of"):
        build_model(16, 32, 2)
    with pytest.raises(ValueError, match="keyed by a mixer of the pattern"):
        build_model(16, 32, 2, pattern=["attention"], num_heads=2)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tiny_model("attention")(torch.zeros(5, dtype=torch.long))
