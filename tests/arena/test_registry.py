"""arena.registry: decorator registration, base-class check, duplicates, did-you-mean,
lazy entry points, strict configs."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Literal

import pytest

from arena import registry as reg
from arena.registry import ConfigError, Registry, UnknownNameError, build_config


class Base:
    pass


def test_register_get_and_list():
    r = Registry("widget", base=Base)

    @r.register("alpha")
    class Alpha(Base):
        pass

    assert r["alpha"] is Alpha and r.get("alpha") is Alpha
    assert r.names() == ["alpha"] and "alpha" in r and len(r) == 1 and list(r) == ["alpha"]
    assert Alpha.registry_name == "alpha"


def test_base_class_is_checked():
    r = Registry("widget", base=Base)
    with pytest.raises(TypeError, match="must subclass Base"):
        r.register("bad")(int)


def test_duplicate_names_raise_naming_both():
    r = Registry("widget", base=Base)
    r.register("alpha")(type("A1", (Base,), {}))
    with pytest.raises(ValueError, match="registered twice.*A1.*A2"):
        r.register("alpha")(type("A2", (Base,), {}))


def test_typo_says_did_you_mean_and_lists_valid_names():
    r = Registry("widget", base=Base)
    for name in ("gated_deltanet", "mamba", "mamba2"):
        r.register(name)(type(name, (Base,), {}))
    with pytest.raises(UnknownNameError) as err:
        r["gated_deltanet2x"]
    assert str(err.value) == (
        "unknown widget 'gated_deltanet2x'. Did you mean 'gated_deltanet'? Valid: gated_deltanet, mamba, mamba2."
    )
    with pytest.raises(UnknownNameError, match="Valid: gated_deltanet, mamba, mamba2.$"):
        r["zzz"]


def test_entry_points_load_lazily(monkeypatch):
    r = Registry("widget", base=Base, entry_point_group="arena.test_widgets")
    loaded = []

    class FakeEntryPoint:
        name = "plugin"

        def load(self):
            loaded.append(self.name)
            r.register("plugin")(type("Plugin", (Base,), {}))

    def fake_entry_points(group):
        assert group == "arena.test_widgets"
        return [FakeEntryPoint()]

    monkeypatch.setattr(reg.metadata, "entry_points", fake_entry_points)
    assert loaded == []  # nothing imported at construction
    assert r["plugin"].__name__ == "Plugin"
    assert loaded == ["plugin"]
    r.names()
    assert loaded == ["plugin"]  # loaded once


def test_real_entry_point_group_is_queryable():
    assert isinstance(list(metadata.entry_points(group="arena.mixers")), list)


@dataclass(kw_only=True)
class Cfg:
    width: int = 4
    rate: float = 0.5
    name: str | None = None
    mode: Literal["a", "b"] = "a"


def test_build_config_accepts_valid_overrides():
    cfg = build_config(Cfg, {"width": 8, "rate": 1, "name": None, "mode": "b"})
    assert (cfg.width, cfg.rate, cfg.name, cfg.mode) == (8, 1, None, "b")


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"widht": 8}, UnknownNameError, "Did you mean 'width'"),
        ({"width": 2.5}, ConfigError, "width=2.5 has type float; expected int"),
        ({"width": True}, ConfigError, "expected int"),
        ({"rate": "fast"}, ConfigError, "expected float"),
        ({"mode": "c"}, ConfigError, "mode='c'"),
    ],
    ids=["typo", "float-for-int", "bool-for-int", "str-for-float", "bad-literal"],
)
def test_build_config_rejects_bad_overrides(overrides, error, message):
    with pytest.raises(error, match=message):
        build_config(Cfg, overrides, where="mixer 'x'")
