"""The record schema's shared pieces. Stdlib only: tasks, the store and the reporter (which
never imports torch) all read and write metric keys through these two functions.

A metric key is a name, or a name at a setting: ``accuracy``, ``accuracy@len=1024``,
``exact_match@len=1024,depth=0.25``.
"""
from __future__ import annotations


def metric_key(name: str, **settings) -> str:
    """``metric_key("exact_match", len=1024, depth=0.25) == "exact_match@len=1024,depth=0.25"``."""
    if not settings:
        return name
    return f"{name}@" + ",".join(f"{k}={v}" for k, v in settings.items())


def parse_metric_key(key: str) -> tuple[str, dict[str, int | float | str]]:
    """The inverse of ``metric_key``; setting values come back as int, float or str."""
    name, _, where = key.partition("@")
    settings = {}
    for part in filter(None, where.split(",")):
        k, _, v = part.partition("=")
        settings[k] = _number(v)
    return name, settings


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
