"""Figures are deterministic: the same records give byte-identical SVG, with no date in it."""
from __future__ import annotations

import pytest

from arena.report import figures, tables
from arena.store import load
from tests.report.fixture_store import make_store


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    make_store(path)
    return load(path)


def _all_figures(df) -> dict[str, str]:
    colours = figures.palette(df.mixer)
    bench = tables.bench_table(df)
    heat = tables.niah_heatmaps(df)
    return {
        "curves": figures.training_curves(tables.training_curves(df, "mqar"), colours),
        "d_model": figures.quality_vs(tables.quality_vs_size(df, "mqar"), "d_model", colours, "accuracy"),
        "state": figures.quality_vs(tables.quality_vs_size(df, "mqar"), "state_size", colours, "accuracy"),
        "heat": figures.niah_heatmap(heat[heat.mixer == "mamba"], "exact_match", "mamba"),
        "ext": figures.length_extrapolation(tables.length_extrapolation(df, "induction_heads"), colours, "accuracy"),
        "speed": figures.throughput(bench, tables.crossovers(bench), colours),
        "memory": figures.memory(bench, colours),
        "pareto": figures.quality_vs_throughput(tables.quality_vs_throughput(df, "mqar"), colours, "accuracy"),
    }


def test_same_records_give_byte_identical_svg(df):
    first, second = _all_figures(df), _all_figures(df.sample(frac=1, random_state=0))  # row order too
    for name, svg in first.items():
        assert svg.startswith("<?xml") and "<svg" in svg, name
        assert "<dc:date>" not in svg and "http://" not in svg.split("<svg", 1)[1].replace(
            "http://www.w3.org", "").replace("http://purl.org", "").replace("http://creativecommons.org", ""), name
        assert svg == second[name], f"{name}: SVG differs between two renders of the same records"


def test_one_colour_per_mixer_across_figures(df):
    assert figures.palette(["mamba", "attention", "mamba"]) == figures.palette(["attention", "mamba"])
    assert len(set(figures.palette(df.mixer).values())) == df.mixer.nunique()
