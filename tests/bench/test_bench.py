"""The bench harness on tiny shapes: records, load() columns, the reporter's page, failures."""
import torch

from architectures import build_mixer
from arena import bench, bench_timing
from arena.bench import BenchRow, bytes_floor, flops_of
from arena.report.site import build_site
from arena.store import Store, load

TINY = {"batch_policy": "tokens", "tokens": 256, "d_model": 32}
QUIET = {"warmup": 0, "reps": 1, "log": lambda *_: None}


def test_sweep_writes_well_formed_records(tmp_path):
    rows = bench.plan(["attention", "gated_deltanet"], ["reference"], [64, 128], ["fwd", "decode"], **TINY)
    rows += bench.plan(["mamba2"], ["reference"], [64], ["fwdbwd", "prefill"], **TINY)
    records = bench.sweep(rows, Store(tmp_path), **QUIET)
    assert len(records) == 10 and {r.status for r in records} == {"ok"}
    df = load(tmp_path, kind="bench")
    for col in ("mixer", "impl", "device", "status", "seq_len", "batch_size", "pass", "tokens_per_s",
                "peak_mem_bytes", "roofline_frac", "time_ms", "time_ms_spread", "first_call_ms", "tflops"):
        assert col in df.columns, col
    assert set(df["pass"]) == set(bench.PASSES) and set(df["seq_len"]) == {64, 128}
    assert (df["batch_size"] * df["seq_len"] == 256).all()
    assert (df["tokens_per_s"] > 0).all() and (df["roofline_frac"] > 0).all()
    assert (df["threads"] == torch.get_num_threads()).all() and set(df["task"]) == {"bench"}
    dec = df[df["pass"] == "decode"].set_index(["mixer", "seq_len"])["state_bytes"]
    assert dec["attention", 128] == 2 * dec["attention", 64]  # the KV cache grows
    assert dec["gated_deltanet", 128] == dec["gated_deltanet", 64]  # the recurrent state does not
    # resumable: ok rows are not measured again
    assert bench.sweep(rows, Store(tmp_path), **QUIET) == []


def test_reporter_throughput_page_reads_bench_records(tmp_path):
    rows = bench.plan(["attention", "mamba2"], ["reference"], [64, 128], ["fwd"], **TINY)
    bench.sweep(rows, Store(tmp_path / "res"), **QUIET)
    build_site(tmp_path / "res", tmp_path / "site")
    page = (tmp_path / "site" / "throughput.html").read_text()
    assert "No benchmark records" not in page and "throughput" in page


class _Boom(torch.nn.Module):
    d_model, impl, cfg = 32, "reference", None

    def __init__(self, err):
        super().__init__()
        self.w, self.err = torch.nn.Parameter(torch.zeros(1)), err

    def forward(self, x, state=None):
        raise self.err


def test_oom_and_failure_become_records_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = bench.build_mixer

    def fake(name, d_model, **kw):
        if name == "mamba":
            return _Boom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        if name == "xlstm":
            return _Boom(ValueError("bad shape"))
        return real(name, d_model, **kw)

    monkeypatch.setattr(bench, "build_mixer", fake)
    rows = bench.plan(["mamba", "xlstm", "attention"], ["reference"], [64], ["fwd"], **TINY)
    records = {r.mixer: r for r in bench.sweep(rows, Store(tmp_path), **QUIET)}
    assert records["mamba"].status == "oom" and "out of memory" in records["mamba"].error
    assert records["xlstm"].status == "failed" and "bad shape" in records["xlstm"].error
    assert records["attention"].status == "ok"
    df = load(tmp_path).set_index("mixer")
    assert df.loc["mamba", "seq_len"] == 64 and df.loc["mamba", "pass"] == "fwd"


def test_unavailable_impls_and_contenders_are_skipped_without_records(tmp_path):
    logged = []
    rows = bench.plan(["gated_deltanet"], ["fla", "mlstm_kernels"], [64], ["fwd"], **TINY)
    rows += bench.plan(["attention"], ["triton"], [64], ["fwd"], **TINY)
    assert bench.sweep(rows, Store(tmp_path), warmup=0, reps=1, log=logged.append) == []
    text = "\n".join(logged)
    assert "fla runs on CUDA devices only" in text
    assert "mlstm_kernels has no counterpart of gated_deltanet" in text
    assert "attention has no 'triton' implementation" in text


