"""``Block`` (pre-norm mixer + residual, then optional pre-norm SwiGLU MLP + residual) and the
``LanguageModel`` built from blocks: embedding, blocks, final norm, tied head."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from architectures.layers import RMSNorm, SwiGLU
from architectures.mixer import MIXERS, Mixer, State, build_mixer


class Block(nn.Module):
    """``x + mixer(norm(x))``, then ``x + mlp(norm(x))`` when ``mlp`` (as mamba's ``Block``)."""

    def __init__(self, mixer: Mixer, mlp: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        d = mixer.d_model
        self.norm = RMSNorm(d, norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d, norm_eps) if mlp else None
        self.mlp = SwiGLU(d) if mlp else None

    def _mlp(self, x: Tensor) -> Tensor:
        return x if self.mlp is None else x + self.mlp(self.mlp_norm(x))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        y, state = self.mixer(self.norm(x), state)
        return self._mlp(x + y), state

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        y, state = self.mixer.step(self.norm(x_t), state)
        return self._mlp(x_t + y), state

    def flops(self, seq_len: int) -> int:
        return self.mixer.flops(seq_len) + (self.mlp.flops(seq_len) if self.mlp is not None else 0)


class LanguageModel(nn.Module):
    """Token ids ``[B, T]`` -> logits ``[B, T, vocab_size]``, with recurrent decoding."""

    def __init__(self, vocab_size: int, blocks: Sequence[Block], norm_eps: float = 1e-5):
        super().__init__()
        d_model = blocks[0].mixer.d_model
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = RMSNorm(d_model, norm_eps)

    @property
    def mixers(self) -> list[Mixer]:
        return [block.mixer for block in self.blocks]

    def impls(self) -> dict[str, str]:
        """Mixer name -> the implementation that runs on the current device."""
        return {m.registry_name: m.impl for m in self.mixers}

    def impl_label(self) -> str:
        """The record's ``impl``: one name when every mixer runs the same way, else
        ``"mixer:impl,mixer:impl"`` (a hybrid)."""
        impls = self.impls()
        return ",".join(f"{n}:{i}" for n, i in impls.items()) if len(impls) > 1 else next(iter(impls.values()))

    def _logits(self, h: Tensor) -> Tensor:
        return self.norm_f(h) @ self.embedding.weight.t()  # tied head

    def prefill(self, input_ids: Tensor, state: list[State] | None = None) -> tuple[Tensor, list[State]]:
        """Parallel forward that also returns the state to continue from."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T] token ids, got shape {tuple(input_ids.shape)}")
        h = self.embedding(input_ids)
        state = state if state is not None else [None] * len(self.blocks)
        new_state = []
        for block, s in zip(self.blocks, state):
            h, s = block(h, s)
            new_state.append(s)
        return self._logits(h), new_state

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.prefill(input_ids)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> list[State]:
        device = device or self.embedding.weight.device
        dtype = dtype or self.embedding.weight.dtype
        return [m.init_state(batch_size, device=device, dtype=dtype) for m in self.mixers]

    def step(self, token_ids: Tensor, state: list[State]) -> tuple[Tensor, list[State]]:
        """One token per sequence: ``token_ids: [B]`` -> ``(logits [B, vocab], state)``."""
        if token_ids.dim() != 1:
            raise ValueError(f"step takes token_ids of shape [B], got {tuple(token_ids.shape)}")
        h = self.embedding(token_ids)
        new_state = []
        for block, s in zip(self.blocks, state):
            h, s = block.step(h, s)
            new_state.append(s)
        return self._logits(h), new_state

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> Tensor:
        """Prefill the prompt in parallel, then decode one token at a time from the state
        (constant memory per token for the recurrent mixers). Greedy when ``temperature == 0``.
        Returns ``[B, T + max_new_tokens]``."""
        logits, state = self.prefill(input_ids)
        tokens, last = [input_ids], logits[:, -1]
        for i in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(last.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                nxt = last.argmax(dim=-1)
            tokens.append(nxt[:, None])
            if i + 1 < max_new_tokens:
                last, state = self.step(nxt, state)
        return torch.cat(tokens, dim=1)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.weight.numel() if exclude_embedding else n

    def state_size(self, seq_len: int) -> int:
        return sum(m.state_size(seq_len) for m in self.mixers)

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs per sequence: every block plus the tied head."""
        head = 2 * seq_len * self.d_model * self.vocab_size
        return sum(block.flops(seq_len) for block in self.blocks) + head


def build_model(vocab_size: int, d_model: int, n_layers: int, mixer: str | None = None,
                pattern: Sequence[str] | None = None, mlp: bool = True, impl: str = "auto",
                norm_eps: float = 1e-5, **mixer_overrides) -> LanguageModel:
    """A ``LanguageModel`` of one mixer, or a hybrid ``pattern`` repeated to ``n_layers``.

    With ``mixer``, ``mixer_overrides`` are that mixer's config keys
    (``build_model(256, 64, 2, mixer="mamba2", d_state=64)``). With ``pattern`` they are keyed
    by mixer name (``pattern=["gated_deltanet", "attention"], attention={"num_heads": 2}``).
    """
    if (mixer is None) == (pattern is None):
        raise ValueError("build_model takes exactly one of mixer='name' or pattern=['name', ...]")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    names = [mixer] if mixer is not None else list(pattern)
    if not names:
        raise ValueError("pattern is empty; give at least one mixer name")
    per_mixer = _split_overrides(names, mixer_overrides, single=mixer is not None)
    blocks = []
    for i in range(n_layers):
        name = names[i % len(names)]
        m = build_mixer(name, d_model, impl=impl, layer_idx=i, **per_mixer.get(name, {}))
        blocks.append(Block(m, mlp=mlp, norm_eps=norm_eps))
    return LanguageModel(vocab_size, blocks, norm_eps=norm_eps)


def _split_overrides(names: list[str], overrides: dict, single: bool) -> dict[str, dict]:
    for name in names:
        MIXERS.get(name)  # unknown names raise here, with "did you mean"
    if single:
        return {names[0]: overrides}
    for key, value in overrides.items():
        if key not in names or not isinstance(value, dict):
            raise ValueError(
                f"with pattern=..., overrides are keyed by a mixer of the pattern with a dict of "
                f"its config keys (e.g. {names[0]}={{...}}); got {key}={value!r}; "
                f"mixers in the pattern: {', '.join(sorted(set(names)))}"
            )
    return overrides
