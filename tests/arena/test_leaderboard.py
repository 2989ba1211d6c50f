"""The leaderboard over records: best lr over the grid, seeds' spread, the edge-of-grid flag."""
from __future__ import annotations

import math

import pandas as pd

from arena.leaderboard import format_table, leaderboard


def _row(mixer, lr, seed, acc, seq_len=64, status="ok"):
    return {"kind": "train", "status": status, "task": "mqar", "mixer": mixer, "seed": seed, "accuracy": acc,
            "primary_metric": "accuracy", "config.optim.lr": lr, "config.task.seq_len": seq_len,
            "config.task.vocab_size": 8192, "config.model.d_model": 64, "config.model.n_layers": 2,
            "config.model.mlp": False, "params": 1000, "state_size": 10, "flops_per_token": 5, "tokens": 100,
            "wall_time_s": 1.0}


def test_best_lr_mean_and_spread_over_seeds_and_edge_flag():
    rows = [_row("attention", lr, s, acc) for lr, s, acc in
            [(1e-3, 0, 0.5), (1e-3, 1, 0.7), (3e-3, 0, 0.9), (3e-3, 1, 1.0), (1e-2, 0, 0.2), (1e-2, 1, 0.4)]]
    rows += [_row("mamba", lr, s, acc) for lr, s, acc in [(1e-3, 0, 0.3), (3e-3, 0, 0.2), (1e-2, 0, 0.8)]]
    rows += [_row("mamba", 1e-2, 1, math.nan, status="diverged")]  # failed runs do not count
    board = leaderboard(pd.DataFrame(rows))
    att = board[board.mixer == "attention"].iloc[0]
    assert att.best_lr == 3e-3 and att.score == 0.95 and att.n_seeds == 2 and not att.lr_at_edge
    assert abs(att["std"] - pd.Series([0.9, 1.0]).std()) < 1e-12
    mam = board[board.mixer == "mamba"].iloc[0]
    assert mam.best_lr == 1e-2 and mam.lr_at_edge and mam.n_seeds == 1 and mam.lrs_tried == 3
    assert list(board.mixer) == ["attention", "mamba"]  # best first
    text = format_table(board)
    assert "(edge of grid)" in text and "best over a grid of 3 learning rates" in text


def test_settings_are_separate_boards_and_empty_store_says_what_to_do():
    board = leaderboard(pd.DataFrame([_row("attention", 1e-3, 0, 0.5, 64), _row("attention", 1e-3, 0, 0.9, 128)]))
    assert sorted(board.setting) == ["seq_len=128", "seq_len=64"]
    assert "arena demo" in format_table(leaderboard(pd.DataFrame()))


def test_lower_is_better_metrics_rank_upwards():
    rows = []
    for mixer, lr, bpb in [("attention", 1e-3, 2.0), ("attention", 3e-3, 1.5), ("mamba", 1e-3, 1.2), ("mamba", 3e-3, 1.4)]:
        r = _row(mixer, lr, 0, None)
        r.update(task="lm", accuracy=None, bits_per_byte=bpb, primary_metric="bits_per_byte", higher_is_better=False)
        rows.append(r)
    board = leaderboard(pd.DataFrame(rows))
    assert list(board.mixer) == ["mamba", "attention"]  # lowest bits per byte first
    assert list(board.best_lr) == [1e-3, 3e-3] and list(board.score) == [1.2, 1.5]
