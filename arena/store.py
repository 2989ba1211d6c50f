"""The results store: one immutable JSON file per record, and ``load`` into pandas.

Layout under the results directory (default ``results``, relative to the working directory)::

    results/records/<kind>/<run_id>.<attempt>.json    e.g. records/train/3f2a9c1b7d4e-s0.1.json

Attempts are numbered from 1. A run whose latest attempt is ``ok`` is finished: writing it
again raises ``DuplicateRecordError``. A run that ended ``failed`` / ``diverged`` / ``oom``
may be tried again; the new attempt is a new file and the old ones stay, so nothing written
is ever changed or lost. ``load`` and ``records`` report the latest readable attempt.

Writes are atomic and need no lock or shared index, so any number of processes may write at
once: the record goes to a uniquely named temp file (``.<run_id>.<pid>.<random>.tmp``) in the
same directory, is fsynced, then hard-linked to its final name. ``os.link`` fails when the
name exists, so two writers can never claim the same attempt, and a reader sees a whole file
or none. A writer killed mid-way leaves at most a temp file, which every reader ignores.

Stdlib only at import; ``load`` imports pandas when called.
"""
from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from arena.records import KINDS, Record
from arena.registry import UnknownNameError, did_you_mean

if TYPE_CHECKING:
    import pandas

DEFAULT_RESULTS_DIR = "results"
RECORDS_DIR = "records"

# Columns every ``load`` result has, in this order, even when the store is empty. After them
# come the metrics (one column per metric key), the ``extra`` keys, "versions.<name>" and
# "config.<dotted.path>".
BASE_COLUMNS = (
    "run_id", "kind", "status", "task", "mixer", "impl", "attention_backend", "device", "seed",
    "attempt", "error", "git_commit", "git_dirty", "started_at", "wall_time_s", "peak_mem_bytes",
    "schema_version", "config", "metrics", "curve", "extra",
)

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")  # safe as a file name on every system
_RECORD_FILE = re.compile(r"(?P<run_id>.+)\.(?P<attempt>[0-9]+)\.json")


class StoreError(RuntimeError):
    """A results directory that is not a store, or a write the store refuses."""


class DuplicateRecordError(StoreError):
    """The run already has an ``ok`` record; records are immutable."""


