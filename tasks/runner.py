"""The training runner every task shares: AdamW, warmup + cosine, clipping, autocast on GPU,
periodic evaluation, early stopping, and a ``RunResult`` that says what happened."""
from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from tasks.task import Split, Task, TaskData

Status = Literal["ok", "diverged", "oom"]


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping. Defaults follow Zoology's MQAR runs (AdamW, wd 0.1,
    linear warmup then cosine decay) at CPU-friendly sizes."""

    lr: float = 1e-3
    weight_decay: float = 0.1  # on matrices only; norms, biases and 1-D gates are not decayed
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_frac: float = 0.1  # fraction of max_steps spent in linear warmup
    min_lr_frac: float = 0.0  # cosine decays to lr * min_lr_frac
    max_steps: int = 1000
    # Equal compute across mixers: set one budget and max_steps follows from it (see steps_for_budget).
    budget_tokens: int | None = None  # training tokens (batch_size * seq_len per step)
    budget_flops: float | None = None  # training FLOPs, 3x the model's analytic forward FLOPs per step
    batch_size: int = 64
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    eval_every: int = 100  # steps between evaluations (and at the last step)
    log_every: int = 10  # steps between loss records (and the divergence check)
    eval_batch_size: int = 256
    early_stop: float | None = None  # stop once the primary metric reaches this (<= it if lower is better)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    progress: bool = True


@dataclass
class RunResult:
    status: Status
    metrics: dict[str, float]  # at the last evaluation
    best_metrics: dict[str, float]  # at the evaluation with the best primary metric
    steps: int
    tokens: int  # training tokens seen (inputs, padding included)
    wall_time_s: float
    peak_mem_bytes: int  # CUDA: max allocated; CPU: the process's peak RSS
    curve: list[dict] = field(default_factory=list)  # {step, loss, lr} and eval metrics
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def steps_for_budget(cfg: TrainConfig, model: nn.Module, seq_len: int) -> int:
    """``max_steps``, or the steps a token or FLOP budget buys at this batch size and length.
    A training step costs about 3x the forward FLOPs (backward = 2x forward); ``model.flops``
    is the LanguageModel's analytic count, so every mixer gets the same compute."""
    if cfg.budget_tokens is not None and cfg.budget_flops is not None:
        raise ValueError("set one of optim.budget_tokens and optim.budget_flops, not both")
    if cfg.budget_tokens is not None:
        return max(1, cfg.budget_tokens // (cfg.batch_size * seq_len))
    if cfg.budget_flops is not None:
        return max(1, int(cfg.budget_flops // (3 * cfg.batch_size * model.flops(seq_len))))
    return cfg.max_steps


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cuda":
        raise ValueError(f"precision={precision!r} autocast is for CUDA; use precision='fp32' on {device}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_frac * max_steps``, then cosine to ``min_lr_frac * lr``."""
    warmup = int(cfg.warmup_frac * cfg.max_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.max_steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cosine)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def batches(split: Split, batch_size: int, generator: torch.Generator):
    """Endless shuffled batches: a fresh seeded permutation each epoch, last partial batch dropped."""
    n = len(split)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples; lower batch_size")
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield split.inputs[idx], split.labels[idx]


def train(model: nn.Module, task: Task, cfg: TrainConfig, seed: int = 0, data: TaskData | None = None,
          device: str = "auto") -> RunResult:
    """Train ``model`` on ``task`` and evaluate it on ``device`` ("auto": CUDA when available).
    A NaN/inf loss ends the run as ``diverged`` and an out-of-memory error as ``oom``; both
    return a result instead of raising. On the CPU, the same seed gives the same losses bit for bit."""
    device = resolve_device(device)
    start = time.perf_counter()
    run = _Run(task, cfg)
    try:
        data = data if data is not None else task.build(seed)
        steps = steps_for_budget(cfg, model, data.train.inputs.shape[1])
        run.cfg = cfg = dataclasses.replace(cfg, max_steps=steps, budget_tokens=None, budget_flops=None)
        model.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run.loop(model, data, device, seed)
    except Exception as err:  # only OOM becomes a status; anything else is a bug to surface
        if not is_oom(err):
            raise
        run.status, run.error = "oom", f"{type(err).__name__}: {err}"
    finally:
        run.close()
    return RunResult(
        status=run.status, metrics=run.metrics, best_metrics=run.best, steps=run.steps,
        tokens=run.tokens, wall_time_s=time.perf_counter() - start, peak_mem_bytes=peak_memory(device),
        curve=run.curve, error=run.error,
    )


class _Run:
    """The mutable state of one training run, so ``train`` reads as the story of the run."""

    def __init__(self, task: Task, cfg: TrainConfig):
        self.task, self.cfg = task, cfg
        self.status: Status = "ok"
        self.metrics: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.curve: list[dict] = []
        self.steps = self.tokens = 0
        self.error = ""
        self.bar = None

    def loop(self, model: nn.Module, data: TaskData, device: torch.device, seed: int) -> None:
        cfg = self.cfg
        torch.manual_seed(seed)
        amp = autocast_dtype(cfg.precision, device)
        opt = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        stream = batches(data.train, cfg.batch_size, torch.Generator().manual_seed(seed))
        self.bar = _progress_bar(cfg, self.task)
        loss_sum = torch.zeros((), device=device)
        for step in range(cfg.max_steps):
            x, y = (t.to(device, non_blocking=True) for t in next(stream))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            model.train()
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = self.task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach()
            self.steps, self.tokens = step + 1, self.tokens + x.numel()
            last = step + 1 == cfg.max_steps
            if (step + 1) % cfg.log_every == 0 or last:
                if not self._log(step, loss_sum.item() / ((step % cfg.log_every) + 1)):
                    return
                loss_sum.zero_()
            if (step + 1) % cfg.eval_every == 0 or last:
                if self._evaluate(model, data, device, amp, step):
                    return

    def _log(self, step: int, loss: float) -> bool:
        """Record the mean loss since the last log; False (and status ``diverged``) if not finite."""
        self.curve.append({"step": step + 1, "loss": loss, "lr": lr_at(step, self.cfg)})
        if self.bar is not None:
            self.bar.update(step + 1 - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if not math.isfinite(loss):
            self.status, self.error = "diverged", f"loss became {loss} at step {step + 1}"
            return False
        return True

    def _evaluate(self, model, data: TaskData, device, amp, step: int) -> bool:
        """Evaluate, keep the best; True when the early-stop target is reached."""
        model.eval()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            self.metrics = self.task.evaluate(model, data.evals, self.cfg.eval_batch_size, device)
        self.curve.append({"step": step + 1, **self.metrics})
        key = self.task.primary_metric
        sign = 1.0 if self.task.higher_is_better else -1.0  # compare sign * metric: higher is better
        if key in self.metrics and sign * self.metrics[key] >= sign * self.best.get(key, -sign * math.inf):
            self.best = dict(self.metrics)
        if self.bar is not None and key in self.metrics:
            self.bar.set_postfix_str(f"{key}={self.metrics[key]:.3f}")
        target = self.cfg.early_stop
        return target is not None and key in self.metrics and sign * self.metrics[key] >= sign * target

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(cfg: TrainConfig, task: Task):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_steps, desc=task.registry_name, unit="step", file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True, leave=False)
