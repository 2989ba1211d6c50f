"""One generic registry of named classes, and strict config construction.

Stdlib only: every package may import this module (DESIGN.md, "Imports run one way").

    MIXERS = Registry("mixer", base=Mixer, entry_point_group="arena.mixers")

    @MIXERS.register("mamba")
    class Mamba(Mixer): ...

    MIXERS["mamba"]      # the class; a typo raises UnknownNameError with "did you mean"
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T", bound=type)


class UnknownNameError(LookupError):
    """A name that no registry entry, config field or choice carries."""

    def __str__(self) -> str:  # LookupError would repr() the message with quotes
        return str(self.args[0])


class ConfigError(ValueError):
    """A config value of the wrong type or outside its allowed range."""


def did_you_mean(name: str, valid: typing.Iterable[str], what: str) -> str:
    """The one error text for a bad name: the bad value, the closest match, every valid one."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Valid: {', '.join(valid) or '(none registered)'}."


class Registry(Generic[T]):
    """Name -> class, filled by a decorator and, lazily, by an entry-point group.

    ``base=None`` registers plain callables (recipes are functions).

    Entry points (``[project.entry-points."arena.mixers"]`` in a third-party package) are
    imported the first time a name is missing or the full list is asked for, so importing
    arena never imports user code it does not need.
    """

    def __init__(self, kind: str, base: type | None, entry_point_group: str | None = None):
        self.kind, self.base, self.entry_point_group = kind, base, entry_point_group
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(cls: T) -> T:
            if self.base is None and not callable(cls):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} must be callable")
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} must subclass {self.base.__name__}")
            if name in self._entries and self._entries[name] is not cls:
                other = self._entries[name]
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice: by {other.__module__}."
                    f"{other.__qualname__} and by {cls.__module__}.{cls.__qualname__}; rename one"
                )
            self._entries[name] = cls
            cls.registry_name = name
            return cls

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                ep.load()  # the module registers itself with the decorator on import

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._load_entry_points()
        if name not in self._entries:
            raise UnknownNameError(did_you_mean(name, self._entries, self.kind))
        return self._entries[name]

    __getitem__ = get

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


# ---------------------------------------------------------------------------------------------
# strict dataclass configs: unknown keys and wrong types are errors, never dropped


def build_config(cls: type, overrides: dict[str, Any], where: str = "") -> Any:
    """``cls(**overrides)`` where an unknown key or a value of the wrong type raises,
    naming the valid keys or the expected type. ``where`` prefixes the message (e.g. a
    mixer name) so the user knows which config was meant."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    prefix = f"{where}: " if where else ""
    for key, value in overrides.items():
        if key not in fields:
            raise UnknownNameError(prefix + did_you_mean(key, fields, f"config key for {cls.__qualname__}"))
        if not _matches(value, hints[key]):
            raise ConfigError(
                f"{prefix}{key}={value!r} has type {type(value).__name__}; expected {_type_name(hints[key])}"
            )
    return cls(**overrides)


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list))
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
