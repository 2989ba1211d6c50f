"""Tasks: a registry of task families (one file each), their deterministic data, losses and
exact metrics, and the training runner they share.

    from tasks import build_task, TrainConfig
    task = build_task("mqar", seq_len=64, num_kv_pairs=4)
    result = task.run(model, TrainConfig(lr=3e-3, max_steps=500))
"""
import importlib
import pkgutil

from tasks.runner import RunResult, TrainConfig, train
from tasks.task import IGNORE, TASKS, Split, Task, TaskConfig, TaskData, build_task

for _module in pkgutil.iter_modules(__path__):  # one file per task family registers itself
    if _module.name not in ("task", "runner") and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "TaskConfig", "TaskData", "Split", "IGNORE", "build_task",
           "TrainConfig", "RunResult", "train"]
