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
child's connection its own OFD lock.

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
in a process with a guarded connection are OFD locks (csrc/shmlock.c), so a
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
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import weakref

from .reference import TruncatingConnection

FACTORIES = ("sqlite3", "python-subclass", "walsafe")
JOURNAL_SIZE_LIMIT = 8388608
WAL_AUTOCHECKPOINT = 100
INTEGRITY_EVERY = 30.0
HERMES_PRAGMAS = (
    "synchronous = FULL",
    f"wal_autocheckpoint = {WAL_AUTOCHECKPOINT}",
    f"journal_size_limit = {JOURNAL_SIZE_LIMIT}",
    "foreign_keys = ON",
    "secure_delete = ON",
    "cell_size_check = ON",
)
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, board TEXT NOT NULL, "
    "status TEXT NOT NULL, claimed_by TEXT, updated REAL)",
    "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, "
    "task INTEGER REFERENCES tasks(id), kind TEXT, at REAL)",
    "CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, writer INTEGER, seq INTEGER, "
    "payload BLOB, at REAL)",
)
BOARDS = ("default", "ops")
TASKS_PER_BOARD = 50


# ------------------------------------------------------------ connections


def factory_class(name: str):
    if name == "sqlite3":
        return sqlite3.Connection
    if name == "python-subclass":
        return TruncatingConnection
    if name == "walsafe":
        from .. import WalSafeConnection
        return WalSafeConnection
    raise ValueError(f"unknown factory {name!r}")


def configure(conn):
    """The PRAGMAs hermes' kanban connect() runs on every connection."""
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 120000")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    for pragma in HERMES_PRAGMAS:
        conn.execute("PRAGMA " + pragma)
    return conn


def open_configured(database, factory):
    conn = sqlite3.connect(database, factory=factory, isolation_level=None, timeout=120)
    try:
        return configure(conn)
    except BaseException:
        conn.close()
        raise


def create_schema(database, factory):
    conn = open_configured(database, factory)
    try:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0:
            conn.executemany(
                "INSERT INTO tasks (board, status, updated) VALUES (?, 'ready', ?)",
                [(board, time.time()) for board in BOARDS for _ in range(TASKS_PER_BOARD)])
        conn.commit()
    finally:
        conn.close()


ARCHIVE_SCHEMA = ("CREATE TABLE IF NOT EXISTS archived (id TEXT PRIMARY KEY, at REAL)",)


def archive_path(database):
    """The second database every process also uses, the gateway through
    ATTACH: kanban.db -> kanban-archive.db."""
    root, ext = os.path.splitext(database)
    return root + "-archive" + (ext or ".db")


def create_archive(database, factory):
    conn = open_configured(archive_path(database), factory)
    try:
        for statement in ARCHIVE_SCHEMA:
            conn.execute(statement)
    finally:
        conn.close()


def _log_committed(log, row_id):
    """Only after commit() returned: this id is promised durable."""
    os.write(log, (row_id + "\n").encode())
    os.fsync(log)


# -------------------------------------------------------- other processes
#
# Each child is ``python -m hermes_kanban_native.commands.soak ROLE ...``; it runs
# until the wall-clock deadline or until the stop file appears, and writes any
# failure to its error file before exiting 1.


def _stopping(deadline, stop_path):
    return time.time() >= deadline or os.path.exists(stop_path)


def _archive_write(database, factory, row_id, log):
    """One row committed straight into the archive database, then logged."""
    conn = open_configured(archive_path(database), factory)
    try:
        conn.execute("INSERT INTO archived (id, at) VALUES (?, ?)", (row_id, time.time()))
    finally:
        conn.close()
    _log_committed(log, row_id)


