"""Recipes: Python functions returning lists of ``RunConfig`` (Zoology's ``basic_sweep.py``
style). ``arena sweep NAME --preset cpu|gpu`` runs one. Register your own with
``@RECIPES.register("name")`` in a module listed in the ``arena.recipes`` entry-point group.
"""
from __future__ import annotations

import itertools
from typing import Iterable

from arena.config import RunConfig
from arena.registry import Registry

RECIPES = Registry("recipe", base=None, entry_point_group="arena.recipes")
PRESETS = ("cpu", "gpu")
CORE_MIXERS = ("attention", "gated_deltanet", "mamba", "mamba2", "xlstm")


def grid(task: str, *, mixers: Iterable[str] = CORE_MIXERS, d_models: Iterable[int] = (64,),
         lrs: Iterable[float] = (1e-3,), seeds: Iterable[int] = (0,), settings: Iterable[dict] = ({},),
         n_layers: int = 2, mlp: bool = True, optim: dict | None = None,
         mixer_overrides: dict | None = None) -> list[RunConfig]:
    """The cross product mixers x d_model x task settings x learning rates x seeds. The same grid
    for every mixer, so "best over the tuning grid" is a fair comparison."""
    runs = []
    for mixer, d, setting, lr, seed in itertools.product(mixers, d_models, settings, lrs, seeds):
        overrides = {mixer: (mixer_overrides or {})[mixer]} if mixer in (mixer_overrides or {}) else None
        runs.append(RunConfig.create(task, mixer, d_model=d, n_layers=n_layers, mlp=mlp, seed=seed,
                                     task_overrides=dict(setting), mixer_overrides=overrides,
                                     optim={**(optim or {}), "lr": lr}))
    return runs


def _preset(preset: str) -> str:
    if preset not in PRESETS:
        from arena.registry import did_you_mean

        raise ValueError(did_you_mean(preset, PRESETS, "preset"))
    return preset


# Mamba-2's default 256-token chunks only pay off on GPUs; 64 is the faster CPU reference.
CPU_MIXER_OVERRIDES = {"mamba2": {"chunk_size": 64}}


@RECIPES.register("demo")
def demo(preset: str = "cpu") -> list[RunConfig]:
    """Every core mixer on a small MQAR, one seed: a few minutes on a 2-core CPU."""
    _preset(preset)
    return grid("mqar", d_models=(64,), lrs=(3e-3,), mlp=False, mixer_overrides=CPU_MIXER_OVERRIDES,
                settings=[dict(vocab_size=64, seq_len=32, num_kv_pairs=4, num_train_examples=10_000,
                               num_test_examples=500)],
                optim=dict(max_steps=600, batch_size=64, eval_every=150, early_stop=0.99))


@RECIPES.register("zoology_mqar")
def zoology_mqar(preset: str = "cpu") -> list[RunConfig]:
    """Zoology's MQAR figure (Arora et al. 2023, Fig. 2): 2 layers, no MLP, V 8192, accuracy
    versus d_model per (seq_len, pairs), lr grid logspace(-4, -2, 4). ``gpu``: the paper's grid,
    64 epochs of 100k examples at batch 256 (25k steps). ``cpu``: d_model 32/64 at (64, 4),
    V 512, two learning rates, 1k steps (about half an hour on 2 cores)."""
    if _preset(preset) == "gpu":
        settings = [dict(seq_len=s, num_kv_pairs=p) for s, p in ((64, 4), (128, 8), (256, 16))]
        return grid("mqar", d_models=(64, 128, 256, 512), settings=settings, mlp=False,
                    lrs=(1e-4, 4.6e-4, 2.2e-3, 1e-2), optim=dict(max_steps=25_000, batch_size=256, eval_every=1000))
    settings = [dict(vocab_size=512, seq_len=64, num_kv_pairs=4, num_train_examples=20_000, num_test_examples=1000)]
    return grid("mqar", d_models=(32, 64), settings=settings, mlp=False, lrs=(1e-3, 3e-3),
                mixer_overrides=CPU_MIXER_OVERRIDES, optim=dict(max_steps=1000, batch_size=64, eval_every=250))


