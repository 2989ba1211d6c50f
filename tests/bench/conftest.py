"""Bench tests never measure the real roofline: a fixed cache file stands in for it."""
import json

import pytest

FAKE_PEAKS = {"peak_gbps": 10.0, "peak_tflops": 0.1, "device": "cpu"}


@pytest.fixture(autouse=True)
def fake_roofline(tmp_path, monkeypatch):
    path = tmp_path / "roofline.json"
    path.write_text(json.dumps({d: FAKE_PEAKS for d in ("float32", "bfloat16", "float16")}))
    monkeypatch.setenv("ARENA_ROOFLINE_CACHE", str(path))
    return path
