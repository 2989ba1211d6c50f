"""Pure functions from the records DataFrame (``arena.store.load``) to the tables behind each
figure. Each returns a tidy DataFrame (one row per plotted point) that the site prints beside its
figure; ``provenance`` lists the records a table came from.

Leaderboards themselves are ``arena.leaderboard.leaderboard`` / ``format_html`` /
``format_markdown``; "best" below always means the leaderboard's best learning rate.
"""
from __future__ import annotations

import pandas as pd

from arena.leaderboard import LR, leaderboard
from arena.report.grids import length_curve, niah_grid

ATTENTION = "attention"
BENCH_FIELDS = ("seq_len", "pass", "tokens_per_s")
PROVENANCE = ["run_id", "config_hash", "kind", "task", "mixer", "impl", "seed", "status", "git_commit", "device",
              "started_at"]


def ok_train(df: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    if df.empty:
        return df
    out = df[(df["kind"] == "train") & (df["status"] == "ok")]
    return out[out["task"] == task] if task is not None else out


def best_runs(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """The ok training runs of ``task`` at each (setting, mixer, d_model)'s best learning rate, all
    seeds, with the leaderboard's ``setting`` label added."""
    board, runs = leaderboard(df, task), ok_train(df, task)
    if board.empty:
        return runs.iloc[0:0].assign(setting=pd.Series(dtype=str))
    from arena.leaderboard import _setting_label, setting_columns  # one labelling, the leaderboard's

    runs = runs.dropna(axis=1, how="all")
    runs = runs.assign(setting=runs.apply(_setting_label, axis=1, cols=setting_columns(runs)))
    keep = pd.Series(False, index=runs.index)
    for row in board.itertuples(index=False):
        match = (runs["setting"] == row.setting) & (runs["mixer"] == row.mixer)
        if "config.model.d_model" in runs and row.d_model is not None and pd.notna(row.d_model):
            match &= runs["config.model.d_model"] == row.d_model
        if LR in runs and row.best_lr is not None and pd.notna(row.best_lr):
            match &= runs[LR] == row.best_lr
        keep |= match
    return runs[keep]


def provenance(runs: pd.DataFrame) -> pd.DataFrame:
    """The records behind a table: run id, config hash, commit, device, the implementation that ran."""
    if runs.empty:
        return pd.DataFrame(columns=PROVENANCE)
    out = runs.assign(config_hash=runs["run_id"].str.rsplit("-s", n=1).str[0],
                      git_commit=runs["git_commit"].fillna("").str[:12])
    return out[[c for c in PROVENANCE if c in out]].sort_values(["mixer", "run_id"], ignore_index=True)


def training_curves(df: pd.DataFrame, task: str, y: str = "loss") -> pd.DataFrame:
    """Rows ``setting, mixer, run_id, seed, step, <y>`` from the best runs' curves."""
    rows = []
    for _, r in best_runs(df, task).iterrows():
        for point in r.curve or []:
            if y in point and "step" in point:
                rows.append({"setting": r.setting, "mixer": r.mixer, "run_id": r.run_id, "seed": r.seed,
                             "step": point["step"], y: point[y]})
    return pd.DataFrame(rows, columns=["setting", "mixer", "run_id", "seed", "step", y])


def quality_vs_size(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """Zoology's figure: per setting and mixer, the best score at each d_model with its state size."""
    board = leaderboard(df, task)
    cols = ["setting", "mixer", "d_model", "state_size", "score", "std", "n_seeds", "best_lr"]
    return board[cols].sort_values(["setting", "mixer", "d_model"], ignore_index=True)


def niah_heatmaps(df: pd.DataFrame, task: str = "niah", metric: str = "exact_match") -> pd.DataFrame:
    """Rows ``setting, mixer, d_model, length, depth, <metric>`` (mean over seeds of the best runs)."""
    rows = []
    for _, r in best_runs(df, task).iterrows():
        for cell in niah_grid(r.metrics, metric):
            rows.append({"setting": r.setting, "mixer": r.mixer, "d_model": r.get("config.model.d_model"), **cell})
    cols = ["setting", "mixer", "d_model", "length", "depth", metric]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows).groupby(cols[:-1], dropna=False, as_index=False)[metric].mean()
    return out.sort_values(cols[:-1], ignore_index=True)


def length_extrapolation(df: pd.DataFrame, task: str, metric: str = "accuracy") -> pd.DataFrame:
    """Rows ``setting, mixer, run_id, seed, train_len, length, <metric>`` from ``<metric>@len=L`` keys."""
    rows = []
    for _, r in best_runs(df, task).iterrows():
        train_len = r.get("config.task.seq_len")
        for point in length_curve(r.metrics, metric):
            rows.append({"setting": r.setting, "mixer": r.mixer, "run_id": r.run_id, "seed": r.seed,
                         "train_len": train_len, **point})
    return pd.DataFrame(rows, columns=["setting", "mixer", "run_id", "seed", "train_len", "length", metric])


# --- benchmark records ----------------------------------------------------------------------


def _column(df: pd.DataFrame, name: str) -> pd.Series | None:
    """A bench field wherever the record put it: a metric, an extra key or a config key."""
    for col in (name, f"metric.{name}", f"extra.{name}", f"config.{name}", f"config.bench.{name}"):
        if col in df and df[col].notna().any():
            return df[col]
    return None


def bench_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ``mixer, impl, pass, seq_len, tokens_per_s, peak_mem_mib, status, run_id`` from bench
    records (an OOM row keeps its place with NaN throughput)."""
    cols = ["mixer", "impl", "pass", "seq_len", "tokens_per_s", "peak_mem_mib", "status", "run_id"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    bench = df[df["kind"] == "bench"]
    found = {name: _column(bench, name) for name in BENCH_FIELDS}
    if bench.empty or any(v is None for v in found.values()):
        return pd.DataFrame(columns=cols)
    mem = _column(bench, "peak_mem_bytes")
    out = pd.DataFrame({
        "mixer": bench["mixer"], "impl": bench["impl"], "pass": found["pass"].astype(str),
        "seq_len": found["seq_len"].astype(int), "tokens_per_s": found["tokens_per_s"].astype(float),
        "peak_mem_mib": (mem.astype(float) / 2**20) if mem is not None else float("nan"),
        "status": bench["status"], "run_id": bench["run_id"],
    })
    out.loc[out["status"] != "ok", ["tokens_per_s", "peak_mem_mib"]] = float("nan")
    return out.sort_values(["pass", "mixer", "impl", "seq_len"], ignore_index=True)


def crossovers(bench: pd.DataFrame) -> pd.DataFrame:
    """Per pass and linear mixer/impl: the shortest measured length from which it stays faster than
    attention (attention's fastest impl at that length); NaN when it never overtakes."""
    cols = ["pass", "mixer", "impl", "crossover_len"]
    rows = []
    ok = bench.dropna(subset=["tokens_per_s"])
    for pass_, p in ok.groupby("pass"):
        att = p[p["mixer"] == ATTENTION].groupby("seq_len")["tokens_per_s"].max()
        if att.empty:
            continue
        for (mixer, impl), g in p[p["mixer"] != ATTENTION].groupby(["mixer", "impl"]):
            g = g.set_index("seq_len")["tokens_per_s"].sort_index()
            common = [L for L in g.index if L in att.index]
            faster = [g[L] > att[L] for L in common]
            cross = float("nan")
            for i, L in enumerate(common):  # first length after which it is faster at every length
                if all(faster[i:]):
                    cross = L
                    break
            rows.append({"pass": pass_, "mixer": mixer, "impl": impl, "crossover_len": cross})
    return pd.DataFrame(rows, columns=cols)


def quality_vs_throughput(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """One point per mixer: its best leaderboard score on ``task`` (mean over settings of its best
    d_model) against its forward throughput at the longest length every mixer measured. Points
    not beaten on both axes by another are on the Pareto front."""
    cols = ["mixer", "score", "tokens_per_s", "pass", "seq_len", "pareto"]
    board, bench = leaderboard(df, task), bench_table(df).dropna(subset=["tokens_per_s"])
    if board.empty or bench.empty:
        return pd.DataFrame(columns=cols)
    pass_ = "fwd" if "fwd" in set(bench["pass"]) else sorted(bench["pass"])[0]
    bench = bench[bench["pass"] == pass_]
    mixers = sorted(set(board["mixer"]) & set(bench["mixer"]))
    lengths = [set(bench[bench["mixer"] == m]["seq_len"]) for m in mixers]
    if not mixers or not set.intersection(*lengths):
        return pd.DataFrame(columns=cols)
    L = max(set.intersection(*lengths))
    speed = bench[bench["seq_len"] == L].groupby("mixer")["tokens_per_s"].max()
    score = board.groupby(["mixer", "setting"])["score"].max().groupby("mixer").mean()
    out = pd.DataFrame({"mixer": mixers, "score": [score[m] for m in mixers],
                        "tokens_per_s": [speed[m] for m in mixers], "pass": pass_, "seq_len": L})
    out["pareto"] = [not ((out.score >= r.score) & (out.tokens_per_s >= r.tokens_per_s)
                          & ((out.score > r.score) | (out.tokens_per_s > r.tokens_per_s))).any()
                     for r in out.itertuples()]
    return out.sort_values("tokens_per_s", ignore_index=True)


def failed_runs(df: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """Runs whose latest record is not ok, with the last line of their error."""
    cols = ["run_id", "kind", "task", "mixer", "status", "error"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    bad = df[df["status"] != "ok"]
    if task is not None:
        bad = bad[bad["task"] == task]
    last = bad["error"].fillna("").map(lambda e: (e.strip().splitlines() or [""])[-1][:200])
    return bad.assign(error=last)[cols].sort_values("run_id", ignore_index=True)
