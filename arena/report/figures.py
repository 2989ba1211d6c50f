"""Seaborn figures from the tables in ``arena.report.tables``, as deterministic SVG text.

Determinism: no pyplot (each figure is a bare ``matplotlib.figure.Figure``, so no global state or
GUI backend), a fixed ``svg.hashsalt`` (the clip-path and glyph ids), no date in the metadata,
text kept as text (``svg.fonttype = none``: no font files embedded, nothing fetched, the
browser draws it in the fixed font stack below). The same table gives byte-identical SVG.
Colours follow ``palette(mixers)``, one colour per mixer across every figure of the site.
"""
from __future__ import annotations

import io
import math

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

RC = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.9),
    "svg.hashsalt": "arena-report",
    "svg.fonttype": "none",
    "font.family": ["DejaVu Sans"],
    "font.sans-serif": ["DejaVu Sans"],
    "axes.titlesize": 10,
    "figure.dpi": 100,
    "path.simplify": True,
}
PASS_ORDER = ("fwd", "fwdbwd", "prefill", "decode")  # the pass names arena bench writes


def palette(mixers) -> dict[str, tuple]:
    """A fixed colour per mixer name (sorted, tab10 then tab20)."""
    names = sorted(set(mixers))
    colours = sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))
    return dict(zip(names, colours))


def to_svg(fig: Figure) -> str:
    with matplotlib.rc_context(RC):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "arena report"})
    return buf.getvalue()


def _panels(n: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _render(draw) -> str:
    """Build and save inside one rc_context so style and determinism settings both apply."""
    with matplotlib.rc_context(RC):
        return to_svg(draw())


def _lines(table: pd.DataFrame, x: str, y: str, panel: str, colours: dict, *, style: str | None = None,
           logx=False, logy=False, ylabel=None, xlabel=None, order=None, mark=None) -> str:
    def draw():
        keys = list(order) if order else sorted(table[panel].unique(), key=str)
        keys = [k for k in keys if k in set(table[panel])]
        fig, axes = _panels(len(keys))
        for ax, key in zip(axes, keys):
            sub = table[table[panel] == key].sort_values([c for c in ("mixer", x) if c in table])
            sns.lineplot(sub, x=x, y=y, hue="mixer", style=style, palette=colours, marker="o", ax=ax,
                         errorbar=("sd") if sub.groupby(["mixer", x]).size().max() > 1 else None,
                         hue_order=sorted(sub["mixer"].unique()), legend="auto")
            ax.set_title(f"{panel}: {key}" if panel != "setting" else str(key))
            if logx:
                ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel or x)
            ax.set_ylabel(ylabel or y)
            if mark:
                mark(ax, key)
            if ax.get_legend():
                ax.legend(fontsize=7, title=None)
        return fig
    return _render(draw)


def training_curves(table: pd.DataFrame, colours: dict, y: str = "loss") -> str:
    """Training loss against step, one line per mixer (band: spread over seeds), a panel per setting."""
    return _lines(table, "step", y, "setting", colours, logy=(table[y] > 0).all(), ylabel=f"training {y}")


def quality_vs(table: pd.DataFrame, x: str, colours: dict, metric: str) -> str:
    """Zoology's figure: best score against ``x`` (d_model or state_size), a panel per setting."""
    return _lines(table, x, "score", "setting", colours, logx=True, ylabel=f"{metric} (best lr)",
                  xlabel={"state_size": "recurrent state (scalars per sequence)"}.get(x, x))


def length_extrapolation(table: pd.DataFrame, colours: dict, metric: str) -> str:
    """Accuracy against evaluation length; the dotted line is the training length."""
    def mark(ax, key):
        train = table[table["setting"] == key]["train_len"].dropna().unique()
        for L in train:
            ax.axvline(L, color="0.4", linestyle=":", linewidth=1)
    return _lines(table, "length", metric, "setting", colours, logx=True, xlabel="evaluation length",
                  mark=mark)


def niah_heatmap(table: pd.DataFrame, metric: str, title: str) -> str:
    """Depth (rows) x length (columns) of one mixer's mean ``metric``."""
    def draw():
        grid = table.pivot_table(index="depth", columns="length", values=metric, aggfunc="mean")
        fig = Figure(figsize=(1.2 + 0.7 * grid.shape[1], 1.0 + 0.45 * grid.shape[0]), layout="constrained")
        ax = fig.subplots()
        sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", annot_kws={"fontsize": 7},
                    cbar_kws={"label": metric}, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("context length")
        ax.set_ylabel("needle depth")
        return fig
    return _render(draw)


def throughput(bench: pd.DataFrame, crossings: pd.DataFrame, colours: dict) -> str:
    """Tokens/s against sequence length, log-log, a panel per pass; dotted lines mark where each
    linear mixer overtakes attention."""
    def mark(ax, pass_):
        for r in crossings[crossings["pass"] == pass_].dropna(subset=["crossover_len"]).itertuples():
            ax.axvline(r.crossover_len, color=colours.get(r.mixer, "0.4"), linestyle=":", linewidth=1.2)
            ax.annotate(f"{r.mixer} > attn", (r.crossover_len, 1), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=6, va="top", ha="right", color=colours.get(r.mixer, "0.4"))
    data = bench.dropna(subset=["tokens_per_s"])
    return _lines(data, "seq_len", "tokens_per_s", "pass", colours, style="impl", logx=True, logy=True,
                  order=_pass_order(data), mark=mark, xlabel="sequence length", ylabel="tokens / s")


def memory(bench: pd.DataFrame, colours: dict) -> str:
    """Peak memory (MiB) against sequence length, log-log, a panel per pass."""
    data = bench.dropna(subset=["peak_mem_mib"])
    data = data[data["peak_mem_mib"] > 0]
    return _lines(data, "seq_len", "peak_mem_mib", "pass", colours, style="impl", logx=True, logy=True,
                  order=_pass_order(data), xlabel="sequence length", ylabel="peak memory (MiB)")


def _pass_order(bench: pd.DataFrame) -> list[str]:
    passes = set(bench["pass"])
    return [p for p in PASS_ORDER if p in passes] + sorted(passes - set(PASS_ORDER))


def quality_vs_throughput(table: pd.DataFrame, colours: dict, metric: str) -> str:
    """One point per mixer; the Pareto front (not beaten on both axes) joined by a line."""
    def draw():
        fig = Figure(figsize=(5.0, 3.6), layout="constrained")
        ax = fig.subplots()
        sns.scatterplot(table, x="tokens_per_s", y="score", hue="mixer", palette=colours, s=60, ax=ax,
                        hue_order=sorted(table["mixer"]))
        front = table[table["pareto"]].sort_values("tokens_per_s")
        ax.plot(front["tokens_per_s"], front["score"], color="0.3", linestyle="--", linewidth=1, label="Pareto front")
        for r in table.itertuples():
            ax.annotate(r.mixer, (r.tokens_per_s, r.score), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        p, L = table["pass"].iloc[0], table["seq_len"].iloc[0]
        ax.set_xlabel(f"tokens / s ({p}, length {L})")
        ax.set_ylabel(f"{metric} (best lr)")
        ax.legend(fontsize=7)
        return fig
    return _render(draw)
