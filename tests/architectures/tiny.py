"""Small settings for the registry-driven tests. A mixer missing here is tested with its own
defaults at TINY_D_MODEL, so a new mixer file is covered the moment it exists; an entry here
only shrinks shapes (and chunk sizes, so that T = 130 spans several chunks)."""
from architectures import build_mixer, build_model

TINY_D_MODEL = 32

TINY_OVERRIDES: dict[str, dict] = {
    "attention": dict(num_heads=2),
    "mamba": dict(d_state=8),
    "mamba2": dict(headdim=16, d_state=16, chunk_size=32),
    "gated_deltanet": dict(num_heads=2),
    "xlstm": dict(num_heads=2),
}


def tiny_mixer(name: str, **kw):
    return build_mixer(name, TINY_D_MODEL, **{**TINY_OVERRIDES.get(name, {}), **kw})


def tiny_model(name: str, vocab_size: int = 16, n_layers: int = 2, **kw):
    return build_model(vocab_size, TINY_D_MODEL, n_layers, mixer=name, **{**TINY_OVERRIDES.get(name, {}), **kw})
