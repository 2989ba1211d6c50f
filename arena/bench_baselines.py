"""Baselines: the ``arena bench --compare`` regression gate and the deterministic CI gates.

Throughput baseline file (``arena bench --write-baseline FILE`` writes one from a store)::

    {"format": "arena-bench-baseline/1", "device": "NVIDIA H100 80GB HBM3", "dtype": "bf16",
     "rows": [{"mixer": "mamba2", "impl": "triton", "pass": "fwd", "seq_len": 4096,
               "tokens_per_s": 1.2e7}, ...]}

Rows are keyed by (mixer, impl, pass, seq_len). ``compare`` fails (exit 2) when a current row
is slower than ``baseline * (1 - threshold)``; rows missing on either side are listed, not
failed. Wall-clock gates belong on a dedicated runner: on shared CI machines the noise
exceeds any useful threshold.

Deterministic gates (``tests/bench/test_baselines.py``) check committed values in
``results/baselines/``: ``mixers.json`` (parameters, analytic forward FLOPs and state sizes of
every registered mixer at fixed shapes) and ``training.json`` (final loss and accuracy of tiny
fixed-seed MQAR runs on CPU at 2 threads). Regenerate both, after an intended change, with::

    python -m arena.bench --write-baselines
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

BASELINE_FORMAT = "arena-bench-baseline/1"
KEY = ("mixer", "impl", "pass", "seq_len")
BASELINES_DIR = Path(__file__).resolve().parent.parent / "results" / "baselines"


def parse_threshold(text: str) -> float:
    """``"10%" -> 0.1``, ``"0.1" -> 0.1``."""
    t = str(text).strip()
    value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    if not 0 <= value < 1:
        raise ValueError(f"threshold must be in [0%, 100%), got {text!r}")
    return value


def current_rows(results) -> list[dict]:
    """The ok bench rows of a store, in the baseline row format (latest record per key)."""
    from arena.store import load

    df = load(results, kind="bench")
    if df.empty or "tokens_per_s" not in df:
        return []
    df = df[df["status"] == "ok"].sort_values("started_at")
    latest = df.groupby(list(KEY), sort=True).tail(1)
    return [{"mixer": r["mixer"], "impl": r["impl"], "pass": r["pass"], "seq_len": int(r["seq_len"]),
             "tokens_per_s": float(r["tokens_per_s"])} for _, r in latest.iterrows()]


def write_baseline(results, path, device: str = "", dtype: str = "") -> Path:
    rows = current_rows(results)
    data = {"format": BASELINE_FORMAT, "device": device, "dtype": dtype, "rows": rows}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return Path(path)


def compare(baseline: dict, current: list[dict], threshold: float) -> tuple[int, str]:
    """``(exit code, report)``: 2 when a row slowed down by more than ``threshold``, else 0."""
    if baseline.get("format") != BASELINE_FORMAT:
        raise ValueError(f"not a bench baseline (format {baseline.get('format')!r}, want {BASELINE_FORMAT!r})")
    base = {tuple(r[k] for k in KEY): float(r["tokens_per_s"]) for r in baseline["rows"]}
    now = {tuple(r[k] for k in KEY): float(r["tokens_per_s"]) for r in current}
    lines, slow = [], 0
    for key in sorted(base.keys() & now.keys(), key=str):
        ratio = now[key] / base[key] if base[key] > 0 else math.inf
        bad = ratio < 1 - threshold
        slow += bad
        lines.append(f"{'SLOWER' if bad else 'ok':6s} {'/'.join(map(str, key)):40s} "
                     f"{base[key]:>14,.0f} -> {now[key]:>14,.0f} tok/s ({ratio - 1:+.1%})")
    for key in sorted(base.keys() - now.keys(), key=str):
        lines.append(f"{'absent':6s} {'/'.join(map(str, key)):40s} in the baseline only (not compared)")
    for key in sorted(now.keys() - base.keys(), key=str):
        lines.append(f"{'new':6s} {'/'.join(map(str, key)):40s} not in the baseline (not compared)")
    lines.append(f"{slow} of {len(base.keys() & now.keys())} compared rows slower than the baseline by "
                 f"more than {threshold:.0%}")
    return (2 if slow else 0), "\n".join(lines)


# --- deterministic gates ----------------------------------------------------------------------

MIXER_SHAPES = {"d_model": 64, "seq_lens": (64, 1024)}
TRAINING_MIXERS = ("attention", "gated_deltanet")
TRAINING_THREADS = 2


def mixer_numbers() -> dict:
    """Parameters, forward FLOPs and state sizes of every registered mixer at MIXER_SHAPES."""
    from architectures import MIXERS, build_mixer

    d = MIXER_SHAPES["d_model"]
    out = {}
    for name in MIXERS.names():
        m = build_mixer(name, d, impl="reference")
        out[name] = {"params": sum(p.numel() for p in m.parameters()),
                     "flops": {str(T): m.flops(T) for T in MIXER_SHAPES["seq_lens"]},
                     "state_size": {str(T): m.state_size(T) for T in MIXER_SHAPES["seq_lens"]}}
    return {"d_model": d, "seq_lens": list(MIXER_SHAPES["seq_lens"]), "mixers": out}


def training_config(mixer: str):
    from arena.config import RunConfig

    return RunConfig.create(
        "mqar", mixer, d_model=32, n_layers=1, mlp=False, device="cpu", seed=0,
        task_overrides={"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "num_train_examples": 256,
                        "num_test_examples": 32},
        optim={"max_steps": 30, "batch_size": 16, "eval_every": 30, "lr": 3e-3, "progress": False})


def training_numbers(mixer: str) -> dict:
    """Final training loss and test accuracy of the tiny fixed-seed run (2 threads, CPU)."""
    import torch

    from arena.execute import execute

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        record = execute(training_config(mixer))
    finally:
        torch.set_num_threads(threads)
    if record.status != "ok":
        raise RuntimeError(f"tiny training run of {mixer} ended {record.status}: {record.error}")
    losses = [p["loss"] for p in record.curve if "loss" in p]
    return {"final_loss": losses[-1], "accuracy": record.metrics.get("accuracy", math.nan),
            "steps": record.extra.get("steps"), "run_id": record.run_id}


def write_baselines(directory: Path = BASELINES_DIR) -> list[Path]:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    mixers = directory / "mixers.json"
    mixers.write_text(json.dumps(mixer_numbers(), indent=1) + "\n")
    training = directory / "training.json"
    runs = {m: training_numbers(m) for m in TRAINING_MIXERS}
    training.write_text(json.dumps({"threads": TRAINING_THREADS, "torch": torch.__version__,
                                    "loss_rtol": 1e-6, "runs": runs}, indent=1) + "\n")
    return [mixers, training]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arena.bench",
                                     description="regenerate the committed deterministic baselines")
    parser.add_argument("--write-baselines", action="store_true", help=f"write {BASELINES_DIR}/*.json")
    parser.add_argument("--dir", type=Path, default=BASELINES_DIR)
    args = parser.parse_args(argv)
    if not args.write_baselines:
        parser.print_help()
        return 0
    for path in write_baselines(args.dir):
        print(f"wrote {path}")
    return 0
