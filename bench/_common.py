"""What both benchmarks share: JSON lines, process CPU and RSS, PostgreSQL commit counts.

Kept free of saga_fsm internals: the benchmarks measure the engine through its public
API, the way a user runs it.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

import psycopg

DEFAULT_APP_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def emit(**fields: Any) -> None:
    """One JSON object per line on stdout, flushed at once (a reader may be tailing)."""
    print(json.dumps(fields, sort_keys=False), flush=True)


def note(message: str) -> None:
    """Progress and decisions go to stderr, so stdout stays pure JSON lines."""
    print(message, file=sys.stderr, flush=True)


def is_postgres(url: str) -> bool:
    return url.partition(":")[0].lower() in ("postgresql", "postgres")


def reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


# -- memory ------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """The current resident set size (Linux), else the peak as a stand-in."""
    kb = _status_kb("VmRSS")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc), so that RSS shows what is live
    rather than what a burst once needed. A no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) so the next run's peak is its own.
    Linux >= 4.0; returns False where that is not possible (the peak is then the
    process's, which only over-reports)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)


def settle_memory() -> None:
    gc.collect()
    gc.collect()


# -- latency -----------------------------------------------------------------------------


def percentile_ms(samples: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``samples`` (seconds), in milliseconds."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank] * 1000, 3)


def median_ms(samples: list[float]) -> float | None:
    return round(statistics.median(samples) * 1000, 3) if samples else None


# -- commits -----------------------------------------------------------------------------


class CommitCounter:
    """Committed transactions of a database, read from ``pg_stat_database``.

    Backends report their counts when they exit (or when idle, at most once a second),
    so callers close their own connections first and then ask for ``settled()``. The
    reader's own connection stays inside one read-only transaction that never commits,
    so reading does not move the figure it reads (READ COMMITTED keeps no snapshot
    between statements, so vacuum is not held back)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn = psycopg.connect(dsn, autocommit=False)

    def now(self) -> int:
        self._conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self._conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def wal_bytes(self) -> int:
        """The server's WAL position: how many bytes of WAL it has written, ever (the
        whole cluster's, so only meaningful on a quiet server)."""
        row = self._conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])

    def settled(self, *, timeout: float = 5.0) -> int:
        """The count once it stops moving: closed backends flush theirs on exit, a few
        milliseconds after the client hangs up."""
        deadline = time.monotonic() + timeout
        last = self.now()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            current = self.now()
            if current == last:
                return current
            last = current
        return last

    def close(self) -> None:
        self._conn.rollback()
        self._conn.close()

    # -- this database's own share, when the server is shared ----------------------------
    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each backend connected to this database (the server's
        processes read from /proc, so a local server only), this reader's excepted: the
        work done for the run, without other databases' clients or the server's own
        background processes."""
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        hz = os.sysconf("SC_CLK_TCK")
        found: dict[int, float] = {}
        for (pid,) in rows:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rpartition(") ")[2].split()
            except OSError:
                continue
            found[pid] = (int(fields[11]) + int(fields[12])) / hz
        return found

    def wal_start(self) -> str | None:
        """Where this database's WAL is counted from (needs pg_walinspect, PG >= 15)."""
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect SCHEMA public")
        except psycopg.Error:
            return None
        row = self._conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return None if row is None else str(row[0])

    def db_wal_bytes(self, start: str | None) -> int | None:
        """WAL bytes since ``start`` of records touching this database's relations: the
        run's own, whatever else the server does (commit records, which name no
        relation, are left out: about 40 bytes per commit)."""
        if start is None:
            return None
        row = self._conn.execute(
            "SELECT coalesce(sum(record_length), 0) FROM public.pg_get_wal_records_info("
            "%s::pg_lsn, pg_current_wal_lsn())"
            " WHERE block_ref LIKE '%%/' || (SELECT oid FROM pg_database"
            "  WHERE datname = current_database()) || '/%%'",
            (start,),
        ).fetchone()
        return None if row is None else int(row[0])


def server_cpu_seconds() -> float | None:
    """CPU time of every PostgreSQL process on this machine, backends that have exited
    included (the postmaster collects its children's time), or None where /proc shows
    no PostgreSQL (a remote server). Only meaningful when nothing else uses the server."""
    hz = os.sysconf("SC_CLK_TCK")
    total, seen = 0, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name, _, rest = text.partition(" (")[2].partition(") ")
        if name != "postgres":
            continue
        seen = True
        fields = rest.split()
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / hz if seen else None


def cpu_seconds() -> float:
    """CPU time of this process, every thread, user + system."""
    return time.process_time()


def env_dsn() -> str:
    return os.environ.get("SAGA_FSM_BENCH_DSN") or DEFAULT_APP_DSN
