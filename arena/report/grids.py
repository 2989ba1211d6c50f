"""Settings grids read back from metric keys. Stdlib only (tasks/niah.py imports this)."""
from __future__ import annotations

from arena.records import parse_metric_key


def niah_grid(metrics: dict[str, float], metric: str = "exact_match") -> list[dict]:
    """The flat ``{metric}@len=L,depth=D`` entries of ``metrics`` as heatmap rows
    ``{"length": L, "depth": D, metric: value}``, sorted by length then depth; other keys are
    skipped. ``[{"length": 256, "depth": 0.0, "exact_match": 1.0}, ...]``"""
    rows = []
    for key, value in metrics.items():
        name, settings = parse_metric_key(key)
        if name == metric and settings.keys() == {"len", "depth"}:
            rows.append({"length": int(settings["len"]), "depth": float(settings["depth"]), metric: value})
    return sorted(rows, key=lambda r: (r["length"], r["depth"]))


def length_curve(metrics: dict[str, float], metric: str = "accuracy") -> list[dict]:
    """The ``{metric}@len=L`` entries (length only) as rows ``{"length": L, metric: value}``,
    sorted by length: a length-extrapolation curve."""
    rows = []
    for key, value in metrics.items():
        name, settings = parse_metric_key(key)
        if name == metric and settings.keys() == {"len"}:
            rows.append({"length": int(settings["len"]), metric: value})
    return sorted(rows, key=lambda r: r["length"])
