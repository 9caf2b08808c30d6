"""The gateway process of the model: its long-lived connection, dispatcher and
worker threads, the stray closes, the other processes it starts, the run
loop and the final report.  The checks are in ``checks.py``."""
from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import traceback

from .checks import SoakChecks
from .counting import CloseTimes, ConnectionCounter, Tally
from .model import (BOARDS, JOURNAL_SIZE_LIMIT, WAL_AUTOCHECKPOINT, archive_path, configure,
                    create_archive, create_schema, factory_class)


class Soak(SoakChecks):
    def __init__(self, args, database, log_dir):
        self.args = args
        self.database = database
        self.log_dir = log_dir
        self.factory_name = args.factory
        base = factory_class(args.factory)
        # As hermes tracks its connections: a subclass made with type().
        from ... import WalSafeConnection
        attributes = {}
        if issubclass(base, WalSafeConnection):
            if args.max_live is not None:
                attributes["max_live_per_database"] = args.max_live
            if args.no_guard:
                attributes["guard_wal"] = False
        self.factory = type("Tracked" + base.__name__, (base,), attributes)
        self.counter = ConnectionCounter()
        self.tally = Tally()
        self.closes = CloseTimes()
        self.stop = threading.Event()
        self.violations = []
        self.violation_kinds = set()
        self.errors_lock = threading.Lock()
        self.thread_errors = []
        self.archive = archive_path(database)
        self.archive_rows = []          # ids this process's threads committed there
        self.main_rows = []             # ids committed by this process's threads
        self.main_rows_lock = threading.Lock()
        self.other_warnings = []
        self.wal_size_high = 0
        self.wal_size_bound = self.wal_size_limit = 0
        self.wal_size_final = None
        self.hw = {"db": 0, "wal": 0, "shm": 0, "fds_total": 0}
        self.hw_at = {}
        self.open_high = 0
        self.integrity = "not run"
        self.children = []              # (role, index, Popen)
        self.child_failures = []
        self.log_offsets = {}
        self.error_files = set()
        self.missing_rows = []
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
            self.tally.main_transactions += 1

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
            self.tally.dispatcher_ticks = tick
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
            self.tally.stray_closes += 1
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
            proc = self.spawn("verifier", self.tally.verifiers_run, 0.0)
            try:
                code = proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = "hung"
            self.tally.verifiers_run += 1
            if code != 0:
                self.child_failed("verifier", self.tally.verifiers_run - 1, code)
            self.stop.wait(0.5)

    def child_failed(self, role, index, code):
        self.child_failures.append((role, index, code))
        self.violation("child failed", f"{role} {index} exit status {code}")

    # -- output

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
            f"shm {counts.get('shm', '-')}  rows {self.tally.rows_verified}  "
            f"violations {len(self.violations)}")
        sys.stderr.flush()
        self.progress_shown = True

    # -- the run

    def warning_hook(self, message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ResourceWarning):
            self.tally.resource_warnings += 1
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
        self.tally.main_rows_verified = self.verify_main_rows(long_lived)
        self.tally.archive_rows_logged, self.tally.archive_rows_verified = \
            self.verify_archive_rows(long_lived)
        if self.counter.unclosed_open:
            self.violation("unclosed", f"{self.counter.unclosed_open} connections survived "
                                       f"gc.collect()")
        self.close(long_lived)
        from ... import holders
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
        from ... import sqlite_api, stats
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
            "resource_warnings": self.tally.resource_warnings,
            "gc_runs": self.tally.gc_runs,
            "dispatcher_ticks": self.tally.dispatcher_ticks,
            "main_transactions": self.tally.main_transactions,
            "main_rows_verified": self.tally.main_rows_verified,
            "archive_rows_logged": self.tally.archive_rows_logged,
            "archive_rows_verified": self.tally.archive_rows_verified,
            "rows_logged": self.tally.rows_logged,
            "rows_verified": self.tally.rows_verified,
            "rows_missing": len(self.missing_rows),
            "verifiers_run": self.tally.verifiers_run,
            "child_failures": len(self.child_failures),
            "wal_size_high_water": self.wal_size_high,
            "wal_size_bound": self.wal_size_limit,
            "wal_size_final": self.wal_size_final,
            "integrity_check": self.integrity,
            "integrity_checks": self.tally.integrity_checks,
            "stale_seen": self.tally.stale_seen,
            "locks_lost_seen": self.tally.locks_lost_seen,
            "stray_closes": self.tally.stray_closes,
            "close_ms_max": round(self.closes.close_max * 1e3, 3),
            "close_ms_mean": round(self.closes.close_total * 1e3 / max(1, self.closes.closes), 3),
            "closes": self.closes.closes,
            "checks": self.tally.checks,
            "walsafe_stats": native,
            "other_warnings": self.other_warnings,
            "violation_kinds": sorted(self.violation_kinds),
            "violations": list(self.violations),
        }