class Store:
    """The record files under ``results_dir`` (default ``"results"``, relative to the cwd).

    ``store.write(record)``; ``store.status_of(run_id)``; ``run_id in store``;
    ``store.records(kind)``; ``store.attempts(run_id, kind)``.
    """

    def __init__(self, results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR):
        self.root = Path(results_dir)
        self.records_dir = self.root / RECORDS_DIR

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # --- writing ---------------------------------------------------------------------------

    def write(self, record: Record) -> Path:
        """Write ``record`` as the next attempt of its run; return the file written.

        Raises DuplicateRecordError when the run already has an ``ok`` attempt.
        """
        if not isinstance(record, Record):
            raise TypeError(f"Store.write takes a Record, got {type(record).__name__}")
        if not _RUN_ID.fullmatch(record.run_id):
            raise ValueError(f"run_id {record.run_id!r} must match {_RUN_ID.pattern} (it names a file)")
        self._check_is_store()
        directory = self.records_dir / record.kind
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{record.run_id}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "xb") as f:
            f.write(record.to_json().encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            while True:
                attempts = self._attempt_paths(record.kind, record.run_id)
                for _, path in reversed(attempts):
                    if _read_status(path) == "ok":
                        raise DuplicateRecordError(
                            f"run {record.run_id!r} ({record.kind}) already has an ok record at "
                            f"{path}; records are immutable. Skip runs whose status_of(run_id) "
                            f"is 'ok', or delete the run's files to run it again."
                        )
                final = directory / f"{record.run_id}.{len(attempts) + 1}.json"
                if _link_new(tmp, final):
                    break  # else another writer took this attempt number: look again
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(directory)
        return final

    # --- reading ---------------------------------------------------------------------------

    def status_of(self, run_id: str, kind: str = "train") -> str | None:
        """The status of the run's latest readable attempt, or None when it has no record."""
        _check_kind(kind)
        for _, path in reversed(self._attempt_paths(kind, run_id)):
            status = _read_status(path)
            if status is not None:
                return status
        return None

    def __contains__(self, key: str | tuple[str, str]) -> bool:
        """``run_id in store``: a record of any status and kind exists for it;
        ``(kind, run_id) in store``: one of that kind does."""
        kind, run_id = key if isinstance(key, tuple) else (None, key)
        _check_kind(kind)
        kinds = [kind] if kind else self._kinds()
        return any(self._attempt_paths(k, run_id) for k in kinds)

    def attempts(self, run_id: str, kind: str = "train") -> list[Record]:
        """Every readable attempt of one run, oldest first."""
        _check_kind(kind)
        found = []
        for _, path in self._attempt_paths(kind, run_id):
            record, _ = _read_record(path)
            if record is not None:
                found.append(record)
        return found

    def records(self, kind: str | None = None) -> list[Record]:
        """The latest readable attempt of every run (of ``kind``, or all kinds), sorted by
        kind and run_id. Unreadable files are skipped with one warning."""
        return [record for _, record in self.latest(kind)]

    def latest(self, kind: str | None = None) -> list[tuple[int, Record]]:
        """``(attempt, record)`` for the latest readable attempt of every run."""
        _check_kind(kind)
        self._check_is_store()
        by_run: dict[tuple[str, str], list[tuple[int, Path]]] = {}
        skipped = []
        for path in self._record_files(kind):
            match = _RECORD_FILE.fullmatch(path.name)
            if match is None:
                skipped.append(f"{path} (not named <run_id>.<attempt>.json)")
                continue
            by_run.setdefault((path.parent.name, match["run_id"]), []).append((int(match["attempt"]), path))
        found = []
        for (run_kind, run_id), attempts in sorted(by_run.items()):
            for attempt, path in sorted(attempts, reverse=True):  # newest readable one wins
                record, problem = _read_record(path)
                if record is not None and (record.kind, record.run_id) != (run_kind, run_id):
                    record, problem = None, f"holds {record.kind} run {record.run_id!r}"
                if record is not None:
                    found.append((attempt, record))
                    break
                skipped.append(f"{path} ({problem})")
        if skipped:
            shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            warnings.warn(f"{self}: skipped {len(skipped)} unreadable record file(s): {shown}", stacklevel=3)
        return found

    # --- files -----------------------------------------------------------------------------

    def _check_is_store(self) -> None:
        for path, what in ((self.root, "results directory"), (self.records_dir, "records directory")):
            if path.exists() and not path.is_dir():
                raise StoreError(
                    f"{what} {str(path)!r} is a file, not a directory. Pass the directory the "
                    f"store lives in (default {DEFAULT_RESULTS_DIR!r}, holding {RECORDS_DIR}/), "
                    f"or move the file away."
                )
        if self.root.name == RECORDS_DIR and not self.records_dir.exists() and any(
            (self.root / k).is_dir() for k in KINDS
        ):
            raise StoreError(
                f"{str(self.root)!r} looks like the records directory itself; pass its parent "
                f"{str(self.root.parent)!r} as the results directory."
            )

    def _kinds(self) -> list[str]:
        if not self.records_dir.is_dir():
            return []
        return sorted(entry.name for entry in os.scandir(self.records_dir) if entry.is_dir())

    def _record_files(self, kind: str | None) -> Iterator[Path]:
        for k in [kind] if kind else self._kinds():
            directory = self.records_dir / k
            if directory.is_dir():
                for entry in os.scandir(directory):  # temp files start with "." and end ".tmp"
                    if entry.name.endswith(".json") and not entry.name.startswith(".") and entry.is_file():
                        yield Path(entry.path)

    def _attempt_paths(self, kind: str, run_id: str) -> list[tuple[int, Path]]:
        """``(attempt, path)`` of one run's files, oldest first. Probes attempt 1, 2, ...
        rather than listing the directory, so it costs a few stat calls however big the
        store is (a sweep asks this once per run)."""
        found = []
        while (path := self.records_dir / kind / f"{run_id}.{len(found) + 1}.json").exists():
            found.append((len(found) + 1, path))
        return found


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise UnknownNameError(did_you_mean(str(kind), KINDS, "record kind"))


def _link_new(tmp: Path, final: Path) -> bool:
    """Give ``tmp``'s content the name ``final`` atomically, only if ``final`` does not exist."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: still atomic, but two racing writers
        if final.exists():  # of one run could both take this attempt number
            return False
        os.replace(tmp, final)
        return True


def _fsync_dir(directory: Path) -> None:
    try:  # makes the new name durable; not possible on every OS, never needed for correctness
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_record(path: Path) -> tuple[Record | None, str]:
    try:
        return Record.from_json(path.read_bytes()), ""
    except (OSError, ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        return None, f"{type(e).__name__}: {e}"


def _read_status(path: Path) -> str | None:
    try:
        return json.loads(path.read_bytes()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


# --- pandas ---------------------------------------------------------------------------------


def load(results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR, kind: str | None = None) -> pandas.DataFrame:
    """The store as a DataFrame: one row per run (its latest readable attempt).

    Columns: ``BASE_COLUMNS`` (``config``, ``metrics``, ``curve``, ``extra`` hold the dicts /
    list as they are), then one column per metric key (``"accuracy"``,
    ``"accuracy@len=512"``), the ``extra`` keys (nested dicts dotted: ``"best_metrics.loss"``),
    ``"versions.torch"`` ..., and the config flattened as ``"config.model.d_model"``. A name
    that is already taken is prefixed: ``"metric.<key>"`` or ``"extra.<key>"``. Metrics a run
    lacks are NaN. An empty or missing store gives an empty frame with ``BASE_COLUMNS``.
    """
    import pandas as pd

    groups: dict[str, int] = {}  # column -> 0 metric, 1 extra, 2 versions, 3 config
    rows = [_row(attempt, record, groups) for attempt, record in Store(results_dir).latest(kind)]
    columns = list(BASE_COLUMNS) + sorted(groups, key=lambda name: (groups[name], name))
    return pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)


def _row(attempt: int, record: Record, groups: dict[str, int]) -> dict:
    row = {name: getattr(record, name) for name in BASE_COLUMNS if name != "attempt"}
    row["attempt"] = attempt
    sections = (
        ("metric.", record.metrics),
        ("extra.", _flatten(record.extra)),
        ("versions.", {"versions." + k: v for k, v in record.versions.items()}),
        ("config.", {"config." + k: v for k, v in _flatten(record.config).items()}),
    )
    for group, (prefix, values) in enumerate(sections):
        for key, value in values.items():
            name = prefix + key if key in row or (groups.get(key, group) != group) else key
            row[name] = value
            groups.setdefault(name, group)
    return row


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
