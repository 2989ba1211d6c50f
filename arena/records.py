"""The record schema: ``Record`` (one measured fact), its JSON form, metric keys and the
environment a record was measured in. Stdlib only: tasks, runners, the store and the reporter
(which never imports torch) all import this module.

A metric key is a name, or a name at a setting: ``accuracy``, ``accuracy@len=1024``,
``exact_match@len=1024,depth=0.25``.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from arena.registry import did_you_mean


def content_id(obj) -> str:
    """12 hex digits of the sha256 of ``obj``'s canonical JSON: the run id of a record whose
    identity is a settings dict (bench rows, evaluations) rather than a ``RunConfig``."""
    text = json.dumps(obj, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def metric_key(name: str, **settings) -> str:
    """``metric_key("exact_match", len=1024, depth=0.25) == "exact_match@len=1024,depth=0.25"``."""
    if not settings:
        return name
    return f"{name}@" + ",".join(f"{k}={v}" for k, v in settings.items())


def parse_metric_key(key: str) -> tuple[str, dict[str, int | float | str]]:
    """The inverse of ``metric_key``; setting values come back as int, float or str."""
    name, _, where = key.partition("@")
    settings = {}
    for part in filter(None, where.split(",")):
        k, _, v = part.partition("=")
        settings[k] = _number(v)
    return name, settings


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --- The record: one measured fact ----------------------------------------------------------

SCHEMA_VERSION = 1
KINDS = ("train", "eval", "bench")
STATUSES = ("ok", "failed", "diverged", "oom")


@dataclasses.dataclass(kw_only=True)
class Record:
    """One measured fact: a training run, an evaluation or a benchmark row.

    Build one with ``Record(run_id=..., kind="train", ..., started_at=utc_now(),
    **environment_info())``. Everything after ``seed`` has a default so that records written
    by an older arena still load; fields a newer arena added land in ``extra`` on load.
    ``config``, ``curve`` and ``extra`` must be JSON-able (tuples come back as lists, dict keys
    as strings); non-finite floats anywhere survive ``to_json``/``from_json``.
    """

    run_id: str  # config hash + seed, e.g. "3f2a9c1b7d4e-s0"
    kind: str  # one of KINDS
    status: str  # one of STATUSES
    task: str
    mixer: str  # one name, or a hybrid's pattern joined with "+"
    impl: str  # the implementation that ran; hybrids "name:impl,name:impl"
    device: str  # "cpu" or the CUDA device name
    seed: int
    attention_backend: str | None = None  # which attention kernel ran (None: no attention)
    config: dict = dataclasses.field(default_factory=dict)  # the resolved config
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # keys from metric_key
    curve: list[dict] = dataclasses.field(default_factory=list)  # e.g. [{"step": 100, "loss": 2.3}]
    error: str = ""  # the exception text for a run that did not end "ok"
    git_commit: str = ""
    git_dirty: bool = False
    versions: dict[str, str] = dataclasses.field(default_factory=dict)  # python, torch, triton, cuda, arena
    started_at: str = ""  # ISO-8601 UTC from utc_now(); "" when unknown
    wall_time_s: float = math.nan  # NaN when not measured
    peak_mem_bytes: int = 0  # 0 when not measured (CPU runs)
    extra: dict = dataclasses.field(default_factory=dict)  # params, state_size, flops_per_token, ...
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name, allowed in (("kind", KINDS), ("status", STATUSES)):
            if getattr(self, name) not in allowed:
                raise ValueError(did_you_mean(str(getattr(self, name)), allowed, f"record {name}"))
        for name, kind in (("config", dict), ("metrics", dict), ("curve", list), ("versions", dict),
                           ("extra", dict)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"Record.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        try:  # metrics are floats by contract; accept numpy / 0-d tensor scalars and ints
            self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        except (TypeError, ValueError) as e:
            bad = {k: v for k, v in self.metrics.items() if not _is_number(v)}
            raise TypeError(f"Record.metrics values must be numbers; not: {bad!r}") from e
        self.seed, self.peak_mem_bytes = int(self.seed), int(self.peak_mem_bytes)
        self.wall_time_s, self.git_dirty = float(self.wall_time_s), bool(self.git_dirty)

    def to_json(self) -> str:
        """Strict JSON (no bare NaN): non-finite floats are written as ``{"$float": "nan"}``.
        One field a line, each value compact, so a long curve stays one line."""
        fields = _encode(dataclasses.asdict(self))
        return "{\n" + ",\n".join(
            f" {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in fields.items()
        ) + "\n}\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Record:
        """The inverse of ``to_json``. Unknown (newer) fields go into ``extra``; missing
        optional ones take their defaults; a missing required field raises ValueError."""
        data = _decode(json.loads(text))
        if not isinstance(data, dict):
            raise TypeError(f"a record is a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in _REQUIRED if n not in data)
        if missing:
            raise ValueError(f"record lacks required field(s) {', '.join(missing)}")
        extra = dict(data.get("extra") or {})
        for name in data.keys() - known:
            extra.setdefault(name, data[name])
        kwargs = {k: v for k, v in data.items() if k in known}
        return cls(**{**kwargs, "extra": extra})


_REQUIRED = tuple(f.name for f in dataclasses.fields(Record)
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


# Strict JSON has no NaN or infinity; these tags carry them (and come back as floats).
_FLOAT_TAG = "$float"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict):
        if len(value) == 1 and value.get(_FLOAT_TAG) in _NONFINITE:
            return _NONFINITE[value[_FLOAT_TAG]]
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# --- Where a record was measured ------------------------------------------------------------


def utc_now() -> str:
    """The current time as ISO-8601 UTC with seconds, e.g. ``2025-01-31T12:00:00+00:00``."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def environment_info() -> dict:
    """``{"git_commit", "git_dirty", "versions"}`` for ``Record(**environment_info(), ...)``.

    The git state is that of the checkout holding arena's own source ("" / False when arena
    is installed outside one, or git is missing). Versions are read without importing torch
    or triton; each is "" when absent. Never raises.
    """
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return {"git_commit": commit, "git_dirty": dirty, "versions": _versions()}


def git_state(directory: Path) -> tuple[str, bool]:
    """``(commit, dirty)`` of the git checkout that tracks ``directory``'s files; ("", False)
    when there is none. Dirty means changed or untracked (not ignored) files anywhere in it."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                                  text=True, timeout=20, check=True).stdout.strip()

        # An installed copy inside some unrelated checkout (a venv in a repo) must not borrow
        # that repo's commit: the directory's own files have to be tracked.
        if not git("ls-files", "--", "."):
            return "", False
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return "", False


def _versions() -> dict[str, str]:
    import arena

    torch_version, cuda = _package_version("torch"), ""
    if "torch" in sys.modules:
        cuda = getattr(sys.modules["torch"].version, "cuda", None) or ""
    elif torch_version:  # torch/version.py holds `cuda: Optional[str] = '12.4'`; read, not import
        try:
            text = Path(str(metadata.distribution("torch").locate_file("torch/version.py"))).read_text()
            found = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
            cuda = found.group(1) if found else ""
        except (OSError, metadata.PackageNotFoundError):
            pass
    return {
        "python": platform.python_version(),
        "torch": torch_version,
        "triton": _package_version("triton"),
        "cuda": cuda,
        "arena": getattr(arena, "__version__", ""),
    }


def _package_version(name: str) -> str:
    if name in sys.modules and getattr(sys.modules[name], "__version__", None):
        return str(sys.modules[name].__version__)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
