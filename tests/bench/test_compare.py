"""``arena bench --compare``: exit 2 on a planted slowdown, 0 on equal numbers."""
import json

import pytest

from arena.bench_baselines import BASELINE_FORMAT, compare, current_rows, parse_threshold
from arena.cli import main
from arena.records import Record
from arena.store import Store


def _store(path, speeds: dict):
    store = Store(path)
    for (mixer, T), tps in speeds.items():
        store.write(Record(run_id=f"bench-{mixer}-{T}", kind="bench", status="ok", task="bench", mixer=mixer,
                           impl="reference", device="cpu", seed=0, metrics={"tokens_per_s": tps},
                           extra={"seq_len": T, "pass": "fwd", "batch_size": 1}))
    return path


def _baseline(path, speeds: dict):
    rows = [{"mixer": m, "impl": "reference", "pass": "fwd", "seq_len": T, "tokens_per_s": v}
            for (m, T), v in speeds.items()]
    path.write_text(json.dumps({"format": BASELINE_FORMAT, "device": "cpu", "dtype": "fp32", "rows": rows}))
    return str(path)


BASE = {("mamba2", 64): 1000.0, ("attention", 64): 2000.0}


def test_equal_numbers_pass(tmp_path):
    res = _store(tmp_path / "res", BASE)
    assert main(["bench", "--compare", _baseline(tmp_path / "b.json", BASE), "--results", str(res)]) == 0


def test_planted_slowdown_fails(tmp_path, capsys):
    res = _store(tmp_path / "res", {**BASE, ("mamba2", 64): 850.0})  # 15% slower
    base = _baseline(tmp_path / "b.json", BASE)
    assert main(["bench", "--compare", base, "--threshold", "10%", "--results", str(res)]) == 2
    assert "SLOWER" in capsys.readouterr().out
    assert main(["bench", "--compare", base, "--threshold", "20%", "--results", str(res)]) == 0


def test_write_baseline_round_trips(tmp_path):
    res = _store(tmp_path / "res", BASE)
    assert main(["bench", "--results", str(res), "--compare", _baseline(tmp_path / "x.json", BASE),
                 "--write-baseline", str(tmp_path / "w.json")]) == 0
    data = json.loads((tmp_path / "w.json").read_text())
    assert sorted(r["tokens_per_s"] for r in data["rows"]) == [1000.0, 2000.0]
    assert compare(data, current_rows(res), 0.1)[0] == 0


def test_threshold_parsing_and_bad_baseline():
    assert parse_threshold("10%") == pytest.approx(0.1) and parse_threshold("0.05") == 0.05
    with pytest.raises(ValueError):
        compare({"format": "other", "rows": []}, [], 0.1)


def test_cli_sweep_then_compare(tmp_path):
    argv = ["bench", "--mixers", "mamba2", "--impl", "reference", "--lengths", "64", "--pass", "fwd",
            "--tokens", "128", "--d-model", "32", "--reps", "2", "--warmup", "0", "--results", str(tmp_path / "r")]
    assert main(argv + ["--write-baseline", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["mixer"], r["seq_len"], r["pass"]) for r in rows] == [("mamba2", 64, "fwd")]
    assert main(["bench", "--compare", str(tmp_path / "b.json"), "--results", str(tmp_path / "r")]) == 0
