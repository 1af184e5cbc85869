"""Peak memory of ``saga-fsm demo --sagas N``: does it grow with N or with --concurrency?

Each size runs the real command in a child process; its peak RSS (``ru_maxrss`` from
``wait4``) is reported with the wall time, one JSON line per size. A run that passes
``--timeout`` is stopped and reported with ``"finished": false`` and the peak so far.

    .venv/bin/python bench/demo_memory.py --sagas 1000,100000,1000000 --store memory://
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from _common import emit, note


def measure(sagas: int, store: str, concurrency: int, timeout: float) -> None:
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saga_fsm.cli",
            "demo",
            "--sagas",
            str(sagas),
            "--concurrency",
            str(concurrency),
            "--store",
            store,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TERM": "dumb"},
    )
    timer = threading.Timer(timeout, child.send_signal, (signal.SIGKILL,))
    timer.start()
    _, status, usage = os.wait4(child.pid, 0)
    timer.cancel()
    elapsed = time.perf_counter() - started
    finished = os.waitstatus_to_exitcode(status) == 0
    if not finished and child.stderr is not None:
        note(f"{sagas} sagas: stopped after {elapsed:.0f}s ({child.stderr.read()[-500:]!r})")
    emit(
        store=store,
        sagas=sagas,
        concurrency=concurrency,
        finished=finished,
        seconds=round(elapsed, 1),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", default="1000,100000", help="Comma-separated sizes.")
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds per size.")
    args = parser.parse_args()
    for size in args.sagas.split(","):
        measure(int(size), args.store, args.concurrency, args.timeout)


if __name__ == "__main__":
    main()
