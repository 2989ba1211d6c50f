"""Run one ``RunConfig`` and write its ``Record``: the unit of work every executor runs."""
from __future__ import annotations

import dataclasses
import time
import traceback

import torch

from architectures import build_model
from arena.bench_timing import device_name
from arena.config import RunConfig
from arena.records import Record, environment_info, utc_now
from arena.store import Store
from tasks import TASKS, RunResult, train
from tasks.runner import resolve_device


def build_run(cfg: RunConfig):
    """The task and the model of ``cfg``, the model initialised from ``cfg.seed``."""
    task = TASKS[cfg.task](cfg.task_config)
    torch.manual_seed(cfg.seed)
    spec = {"mixer": cfg.model.mixer} if cfg.model.mixer else {"pattern": list(cfg.model.pattern)}
    overrides = {n: dataclasses.asdict(c) for n, c in cfg.mixer.items()}
    if cfg.model.mixer:
        overrides = overrides[cfg.model.mixer]
    model = build_model(task.vocab_size, cfg.model.d_model, cfg.model.n_layers, mlp=cfg.model.mlp,
                        impl=cfg.model.impl, **spec, **overrides)
    return task, model


def execute(cfg: RunConfig, store: Store | None = None, checkpoint_dir=None) -> Record:
    """Build, train and evaluate ``cfg``; write the record to ``store`` when given. A crash of
    the run becomes a ``failed`` record with the traceback, never an exception. With
    ``checkpoint_dir`` the trained model is saved there as ``<run_id>.safetensors`` (config +
    weights, ``arena.checkpoint``) and the path goes to ``record.extra["checkpoint"]``; the
    run id does not depend on it."""
    started, t0 = utc_now(), time.perf_counter()
    device = resolve_device(cfg.device)
    task, model, result, error = None, None, None, ""
    try:
        task, model = build_run(cfg)
        result = train(model, task, cfg.optim, seed=cfg.seed, device=cfg.device)
    except Exception:  # the record carries the error; the sweep goes on
        error = traceback.format_exc(limit=20)
    record = _record(cfg, model, result, error, device, started, time.perf_counter() - t0)
    if task is not None:
        record.extra.update(task.record_extra())
    if checkpoint_dir is not None and model is not None and result is not None:
        try:
            from pathlib import Path

            from arena.checkpoint import save_checkpoint

            path = save_checkpoint(Path(checkpoint_dir) / f"{cfg.run_id}.safetensors", model, cfg.to_dict())
            record.extra["checkpoint"] = str(path)
        except Exception:  # a checkpoint that was asked for and not written fails the run
            record.status, record.error = "failed", traceback.format_exc(limit=20)
    if store is not None:
        store.write(record)
    return record


def _record(cfg: RunConfig, model, result: RunResult | None, error: str, device, started: str,
            wall: float) -> Record:
    env = environment_info()
    backends = {m.backend for m in (model.mixers if model is not None else []) if m.registry_name == "attention"}
    T = getattr(cfg.task_config, "seq_len", 0)
    extra = {}
    if model is not None:
        extra = {"params": model.num_params(), "params_no_embedding": model.num_params(exclude_embedding=True),
                 "state_size": model.state_size(T), "flops_per_token": model.flops(T) // max(T, 1)}
    extra["primary_metric"] = TASKS[cfg.task].primary_metric
    extra["higher_is_better"] = TASKS[cfg.task].higher_is_better
    if result is not None:
        extra.update(steps=result.steps, tokens=result.tokens, best_metrics=result.best_metrics)
    return Record(
        run_id=cfg.run_id, kind="train", status=result.status if result else "failed", task=cfg.task,
        mixer=cfg.mixer_label, impl=model.impl_label() if model is not None else "", attention_backend=",".join(sorted(backends)) or None,
        device=device_name(device), seed=cfg.seed, config=cfg.to_dict(),
        metrics=result.metrics if result else {}, curve=result.curve if result else [],
        error=error or (result.error if result else ""), git_commit=env["git_commit"], git_dirty=env["git_dirty"],
        versions=env["versions"], started_at=started, wall_time_s=wall,
        peak_mem_bytes=result.peak_mem_bytes if result else 0, extra=extra,
    )
