"""The ``soak`` command: a model of how hermes uses its kanban database.

    python -m hermes_kanban_native soak [--seconds S] [--threads N] [--processes N]
        [--factory {sqlite3,python-subclass,walsafe}] [--database PATH] [--json]
        [--unclosed-every N] [--stray-close] [--gc-every S] [--check-every S] [--progress]

In this (the gateway) process: one long-lived connection, a dispatcher thread
that opens and closes two connections every tick (one per board), worker
threads that open, read or write a little, and close, and every
``--unclosed-every`` ticks one dispatcher connection used as ``with
sqlite3.connect(...) as conn:`` and never closed (left to the garbage
collector, as hermes' code did; their ResourceWarnings are counted, not shown).
At the same time, in other processes: writers committing ``BEGIN IMMEDIATE``
transactions that append every id whose ``commit()`` returned to a log file
(fsync'd, after the commit), readers holding read transactions open for a
while, short verifier processes that open, read and close, and with
``--fork-workers`` a job runner that holds a connection and forks a worker
per job, which opens its own, commits a row and exits without cleanup.  A
forked child inherits SQLite's in-memory state, so the worker's connection
takes no POSIX lock of its own (SQLite believes the process holds one): with
plain sqlite3 that shows as lost locks, while walsafe's guard gives the
child's connection its own OFD lock.  Each worker checks itself while its
connection is open; the checks from outside leave forked workers alone, since
before their open and after their close they hold only the forker's inherited
descriptors, lockless in every build.

A second database, the archive (``kanban.db`` -> ``kanban-archive.db``), is
used the way attached databases are: the long-lived connection keeps it
ATTACHed for the whole run, worker threads ATTACH it to commit a row and
DETACH it, writers commit every fourth row into it directly (logged too),
and verifiers open, read and close it.  Its rows, integrity, stale sidecars
and lost locks are checked like the main database's.

Every connection is configured as hermes configures its kanban connections:
``isolation_level=None, timeout=120``, ``busy_timeout=120000``, WAL (probed
first), ``synchronous=FULL``, ``wal_autocheckpoint=100``,
``journal_size_limit=8388608``, ``foreign_keys``, ``secure_delete``,
``cell_size_check``.  ``--factory`` picks the connection class everywhere:
``sqlite3`` (plain), ``python-subclass`` (the Python subclass hermes had,
``PRAGMA wal_checkpoint(TRUNCATE)`` in ``close()``) or ``walsafe``.  In this
process each is wrapped as hermes wraps it, ``type("Tracked" + F.__name__,
(F,), {})``, which lets the soak count its open connections.

Garbage collection: a large busy process runs the cyclic collector rarely, and
on CPython 3.11+ a connection that is never closed lives until it does.  To
model that the soak disables automatic collection in this process for the run
and calls ``gc.collect()`` itself every ``--gc-every`` seconds (default 5),
the same for every factory; the descriptors are sampled just before each
collection, where they peak.

Checks, every ``--check-every`` seconds (default 2) and at the end:

* descriptor high-water per kind in this process against what its open
  connections explain: database fds <= the peak number of connections open
  at once (SQLite parks closed connections' database fds and reuses them, so
  peak concurrency bounds them; ``stats()["peak_live"]`` for walsafe, the
  soak's own count otherwise), ``-wal`` fds <= connections open now, at most
  one ``-shm`` fd;
* no stale sidecars (descriptors or mappings of unlinked ``-wal``/``-shm``)
  and no lost locks, in this process and every child (``sqlite_fds`` and
  ``holders``);
* the ``-wal`` stays bounded: it is cut back to journal_size_limit only
  when a writer can restart it, which needs a moment with no reader on a WAL
  snapshot, and the readers here overlap, so during the run it may grow past
  journal_size_limit (seen: 9.3 MB in 14 s); a violation is 4 x
  journal_size_limit (sampled every dispatcher tick).  At the end, with the
  other processes gone, a TRUNCATE checkpoint must succeed and empty it;
* ``PRAGMA integrity_check`` (every 30 s and at the end; ``quick_check`` is
  not used because it skips index checks);
* every id a writer logged as committed is in the database;
* no child process failed (``disk I/O error``, malformed database, ...).

The exit status is 1 on any violation, else 0 (2 for usage errors).  With
``--json`` the final report is printed as one JSON object on stdout and the
table goes to stderr.

``--stray-close`` injects ``os.open(db)``/``os.close()`` and the same on
``-shm`` (of both databases) in this process during the run (``--stray-files`` picks which): that cancels its
POSIX locks (docs/sqlite-internals.md, "Lock cancellation").  walsafe's WAL-generation guard keeps
them harmless: it holds the database's SHARED range as OFD locks (lost POSIX
locks under a held guard are not violations), and SQLite's own ``-shm`` locks
in a process with a guarded connection are OFD locks (csrc/linux/shmlock.c), so a
stray close of the ``-shm`` while this process writes cannot hand the WAL
write lock to another process.  With ``--no-guard``, or another factory, lost
locks and stale sidecars are expected and reported as violations, a lost
``-shm`` dead-man-switch lock can let another process rebuild the wal-index
under this one (which then dies with SIGBUS), and a lost write lock loses
commits (with ``HERMES_KANBAN_NATIVE_SHM_LOCKS=posix`` 4 runs of 10 failed
here: 3 lost a row, one of them with a damaged index, and 1 died).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import warnings

from .._args import number
from .model import FACTORIES
from .runner import Soak


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``soak`` parser; the parsed namespace's ``run`` is :func:`run`."""
    parser = subparsers.add_parser(
        "soak",
        help="run a model of hermes' gateway and its other processes on one database, "
             "checking descriptors, sidecars, locks, WAL size, integrity and durability",
        description="Run a model of how hermes uses its kanban database (a gateway "
                    "process with threads, and writer, reader and verifier processes) and "
                    "check it at intervals.  Exit status 1 on any violation.",
    )
    parser.add_argument("--seconds", type=number(float, low=0), default=30.0,
                        help="how long to run (default 30)")
    parser.add_argument("--threads", type=number(int, low=0), default=2,
                        help="worker threads in this process (default 2)")
    parser.add_argument("--processes", type=number(int, low=0), default=4,
                        help="other processes: half writers (rounded up), half readers; "
                             "verifiers run one after another on top (default 4)")
    parser.add_argument("--factory", choices=FACTORIES, default="walsafe",
                        help="connection class for every connection (default walsafe)")
    parser.add_argument("--database", metavar="PATH",
                        help="database file (default: a new one in a temporary directory)")
    parser.add_argument("--unclosed-every", type=number(int, low=0), default=4, metavar="N",
                        help="every N dispatcher ticks one connection is a never-closed "
                             "with-block connection; 0 = never (default 4)")
    parser.add_argument("--stray-close", action="store_true",
                        help="inject os.open()/os.close() of the database and -shm in this "
                             "process (lock cancellation: with walsafe's guard nothing may "
                             "go wrong; without it violations are expected)")
    parser.add_argument("--stray-files", choices=("db", "shm", "both"), default="both",
                        help="with --stray-close: which files are opened and closed "
                             "(default both)")
    parser.add_argument("--max-live", type=int, default=None, metavar="N",
                        help="walsafe: max_live_per_database for this run (default: the "
                             "class's, 64)")
    parser.add_argument("--no-guard", action="store_true",
                        help="walsafe: open without the WAL-generation guard (with "
                             "--stray-close, reproduces the lost locks and stale sidecars)")
    parser.add_argument("--fork-workers", action="store_true",
                        help="add a job runner that keeps a connection open and forks a "
                             "worker per job, which opens its own connection (SQLite's "
                             "state is inherited: with plain sqlite3 the worker's connection "
                             "holds no lock, which the checks report as lost locks when they "
                             "catch a worker alive; walsafe guards it)")
    parser.add_argument("--tick", type=number(float, low=0), default=0.05,
                        help="dispatcher tick in seconds (default 0.05)")
    parser.add_argument("--gc-every", type=number(float, low=0), default=5.0, metavar="SECONDS",
                        help="explicit gc.collect() interval; automatic collection is off "
                             "during the run (default 5)")
    parser.add_argument("--check-every", type=number(float, low=0), default=2.0, metavar="SECONDS",
                        help="check interval (default 2)")
    parser.add_argument("--json", action="store_true",
                        help="print the final report as JSON on stdout (the table goes to "
                             "stderr)")
    parser.add_argument("--progress", action="store_true",
                        help="show the progress line even when stderr is not a terminal")
    parser.set_defaults(run=run)
    return parser


