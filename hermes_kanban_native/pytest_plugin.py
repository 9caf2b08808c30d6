"""pytest plugin: fail a test that leaves a SQLite database in a bad state.

Installed with the package (entry point ``pytest11``), so it needs no
configuration.  Two ways to use it:

* the fixture ``sqlite_fd_tracker``: call ``sqlite_fd_tracker.watch(path)``
  for the databases a test uses;
* ``pytest --sqlite-fd-check``: the same check for every database any
  WalSafeConnection opened during each test, with no change to the suite.
  ``@pytest.mark.no_sqlite_fd_check`` opts a test out.

At teardown, after a garbage collection, a watched database fails the test
when this process

* holds stale sidecars (a ``-wal``/``-shm`` whose file was unlinked or
  replaced while still open or mapped),
* has lost its POSIX locks on it without a guard holding them,
* has WalSafeConnections to it that the test opened and never closed (and,
  for the whole process, any connection the garbage collector had to close),
* or holds more database/WAL descriptors than its open connections and
  SQLite's parked-descriptor rule explain: a closed connection's database
  descriptor stays parked while another connection of the process is open,
  so parked descriptors are bounded by the peak number of concurrent
  connections during the test, and none may remain once none is open.

The report lists every descriptor and mapping with its path, kind and inode.
The check works for suites that monkeypatch ``sqlite3.connect`` or wrap
connections in proxies: it follows WalSafeConnection's own registry, not
``sqlite3.connect``.
"""
from __future__ import annotations

import gc
import os
import time

import pytest

OPTION = "--sqlite-fd-check"
MARKER = "no_sqlite_fd_check"


def pytest_addoption(parser):
    group = parser.getgroup("hermes_kanban_native")
    group.addoption(
        OPTION, action="store_true", default=False,
        help="fail tests that leave stale SQLite sidecars, lost locks, unclosed "
             "WalSafeConnections or unexplained descriptors on any database a "
             "WalSafeConnection opened during the test",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{MARKER}: skip the {OPTION} check for this test")


class SqliteFdTracker:
    """What one test did to its databases; see the module docstring."""

    def __init__(self):
        import hermes_kanban_native as hkn
        self._hkn = hkn
        self._watched = {}
        self._started = time.time()
        self._finalized_before = hkn.stats()["finalized"]
        self._live_before = {id_key(entry) for entry in hkn.live_connections()}
        hkn._native._reset_peak_live()

    def watch(self, database):
        """watch(database) -> None

        Check ``database`` (str, bytes or path-like) at the end of the test.
        """
        path = os.path.realpath(os.fsdecode(os.fspath(database)))
        self._watched[path] = database

    @property
    def watched(self):
        return list(self._watched)

    def problems(self):
        """problems() -> list[str]

        Runs the check now (after a garbage collection) and returns one
        readable report per problem found; empty when all is well.
        """
        hkn = self._hkn
        never_closed = [
            entry for entry in hkn.live_connections()
            if id_key(entry) not in self._live_before and entry.opened_time >= self._started
        ]
        gc.collect()
        finalized = hkn.stats()["finalized"] - self._finalized_before
        peak = hkn.stats()["peak_live"]
        reports = []
        if finalized > 0:
            reports.append(
                f"{finalized} WalSafeConnection(s) were never closed: the garbage "
                f"collector closed them (see the ResourceWarnings for where they "
                f"were opened)")
        for path in self._watched:
            reasons = []
            opened_here = [entry for entry in never_closed if same_file(entry.path, path)]
            if opened_here:
                reasons.append(
                    f"{len(opened_here)} WalSafeConnection(s) opened by this test are "
                    f"still open: " + ", ".join(entry.opened_at for entry in opened_here))
            try:
                info = hkn.sqlite_fds(path)
            except FileNotFoundError:
                continue
            if info.stale:
                reasons.append(f"{len(info.stale)} stale sidecar descriptor(s)/mapping(s): "
                               f"the -wal/-shm were unlinked or replaced while in use")
            if info.locks_lost and not info.guarded:
                reasons.append("the process uses the WAL but holds no lock on the "
                               "database: its POSIX locks were cancelled by a stray close")
            live = len(info.live or ())
            if live == 0 and (info.db or info.wal):
                reasons.append(f"{len(info.db)} database and {len(info.wal)} WAL "
                               f"descriptor(s) remain with no WalSafeConnection open")
            elif len(info.db) > live + peak or len(info.wal) > live:
                reasons.append(
                    f"{len(info.db)} database / {len(info.wal)} WAL descriptors for "
                    f"{live} open connection(s); SQLite's parking explains at most "
                    f"{live + peak} / {live} (peak concurrency {peak})")
            if reasons:
                reports.append("\n".join([f"{path}:"] + [f"  - {r}" for r in reasons]
                                         + [info.report()]))
        return reports

    def check(self):
        reports = self.problems()
        if reports:
            pytest.fail("sqlite fd check failed\n" + "\n\n".join(reports), pytrace=False)


def id_key(entry):
    return (entry.path, entry.thread_id, entry.opened_at, entry.opened_time)


def same_file(a, b):
    if not a:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == b


@pytest.fixture
def sqlite_fd_tracker():
    """A SqliteFdTracker: ``watch(path)`` the databases the test uses; the
    test fails at teardown if any of them is left in a bad state."""
    tracker = SqliteFdTracker()
    yield tracker
    tracker.check()


@pytest.fixture(autouse=True)
def _sqlite_fd_check(request):
    if not request.config.getoption(OPTION) or request.node.get_closest_marker(MARKER):
        yield
        return
    from hermes_kanban_native import _native
    previous = _native._track_opened(True)
    tracker = SqliteFdTracker()
    try:
        yield
    finally:
        opened = _native._track_opened(previous is not None) or set()
    for path in opened:
        if path:
            tracker.watch(path)
    tracker.check()