def _fake_contender(monkeypatch, chunk):
    """Register contender "fake" for mamba2, whose chunk op is ``chunk``, runnable on CPU."""
    monkeypatch.setitem(bench.CONTENDERS, "fake", ("fake", {"mamba2": lambda: {"chunk": chunk}}))
    monkeypatch.setattr(bench, "contender_ops", lambda impl, mixer, device: {"chunk": chunk})


def test_a_contender_runs_in_arenas_layer_and_is_checked_against_the_reference(tmp_path, monkeypatch):
    from kernels.ssd import naive_chunk_ssd
    _fake_contender(monkeypatch, naive_chunk_ssd)
    (record,) = bench.sweep(bench.plan(["mamba2"], ["fake"], [64], ["fwd"], **TINY), Store(tmp_path), **QUIET)
    assert record.status == "ok" and record.impl == "fake"
    assert record.extra["layer_impl"] == "reference" and record.extra["agreement_rel_err"] < 1e-6


def test_a_contender_that_computes_something_else_gets_no_time(tmp_path, monkeypatch):
    from kernels.ssd import naive_chunk_ssd

    def wrong_decay(x, dt, A, B, C, D=None, **kw):  # a plausible adapter bug: half the decay rate
        return naive_chunk_ssd(x, dt, A * 0.5, B, C, D, **kw)
    _fake_contender(monkeypatch, wrong_decay)
    (record,) = bench.sweep(bench.plan(["mamba2"], ["fake"], [64], ["fwd"], **TINY), Store(tmp_path), **QUIET)
    assert record.status == "failed" and "differs from the fp32 reference" in record.error
    assert "tokens_per_s" not in record.metrics


def test_cuda_timer_is_chosen_on_cuda():
    assert bench_timing.timer_for(torch.device("cuda")) is bench_timing.time_cuda
    assert bench_timing.timer_for(torch.device("cpu")) is bench_timing.time_cpu


def test_cpu_timer_reports_median_spread_and_first_call():
    calls = []
    t = bench_timing.time_cpu(lambda: calls.append(1), warmup=2, reps=5)
    assert len(calls) == 8 and t.reps == 5 and t.min_ms <= t.median_ms <= t.max_ms and t.iqr_ms >= 0


def test_parse_size_and_batch_policy():
    assert [bench.parse_size(s) for s in ("512", "1k", "4K", "32k", "1m")] == [512, 1024, 4096, 32768, 2**20]
    assert bench.batch_for("tokens", 4096, 32768, 1) == 8 and bench.batch_for("tokens", 65536, 32768, 1) == 1
    assert bench.batch_for("fixed", 4096, 32768, 3) == 3


def test_bytes_floor_attention_by_hand():
    m = build_mixer("attention", 32)  # 1 head of 32; params 3 d^2 + d^2 = 4096
    fwd = BenchRow("attention", "reference", 64, "fwd", 2, d_model=32)
    # 4 (2 B T d + P) + 4 B (2 d T): x, y, weights, KV cache written
    assert bytes_floor(m, fwd) == 4 * (2 * 2 * 64 * 32 + 4096) + 4 * 2 * (2 * 32 * 64) == 81920
    assert bytes_floor(m, BenchRow("attention", "reference", 64, "fwdbwd", 2, d_model=32)) == 2 * 81920
    dec = BenchRow("attention", "reference", 64, "decode", 2, d_model=32)
    # read the cache of 64 tokens, append one row of 2 d
    assert bytes_floor(m, dec) == 4 * (2 * 2 * 32 + 4096) + 4 * 2 * (4096 + 64) == 50176
    assert flops_of(m, fwd) == 2 * (8 * 64 * 32**2 + 2 * 32 * 64 * 65)


