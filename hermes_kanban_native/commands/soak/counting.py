"""Counting in the gateway process: its open connections (and the
never-closed ones), its close() times, what the run did, and which logged
ids a table holds."""
from __future__ import annotations

import dataclasses
import threading
import weakref


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


@dataclasses.dataclass
class Tally:
    """What the gateway process did and saw during the run, counted in one
    place (the report shows most of it); the soak's state stays on Soak."""

    main_transactions: int = 0      # commits of this process's threads
    dispatcher_ticks: int = 0
    resource_warnings: int = 0
    stray_closes: int = 0           # rounds of the stray-close thread
    checks: int = 0                 # interval checks, the final one included
    samples: int = 0                # descriptor samples
    gc_runs: int = 0
    gc_collected: int = 0           # objects gc.collect() found
    integrity_checks: int = 0
    verifiers_run: int = 0
    rows_logged: int = 0            # ids the writer processes logged after commit
    rows_verified: int = 0          # ... and found in the database
    main_rows_verified: int = 0
    archive_rows_logged: int = 0
    archive_rows_verified: int = 0
    stale_seen: int = 0             # checks that found a process holding stale sidecars
    locks_lost_seen: int = 0        # ... or using the WAL without its locks


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
