"""RunConfig: strict, serialisable, hashed; --set overrides typed by the field they address."""
from __future__ import annotations

import json

import pytest

from arena.config import RunConfig, apply_overrides
from arena.recipes import CORE_MIXERS, RECIPES, build_recipe
from arena.registry import ConfigError, UnknownNameError


def _cfg(**kw):
    return RunConfig.create("mqar", "mamba2", d_model=64, mlp=False, task_overrides={"seq_len": 128}, **kw)


def test_resolved_config_round_trips_through_json_with_the_same_hash():
    cfg = _cfg(optim={"lr": 3e-3})
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.run_id == cfg.run_id
    assert cfg.to_dict()["mixer"]["mamba2"]["d_state"] == 128  # defaults are resolved, hence hashed
    assert cfg.run_id.endswith("-s0") and len(cfg.run_id.split("-")[0]) == 12


def test_hash_changes_with_every_setting_but_not_with_display_or_seed():
    base = _cfg()
    changed = [_cfg(optim={"lr": 1e-2}), _cfg(mixer_overrides={"d_state": 64}),
               RunConfig.create("mqar", "mamba2", d_model=128, mlp=False, task_overrides={"seq_len": 128})]
    assert len({c.config_hash() for c in [base, *changed]}) == 4
    assert _cfg(optim={"progress": False}).config_hash() == base.config_hash()
    seeded = _cfg(seed=3)
    assert seeded.config_hash() == base.config_hash() and seeded.run_id != base.run_id


def test_set_overrides_follow_the_config_paths_with_types():
    d = apply_overrides(_cfg().to_dict(), ["model.d_model=128", "model.mlp=false", "task.num_kv_pairs=8",
                                           "optim.lr=1e-2", "mixer.d_state=32", "seed=3", "optim.betas=0.9,0.95"])
    cfg = RunConfig.from_dict(d)
    assert (cfg.model.d_model, cfg.model.mlp, cfg.task_config.num_kv_pairs, cfg.optim.lr) == (128, False, 8, 1e-2)
    assert cfg.mixer["mamba2"].d_state == 32 and cfg.seed == 3 and cfg.optim.betas == (0.9, 0.95)


def test_changing_the_mixer_or_task_brings_their_own_config():
    d = apply_overrides(_cfg().to_dict(), ["model.pattern=gated_deltanet,attention", "mixer.attention.num_heads=2"])
    cfg = RunConfig.from_dict(d)
    assert cfg.model.mixer is None and list(cfg.mixer) == ["gated_deltanet", "attention"]
    assert cfg.mixer_label == "gated_deltanet+attention" and cfg.mixer["attention"].num_heads == 2
    cfg = RunConfig.from_dict(apply_overrides(_cfg().to_dict(), ["task.name=niah", "task.seq_len=64"]))
    assert cfg.task == "niah" and cfg.task_config.seq_len == 64


@pytest.mark.parametrize(
    "assignment, error, message",
    [
        ("optim.lr=abc", ConfigError, "optim.lr=abc: expected float"),
        ("model.mlp=maybe", ConfigError, "expected a bool"),
        ("model.d_modl=3", UnknownNameError, "Did you mean 'd_model'"),
        ("task.seq=3", UnknownNameError, "Did you mean 'seq_len'"),
        ("mixer.dstate=3", UnknownNameError, "Did you mean 'd_state'"),
        ("modl.d_model=3", UnknownNameError, "Valid: device"),
        ("optim.precision=fp8", ConfigError, "expected one of auto, fp32, bf16, fp16"),
        ("optim.lr", ConfigError, "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_fix(assignment, error, message):
    with pytest.raises(error, match=message):
        RunConfig.from_dict(apply_overrides(_cfg().to_dict(), [assignment]))


def test_strict_construction():
    with pytest.raises(UnknownNameError, match="Did you mean 'mamba2'"):
        RunConfig.create("mqar", "mamba22")
    with pytest.raises(UnknownNameError, match="Did you mean 'mqar'"):
        RunConfig.create("mqr", "mamba2")
    with pytest.raises(ConfigError, match="exactly one of model.mixer"):
        RunConfig.create("mqar")
    with pytest.raises(UnknownNameError, match="key of the run config"):
        RunConfig.from_dict({**_cfg().to_dict(), "optimizer": {}})
    with pytest.raises(ConfigError, match="keyed by a mixer of this model"):
        RunConfig.create("mqar", pattern=["mamba2", "attention"], mixer_overrides={"xlstm": {}})


def test_every_recipe_builds_distinct_runs():
    for name in RECIPES.names():
        for preset in ("cpu", "gpu"):
            runs = build_recipe(name, preset)
            assert runs and len({r.run_id for r in runs}) == len(runs), (name, preset)
    with pytest.raises(UnknownNameError, match="Did you mean 'zoology_mqar'"):
        build_recipe("zoology")


def test_mqar_small_is_every_core_mixer_at_two_widths_and_two_seeds():
    for preset in ("cpu", "gpu"):
        runs = build_recipe("mqar_small", preset)
        grid = {(r.model.mixer, r.model.d_model, r.seed) for r in runs}
        assert len(runs) == len(grid) == 20
        assert {m for m, _, _ in grid} == set(CORE_MIXERS) and {d for _, d, _ in grid} == {64, 128}