def _writer(database, factory, index, run_id, log_path, deadline, stop_path, rng):
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    archive_log = os.open(os.path.join(os.path.dirname(log_path), f"archive-writer-{index}.log"),
                          os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seq = 0
    try:
        while not _stopping(deadline, stop_path):
            conn = open_configured(database, factory)
            try:
                for _ in range(rng.randint(1, 20)):
                    seq += 1
                    row_id = f"{run_id}-w{index}-{seq}"
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute("INSERT INTO writes (id, writer, seq, payload, at) "
                                     "VALUES (?, ?, ?, randomblob(?), ?)",
                                     (row_id, index, seq, rng.randint(50, 600), time.time()))
                        conn.execute("UPDATE tasks SET updated = ? WHERE id = ?",
                                     (time.time(), rng.randint(1, TASKS_PER_BOARD * 2)))
                    except BaseException:
                        conn.rollback()
                        raise
                    conn.commit()
                    _log_committed(log, row_id)
                    if seq % 4 == 0:
                        _archive_write(database, factory, row_id, archive_log)
                    time.sleep(rng.uniform(0, 0.01))
                    if _stopping(deadline, stop_path):
                        break
            finally:
                conn.close()
    finally:
        os.close(log)
        os.close(archive_log)


def _forker(database, factory, index, run_id, log_path, deadline, stop_path, rng):
    """A process that forks its workers, as a job runner does: it holds a
    connection of its own across every fork, and each forked worker opens
    its own, commits a row, logs it and exits without any cleanup.  A child
    must never hold the parent's locks, nor lose a commit."""
    held = open_configured(database, factory)
    held.execute("SELECT count(*) FROM tasks").fetchone()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seq = 0
    try:
        while not _stopping(deadline, stop_path):
            seq += 1
            row_id = f"{run_id}-f{index}-{seq}"
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    conn = open_configured(database, factory)
                    try:
                        conn.execute("INSERT INTO writes (id, writer, seq, payload, at) "
                                     "VALUES (?, ?, ?, randomblob(100), ?)",
                                     (row_id, -1 - index, seq, time.time()))
                    finally:
                        conn.close()
                    _log_committed(log, row_id)
                except BaseException as exc:  # noqa: BLE001 - reported to the soak
                    code = 1
                    report = os.path.join(os.path.dirname(log_path), f"error-{os.getpid()}.txt")
                    with open(report, "a") as out:
                        out.write(f"worker forked by forker {index} (pid {os.getpid()}): "
                                  f"{exc!r}\n" + traceback.format_exc())
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                raise AssertionError(f"forked worker {pid} ended with status {status}")
            held.execute("SELECT count(*) FROM writes").fetchone()
            time.sleep(rng.uniform(0.02, 0.1))
    finally:
        os.close(log)
        held.close()


def _reader(database, factory, deadline, stop_path, rng):
    while not _stopping(deadline, stop_path):
        conn = open_configured(database, factory)
        try:
            for _ in range(rng.randint(1, 5)):
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM writes").fetchone()
                time.sleep(rng.uniform(0.05, 0.3))          # a read held open
                conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
                conn.commit()
                time.sleep(rng.uniform(0.02, 0.2))
                if _stopping(deadline, stop_path):
                    break
        finally:
            conn.close()


def _verifier(database, factory, log_dir, rng):
    """Open, read, close: and check one logged id per writer log."""
    conn = open_configured(database, factory)
    try:
        conn.execute("SELECT count(*) FROM writes").fetchone()
        for name in sorted(os.listdir(log_dir)):
            if not name.startswith("writer-"):
                continue
            with open(os.path.join(log_dir, name), "rb") as log:
                lines = log.read().split(b"\n")[:-1]
            if lines:
                row_id = rng.choice(lines).decode()
                found = conn.execute("SELECT 1 FROM writes WHERE id = ?", (row_id,)).fetchone()
                if found is None:
                    raise AssertionError(f"verifier: committed id {row_id} is missing")
    finally:
        conn.close()
    archive = open_configured(archive_path(database), factory)
    try:
        archive.execute("SELECT count(*) FROM archived").fetchone()
    finally:
        archive.close()


def _child_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="hermes_kanban_native.commands.soak (child)")
    parser.add_argument("role", choices=("writer", "reader", "verifier", "forker"))
    parser.add_argument("--database", required=True)
    parser.add_argument("--factory", choices=FACTORIES, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--run-id", default="")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--deadline", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    factory = factory_class(args.factory)
    rng = random.Random(args.seed)
    stop_path = os.path.join(args.log_dir, "stop")
    warnings.simplefilter("ignore", ResourceWarning)
    try:
        if args.role == "writer":
            _writer(args.database, factory, args.index, args.run_id,
                    os.path.join(args.log_dir, f"writer-{args.index}.log"),
                    args.deadline, stop_path, rng)
        elif args.role == "forker":
            _forker(args.database, factory, args.index, args.run_id,
                    os.path.join(args.log_dir, f"writer-fork-{args.index}.log"),
                    args.deadline, stop_path, rng)
        elif args.role == "reader":
            _reader(args.database, factory, args.deadline, stop_path, rng)
        else:
            _verifier(args.database, factory, args.log_dir, rng)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        text = f"{args.role} {args.index} (pid {os.getpid()}): {exc!r}\n"
        with open(os.path.join(args.log_dir, f"error-{os.getpid()}.txt"), "a") as out:
            out.write(text + traceback.format_exc())
        return 1
    return 0


# ------------------------------------------------- counting in this process


def _present(conn, table, ids):
    """The ids of `ids` that `table` (id TEXT PRIMARY KEY) holds."""
    found = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in conn.execute(
            f"SELECT id FROM {table} WHERE id IN ({marks})", chunk))
    return found