def test_bytes_floor_mamba2_by_hand():
    m = build_mixer("mamba2", 32)  # d_inner 64, 1 head of 64, N 128, conv_dim 64 + 2 * 128 = 320
    P = 32 * 385 + 320 * 4 + 320 + 3 + 64 + 64 * 32  # in_proj, conv w+b, dt_bias/A_log/D, norm, out_proj
    S = 320 * 3 + 64 * 128  # conv buffer + SSM state, constant in T
    assert sum(p.numel() for p in m.parameters()) == P == 16035 and m.state_size(16) == S == 9152
    dec = BenchRow("mamba2", "reference", 16, "decode", 1, d_model=32)
    assert bytes_floor(m, dec) == 4 * (2 * 32 + P) + 4 * (S + S)  # state read and rewritten
    fwd = BenchRow("mamba2", "reference", 16, "fwd", 1, d_model=32, dtype="bf16")
    assert bytes_floor(m, fwd) == 2 * (2 * 16 * 32 + P) + 4 * S  # bf16 activations, fp32 state


def test_run_id_is_a_hash_of_the_row():
    a = BenchRow("mamba2", "reference", 64, "fwd", 4)
    assert a.run_id == BenchRow("mamba2", "reference", 64, "fwd", 4).run_id
    assert a.run_id != BenchRow("mamba2", "reference", 64, "fwd", 8).run_id


def test_mlstm_kernels_padding_leaves_outputs_and_state_unchanged():
    """xl_chunk takes only T divisible by its chunk size: the adapter pads with tokens whose gates leave the state
    as it was; the reference on the padded inputs gives the same h[:T] and the same final state."""
    from arena.bench_contenders import _pad_mlstm
    from kernels.mlstm.naive import naive_chunk_mlstm
    gen = torch.Generator().manual_seed(0)
    B, T, H, D = 1, 37, 2, 8
    q, k, v = (torch.randn(B, T, H, D, generator=gen, dtype=torch.float64) for _ in range(3))
    i = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    f = torch.randn(B, T, H, generator=gen, dtype=torch.float64) + 3
    padded = _pad_mlstm(q, k, v, i, f, 16)
    assert padded[0].shape[1] == 48
    h, state = naive_chunk_mlstm(q, k, v, i, f, chunk_size=16)
    h_pad, state_pad = naive_chunk_mlstm(*padded, chunk_size=16)
    torch.testing.assert_close(h_pad[:, :T], h, rtol=0, atol=1e-12)
    for a, b in zip(state_pad, state):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


_ABORTING_SWEEP = """
import os, sys
from arena import bench
from arena.store import Store
bench.contender_ops = lambda impl, mixer, device: {"chunk": lambda *a, **k: os.abort()}
bench.CONTENDERS["fake"] = ("fake", {"mamba2": None})
rows = bench.plan(["mamba2"], ["reference", "fake"], [64], ["fwd"], **TINY)
bench.sweep(rows, Store(sys.argv[1]), warmup=0, reps=1)
"""


def test_a_row_that_kills_the_process_is_recorded_by_the_next_sweep_and_then_skipped(tmp_path, monkeypatch):
    """A child process whose contender op aborts (as an LLVM assertion inside Triton does): the
    rows before it keep their records; the next sweep records the dead row as failed (crashed)
    and skips it, unless asked to retry."""
    import subprocess
    import sys
    script = f"TINY = {TINY!r}\n" + _ABORTING_SWEEP
    child = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                           check=False, timeout=300)
    assert child.returncode == -6, child.stdout + child.stderr  # SIGABRT, after the reference row
    store = Store(tmp_path)
    assert [r.impl for r in store.records("bench")] == ["reference"]
    rows = bench.plan(["mamba2"], ["reference", "fake"], [64], ["fwd"], **TINY)
    def must_not_run(*args, **kwargs):
        raise AssertionError("a crashed row was measured again")
    _fake_contender(monkeypatch, must_not_run)
    lines = []
    assert bench.sweep(rows, store, warmup=0, reps=1, log=lines.append) == []  # reference ok; fake crashed
    (crashed,) = [r for r in store.records("bench") if r.impl == "fake"]
    assert crashed.status == "failed" and crashed.extra["crashed"] and "retry-crashed" in crashed.error
    assert any("crashed an earlier sweep, skipped" in line for line in lines)
    assert not list((tmp_path / bench.INFLIGHT_DIR).glob("*.json"))
    from kernels.ssd import naive_chunk_ssd
    _fake_contender(monkeypatch, naive_chunk_ssd)
    (again,) = bench.sweep(rows, store, warmup=0, reps=1, log=lines.append, retry_crashed=True)
    assert again.impl == "fake" and again.status == "ok"
