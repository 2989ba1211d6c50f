"""Mixers behind one contract, the Block and the LanguageModel.

    from architectures import MIXERS, build_mixer, build_model
    mixer = build_mixer("gated_deltanet", d_model=256)
    y, state = mixer(x)                    # x: [B, T, 256]
    model = build_model(vocab_size=256, d_model=128, n_layers=4,
                        pattern=["gated_deltanet"] * 3 + ["attention"])
"""
from architectures.mixer import MIXERS, ImplUnavailableError, Mixer, MixerConfig, State, build_mixer
from architectures import mixers as _mixers  # noqa: F401  (registers the built-in mixers)
from architectures.model import Block, LanguageModel, build_model

__all__ = [
    "MIXERS", "Mixer", "MixerConfig", "State", "ImplUnavailableError", "build_mixer",
    "Block", "LanguageModel", "build_model",
]