class ConnectionCounter:
    """Open connections of this process, counted by the soak itself.

    A connection counts from just before ``connect()`` until its ``close()``
    returned or it was collected (a weakref callback).  ``transition()``
    brackets every open, close and drop, so a descriptor sample can tell how
    many were in flight while it ran (the slack its bound allows)."""

    def __init__(self):
        # Reentrant: a collection can run a weakref callback anywhere.
        self._lock = threading.RLock()
        self._refs = {}
        self._next = 0
        self.open = 0
        self.peak = 0
        self.unclosed_open = 0
        self.unclosed_peak = 0
        self.unclosed_total = 0
        self.collected = 0
        self.seq = 0
        self.inflight = 0

    def begin(self):
        with self._lock:
            self.seq += 1
            self.inflight += 1

    def end(self):
        with self._lock:
            self.inflight -= 1

    def snapshot(self):
        with self._lock:
            return self.seq, self.inflight

    def opening(self):
        with self._lock:
            self.open += 1
            self.peak = max(self.peak, self.open)

    def failed(self):
        with self._lock:
            self.open -= 1

    def opened(self, conn):
        with self._lock:
            token = self._next
            self._next += 1
            conn._soak_token = token
            self._refs[token] = weakref.ref(conn, lambda _ref, t=token: self._collected(t))

    def closed(self, conn):
        with self._lock:
            ref = self._refs.pop(conn._soak_token, None)
            if ref is not None:
                self.open -= 1
        del ref                 # its callback never runs now

    def left_unclosed(self, conn):
        with self._lock:
            conn._soak_unclosed = True
            self.unclosed_open += 1
            self.unclosed_total += 1
            self.unclosed_peak = max(self.unclosed_peak, self.unclosed_open)

    def _collected(self, token):
        # Runs when a connection nobody closed is freed (the cyclic GC on
        # 3.11+, at once on 3.10).  Whether it was a deliberate with-block
        # one is not known here any more; every such connection is one.
        with self._lock:
            if self._refs.pop(token, None) is not None:
                self.open -= 1
                self.unclosed_open -= 1
                self.collected += 1


class CloseTimes:
    def __init__(self):
        self.lock = threading.Lock()
        self.close_max = 0.0
        self.close_total = 0.0
        self.closes = 0

    def record_close(self, seconds):
        with self.lock:
            self.closes += 1
            self.close_total += seconds
            self.close_max = max(self.close_max, seconds)