_ROWS = (
    ("fd high-water: db", lambda r: r["fd_high_water"]["db"]),
    ("fd high-water: wal", lambda r: r["fd_high_water"]["wal"]),
    ("fd high-water: shm", lambda r: r["fd_high_water"]["shm"]),
    ("fd high-water: all fds of the process", lambda r: r["fd_high_water"]["fds_total"]),
    ("open connections high-water", lambda r: r["open_connections_high_water"]),
    ("  steady (long-lived + dispatcher + workers)", lambda r: r["steady_concurrency"]),
    ("  peak_live (walsafe stats)", lambda r: r["peak_live"] if r["peak_live"] is not None
     else "-"),
    ("unclosed with-block connections", lambda r: r["unclosed_total"]),
    ("  open at once, high-water", lambda r: r["unclosed_high_water"]),
    ("  collected", lambda r: r["unclosed_collected"]),
    ("  ResourceWarnings", lambda r: r["resource_warnings"]),
    ("gc.collect() runs", lambda r: r["gc_runs"]),
    ("close() in this process: max ms", lambda r: r["close_ms_max"]),
    ("close() in this process: mean ms", lambda r: r["close_ms_mean"]),
    ("transactions in this process", lambda r: r["main_transactions"]),
    ("rows verified (writers' logs)", lambda r: f"{r['rows_verified']}/{r['rows_logged']}"),
    ("rows verified (this process)", lambda r: r["main_rows_verified"]),
    ("verifier processes run", lambda r: r["verifiers_run"]),
    ("child processes failed", lambda r: r["child_failures"]),
    ("WAL size high-water (bytes)", lambda r: f"{r['wal_size_high_water']} "
                                              f"(bound {r['wal_size_bound']})"),
    ("stale sidecars seen", lambda r: r["stale_seen"]),
    ("lost locks seen", lambda r: r["locks_lost_seen"]),
    ("integrity_check", lambda r: r["integrity_check"]),
    ("stray closes injected", lambda r: r["stray_closes"]),
)


