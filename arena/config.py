"""``RunConfig``: one run, fully resolved, strict, serialisable, hashed.

    cfg = RunConfig.create(task="mqar", mixer="mamba2", d_model=64,
                           task_overrides={"seq_len": 128}, optim={"lr": 3e-3}, seed=0)
    cfg = apply_overrides(cfg, ["model.d_model=128", "task.num_kv_pairs=8", "mixer.d_state=64"])
    cfg.run_id        # "<12 hex of the config hash>-s<seed>": the same config is the same run

Dictionary form (what records store and ``--set`` paths address)::

    {"model": {"mixer": "mamba2", "pattern": None, "d_model": 64, "n_layers": 2, "mlp": True, "impl": "auto"},
     "mixer": {"mamba2": {...every field of the mixer's Config...}},
     "task":  {"name": "mqar", ...every field of the task's Config...},
     "optim": {...every field of tasks.runner.TrainConfig...},
     "seed": 0, "device": "auto"}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from arena.registry import ConfigError, UnknownNameError, build_config, did_you_mean
from architectures import MIXERS
from architectures.mixer import MixerConfig
from tasks import TASKS, TaskConfig, TrainConfig

NOT_HASHED = {("optim", "progress")}  # display only: never changes a result


@dataclass(kw_only=True)
class ModelConfig:
    """The LanguageModel around the mixers: exactly one of ``mixer`` and ``pattern``."""

    mixer: str | None = None
    pattern: tuple[str, ...] | None = None  # hybrid layer pattern, repeated to n_layers
    d_model: int = 64
    n_layers: int = 2
    mlp: bool = True  # Zoology's MQAR models use none: recipes set mlp=False there
    impl: str = "auto"

    def mixer_names(self) -> list[str]:
        if (self.mixer is None) == (self.pattern is None):
            raise ConfigError("model: set exactly one of model.mixer=NAME or model.pattern=NAME,NAME,...")
        names = [self.mixer] if self.mixer is not None else list(dict.fromkeys(self.pattern))
        for name in names:
            MIXERS.get(name)  # unknown names raise with "did you mean"
        return names


@dataclass(kw_only=True)
class RunConfig:
    model: ModelConfig
    mixer: dict[str, MixerConfig]  # the resolved Config of every mixer the model uses
    task: str
    task_config: TaskConfig
    optim: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    device: str = "auto"

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def create(cls, task: str, mixer: str | None = None, pattern=None, *, task_overrides: dict | None = None,
               mixer_overrides: dict | None = None, optim: dict | None = None, seed: int = 0,
               device: str = "auto", **model) -> "RunConfig":
        """Keyword form for recipes. ``mixer_overrides`` is keyed by mixer name
        (``{"mamba2": {"d_state": 64}}``); for a single mixer its config keys may stand alone."""
        return cls.from_dict({
            "model": {"mixer": mixer, "pattern": tuple(pattern) if pattern else None, **model},
            "mixer": mixer_overrides or {}, "task": {"name": task, **(task_overrides or {})},
            "optim": optim or {}, "seed": seed, "device": device,
        })

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Strict: every unknown key raises, naming the valid ones; missing keys take defaults."""
        d = dict(d)
        _check_keys(d, {"model", "mixer", "task", "optim", "seed", "device"}, "run config")
        model = build_config(ModelConfig, _tuples(ModelConfig, d.get("model", {})), where="model")
        task_d = dict(d.get("task") or {})
        task = task_d.pop("name", None)
        if task is None:
            raise ConfigError(f"task: no task name given; valid: {', '.join(TASKS.names())}")
        task_cls = TASKS[task]
        mixers = _resolve_mixers(model, d.get("mixer") or {})
        return cls(model=model, mixer=mixers, task=task,
                   task_config=build_config(task_cls.Config, _tuples(task_cls.Config, task_d), where=f"task {task!r}"),
                   optim=build_config(TrainConfig, _tuples(TrainConfig, d.get("optim") or {}), where="optim"),
                   seed=_int(d.get("seed", 0), "seed"), device=str(d.get("device", "auto")))

    # -- serialisation and identity -----------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "model": dataclasses.asdict(self.model),
            "mixer": {name: dataclasses.asdict(c) for name, c in self.mixer.items()},
            "task": {"name": self.task, **dataclasses.asdict(self.task_config)},
            "optim": dataclasses.asdict(self.optim),
            "seed": self.seed, "device": self.device,
        }

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved config, seed and display-only keys left out."""
        d = self.to_dict()
        d.pop("seed")
        for section, key in NOT_HASHED:
            d[section].pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()

    @property
    def run_id(self) -> str:
        return f"{self.config_hash()[:12]}-s{self.seed}"

    @property
    def mixer_label(self) -> str:
        """The record's ``mixer`` column: one name, or a hybrid's pattern joined with '+'."""
        return self.model.mixer or "+".join(self.model.pattern)


def _resolve_mixers(model: ModelConfig, overrides: dict) -> dict[str, MixerConfig]:
    names = model.mixer_names()
    if len(names) == 1 and overrides and not set(overrides) & set(MIXERS.names()):
        overrides = {names[0]: overrides}  # single mixer: its keys may stand alone
    for key, value in overrides.items():
        if key not in names or not isinstance(value, dict):
            raise ConfigError(f"mixer: overrides are keyed by a mixer of this model ({', '.join(names)}), "
                              f"e.g. mixer.{names[0]}.KEY=VALUE; got {key!r}")
    out = {}
    for name in names:
        cfg_cls = MIXERS[name].Config
        out[name] = build_config(cfg_cls, _tuples(cfg_cls, overrides.get(name, {})), where=f"mixer {name!r}")
    return out


def _check_keys(d: dict, valid: set[str], what: str) -> None:
    for key in d:
        if key not in valid:
            raise UnknownNameError(did_you_mean(key, valid, f"key of the {what}"))


def _tuples(cls: type, values: dict) -> dict:
    """JSON turns tuples into lists; give tuple-typed fields their tuples back before checking."""
    tuple_fields = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
    return {k: tuple(v) if k in tuple_fields and isinstance(v, list) else v for k, v in values.items()}


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be an int")
    return value


# ---------------------------------------------------------------------------------------------
# --set key.sub=value overrides, parsed by the type of the field they address

_NAME_KEYS = {("task", "name"), ("model", "mixer"), ("model", "pattern")}


def apply_overrides(d: dict, assignments: list[str]) -> dict:
    """Apply ``--set`` assignments (``"optim.lr=3e-3"``) to a run-config dict; each value is
    parsed by the type of the field it addresses. Name changes (``task.name``, ``model.mixer``,
    ``model.pattern``) apply first, so the other keys are typed by the new task or mixer."""
    d = json.loads(json.dumps(d, default=list))  # deep copy; tuples become lists, fixed in from_dict
    parsed = [_split_assignment(a) for a in assignments]
    for path, text in sorted(parsed, key=lambda p: tuple(p[0][:2]) not in _NAME_KEYS):
        _assign(d, path, text)
    return d


def _split_assignment(assignment: str) -> tuple[list[str], str]:
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-3")
    return key.strip().split("."), text.strip()


def _assign(d: dict, path: list[str], text: str) -> None:
    where = ".".join(path)
    section = path[0]
    if section in ("seed", "device") and len(path) == 1:
        d[section] = _parse(text, int if section == "seed" else str, where)
        return
    if section not in ("model", "mixer", "task", "optim") or len(path) < 2:
        raise UnknownNameError(f"--set {where}: " + did_you_mean(
            where, ["model.KEY", "mixer.KEY", "mixer.NAME.KEY", "task.KEY", "optim.KEY", "seed", "device"], "key"))
    target = d.setdefault(section, {})
    if section == "mixer":
        names = _model_mixers(d)
        if len(path) == 2:  # single-mixer shorthand: mixer.d_state=64
            if len(names) != 1:
                raise ConfigError(f"--set {where}: this model has mixers {', '.join(names)}; "
                                  f"say which: mixer.NAME.{path[1]}=...")
            path = ["mixer", names[0], path[1]]
        target = target.setdefault(path[1], {})
        cls, key = MIXERS[path[1]].Config, path[2]
    else:
        cls, key = _section_class(d, section), path[1]
    if len(path) > (3 if section == "mixer" else 2):
        raise ConfigError(f"--set {where}: too deep; config keys are one level below their section")
    hints = _hints(cls)
    if key not in hints:
        raise UnknownNameError(f"--set {where}: " + did_you_mean(key, hints, f"key of {section}"))
    target[key] = _parse(text, hints[key], where)
    _after_name_change(d, section, key)


def _section_class(d: dict, section: str) -> type:
    if section == "model":
        return ModelConfig
    if section == "optim":
        return TrainConfig
    name = (d.get("task") or {}).get("name")
    if name is None:
        raise ConfigError("--set task.KEY needs a task: give --task NAME (or --set task.name=NAME)")
    return _TaskNamed(TASKS[name].Config)


class _TaskNamed:
    """The task section's keys: the task's Config fields plus ``name``."""

    def __init__(self, cls: type):
        self.cls = cls


def _hints(cls) -> dict[str, Any]:
    import typing

    if isinstance(cls, _TaskNamed):
        return {"name": str, **typing.get_type_hints(cls.cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in {f.name for f in dataclasses.fields(cls)}}


def _model_mixers(d: dict) -> list[str]:
    model = d.get("model") or {}
    if model.get("pattern"):
        return list(dict.fromkeys(model["pattern"]))
    return [model["mixer"]] if model.get("mixer") else []


def _after_name_change(d: dict, section: str, key: str) -> None:
    """A new task or mixer brings its own config: drop the keys that belonged to the old one."""
    if (section, key) == ("task", "name"):
        d["task"] = {"name": d["task"]["name"]}
    elif section == "model" and key in ("mixer", "pattern"):
        d["model"]["pattern" if key == "mixer" else "mixer"] = None
        keep = set(_model_mixers(d))
        d["mixer"] = {k: v for k, v in (d.get("mixer") or {}).items() if k in keep}


def _parse(text: str, hint: Any, where: str) -> Any:
    """``text`` as a value of type ``hint``: bools, ints, floats, strings, None, tuples, Literals."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse(text, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        items = [t for t in text.split(",") if t.strip()]
        elem = args[0] if args else str
        return tuple(_parse(t.strip(), elem, where) for t in items)
    if origin is typing.Literal:
        if text not in args:
            raise ConfigError(f"--set {where}={text}: expected one of {', '.join(map(str, args))}")
        return text
    if hint is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"--set {where}={text}: expected a bool (true or false)")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise ConfigError(f"--set {where}={text}: expected {hint.__name__}") from None
    return text
