"""The attention KV cache grows in place while decoding, and never at the expense of a state
already handed out."""
import pytest
import torch

from architectures import kv_cache
from tests.architectures.tiny import TINY_D_MODEL, tiny_mixer


def _prefilled(T: int = 5):
    mixer = tiny_mixer("attention").eval()
    with torch.no_grad():
        _, state = mixer(torch.randn(2, T, TINY_D_MODEL))
    return mixer, state


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])  # inference views have no _base
def test_decoding_appends_without_copying_the_cache(mode):
    mixer, state = _prefilled()
    with mode():
        _, state = mixer.step(torch.randn(2, TINY_D_MODEL), state)  # the prefill's exact buffer: one copy
        ptr = state["k"].data_ptr()
        for t in range(6):
            _, state = mixer.step(torch.randn(2, TINY_D_MODEL), state)
            assert state["k"].data_ptr() == ptr, f"step {t} copied the cache"
    assert state["k"].shape[2] == 5 + 7
    assert 2 * mixer.state_size(12) == sum(t.numel() for t in state.values())  # B = 2: the views, not the buffer


def test_a_second_step_from_the_same_state_leaves_the_first_branch_intact():
    mixer, state = _prefilled()
    x1, x2 = torch.randn(2, TINY_D_MODEL), torch.randn(2, TINY_D_MODEL)
    with torch.no_grad():
        y1, s1 = mixer.step(x1, state)
        kept = {k: v.clone() for k, v in s1.items()}
        y2, s2 = mixer.step(x2, state)  # beam search: the same state again
        y1_again, _ = mixer.step(x1, state)
    assert torch.equal(y1, y1_again) and not torch.equal(y1, y2)
    for k in s1:
        assert torch.equal(s1[k], kept[k]), f"the first branch's {k!r} was overwritten"


def test_training_concatenates_so_autograd_sees_every_row():
    cache = torch.randn(1, 2, 3, 4, requires_grad=True)
    new = torch.randn(1, 2, 1, 4, requires_grad=True)
    out = kv_cache.append(cache, new)
    out.sum().backward()
    assert torch.equal(cache.grad, torch.ones_like(cache)) and torch.equal(new.grad, torch.ones_like(new))


@pytest.mark.parametrize("T", [1, 3])  # one decoded token (no mask) and a chunk after the cache (bottom-right)
def test_cache_continuation_agrees_between_sdpa_and_math(T):
    torch.manual_seed(0)
    sdpa = tiny_mixer("attention", backend="sdpa").double()
    math = tiny_mixer("attention", backend="math").double()
    math.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 7 + T, TINY_D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        whole, _ = math(x)
        for mixer in (sdpa, math):
            _, state = mixer(x[:, :7])
            tail, _ = mixer(x[:, 7:], state)
            torch.testing.assert_close(tail, whole[:, 7:], rtol=1e-12, atol=1e-12)