def format_table(report) -> str:
    lines = [f"soak: factory={report['factory']} python={report['python']} "
             f"sqlite={report['sqlite_version']} ({report['sqlite_api_mode']}) "
             f"{report['seconds']}s threads={report['threads']} "
             f"processes={report['processes']} unclosed-every={report['unclosed_every']}"
             f"{' stray-close' if report['stray_close'] else ''}"]
    width = max(len(name) for name, _ in _ROWS)
    for name, value in _ROWS:
        lines.append(f"  {name:<{width}}  {value(report)}")
    if report["violations"]:
        lines.append(f"VIOLATIONS ({', '.join(report['violation_kinds'])}):")
        lines.extend("  " + text for text in report["violations"][:30])
        if len(report["violations"]) > 30:
            lines.append(f"  ... {len(report['violations']) - 30} more")
    else:
        lines.append("violations: none")
    return "\n".join(lines)


def run(args) -> int:
    """Run the soak for parsed *args*; returns the exit status."""
    log_dir = tempfile.mkdtemp(prefix="hkn-soak-")
    database = os.path.abspath(args.database) if args.database else os.path.join(log_dir,
                                                                               "kanban.db")
    soak = Soak(args, database, log_dir)
    was_enabled = gc.isenabled()
    gc.disable()
    old_showwarning = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ResourceWarning)
            warnings.showwarning = soak.warning_hook
            try:
                report = soak.run()
            finally:
                warnings.showwarning = old_showwarning
    finally:
        if was_enabled:
            gc.enable()
        shutil.rmtree(log_dir, ignore_errors=True)
    table = format_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report), flush=True)
    else:
        print(table, flush=True)
    return 1 if report["violations"] else 0