class Soak:
    def __init__(self, args, database, log_dir):
        self.args = args
        self.database = database
        self.log_dir = log_dir
        self.factory_name = args.factory
        base = factory_class(args.factory)
        # As hermes tracks its connections: a subclass made with type().
        from .. import WalSafeConnection
        attributes = {}
        if issubclass(base, WalSafeConnection):
            if args.max_live is not None:
                attributes["max_live_per_database"] = args.max_live
            if args.no_guard:
                attributes["guard_wal"] = False
        self.factory = type("Tracked" + base.__name__, (base,), attributes)
        self.counter = ConnectionCounter()
        self.closes = CloseTimes()
        self.stop = threading.Event()
        self.violations = []
        self.violation_kinds = set()
        self.errors_lock = threading.Lock()
        self.thread_errors = []
        self.archive = archive_path(database)
        self.archive_rows = []          # ids this process's threads committed there
        self.archive_rows_logged = self.archive_rows_verified = 0
        self.main_rows = []             # ids committed by this process's threads
        self.main_rows_lock = threading.Lock()
        self.main_transactions = 0
        self.dispatcher_ticks = 0
        self.resource_warnings = 0
        self.other_warnings = []
        self.stray_closes = 0
        self.wal_size_high = 0
        self.wal_size_bound = self.wal_size_limit = 0
        self.wal_size_final = None
        self.hw = {"db": 0, "wal": 0, "shm": 0, "fds_total": 0}
        self.hw_at = {}
        self.open_high = 0
        self.checks = 0
        self.samples = 0
        self.gc_runs = 0
        self.gc_collected = 0
        self.integrity_checks = 0
        self.integrity = "not run"
        self.children = []              # (role, index, Popen)
        self.child_failures = []
        self.verifiers_run = 0
        self.log_offsets = {}
        self.error_files = set()
        self.main_rows_verified = 0
        self.rows_logged = 0
        self.rows_verified = 0
        self.missing_rows = []
        self.stale_seen = 0
        self.locks_lost_seen = 0
        self.run_id = os.urandom(4).hex()
        self.started = time.monotonic()
        self.rng = random.Random()

    # -- violations

    def violation(self, kind, text):
        with self.errors_lock:
            self.violation_kinds.add(kind)
            if len(self.violations) < 200:
                self.violations.append(f"[{self.elapsed():7.1f}s] {kind}: {text}")

    def elapsed(self):
        return time.monotonic() - self.started

    # -- connections of this process

    def connect(self):
        self.counter.begin()
        try:
            self.counter.opening()
            try:
                conn = sqlite3.connect(self.database, factory=self.factory,
                                       isolation_level=None, timeout=120)
            except BaseException:
                self.counter.failed()
                raise
            self.counter.opened(conn)
        finally:
            self.counter.end()
        configure(conn)
        return conn

    def close(self, conn):
        self.counter.begin()
        try:
            start = time.perf_counter()
            conn.close()
            self.closes.record_close(time.perf_counter() - start)
            self.counter.closed(conn)
        finally:
            self.counter.end()

    def drop_unclosed(self, conn_holder):
        """Forget a with-block connection without closing it."""
        self.counter.begin()
        try:
            self.counter.left_unclosed(conn_holder[0])
            conn_holder.clear()     # 3.10 frees it here; 3.11+ waits for the GC
        finally:
            self.counter.end()

    def record_main_row(self, row_id):
        with self.main_rows_lock:
            self.main_rows.append(row_id)
            self.main_transactions += 1

    # -- threads of this process

    def _thread(self, name, body):
        def run():
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - reported as a violation
                self.violation("thread error", f"{name}: {exc!r}")
                with self.errors_lock:
                    self.thread_errors.append(traceback.format_exc())
                self.stop.set()
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def _small_write(self, conn, row_id, board):
        conn.execute("BEGIN IMMEDIATE")
        try:
            task = conn.execute("SELECT id FROM tasks WHERE board = ? ORDER BY updated LIMIT 1",
                                (board,)).fetchone()
            conn.execute("UPDATE tasks SET status = 'claimed', claimed_by = ?, updated = ? "
                         "WHERE id = ?", (row_id, time.time(), task["id"]))
            conn.execute("INSERT INTO events (id, task, kind, at) VALUES (?, ?, 'claim', ?)",
                         (row_id, task["id"], time.time()))
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        self.record_main_row(row_id)

    def _archive_write(self, conn, row_id):
        """A row into the archive database, attached for the purpose."""
        conn.execute("ATTACH DATABASE ? AS archive", (self.archive,))
        try:
            conn.execute("INSERT INTO archive.archived (id, at) VALUES (?, ?)",
                         (row_id, time.time()))
            with self.main_rows_lock:
                self.archive_rows.append(row_id)
        finally:
            conn.execute("DETACH DATABASE archive")

    def dispatcher(self):
        tick = 0
        every = self.args.unclosed_every
        wal = self.database + "-wal"
        while not self.stop.is_set():
            tick += 1
            for slot, board in enumerate(BOARDS):
                conn = self.connect()
                unclosed = every > 0 and slot == 0 and tick % every == 0
                if unclosed:
                    # hermes: ``with sqlite3.connect(...) as conn:``, which
                    # commits or rolls back and never closes.
                    with conn:
                        conn.execute("SELECT count(*) FROM tasks WHERE board = ? AND "
                                     "status = 'ready'", (board,)).fetchone()
                    holder = [conn]
                    del conn
                    self.drop_unclosed(holder)
                    continue
                try:
                    ready = conn.execute("SELECT id FROM tasks WHERE board = ? AND "
                                         "status = 'ready' LIMIT 5", (board,)).fetchall()
                    if tick % 3 == 0 or not ready:
                        self._small_write(conn, f"{self.run_id}-d{tick}-{slot}", board)
                finally:
                    self.close(conn)
            self.dispatcher_ticks = tick
            try:
                self.wal_size_high = max(self.wal_size_high, os.stat(wal).st_size)
            except FileNotFoundError:
                pass
            self.stop.wait(self.args.tick)

    def worker(self, index):
        rng = random.Random(index)
        n = 0
        while not self.stop.is_set():
            n += 1
            conn = self.connect()
            try:
                conn.execute("SELECT id, status FROM tasks WHERE board = ? LIMIT 10",
                             (rng.choice(BOARDS),)).fetchall()
                if n % 2 == 0:
                    self._small_write(conn, f"{self.run_id}-t{index}-{n}", rng.choice(BOARDS))
                elif n % 3 == 0:
                    self._archive_write(conn, f"{self.run_id}-a{index}-{n}")
                else:
                    conn.execute("SELECT count(*) FROM events").fetchone()
            finally:
                self.close(conn)
            self.stop.wait(rng.uniform(0.01, 0.03))

    def stray_closer(self):
        # Lock cancellation (fact 2): a header probe or file copy in the
        # process that holds the connections.
        targets = []
        for database in (self.database, self.archive):
            if self.args.stray_files in ("db", "both"):
                targets.append(database)
            if self.args.stray_files in ("shm", "both"):
                targets.append(database + "-shm")
        while not self.stop.is_set():
            for path in targets:
                # The stray descriptor is in flight for the fd samples.
                self.counter.begin()
                try:
                    os.close(os.open(path, os.O_RDONLY))
                except FileNotFoundError:
                    pass
                finally:
                    self.counter.end()
            self.stray_closes += 1
            self.stop.wait(0.25)

    # -- other processes

    def spawn(self, role, index, deadline):
        cmd = [sys.executable, "-m", "hermes_kanban_native.commands.soak", role,
               "--database", os.path.abspath(self.database), "--factory", self.factory_name,
               "--index", str(index), "--run-id", self.run_id,
               "--log-dir", os.path.abspath(self.log_dir),
               "--deadline", repr(deadline), "--seed", str(self.rng.randrange(1 << 30))]
        # `-m` puts the working directory on sys.path: run the children in the
        # log directory, so a source checkout there cannot shadow the package.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, cwd=os.path.abspath(self.log_dir))

    def verifier_launcher(self):
        while not self.stop.is_set():
            proc = self.spawn("verifier", self.verifiers_run, 0.0)
            try:
                code = proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = "hung"
            self.verifiers_run += 1
            if code != 0:
                self.child_failed("verifier", self.verifiers_run - 1, code)
            self.stop.wait(0.5)

    def child_failed(self, role, index, code):
        self.child_failures.append((role, index, code))
        self.violation("child failed", f"{role} {index} exit status {code}")

    # -- checks

    def sample_fds(self, label):
        """Descriptors of this process on the database, checked against what
        its open connections explain."""
        from .. import sqlite_fds, stats
        # What may hold descriptors is read *before* the scan: meanwhile the
        # collector (a bound collection in another thread, with the GIL
        # released around each close) can only close connections, whose
        # descriptors then go too, while new opens are counted by `seq`.
        # Read after the scan, a collection in between made the descriptors
        # seen outnumber the connections left (seen once under ASan: 8 -wal
        # fds against 3 live).
        seq_before, inflight = self.counter.snapshot()
        open_now = self.counter.open
        self.open_high = max(self.open_high, self.counter.peak)
        if self.factory_name == "walsafe":
            s = stats()
            peak, live = s["peak_live"], s["live"]
        else:
            peak, live = self.counter.peak, open_now
        result = sqlite_fds(self.database)
        total = len(os.listdir("/proc/self/fd"))
        seq_after, _ = self.counter.snapshot()
        slack = inflight + (seq_after - seq_before)
        self.samples += 1
        counts = {"db": len(result.db), "wal": len(result.wal), "shm": len(result.shm),
                  "fds_total": total}
        for kind, value in counts.items():
            if value > self.hw[kind]:
                self.hw[kind] = value
                self.hw_at[kind] = label
        # A connection the collector closes while a cursor it owned is not
        # yet cleared becomes an SQLite zombie: unregistered, its descriptor
        # neither closed nor reusable until the same collection frees the
        # cursor, while other threads (the GIL is released around closes)
        # keep opening.  Each thread can add one such transient descriptor.
        slack += self.args.threads + 1
        if counts["db"] > peak + slack:
            self.violation("db fds", f"{counts['db']} db fds, but at most {peak} connections "
                                     f"were ever open at once (+{slack} in flight)")
        if counts["wal"] > max(live, open_now) + slack:
            self.violation("wal fds", f"{counts['wal']} -wal fds with {live} connections open "
                                      f"(+{slack} in flight)")
        if counts["shm"] > 1:
            self.violation("shm fds", f"{counts['shm']} -shm fds (one per process expected)")
        self.check_health(result, "this process")
        self.check_health(sqlite_fds(self.archive), "this process (archive)")
        return counts

    def check_health(self, result, who):
        if result.stale:
            self.stale_seen += 1
            paths = sorted({info.path for info in result.stale})
            self.violation("stale sidecars", f"{who} (pid {result.pid}) holds unlinked {paths}")
        if result.locks_lost and not result.guarded:
            self.locks_lost_seen += 1
            self.violation("lost locks", f"{who} (pid {result.pid}) uses the WAL but holds "
                                         f"no lock on the database")

    def check_other_processes(self):
        from .. import holders, sqlite_fds
        for pid, result in holders(self.database).items():
            if pid == os.getpid():
                continue
            if result.stale:
                self.check_health(result, "another process")
            elif result.locks_lost and not result.guarded:
                # /proc/locks and the fds are read at different moments; a
                # child opening or closing in between looks lockless.  Real
                # lost locks last for the connection's life: re-read.
                confirmed = True
                for _ in range(5):
                    try:
                        again = sqlite_fds(self.database, pid=pid)
                    except (ProcessLookupError, PermissionError):
                        confirmed = False
                        break
                    if not (again.locks_lost and not again.guarded):
                        confirmed = False
                        break
                if confirmed:
                    self.check_health(result, "another process")

    def check_wal_size(self):
        try:
            size = os.stat(self.database + "-wal").st_size
        except FileNotFoundError:
            size = 0
        self.wal_size_high = max(self.wal_size_high, size)
        if self.wal_size_high > self.wal_size_bound:
            self.violation("wal size", f"-wal reached {self.wal_size_high} bytes "
                                       f"(bound {self.wal_size_bound})")
            self.wal_size_bound = self.wal_size_high     # report growth once per step

    def check_integrity(self, conn):
        rows = [tuple(row) for row in conn.execute("PRAGMA main.integrity_check").fetchall()]
        archive = [tuple(row) for row in conn.execute("PRAGMA archive.integrity_check")]
        if archive != [("ok",)]:
            rows = [row for row in rows if row != ("ok",)]
            rows += [(f"archive: {row[0]}",) for row in archive]
        self.integrity_checks += 1
        if rows == [("ok",)]:
            self.integrity = "ok"
        else:
            self.integrity = "; ".join(str(r[0]) for r in rows[:5])
            self.violation("integrity_check", self.integrity)

    def verify_rows(self, conn):
        """Every id a writer logged after commit() returned must be present."""
        for name in sorted(os.listdir(self.log_dir)):
            if not name.startswith("writer-"):
                continue
            path = os.path.join(self.log_dir, name)
            offset = self.log_offsets.get(name, 0)
            with open(path, "rb") as log:
                log.seek(offset)
                data = log.read()
            end = data.rfind(b"\n") + 1
            self.log_offsets[name] = offset + end
            ids = [line.decode() for line in data[:end].split(b"\n") if line]
            self.rows_logged += len(ids)
            found = _present(conn, "writes", ids)
            self.rows_verified += len(found)
            for row_id in ids:
                if row_id not in found:
                    self.missing_rows.append(row_id)
                    self.violation("missing row", f"{row_id} committed by a writer is "
                                                  f"not in the database")

    def verify_archive_rows(self, conn):
        """Every archive id, from the logs and from this process's threads,
        must be in the attached archive database."""
        ids = []
        for name in sorted(os.listdir(self.log_dir)):
            if name.startswith("archive-writer-"):
                with open(os.path.join(self.log_dir, name), "rb") as log:
                    ids += [line.decode() for line in log.read().split(b"\n") if line]
        with self.main_rows_lock:
            ids += self.archive_rows
        found = _present(conn, "archive.archived", ids)
        for row_id in ids:
            if row_id not in found:
                self.missing_rows.append(row_id)
                self.violation("missing row", f"{row_id} committed to the archive is not in it")
        return len(ids), len(found)

    def verify_main_rows(self, conn):
        with self.main_rows_lock:
            ids = list(self.main_rows)
        missing = len(ids) - len(_present(conn, "events", ids))
        if missing:
            self.violation("missing row", f"{missing} rows committed in this process are missing")
        return len(ids) - missing

    def check_children(self):
        for role, index, proc in self.children:
            code = proc.poll()
            if code not in (None, 0) and (role, index, code) not in self.child_failures:
                self.child_failed(role, index, code)
        for name in os.listdir(self.log_dir):
            if name.startswith("error-") and name not in self.error_files:
                self.error_files.add(name)
                with open(os.path.join(self.log_dir, name)) as report:
                    first = report.readline().strip()
                self.violation("child error", first)

    def show(self, text):
        if self.progress_shown:
            sys.stderr.write("\r\x1b[K")
            self.progress_shown = False
        print(text, file=sys.stderr, flush=True)

    def progress(self):
        if not self.use_progress:
            return
        counts = self.last_counts or {}
        sys.stderr.write(
            f"\r\x1b[Ksoak {self.factory_name}: {self.elapsed():6.1f}/{self.args.seconds:g}s "
            f"open {self.counter.open} (unclosed {self.counter.unclosed_open}) "
            f"fds db {counts.get('db', '-')} wal {counts.get('wal', '-')} "
            f"shm {counts.get('shm', '-')}  rows {self.rows_verified}  "
            f"violations {len(self.violations)}")
        sys.stderr.flush()
        self.progress_shown = True

    def check_wal_truncates(self, long_lived):
        """With the readers gone, checkpoints must still work: a TRUNCATE
        checkpoint completes and leaves an empty -wal."""
        try:
            busy, log, done = long_lived.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            self.violation("wal size", f"final TRUNCATE checkpoint failed: {exc}")
            return
        size = os.path.getsize(self.database + "-wal") if os.path.exists(
            self.database + "-wal") else 0
        self.wal_size_final = size
        if busy or size:
            self.violation("wal size", f"final TRUNCATE checkpoint: busy={busy}, "
                                       f"-wal {size} bytes left")

    def interval_check(self, long_lived, label):
        self.checks += 1
        counts = self.sample_fds(label)
        self.last_counts = counts
        self.check_other_processes()
        self.check_wal_size()
        self.check_children()
        self.verify_rows(long_lived)
        if time.monotonic() - self.last_integrity >= INTEGRITY_EVERY:
            self.last_integrity = time.monotonic()
            self.check_integrity(long_lived)
        self.show(f"[{self.elapsed():7.1f}s] {label}: fds db {counts['db']} wal {counts['wal']} "
                  f"shm {counts['shm']} total {counts['fds_total']}; open {self.counter.open} "
                  f"(unclosed {self.counter.unclosed_open}); wal {self.wal_size_high} B; "
                  f"rows verified {self.rows_verified}; violations {len(self.violations)}")

    def collect(self, long_lived):
        # Sample where the descriptors peak: just before the collection.
        self.interval_check(long_lived, "before gc")
        self.gc_runs += 1
        self.gc_collected += gc.collect()

    # -- the run

    def warning_hook(self, message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ResourceWarning):
            self.resource_warnings += 1
        elif len(self.other_warnings) < 20:
            self.other_warnings.append(f"{category.__name__}: {message}")

    def run(self):
        args = self.args
        self.use_progress = args.progress or sys.stderr.isatty()
        self.progress_shown = False
        self.last_counts = None
        self.last_integrity = time.monotonic()
        page_size = 4096
        create_schema(self.database, factory_class(args.factory))
        create_archive(self.database, factory_class(args.factory))
        probe = sqlite3.connect(self.database)
        try:
            page_size = probe.execute("PRAGMA page_size").fetchone()[0]
        finally:
            probe.close()
        # 32-byte WAL header, 24-byte frame header per page.
        self.wal_size_limit = 4 * JOURNAL_SIZE_LIMIT + 2 * WAL_AUTOCHECKPOINT * (page_size + 24)
        self.wal_size_bound = self.wal_size_limit
        self.started = time.monotonic()
        deadline_wall = time.time() + args.seconds

        long_lived = self.connect()
        # The gateway's long-lived connection keeps the archive attached for
        # the whole run (its -wal/-shm generation is this process's too).
        long_lived.execute("ATTACH DATABASE ? AS archive", (self.archive,))
        long_lived.execute("SELECT count(*) FROM archive.archived").fetchone()
        writers = (args.processes + 1) // 2
        readers = args.processes // 2
        for index in range(writers):
            self.children.append(("writer", index, self.spawn("writer", index, deadline_wall)))
        for index in range(readers):
            self.children.append(("reader", index, self.spawn("reader", index, deadline_wall)))
        if args.fork_workers:
            self.children.append(("forker", 0, self.spawn("forker", 0, deadline_wall)))
        threads = [self._thread("dispatcher", self.dispatcher)]
        threads += [self._thread(f"worker-{i}", lambda i=i: self.worker(i))
                    for i in range(args.threads)]
        if args.processes:
            threads.append(self._thread("verifiers", self.verifier_launcher))
        if args.stray_close:
            threads.append(self._thread("stray-close", self.stray_closer))

        end = self.started + args.seconds
        next_check = self.started + args.check_every
        next_gc = self.started + args.gc_every
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= end:
                    break
                if now >= next_gc:
                    self.collect(long_lived)
                    next_gc += args.gc_every
                    next_check = time.monotonic() + args.check_every
                elif now >= next_check:
                    self.interval_check(long_lived, "check")
                    next_check += args.check_every
                else:
                    self.progress()
                self.stop.wait(min(0.25, max(0.0, min(next_check, next_gc, end) - now)))
        finally:
            self.stop.set()
            open(os.path.join(self.log_dir, "stop"), "w").close()
            for thread in threads:
                thread.join(timeout=300)
                if thread.is_alive():
                    self.violation("hung", f"thread {thread.name} did not stop")
            for role, index, proc in self.children:
                try:
                    proc.wait(timeout=300)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    self.violation("hung", f"{role} {index} did not stop")
        # Final checks: the peak before the last collection, then after it,
        # with every other connection of this process gone.
        self.collect(long_lived)
        self.interval_check(long_lived, "final")
        self.check_integrity(long_lived)
        self.check_wal_truncates(long_lived)
        self.main_rows_verified = self.verify_main_rows(long_lived)
        self.archive_rows_logged, self.archive_rows_verified = \
            self.verify_archive_rows(long_lived)
        if self.counter.unclosed_open:
            self.violation("unclosed", f"{self.counter.unclosed_open} connections survived "
                                       f"gc.collect()")
        self.close(long_lived)
        from .. import holders
        left = {pid: r for pid, r in holders(self.database).items()}
        for pid, result in left.items():
            self.check_health(result, "after the run, a process")
        for pid, result in holders(self.archive).items():
            self.check_health(result, "after the run, a process (archive)")
        if os.getpid() in left and (left[os.getpid()].db or left[os.getpid()].wal):
            self.violation("fds after close", f"this process still holds "
                                              f"{len(left[os.getpid()].db)} db fds after "
                                              f"closing every connection")
        if self.progress_shown:
            sys.stderr.write("\r\x1b[K")
        return self.report()

    def report(self):
        from .. import sqlite_api, stats
        native = stats() if self.factory_name == "walsafe" else None
        explicit = 1 + len(BOARDS) + self.args.threads
        return {
            "schema": 1,
            "factory": self.factory_name,
            "python": sys.version.split()[0],
            "sqlite_version": sqlite3.sqlite_version,
            "sqlite_api_mode": sqlite_api()["mode"],
            "database": self.database,
            "seconds": round(self.elapsed(), 2),
            "threads": self.args.threads,
            "processes": self.args.processes,
            "unclosed_every": self.args.unclosed_every,
            "stray_close": self.args.stray_close,
            "gc_every": self.args.gc_every,
            "fd_high_water": dict(self.hw),
            "fd_high_water_at": dict(self.hw_at),
            "open_connections_high_water": self.counter.peak,
            "steady_concurrency": explicit,
            "peak_live": native["peak_live"] if native else None,
            "unclosed_total": self.counter.unclosed_total,
            "unclosed_high_water": self.counter.unclosed_peak,
            "unclosed_collected": self.counter.collected,
            "resource_warnings": self.resource_warnings,
            "gc_runs": self.gc_runs,
            "dispatcher_ticks": self.dispatcher_ticks,
            "main_transactions": self.main_transactions,
            "main_rows_verified": self.main_rows_verified,
            "archive_rows_logged": self.archive_rows_logged,
            "archive_rows_verified": self.archive_rows_verified,
            "rows_logged": self.rows_logged,
            "rows_verified": self.rows_verified,
            "rows_missing": len(self.missing_rows),
            "verifiers_run": self.verifiers_run,
            "child_failures": len(self.child_failures),
            "wal_size_high_water": self.wal_size_high,
            "wal_size_bound": self.wal_size_limit,
            "wal_size_final": self.wal_size_final,
            "integrity_check": self.integrity,
            "integrity_checks": self.integrity_checks,
            "stale_seen": self.stale_seen,
            "locks_lost_seen": self.locks_lost_seen,
            "stray_closes": self.stray_closes,
            "close_ms_max": round(self.closes.close_max * 1e3, 3),
            "close_ms_mean": round(self.closes.close_total * 1e3 / max(1, self.closes.closes), 3),
            "closes": self.closes.closes,
            "checks": self.checks,
            "walsafe_stats": native,
            "other_warnings": self.other_warnings,
            "violation_kinds": sorted(self.violation_kinds),
            "violations": list(self.violations),
        }


# --------------------------------------------------------------- command


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return value
    return parse


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
    parser.add_argument("--seconds", type=_positive(float), default=30.0,
                        help="how long to run (default 30)")
    parser.add_argument("--threads", type=_positive(int), default=2,
                        help="worker threads in this process (default 2)")
    parser.add_argument("--processes", type=_positive(int), default=4,
                        help="other processes: half writers (rounded up), half readers; "
                             "verifiers run one after another on top (default 4)")
    parser.add_argument("--factory", choices=FACTORIES, default="walsafe",
                        help="connection class for every connection (default walsafe)")
    parser.add_argument("--database", metavar="PATH",
                        help="database file (default: a new one in a temporary directory)")
    parser.add_argument("--unclosed-every", type=_positive(int), default=4, metavar="N",
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
    parser.add_argument("--tick", type=_positive(float), default=0.05,
                        help="dispatcher tick in seconds (default 0.05)")
    parser.add_argument("--gc-every", type=_positive(float), default=5.0, metavar="SECONDS",
                        help="explicit gc.collect() interval; automatic collection is off "
                             "during the run (default 5)")
    parser.add_argument("--check-every", type=_positive(float), default=2.0, metavar="SECONDS",
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


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_child_main(sys.argv[1:]))
