"""The record schema and the results store: exact round trips, atomic and concurrent writes,
attempts, and the pandas view the reporter reads."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arena.records import Record, environment_info, git_state, metric_key, utc_now
from arena.registry import UnknownNameError
from arena.store import BASE_COLUMNS, DuplicateRecordError, Store, StoreError, load

REPO = Path(__file__).resolve().parents[2]


def make_record(run_id: str = "3f2a9c1b7d4e-s0", status: str = "ok", **overrides) -> Record:
    fields = {
        "run_id": run_id, "kind": "train", "status": status, "task": "mqar",
        "mixer": "gated_deltanet+attention", "impl": "gated_deltanet:chunk,attention:sdpa",
        "attention_backend": "sdpa", "device": "cpu", "seed": 0,
        "config": {"model": {"d_model": 64, "n_layers": 2, "mixers": ["gated_deltanet", "attention"]},
                   "lr": 3e-4, "data": {"seq_len": 128}},
        "metrics": {"accuracy": 0.5, metric_key("accuracy", len=512): 0.25},
        "curve": [{"step": 0, "loss": 4.2}, {"step": 10, "loss": 3.1}],
        "error": "" if status == "ok" else "RuntimeError: boom",
        "git_commit": "abc123", "git_dirty": True,
        "versions": {"python": "3.11.7", "torch": "2.13.0", "triton": "", "cuda": "", "arena": "0.1.0"},
        "started_at": "2025-01-31T12:00:00+00:00", "wall_time_s": 1.5, "peak_mem_bytes": 1 << 20,
        "extra": {"params": 12345, "state_size": 4096, "best_metrics": {"accuracy": 0.5}},
    }
    return Record(**{**fields, **overrides})


def run_python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True, **kwargs)


# --- the schema ------------------------------------------------------------------------------


def test_record_round_trip_is_exact_with_nonfinite_floats():
    record = make_record(
        status="diverged",
        metrics={"loss": math.nan, "ppl": math.inf, "neg": -math.inf, "accuracy@len=512": 0.125},
        curve=[{"step": 5, "loss": math.nan}],
        config={"a": {"b": {"c": [1, 2.5, None, "x"]}}, "eps": 1e-12},
    )
    text = record.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} is not strict JSON"))
    back = Record.from_json(text)
    assert back.to_json() == text
    assert math.isnan(back.metrics["loss"]) and math.isnan(back.curve[0]["loss"])
    assert back.metrics["ppl"] == math.inf and back.metrics["neg"] == -math.inf
    assert back.config == record.config and back.extra == record.extra
    same = {"metrics", "curve"}
    assert {k: v for k, v in vars(back).items() if k not in same} == \
           {k: v for k, v in vars(record).items() if k not in same}


def test_record_loads_future_and_old_files():
    data = json.loads(make_record().to_json())
    data["tokens_per_joule"] = 7.0  # a field a newer arena added
    for optional in ("curve", "peak_mem_bytes", "attention_backend", "schema_version"):
        del data[optional]
    back = Record.from_json(json.dumps(data))
    assert back.extra["tokens_per_joule"] == 7.0 and back.extra["params"] == 12345
    assert back.curve == [] and back.peak_mem_bytes == 0 and back.attention_backend is None
    del data["seed"]
    with pytest.raises(ValueError, match="seed"):
        Record.from_json(json.dumps(data))


def test_record_rejects_bad_kind_status_and_metrics():
    with pytest.raises(ValueError, match="Did you mean 'failed'"):
        make_record(status="faild")
    with pytest.raises(TypeError, match="metrics values must be numbers"):
        make_record(metrics={"accuracy": "high"})
    assert make_record(metrics={"steps": 3}).metrics == {"steps": 3.0}


def test_environment_info_never_imports_torch(tmp_path):
    code = """
        import sys
        from arena.records import environment_info
        info = environment_info()
        assert 'torch' not in sys.modules and 'triton' not in sys.modules
        print(info)
    """
    proc = run_python(code, stdout=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    info = environment_info()
    assert set(info) == {"git_commit", "git_dirty", "versions"}
    assert set(info["versions"]) == {"python", "torch", "triton", "cuda", "arena"}
    assert info["versions"]["torch"]  # this venv has torch
    assert git_state(tmp_path) == ("", False)  # outside a checkout: no commit, no error
    assert utc_now().endswith("+00:00")


# --- writing -----------------------------------------------------------------------------------


def test_write_layout_status_and_contains(tmp_path):
    store = Store(tmp_path / "results")
    assert store.status_of("3f2a9c1b7d4e-s0") is None and "3f2a9c1b7d4e-s0" not in store
    path = store.write(make_record())
    assert path == tmp_path / "results/records/train/3f2a9c1b7d4e-s0.1.json"
    assert store.status_of("3f2a9c1b7d4e-s0") == "ok" and store.status_of("3f2a9c1b7d4e-s0", "eval") is None
    assert "3f2a9c1b7d4e-s0" in store and ("train", "3f2a9c1b7d4e-s0") in store
    assert ("bench", "3f2a9c1b7d4e-s0") not in store
    assert Record.from_json(path.read_text()).to_json() == make_record().to_json()
    with pytest.raises(UnknownNameError, match="Did you mean 'train'"):
        store.status_of("3f2a9c1b7d4e-s0", kind="trian")
    with pytest.raises(ValueError, match="names a file"):
        store.write(make_record(run_id="../escape"))


def test_ok_record_is_never_written_twice(tmp_path):
    store = Store(tmp_path)
    store.write(make_record())
    with pytest.raises(DuplicateRecordError, match="already has an ok record"):
        store.write(make_record())
    with pytest.raises(DuplicateRecordError):
        store.write(make_record(status="failed"))
    assert [p.name for p in (tmp_path / "records/train").iterdir()] == ["3f2a9c1b7d4e-s0.1.json"]


def test_failed_run_is_retried_and_old_attempt_kept(tmp_path):
    store = Store(tmp_path)
    first = store.write(make_record(status="oom", metrics={}))
    second = store.write(make_record(wall_time_s=2.5))
    assert first.name.endswith(".1.json") and second.name.endswith(".2.json") and first.exists()
    assert [r.status for r in store.attempts("3f2a9c1b7d4e-s0")] == ["oom", "ok"]
    assert store.status_of("3f2a9c1b7d4e-s0") == "ok"
    df = load(tmp_path)
    assert len(df) == 1
    assert df.loc[0, "attempt"] == 2 and df.loc[0, "status"] == "ok" and df.loc[0, "wall_time_s"] == 2.5


def test_interrupted_write_leaves_no_record(tmp_path, monkeypatch):
    store = Store(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the writer dies between writing the temp file and naming it

    monkeypatch.setattr(os, "link", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write(make_record())
    monkeypatch.undo()
    assert list((tmp_path / "records/train").iterdir()) == []  # the temp file is cleaned up too
    # A writer killed by SIGKILL cannot clean up: its half-written temp file stays, unseen.
    (tmp_path / "records/train/.3f2a9c1b7d4e-s0.123.abc.tmp").write_text('{"run_id": "3f2a9c')
    assert store.status_of("3f2a9c1b7d4e-s0") is None and store.records() == []
    assert load(tmp_path).empty
    store.write(make_record())
    assert len(load(tmp_path)) == 1


def test_sigkilled_writer_leaves_only_whole_records(tmp_path):
    code = f"""
        import math
        from arena.records import Record
        from arena.store import Store
        curve = [{{"step": i, "loss": 1.0 / (i + 1)}} for i in range(20_000)]  # ~0.8 MB a record
        store, i = Store({str(tmp_path)!r}), 0
        while True:
            store.write(Record(run_id=f"big-s{{i}}", kind="train", status="ok", task="t", mixer="m",
                               impl="i", device="cpu", seed=i, curve=curve))
            i += 1
    """
    proc = run_python(code)
    records_dir = tmp_path / "records/train"
    deadline = time.monotonic() + 60
    while not (records_dir.is_dir() and len(list(records_dir.glob("*.json"))) >= 2):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the writer wrote nothing"
        time.sleep(0.01)
    time.sleep(0.02)  # land somewhere inside a later write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    files = list(records_dir.glob("*.json"))
    for path in files:
        assert len(Record.from_json(path.read_text()).curve) == 20_000
    assert len(Store(tmp_path).records()) == len(files) >= 2


def test_concurrent_writers_lose_nothing(tmp_path):
    code = """
        import sys, time
        from pathlib import Path
        from arena.records import Record
        from arena.store import Store
        writer, root = int(sys.argv[1]), Path(sys.argv[2])
        while not (root / "go").exists():
            time.sleep(0.001)
        store = Store(root)
        def record(run_id, status):
            return Record(run_id=run_id, kind="train", status=status, task="mqar", mixer="mamba",
                          impl="naive", device="cpu", seed=writer, metrics={"accuracy": writer / 10},
                          extra={"writer": writer})
        for i in range(20):  # all writers retry one run at once: attempt numbers must not collide
            store.write(record("shared-s0", "failed"))
        for i in range(25):
            store.write(record(f"w{writer}-r{i}-s0", "ok"))
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(w), str(tmp_path)],
                              cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for w in range(4)]
    (tmp_path / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    df = load(tmp_path)
    assert len(df) == 101 and df["run_id"].is_unique
    ours = df[df["run_id"] != "shared-s0"]
    assert sorted(ours["run_id"]) == sorted(f"w{w}-r{i}-s0" for w in range(4) for i in range(25))
    assert (ours["accuracy"] == ours["writer"] / 10).all() and (ours["attempt"] == 1).all()
    shared = Store(tmp_path).attempts("shared-s0")
    assert len(shared) == 80 == df.set_index("run_id").loc["shared-s0", "attempt"]
    assert sorted(r.seed for r in shared) == sorted(w for w in range(4) for _ in range(20))
    assert not [p for p in (tmp_path / "records/train").iterdir() if p.name.endswith(".tmp")]


# --- reading -----------------------------------------------------------------------------------


def test_load_of_empty_missing_or_wrong_store(tmp_path):
    for root in (tmp_path / "missing", tmp_path):
        df = load(root)
        assert df.empty and list(df.columns) == list(BASE_COLUMNS)
    (tmp_path / "a_file").write_text("not a store")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        load(tmp_path / "a_file")
    Store(tmp_path / "results").write(make_record())
    with pytest.raises(StoreError, match="pass its parent"):
        load(tmp_path / "results/records")


def test_load_flattens_metrics_extra_and_config(tmp_path):
    store = Store(tmp_path)
    store.write(make_record())
    store.write(make_record(run_id="other-s1", kind="bench", seed=1, metrics={"tokens_per_s": 1e6},
                            config={"model": {"d_model": 128}}, extra={"params": 99}))
    df = load(tmp_path)
    assert list(df.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    row = df.set_index("run_id").loc["3f2a9c1b7d4e-s0"]
    assert row["accuracy"] == 0.5 and row["accuracy@len=512"] == 0.25
    assert row["params"] == 12345 and row["state_size"] == 4096 and row["best_metrics.accuracy"] == 0.5
    assert row["config.model.d_model"] == 64 and row["config.lr"] == 3e-4
    assert row["config.model.mixers"] == ["gated_deltanet", "attention"]
    assert row["config"]["data"] == {"seq_len": 128} and row["curve"][1]["loss"] == 3.1
    assert row["versions.torch"] == "2.13.0" and row["attempt"] == 1
    assert math.isnan(row["tokens_per_s"])  # a metric this run lacks
    bench = load(tmp_path, kind="bench")
    assert list(bench["run_id"]) == ["other-s1"] and bench.loc[0, "tokens_per_s"] == 1e6


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    store = Store(tmp_path)
    store.write(make_record(status="failed"))
    store.write(make_record(run_id="good-s0"))
    train = tmp_path / "records/train"
    (train / "3f2a9c1b7d4e-s0.2.json").write_text("{ this is not json")  # a corrupt newest attempt
    (train / "notes.json").write_text("{}")
    (train / "wrong-s0.1.json").write_text(make_record(run_id="elsewhere-s0").to_json())
    with pytest.warns(UserWarning, match="skipped 3 unreadable") as caught:
        df = load(tmp_path)
    assert len(caught) == 1
    assert sorted(df["run_id"]) == ["3f2a9c1b7d4e-s0", "good-s0"]
    older = df.set_index("run_id").loc["3f2a9c1b7d4e-s0"]  # falls back to the readable attempt
    assert older["attempt"] == 1 and older["status"] == "failed"
    assert store.status_of("3f2a9c1b7d4e-s0") == "failed"
