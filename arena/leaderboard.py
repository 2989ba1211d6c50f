"""Leaderboards from the records DataFrame (``arena.store.load``): pure functions, no torch,
shared by ``arena leaderboard`` and the reporter.

Per task and setting (the task's config, the model size and depth), each mixer's best learning
rate over the tuning grid by the mean over seeds of the task's primary metric; then that mean, the
spread (std) and n over seeds, parameters, state size, FLOPs per token, tokens and wall time.
``lr_at_edge`` flags a best learning rate that is the smallest or largest tried: the grid may be
too narrow for that mixer.
"""
from __future__ import annotations

import pandas as pd

LR = "config.optim.lr"
SEED = "seed"
SIZE_KEYS = ["config.model.d_model", "config.model.n_layers", "config.model.mlp"]
COLUMNS = ["task", "setting", "mixer", "d_model", "metric", "score", "std", "n_seeds", "best_lr", "lrs_tried",
           "lr_at_edge", "params", "state_size", "flops_per_token", "tokens", "wall_time_s"]


def setting_columns(df: pd.DataFrame) -> list[str]:
    """The task's own config columns that vary within the task: what tells two experiments apart
    (keys equal in every run of the task say nothing and would only clutter the label)."""
    cols = [c for c in df.columns if c.startswith("config.task.") and c != "config.task.name"]
    return sorted(c for c in cols if df[c].astype(str).nunique() > 1)


def _setting_label(row: pd.Series, cols: list[str]) -> str:
    parts = [f"{c.removeprefix('config.task.')}={row[c]}" for c in cols if pd.notna(row[c])]
    return ",".join(parts) or "one setting"


def leaderboard(df: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """One row per (task, setting, mixer, d_model): the best learning rate's mean over seeds."""
    if df.empty or "kind" not in df:
        return pd.DataFrame(columns=COLUMNS)
    df = df[(df["kind"] == "train") & (df["status"] == "ok")]
    if task is not None:
        df = df[df["task"] == task]
    rows = []
    for task_name, tdf in df.groupby("task"):
        tdf = tdf.dropna(axis=1, how="all")
        cols = setting_columns(tdf)
        tdf = tdf.assign(setting=tdf.apply(_setting_label, axis=1, cols=cols),
                         score=tdf.apply(lambda r: r.get(r.get("primary_metric", "accuracy")), axis=1))
        higher = bool(tdf["higher_is_better"].iloc[0]) if "higher_is_better" in tdf else True
        keys = ["setting", "mixer"] + [k for k in SIZE_KEYS if k in tdf]
        for key, group in tdf.groupby(keys, dropna=False):
            rows.append(_best_over_lrs(task_name, dict(zip(keys, key)), group, higher))
    out = pd.DataFrame(rows, columns=COLUMNS + ["_rank"])
    out = out.sort_values(["task", "setting", "d_model", "_rank"], ascending=[True, True, True, False],
                          ignore_index=True)
    return out.drop(columns="_rank")


def _best_over_lrs(task: str, key: dict, group: pd.DataFrame, higher: bool = True) -> dict:
    """``higher``: the primary metric improves upwards (accuracy); False for losses, bits per byte."""
    per_lr = group.groupby(LR)["score"].agg(["mean", "std", "count"]) if LR in group else None
    has_scores = per_lr is not None and per_lr["mean"].notna().any()
    best_lr = (per_lr["mean"].idxmax() if higher else per_lr["mean"].idxmin()) if has_scores else None
    best = group[group[LR] == best_lr] if best_lr is not None else group
    lrs = sorted(per_lr.index) if per_lr is not None else []
    first = best.iloc[0]
    return {
        "task": task, "setting": key["setting"], "mixer": key["mixer"],
        "d_model": key.get("config.model.d_model"), "metric": first.get("primary_metric", "accuracy"),
        "score": best["score"].mean(), "std": best["score"].std() if len(best) > 1 else 0.0,
        "n_seeds": int(best[SEED].nunique()) if SEED in best else len(best), "best_lr": best_lr,
        "lrs_tried": len(lrs), "lr_at_edge": len(lrs) > 1 and best_lr in (lrs[0], lrs[-1]),
        **{c: first.get(c) for c in ("params", "state_size", "flops_per_token", "tokens")},
        "wall_time_s": best["wall_time_s"].mean() if "wall_time_s" in best else None,
        "_rank": best["score"].mean() * (1 if higher else -1),
    }


SHOWN = ["mixer", "d_model", "score", "best_lr", "lrs_tried", "params", "state_size", "flops_per_token",
         "tokens", "wall_time_s"]


def _shown(g: pd.DataFrame) -> pd.DataFrame:
    """One (task, setting) block as display strings, in the order ``SHOWN``."""
    def num(v, fmt="{:,.0f}"):
        return "-" if v is None or pd.isna(v) else fmt.format(v)

    return g.assign(
        score=[f"{s:.3f} ± {d:.3f} (n={n})" for s, d, n in zip(g.score, g["std"], g.n_seeds)],
        wall_time_s=[num(w, "{:.1f}") for w in g.wall_time_s],
        best_lr=[f"{lr:.0e}{' (edge of grid)' if edge else ''}" if lr is not None and pd.notna(lr) else "-"
                 for lr, edge in zip(g.best_lr, g.lr_at_edge)],
        **{c: [num(v) for v in g[c]] for c in ("d_model", "params", "state_size", "flops_per_token", "tokens")},
    )[SHOWN]


def blocks(board: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, str]]:
    """``(task, setting, shown rows, header)`` per leaderboard block, best mixer first. The header
    names the metric and the tuning grid; it warns when mixers were tuned over different grids."""
    out = []
    for (task, setting), g in board.groupby(["task", "setting"], sort=False):
        sizes = sorted({int(n) for n in g.lrs_tried})
        grid = (f"best over a grid of {sizes[-1]} learning rates" if len(sizes) == 1 else
                f"best over grids of {'/'.join(map(str, sizes))} learning rates: NOT the same grid for every mixer")
        out.append((task, setting, _shown(g), f"{task}  [{setting}]  metric: {g.metric.iloc[0]}, {grid}"))
    return out


