"""One run in its own process: the unit the ``local`` executor launches (and the Ray task's body).

    python -m arena.worker --results results < config.json
    python -m arena.worker --results results --config config.json

The config is a ``RunConfig.to_dict()`` as JSON. The worker builds, trains and writes the run's
record to the store, and exits 0 once a record is written, whatever its status: a run that
crashes in Python is a ``failed`` record, not a failed worker. A worker that exits otherwise
(killed by a signal, a segfault, the OOM killer, an error before the record) wrote nothing,
and the sweep may start it again.

The config is read before torch is imported, so a parent that dies right after starting the
worker never leaves it blocked on a half-written pipe.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_NO_RECORD = 3  # the worker ran but another writer's ``ok`` record came first


def run_one(config: dict, results: str, attempts_before: int | None = None) -> str:
    """Execute one run and write its record to ``Store(results)``; return the record's status.

    ``attempts_before`` (the run's attempt count when the sweep scheduled it) makes the call
    idempotent for executors that re-run a task whose process died after writing (Ray's
    ``max_retries``): when the store already holds a newer attempt, that one's status is
    returned and nothing runs. With CUDA, the GPU the process was pinned to
    (``CUDA_VISIBLE_DEVICES``, set by the sweep or by Ray) goes into ``record.extra["gpu"]``;
    ``record.device`` names the model of that GPU.
    """
    from arena.config import RunConfig  # imports torch: only in the worker
    from arena.execute import execute
    from arena.store import Store

    cfg = RunConfig.from_dict(config)
    store = Store(results)
    if attempts_before is not None:
        done = store.attempts(cfg.run_id)
        if len(done) > attempts_before:
            return done[-1].status
    record = execute(cfg)  # never raises: a crash is a "failed" record
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if record.device != "cpu" and visible:
        record.extra["gpu"] = visible
    store.write(record)
    return record.status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m arena.worker",
        description="Run one RunConfig (JSON from --config or stdin) and write its record.",
        epilog="example: python -m arena.worker --results results < config.json",
    )
    parser.add_argument("--results", default="results", help="results directory (default: results)")
    parser.add_argument("--config", help="config JSON file (default: read standard input)")
    args = parser.parse_args(argv)
    if args.config:
        with open(args.config) as f:
            text = f.read()
    else:
        text = sys.stdin.read()
    config = json.loads(text)

    from arena.store import DuplicateRecordError

    try:
        status = run_one(config, args.results)
    except DuplicateRecordError as err:  # a concurrent sweep finished this run first
        print(f"arena.worker: {err}", file=sys.stderr)
        return EXIT_NO_RECORD
    print(f"arena.worker: record written, status {status}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
