"""Pure table functions on hand-made records: ranking, seeds' spread, edge of grid, grids, bench."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from arena.leaderboard import format_html, format_markdown, leaderboard
from arena.report import tables
from arena.report.grids import length_curve, niah_grid
from arena.store import load
from tests.report.fixture_store import MQAR_ORDER, make_store


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    make_store(path)
    return load(path)


def test_ranking_spread_and_edge_of_grid(df):
    board = leaderboard(df, "mqar")
    for d, g in board.groupby("d_model"):
        assert list(g.mixer) == MQAR_ORDER
        assert (g.n_seeds == 2).all() and (g.lrs_tried == 3).all()
        att = g[g.mixer == "attention"].iloc[0]
        expect = [0.9 + (0.05 if d == 64 else 0) + 0.02 * s for s in (0, 1)]
        assert att.score == pytest.approx(sum(expect) / 2) and att["std"] == pytest.approx(pd.Series(expect).std())
        assert list(g.lr_at_edge) == [False, False, True] and g.best_lr.iloc[-1] == 1e-2
    md, html = format_markdown(board), format_html(board, {"mqar": "task-mqar.html"})
    assert "| mixer | d_model | score |" in md and "(edge of grid)" in md and "best over a grid of 3" in md
    assert html.count('class="edge"') == 2 and '<a href="task-mqar.html">mqar</a>' in html


def test_unequal_grids_are_said():
    rows = [{"kind": "train", "status": "ok", "task": "t", "mixer": m, "seed": 0, "accuracy": 0.5,
             "config.optim.lr": lr, "wall_time_s": 1.0} for m, lrs in (("a", (1, 2)), ("b", (1,))) for lr in lrs]
    assert "NOT the same grid" in format_markdown(leaderboard(pd.DataFrame(rows)))


def test_best_runs_keep_only_the_best_lr_and_all_seeds(df):
    runs = tables.best_runs(df, "mqar")
    assert len(runs) == 3 * 2 * 2  # mixers x d_models x seeds
    assert set(runs[runs.mixer == "mamba"]["config.optim.lr"]) == {1e-2}
    prov = tables.provenance(runs)
    assert list(prov.columns) == tables.PROVENANCE and prov.git_commit.str.len().max() == 12
    curves = tables.training_curves(df, "mqar")
    assert len(curves) == 12 * 3 and set(curves.columns) >= {"step", "loss", "mixer"}


def test_niah_and_length_grids(df):
    metrics = {"exact_match@len=64,depth=0.5": 0.5, "exact_match@len=64,depth=0.0": 1.0,
               "exact_match@len=64": 0.75, "accuracy@len=128": 0.2, "accuracy@len=64": 0.4, "accuracy": 0.3}
    assert niah_grid(metrics) == [{"length": 64, "depth": 0.0, "exact_match": 1.0},
                                  {"length": 64, "depth": 0.5, "exact_match": 0.5}]
    assert length_curve(metrics) == [{"length": 64, "accuracy": 0.4}, {"length": 128, "accuracy": 0.2}]
    heat = tables.niah_heatmaps(df)
    assert len(heat) == 3 * 6 and heat.exact_match.between(0, 1).all()
    ext = tables.length_extrapolation(df, "induction_heads")
    assert sorted(set(ext.length)) == [64, 128, 256, 512] and (ext.train_len == 64).all()


def test_bench_crossover_pareto_and_failures(df):
    bench = tables.bench_table(df)
    assert set(bench["pass"]) == {"fwd", "fwdbwd", "decode"} and len(bench) == 46
    assert math.isnan(bench[bench.status == "oom"].tokens_per_s.iloc[0])
    cross = tables.crossovers(bench).set_index(["pass", "mixer"]).crossover_len
    assert cross["fwd", "gated_deltanet"] == 1024 and cross["fwd", "mamba"] == 2048
    qt = tables.quality_vs_throughput(df, "mqar").set_index("mixer")
    assert qt.seq_len.iloc[0] == 4096  # the longest length every mixer measured
    assert qt.pareto.to_dict() == {"mamba": False, "gated_deltanet": True, "attention": True}  # mamba: dominated
    failed = tables.failed_runs(df)
    assert set(failed.status) == {"diverged", "oom"} and "loss is nan" in set(failed.error)


def test_empty_frames_give_empty_tables():
    empty = load("/nonexistent/store")
    assert tables.bench_table(empty).empty and tables.failed_runs(empty).empty
    assert tables.quality_vs_throughput(empty, "mqar").empty and tables.training_curves(empty, "mqar").empty