EMPTY = "no finished training runs in the store yet: run `arena demo` or `arena sweep RECIPE`"


def format_table(board: pd.DataFrame) -> str:
    """A plain-text table for the terminal, one block per task and setting."""
    if board.empty:
        return EMPTY
    return "\n\n".join(header + "\n" + shown.to_string(index=False) for _, _, shown, header in blocks(board))


def format_markdown(board: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown: one ``###`` section and pipe table per task and setting."""
    if board.empty:
        return EMPTY + "\n"
    parts = []
    for _, _, shown, header in blocks(board):
        rows = [list(shown.columns), ["---"] * len(shown.columns)] + shown.astype(str).values.tolist()
        table = "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)
        parts.append(f"### {header}\n\n{table}\n")
    return "\n".join(parts)


def format_html(board: pd.DataFrame, task_links: dict[str, str] | None = None) -> str:
    """HTML fragment: one ``<section class="board">`` with a ``<table class="leaderboard">`` per task
    and setting; the task name links to ``task_links[task]`` when given. Edge-of-grid rows are
    marked with class ``edge``."""
    from html import escape

    if board.empty:
        return f"<p class=\"empty\">{escape(EMPTY)}</p>"
    parts = []
    for task, setting, shown, header in blocks(board):
        title = escape(header)
        if task_links and task in task_links:
            title = title.replace(escape(task), f'<a href="{escape(task_links[task])}">{escape(task)}</a>', 1)
        head = "".join(f"<th>{escape(c)}</th>" for c in shown.columns)
        body = "".join(
            f'<tr class="{"edge" if "edge of grid" in r.best_lr else ""}" data-mixer="{escape(r.mixer)}">'
            + "".join(f"<td>{escape(str(v))}</td>" for v in r) + "</tr>"
            for r in shown.itertuples(index=False))
        parts.append(f'<section class="board" data-task="{escape(task)}" data-setting="{escape(setting)}">'
                     f"<h3>{title}</h3><table class=\"leaderboard\"><thead><tr>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table></section>")
    return "\n".join(parts)
