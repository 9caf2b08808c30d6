"""What the soak checks in the gateway process, at every interval and at the
end: its descriptors against its open connections, stale sidecars and lost
locks (here and in every other process), the -wal size, integrity, the
committed rows, and the child processes."""
from __future__ import annotations

import gc
import os
import sqlite3
import time

from .counting import _present

INTEGRITY_EVERY = 30.0


def health_findings(result, who):
    """What is wrong in `result` (a SqliteFds of process `who`), as (kind,
    text) pairs: stale sidecars, and lost locks without a guard."""
    findings = []
    if result.stale:
        paths = sorted({info.path for info in result.stale})
        findings.append(("stale sidecars", f"{who} (pid {result.pid}) holds unlinked {paths}"))
    if result.locks_lost and not result.guarded:
        findings.append(("lost locks", f"{who} (pid {result.pid}) uses the WAL but holds "
                                       f"no lock on the database"))
    return findings


def _parent_of(pid):
    """The parent process id of `pid` (from /proc), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = text[text.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


class SoakChecks:
    """The checks of :class:`~.runner.Soak`, which inherits them: they read
    and update its state (counter, high-water marks, logs, violations)."""

    def sample_fds(self, label):
        """Descriptors of this process on the database, checked against what
        its open connections explain."""
        from ... import sqlite_fds, stats
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
        self.tally.samples += 1
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
        for kind, text in health_findings(result, who):
            self.finding(kind, text)

    def finding(self, kind, text):
        """A violation of the health checks, counted as seen."""
        if kind == "stale sidecars":
            self.tally.stale_seen += 1
        elif kind == "lost locks":
            self.tally.locks_lost_seen += 1
        self.violation(kind, text)

    def child_name(self, pid):
        """What the soak's process `pid` is, for a violation's text; None for
        a worker the forker forked (which checks itself, see
        ``children._check_own_health``)."""
        for role, index, proc in self.children:
            if proc.pid == pid:
                return f"{role} {index}"
        forkers = {proc.pid for role, _, proc in self.children if role == "forker"}
        if forkers and _parent_of(pid) in forkers:
            return None
        return "another process"

    def check_other_processes(self):
        from ... import holders, sqlite_fds
        for pid, result in holders(self.database).items():
            if pid == os.getpid():
                continue
            who = self.child_name(pid)
            if who is None:
                continue
            if result.stale:
                self.check_health(result, who)
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
                    self.check_health(result, who)

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
        self.tally.integrity_checks += 1
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
            self.tally.rows_logged += len(ids)
            found = _present(conn, "writes", ids)
            self.tally.rows_verified += len(found)
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
            elif name.startswith("finding-") and name not in self.error_files:
                # Written whole by a forked worker that has exited by now (the
                # forker waits for it before forking the next).
                self.error_files.add(name)
                with open(os.path.join(self.log_dir, name)) as report:
                    for line in report:
                        kind, _, text = line.rstrip("\n").partition("\t")
                        self.finding(kind, text)

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
        self.tally.checks += 1
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
                  f"rows verified {self.tally.rows_verified}; violations {len(self.violations)}")

    def collect(self, long_lived):
        # Sample where the descriptors peak: just before the collection.
        self.interval_check(long_lived, "before gc")
        self.tally.gc_runs += 1
        self.tally.gc_collected += gc.collect()