@RECIPES.register("mqar_small")
def mqar_small(preset: str = "cpu") -> list[RunConfig]:
    """A short head-to-head for checking a machine or an executor: MQAR, every core mixer at
    d_model 64 and 128, two seeds (20 runs). ``gpu``: Zoology's (256 tokens, 16 pairs, V 8192),
    800 steps at batch 128, about ten seconds a run on an H200 once the kernels are compiled.
    ``cpu``: (64 tokens, 4 pairs, V 512), 300 steps at batch 32."""
    if _preset(preset) == "gpu":
        setting = dict(seq_len=256, num_kv_pairs=16, num_train_examples=20_000, num_test_examples=1000)
        return grid("mqar", d_models=(64, 128), seeds=(0, 1), lrs=(2.2e-3,), mlp=False, settings=[setting],
                    optim=dict(max_steps=800, batch_size=128, eval_every=200))
    setting = dict(vocab_size=512, seq_len=64, num_kv_pairs=4, num_train_examples=5000, num_test_examples=500)
    return grid("mqar", d_models=(64, 128), seeds=(0, 1), lrs=(3e-3,), mlp=False, settings=[setting],
                mixer_overrides=CPU_MIXER_OVERRIDES, optim=dict(max_steps=300, batch_size=32, eval_every=100))


@RECIPES.register("selective_copying")
def selective_copying(preset: str = "cpu") -> list[RunConfig]:
    """The Mamba paper's selective copying (Gu & Dao 2023, Sec. 4.1.1): 2 layers, d_model 64.
    ``gpu``: L 4096, 16 tokens, vocab 16. ``cpu``: L 256."""
    if _preset(preset) == "gpu":
        return grid("selective_copying", lrs=(1e-3,), settings=[dict(seq_len=4096)],
                    optim=dict(max_steps=20_000, batch_size=64, eval_every=1000))
    return grid("selective_copying", lrs=(3e-3,), settings=[dict(seq_len=256)],
                mixer_overrides=CPU_MIXER_OVERRIDES, optim=dict(max_steps=2000, batch_size=32, eval_every=250))


@RECIPES.register("induction_heads")
def induction_heads(preset: str = "cpu") -> list[RunConfig]:
    """The Mamba paper's induction heads (Sec. 4.1.2): 2 layers, d_model 64, train at 256,
    evaluate at longer lengths (``gpu``: 2^6 .. 2^20, where attention runs out of memory
    as in the paper; ``cpu``: up to 2048)."""
    if _preset(preset) == "gpu":
        lengths = tuple(2 ** i for i in range(6, 21))
        return grid("induction_heads", lrs=(1e-3,), settings=[dict(seq_len=256, eval_lengths=lengths)],
                    optim=dict(max_steps=8000, batch_size=64, eval_every=1000))
    return grid("induction_heads", lrs=(3e-3,), settings=[dict(seq_len=256, eval_lengths=(256, 512, 1024, 2048))],
                mixer_overrides=CPU_MIXER_OVERRIDES, optim=dict(max_steps=1500, batch_size=32, eval_every=500))


@RECIPES.register("niah_grid")
def niah_grid(preset: str = "cpu") -> list[RunConfig]:
    """Token-level needle-in-a-haystack: train at L, evaluate on lengths x depths. ``gpu``:
    L 1024, lengths L..64L; ``cpu``: L 256, lengths L..8L."""
    if _preset(preset) == "gpu":
        return grid("niah", d_models=(256,), lrs=(1e-3,), n_layers=4,
                    settings=[dict(seq_len=1024, eval_length_multipliers=(1, 2, 4, 8, 16, 32, 64))],
                    optim=dict(max_steps=10_000, batch_size=64, eval_every=2000))
    return grid("niah", d_models=(64,), lrs=(3e-3,), settings=[dict(seq_len=256)],
                mixer_overrides=CPU_MIXER_OVERRIDES, optim=dict(max_steps=1500, batch_size=32, eval_every=500))


def build_recipe(name: str, preset: str = "cpu") -> list[RunConfig]:
    return RECIPES[name](preset=preset)
