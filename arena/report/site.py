"""``arena report``: the static dashboard site, regenerated from the store alone.

Layout of ``out`` (default ``dashboards/``)::

    index.html            the leaderboards of every task, links to every page, the store's summary
    leaderboard.md        the same leaderboards as Markdown (for a README or a PR)
    task-<task>.html      per task: its leaderboard, then each figure with its data table and records
    throughput.html       throughput and memory against sequence length (bench records)
    figures/*.svg         deterministic SVG figures
    data/*.csv            every figure's data table in full
    assets/style.css      the one stylesheet (no CDN, no web fonts, no scripts: works offline)

An empty store gives an index that says so and how to fill it. Files the previous report wrote
(figures/, data/, task-*.html) are removed first, so no page links to stale output.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

from arena.leaderboard import format_html, format_markdown, leaderboard
from arena.report import figures, tables
from arena.store import load

DEFAULT_OUT = "dashboards"
RECALL_TASKS = ("mqar", "in_context_recall", "noisy_recall", "fuzzy_recall")
MAX_ROWS = 200  # rows of a data table shown inline; the CSV has them all
STYLE = """
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em; color: #222; }
nav { border-bottom: 1px solid #ccc; padding-bottom: .5em; margin-bottom: 1em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.edge td { background: #fff4d6; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
details { margin: .3em 0; } summary { cursor: pointer; font-size: 13px; }
.empty { background: #f6f6f6; padding: 1em; border-left: 4px solid #999; }
code, pre { background: #f3f3f3; padding: 1px 4px; }
""".strip()


@dataclass
class Page:
    filename: str
    title: str
    body: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def html_table(df: pd.DataFrame, cls: str = "data") -> str:
    """A DataFrame as an escaped HTML table (floats to 4 significant digits)."""
    def cell(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.4g}"
        return escape(str(v))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Site:
    """Collects pages, figures and data files, then writes them under ``out``."""

    def __init__(self, out: Path, df: pd.DataFrame):
        self.out, self.df = out, df
        self.files: dict[str, str] = {}
        mixers = set(df["mixer"]) if not df.empty else set()
        self.colours = figures.palette(mixers)

    def figure(self, page: Page, name: str, title: str, svg: str, data: pd.DataFrame, runs: pd.DataFrame,
               caption: str = "") -> None:
        """One figure with its data table (first ``MAX_ROWS`` rows; all in the CSV) and its records."""
        svg_path, csv_path = f"figures/{slug(name)}.svg", f"data/{slug(name)}.csv"
        self.files[svg_path], self.files[csv_path] = svg, data.to_csv(index=False)
        shown = html_table(data.head(MAX_ROWS))
        more = f" (first {MAX_ROWS} of {len(data)})" if len(data) > MAX_ROWS else f" ({len(data)} rows)"
        prov = tables.provenance(runs)
        page.body.append(
            f'<figure id="{slug(name)}"><h3>{escape(title)}</h3>'
            f'<img src="{svg_path}" alt="{escape(title)}">'
            f"<figcaption>{escape(caption)}</figcaption>"
            f"<details><summary>data{more}: <a href=\"{csv_path}\">{csv_path}</a></summary>{shown}</details>"
            f"<details><summary>records ({len(prov)})</summary>{html_table(prov, 'provenance')}</details>"
            "</figure>")

    def write(self, pages: list[Page]) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("figures", "data"):
            shutil.rmtree(self.out / stale, ignore_errors=True)
        for old in self.out.glob("task-*.html"):
            old.unlink()
        self.files["assets/style.css"] = STYLE + "\n"
        nav = "".join(f'<a href="{p.filename}">{escape(p.title)}</a>' for p in pages)
        for p in pages:
            self.files[p.filename] = (
                f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<title>arena: {escape(p.title)}</title><link rel="stylesheet" href="assets/style.css">'
                f'<link rel="icon" href="data:,"></head>\n<body><nav>{nav}</nav>\n<h1>{escape(p.title)}</h1>\n'
                + "\n".join(p.body) + "\n</body></html>\n")
        for rel, text in self.files.items():
            path = self.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return self.out / "index.html"


def build_site(results: str | os.PathLike = "results", out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """Regenerate the whole site from the store at ``results`` into ``out``; return index.html."""
    df = load(results)
    site = Site(Path(out), df)
    index = Page("index.html", "arena dashboard")
    if df.empty:
        index.body.append(
            f'<div class="empty"><p>The results store <code>{escape(str(results))}</code> has no records yet.</p>'
            "<p>Fill it with <code>arena demo</code> (a small MQAR head-to-head of every mixer, a few minutes on a "
            "CPU) or <code>arena sweep RECIPE</code> (<code>arena list</code> shows the recipes), then run "
            f"<code>arena report --results {escape(str(results))}</code> again.</p></div>")
        site.files["leaderboard.md"] = "# arena leaderboards\n\n" + format_markdown(leaderboard(df))
        return site.write([index])

    tasks = sorted(set(df.loc[df["kind"] != "bench", "task"]))
    task_pages = {t: Page(f"task-{slug(t)}.html", t) for t in tasks}
    board = leaderboard(df)
    counts = df.groupby(["kind", "status"]).size().reset_index(name="records")
    index.body += [
        f"<p>{len(df)} records from the store <code>{escape(str(results))}</code>. Each leaderboard row is a "
        "mixer's best learning rate over the tuning grid (mean ± std over seeds, n seeds); rows marked "
        "<em>edge of grid</em> had their best learning rate at the smallest or largest value tried. "
        'Markdown: <a href="leaderboard.md">leaderboard.md</a>.</p>',
        "<h2>Leaderboards</h2>",
        format_html(board, {t: p.filename for t, p in task_pages.items()}),
        "<h2>Pages</h2><ul>" + "".join(f'<li><a href="{p.filename}">{escape(t)}</a></li>'
                                       for t, p in task_pages.items())
        + '<li><a href="throughput.html">throughput and memory</a></li></ul>',
        "<h2>Records</h2>" + html_table(counts),
    ]
    site.files["leaderboard.md"] = "# arena leaderboards\n\n" + format_markdown(board)
    for task, page in task_pages.items():
        _task_page(site, page, task)
    throughput = Page("throughput.html", "throughput and memory")
    _throughput_page(site, throughput)
    return site.write([index, *task_pages.values(), throughput])


def _task_page(site: Site, page: Page, task: str) -> None:
    df, colours = site.df, site.colours
    board = leaderboard(df, task)
    metric = board["metric"].iloc[0] if not board.empty else "accuracy"
    page.body.append("<h2>Leaderboard</h2>" + format_html(board))
    runs = tables.best_runs(df, task)
    curves = tables.training_curves(df, task)
    if not curves.empty:
        site.figure(page, f"{task}-training-curves", "training curves", figures.training_curves(curves, colours),
                    curves, runs, "Training loss of each mixer's best learning rate; band: spread over seeds.")
    if task in RECALL_TASKS and not board.empty:
        size = tables.quality_vs_size(df, task)
        site.figure(page, f"{task}-vs-d_model", f"{metric} vs d_model",
                    figures.quality_vs(size, "d_model", colours, metric), size, runs,
                    "Best over the learning-rate grid at each width, a panel per setting (Zoology, Fig. 2).")
        if size["state_size"].notna().any():
            s = size.dropna(subset=["state_size"])
            site.figure(page, f"{task}-vs-state_size", f"{metric} vs state size",
                        figures.quality_vs(s, "state_size", colours, metric), s, runs,
                        "Recall against the recurrent state each mixer carries (attention: its KV cache).")
    heat = tables.niah_heatmaps(df, task)
    for mixer in sorted(set(heat["mixer"])):
        sub = heat[heat["mixer"] == mixer]
        site.figure(page, f"{task}-heatmap-{mixer}", f"{mixer}: exact match, depth x length",
                    figures.niah_heatmap(sub, "exact_match", mixer), sub, runs[runs["mixer"] == mixer],
                    "Mean over seeds of the best learning rate's runs.")
    if heat.empty:
        ext = tables.length_extrapolation(df, task, metric if "@" not in metric else "accuracy")
        if not ext.empty:
            m = ext.columns[-1]
            site.figure(page, f"{task}-length-extrapolation", f"{m} vs evaluation length",
                        figures.length_extrapolation(ext, colours, m), ext, runs,
                        "Dotted line: the training length; band: spread over seeds.")
    qt = tables.quality_vs_throughput(df, task)
    if not qt.empty:
        bench = df[df["kind"] == "bench"]
        site.figure(page, f"{task}-quality-vs-throughput", "quality vs throughput",
                    figures.quality_vs_throughput(qt, colours, metric), qt, pd.concat([runs, bench]),
                    "One point per mixer; dashed: the Pareto front.")
    failed = tables.failed_runs(df, task)
    if not failed.empty:
        page.body.append(f"<h2>Runs that did not finish ok ({len(failed)})</h2>" + html_table(failed))


def _throughput_page(site: Site, page: Page) -> None:
    df = site.df
    bench = tables.bench_table(df)
    if bench.empty:
        page.body.append('<div class="empty"><p>No benchmark records in the store yet (records of kind '
                         "<code>bench</code> with <code>seq_len</code>, <code>pass</code> and "
                         "<code>tokens_per_s</code>). Run <code>arena bench</code> to measure them.</p></div>")
        return
    runs = df[df["kind"] == "bench"]
    cross = tables.crossovers(bench)
    site.figure(page, "throughput", "throughput vs sequence length",
                figures.throughput(bench, cross, site.colours), bench, runs,
                "Tokens per second, a line per mixer and implementation (line style), a panel per pass; "
                "dotted: the length from which a linear mixer stays faster than attention.")
    if bench["peak_mem_mib"].notna().any() and (bench["peak_mem_mib"] > 0).any():
        site.figure(page, "memory", "peak memory vs sequence length", figures.memory(bench, site.colours),
                    bench, runs, "Peak memory per pass; OOM rows are left out (see the data table).")
    page.body.append("<h2>Crossover with attention</h2>" + html_table(cross))
    failed = tables.failed_runs(df[df["kind"] == "bench"])
    if not failed.empty:
        page.body.append(f"<h2>Rows that did not finish ok ({len(failed)})</h2>" + html_table(failed))
