"""The site from a fixture store (through `arena report`, in a process that must not import torch)
and from an empty one."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from arena.cli import main
from tests.report.fixture_store import make_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site of the fixture store, built by ``arena report`` in a fresh interpreter that must
    not import torch (nor tasks, architectures, kernels) on the way. A stale page and figure
    from an earlier report are there first and must be gone after."""
    tmp = tmp_path_factory.mktemp("report")
    make_store(tmp / "results")
    (tmp / "site" / "figures").mkdir(parents=True)
    (tmp / "site" / "figures" / "stale.svg").write_text("old")
    (tmp / "site" / "task-gone.html").write_text("old")
    code = ("import sys; from arena.cli import main; "
            f"assert main(['report', '--results', {str(tmp / 'results')!r}, '--out', {str(tmp / 'site')!r}]) == 0; "
            "bad = [m for m in ('torch', 'tasks', 'architectures', 'kernels') if m in sys.modules]; "
            "assert not bad, f'the reporter imported {bad}'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "dashboard:" in out.stdout
    return tmp / "site"


def test_site_pages_links_and_offline(site):
    pages = sorted(p.name for p in site.glob("*.html"))
    assert pages == ["index.html", "task-induction_heads.html", "task-mqar.html", "task-niah.html", "throughput.html"]
    assert not (site / "figures" / "stale.svg").exists()
    for page in site.glob("*.html"):
        text = page.read_text()
        for ref in re.findall(r'(?:href|src)="([^"]+)"', text):
            if not ref.startswith(("data:", "#")):
                assert not re.match(r"[a-z]+://", ref), f"{page.name}: external {ref}"
                assert (site / ref).is_file(), f"{page.name}: broken {ref}"
    mqar = (site / "task-mqar.html").read_text()
    for fig in ("mqar-training-curves", "mqar-vs-d_model", "mqar-vs-state_size", "mqar-quality-vs-throughput"):
        assert f"figures/{fig}.svg" in mqar and f"data/{fig}.csv" in mqar
    assert "0123456789ab" in mqar and "records (" in mqar  # provenance: the commit of the records
    assert "niah-heatmap-mamba.svg" in (site / "task-niah.html").read_text()
    assert "Crossover with attention" in (site / "throughput.html").read_text()
    assert "### mqar" in (site / "leaderboard.md").read_text()


def test_empty_store_says_how_to_fill_it(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "site")]) == 0
    assert "dashboard:" in capsys.readouterr().out
    text = (tmp_path / "site" / "index.html").read_text()
    assert "no records yet" in text and "arena demo" in text and "arena sweep" in text
    assert sorted(p.name for p in (tmp_path / "site").glob("*.html")) == ["index.html"]
