"""pytest plugin: fail a test that leaves a SQLite database in a bad state.

Installed with the package (entry point ``pytest11``), so it needs no
configuration.  Two ways to use it:

* ``pytest --sqlite-fd-check``: every database any connection opened during
  each test is checked, plain ``sqlite3`` connections included, with no
  change to the suite.  ``@pytest.mark.no_sqlite_fd_check`` opts a test out.
* the fixture ``sqlite_fd_tracker``: the same for one test, with the
  per-database checks limited to the databases passed to
  ``sqlite_fd_tracker.watch(path)``.

A test fails at teardown, with one report listing each problem once, when

* it opened a database, its ``-wal`` or its ``-shm`` behind SQLite's back
  (``open()``, ``os.open``, ``pathlib``, a copy) while this process held
  connections to it: closing that file drops every POSIX lock the process
  holds on the database (see ``hermes_kanban_native.stray``).  The report
  names the ``file:line`` of the open and whether the guard covered it;
* a WalSafeConnection it opened was never closed: either the garbage
  collector closed it ("never closed, collected") or it is still open
  ("still open", with its thread).  Both name the code that opened it: the
  caller of a project's connect helper, with the helper's frames after "via";
* a database it used holds stale sidecars (a ``-wal``/``-shm`` whose file was
  unlinked or replaced while still open or mapped), or has lost its POSIX
  locks without the guard holding the WAL;
* descriptors remain that its connections explain no other way: on a
  database nobody had open before the test, any descriptor left after it
  means a connection it opened is still open (for plain connections this is
  the only sign, with their openers listed); and with WalSafeConnections
  only, SQLite's parking keeps at most one closed connection's database
  descriptor per concurrent connection, and none once none is open: a test
  may leave what was parked when it began, plus one per connection for the
  most that were open at once since (nested trackers do not shorten that).

Connections a fixture of wider scope (class, module, package, session) opens
during a test's setup are the fixture's, not the test's: recognised when the
fixture's function is among the frames kept of the connection's opener.

The garbage collector runs only when a connection the test opened is still
open at its end, youngest generation first, and stops as soon as none is.
A test that opens no connection costs one call into the extension at setup
and one at teardown, plus what CPython charges every audit event once an
audit hook is installed (the option's listener installs ours): about 12 µs
per test in all, with pytest raising ~55 events per test.  The check follows
the connection type's own registry and Python's audit events, not
``sqlite3.connect``, so suites that monkeypatch it or wrap connections in
proxies are checked all the same.
"""
from __future__ import annotations

import gc
import inspect
import os
import sqlite3
import threading
import warnings
import weakref

import pytest

OPTION = "--sqlite-fd-check"
MARKER = "no_sqlite_fd_check"
_OPTION_CHECK = "hermes_kanban_native_option_check"


def pytest_addoption(parser):
    group = parser.getgroup("hermes_kanban_native")
    group.addoption(
        OPTION, action="store_true", default=False,
        help="fail tests that open a live SQLite database behind SQLite's back, leave "
             "connections open, or leave stale sidecars, lost locks or unexplained "
             "descriptors on any database they used",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{MARKER}: skip the {OPTION} check for this test")
    if config.getoption(OPTION):
        # Its hooks exist only with the option: a run without it pays nothing
        # per test.
        config.pluginmanager.register(_OptionCheck(), _OPTION_CHECK)


class _Recorded:
    """What the extension recorded for one recorder since it joined: the
    paths WalSafeConnections opened and the rows of those its finalizer
    closed (path, opened_at, opened_via, thread_id, serial)."""

    def __init__(self):
        self.paths = set()
        self.log = []
        # The most connections that were open at once from the moment it
        # joined until the process-wide peak was last restarted (by another
        # recorder starting): the peak it sees is the larger of this and
        # stats()["peak_live"].
        self.peak = 0


class _Recording:
    """The extension keeps one recording per process (``_native._track``);
    this shares it among every recorder at once (trackers, and the option's
    record of the test running), each getting what was recorded from the
    moment it joined.  Handing the one recording from recorder to recorder
    would lose, for an outer tracker, whatever an inner one took.  Recorders
    are held weakly: a tracker dropped without check() stops recording."""

    def __init__(self):
        self._lock = threading.RLock()
        self._recorders = []            # weak references to _Recorded
        self._native = None             # imported at first use (_extension)

    def _extension(self):
        """The extension module, imported at first use: pytest loads this
        plugin in every session where the package is installed."""
        if self._native is None:
            from hermes_kanban_native import _native
            self._native = _native
        return self._native

    def join(self, recorded, inherit=None):
        """Start recording into ``recorded``, first with a copy of what
        ``inherit`` (a recorder that already records) holds."""
        native = self._extension()
        with self._lock:
            self._deliver()
            if inherit is not None:
                recorded.paths |= inherit.paths
                recorded.log.extend(inherit.log)
                recorded.peak = max(recorded.peak, inherit.peak)
            if not self._recorders:
                native._track(True)
            self._recorders.append(weakref.ref(recorded))

    def leave(self, recorded):
        """Stop recording into ``recorded``, which gets what was pending."""
        with self._lock:
            self._deliver(leaving=recorded)

    def start(self, recorded=None):
        """Restart the process-wide peak of live connections for a recorder
        that starts now (``recorded``, if it already joined, starts afresh)
        and return the count of connections opened so far.  Every other
        recorder keeps the peak it had seen: an inner tracker's start must
        not narrow an outer one's parking allowance."""
        native = self._extension()
        with self._lock:
            if len(self._recorders) > (recorded is not None):
                before = native.stats()["peak_live"]
                for ref in self._recorders:
                    other = ref()
                    if other is not None and other is not recorded:
                        other.peak = max(other.peak, before)
            if recorded is not None:
                recorded.peak = 0
            return native._start_test()

    def deliver(self):
        """Hand what the extension recorded to every recorder."""
        with self._lock:
            self._deliver()

    def _deliver(self, leaving=None):
        if not self._recorders:
            return
        got = self._native._track(True)
        live = []
        for ref in self._recorders:
            recorded = ref()
            if recorded is None:
                continue
            if got:
                recorded.paths |= got[0]
                recorded.log.extend(got[1])
            if recorded is not leaving:
                live.append(ref)
        self._recorders = live
        if not live:
            self._native._track(False)


_RECORDING = _Recording()


# Databases any plain sqlite3 connection opened while a tracker listened:
# their descriptors cannot be told apart from WalSafeConnections' by count.
_PLAIN_EVER: set = set()


class SqliteFdTracker:
    """What one test did to its databases; see the module docstring."""

    def __init__(self, every_database=False, *, _since=None, _recorded=None, _item=None):
        # Imported here, not at the top: pytest loads this plugin in every
        # session where the package is installed, used or not.
        import hermes_kanban_native as hkn
        _native, stray = hkn._native, hkn.stray
        self._hkn = hkn
        self._native = _native
        self._stray = stray
        self._every_database = every_database
        self._watched = {}
        # The test it checks (the fixture's and the option's trackers): what
        # that test's wider-scoped fixtures open is theirs, not the test's.
        self._item = _item
        self._wide = None               # those fixtures' code, once needed
        self._fixture_held = set()      # databases plain connections of theirs hold
        # _since, _recorded: made by the option's _OptionCheck part-way
        # through a test, which started it (the serial and the peak),
        # recorded it from its start, and passes it events.
        if _since is None:
            self._serial = _RECORDING.start()
        else:
            self._serial = _since
        # The paths WalSafeConnections open, and those the collector closed:
        # made part-way through a test, it starts with what the option
        # recorded since the test began.
        self._recorded = _Recorded()
        _RECORDING.join(self._recorded, inherit=_recorded)
        self._real = {}
        self._baseline = {}     # database -> (db fds, wal fds) before its first connect
        self._plain = {}        # database -> openers of plain connections
        self._connected = set()
        self._plain_ids = {}    # id() of this test's plain connections -> (database, opener)
        self._plain_collected = []
        self._strays = []
        self._listening = True
        self._listener = _since is None
        if self._listener:
            stray._listen(self)

    # ------------------------------------------------- the audit hook's side

    def before_connect(self, path):
        real = self._realpath(path)
        if real not in self._baseline:
            self._baseline[real] = _descriptors_on(real)

    def connected(self, path, connection, opener):
        real = self._realpath(path)
        self._connected.add(real)
        if opener is not None:
            if self._opened_by_wider_fixture(opener[1]):
                # Its descriptors stay until the fixture's scope ends, and
                # cannot be told apart from the test's own plain ones.
                self._fixture_held.add(real)
                _PLAIN_EVER.add(real)
                return
            where = _describe(*opener)
            self._plain.setdefault(real, []).append(where)
            self._plain_ids[id(connection)] = (real, where)
            _PLAIN_EVER.add(real)

    def stray_open(self, stray):
        self._strays.append(stray)

    def _opened_by_wider_fixture(self, via):
        """Whether a connection whose opener stack is ``via`` was opened by a
        fixture of the test that outlives the test (class, module, package
        or session scope): it is that fixture's to close when its scope
        ends, so it is not this test's leak."""
        if self._item is None or not via:
            return False
        if self._wide is None:
            self._wide = _wider_fixture_code(self._item)
        if not self._wide:
            return False
        for frame in via:
            place, _, name = frame.rpartition(" in ")
            file, _, line = place.rpartition(":")
            span = self._wide.get((file, name))
            if span is not None and line.isdigit() and span[0] <= int(line) <= span[1]:
                return True
        return False

    def _still_open(self):
        """The WalSafeConnections opened since this tracker began that are
        open now, less those a wider-scoped fixture opened."""
        rows = self._native._live_connections(self._serial)
        if rows and self._item is not None:
            rows = [row for row in rows if not self._opened_by_wider_fixture(row[4])]
        return rows

    def _realpath(self, path):
        try:
            return self._real[path]
        except KeyError:
            real = self._real[path] = os.path.realpath(path)
            return real

    # ------------------------------------------------------------ public API

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

        Runs the check now and returns one readable report per problem found;
        empty when all is well.  The garbage collector runs first, and only
        as far as needed, so that every connection is listed once: as
        collected or as still open.
        """
        self._settle()
        self._drain()
        names = {t.ident: t.name for t in threading.enumerate()}
        reports = []
        if self._strays:
            reports.append("stray open of a live database (code other than SQLite opened it):\n"
                           + "\n".join(f"  - {s.describe()}" for s in self._strays))
        collected = [row for row in self._recorded.log if row[4] > self._serial]
        if collected:
            reports.append(
                f"{len(collected)} WalSafeConnection(s) opened by this test were never "
                f"closed, collected (the garbage collector closed them):\n"
                + "\n".join(f"  - {path} opened at {_describe(where, via)} in thread "
                            f"{names.get(thread, '<gone>')}"
                            for path, where, via, thread, _ in collected))
        if self._plain_collected:
            reports.append(
                f"{len(self._plain_collected)} plain sqlite3 connection(s) opened by this "
                f"test were never closed, collected (CPython warned when the garbage "
                f"collector closed them):\n"
                + "\n".join(f"  - {path} opened at {where}"
                            for path, where in self._plain_collected))
        still_open = self._still_open()
        if still_open:
            reports.append(
                f"{len(still_open)} WalSafeConnection(s) opened by this test are still open:\n"
                + "\n".join(f"  - {path} opened at {_describe(where, via)} in thread "
                            f"{names.get(thread, '<gone>')}"
                            for path, thread, where, _, via, _ in still_open))
        reports.extend(self._database_reports(still_open))
        return reports

    def check(self):
        """Stop tracking, run the check, and fail the test on any problem."""
        try:
            if self._quiet():
                return
            reports = self.problems()
        finally:
            self._stop()
        if reports:
            pytest.fail("sqlite fd check failed\n\n" + "\n\n".join(reports), pytrace=False)

    # ----------------------------------------------------------- the check

    def _quiet(self):
        """Whether the test touched no database at all: nothing to check."""
        self._drain()
        return (not self._watched and not self._connected and not self._strays
                and not self._recorded.log and not self._recorded.paths
                and self._native._opened() == self._serial)

    def _drain(self):
        if self._listening:
            _RECORDING.deliver()

    def _stop(self):
        if self._listening:
            self._listening = False
            if self._listener:
                self._stray._unlisten(self)
            _RECORDING.leave(self._recorded)

    def _databases(self):
        found = dict.fromkeys(self._watched)
        if self._every_database:
            for path in self._recorded.paths:
                if path:
                    found.setdefault(self._realpath(path))
            for path in self._connected:
                found.setdefault(path)
        return list(found)

    def _unsettled(self):
        """Whether something the test opened may still be waiting for the
        garbage collector."""
        if self._still_open():
            return True
        fresh = [db for db in self._plain if self._baseline.get(db) == (0, 0)]
        if fresh:
            held = _Held.scan(fresh)
            return held is not None and any(held.holds(db) for db in fresh)
        return False

    def _settle(self):
        if self._native._opened() == self._serial and not self._plain:
            return
        for generation in (0, 1, 2):
            if not self._unsettled():
                return
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                gc.collect(generation)
            self._sort_warnings(caught)

    def _sort_warnings(self, caught):
        # A WalSafeConnection collected here is in the finalized log, and a
        # plain one this test opened (CPython 3.13+ warns about those) is
        # reported with its opener: their ResourceWarnings would only say it
        # again.  Any other warning goes on as it came.
        for item in caught:
            source = item.source
            if issubclass(item.category, ResourceWarning) and isinstance(source, sqlite3.Connection):
                opened = self._plain_ids.pop(id(source), None)
                if isinstance(source, self._hkn.WalSafeConnection) or opened is not None:
                    if opened is not None:
                        self._plain_collected.append(opened)
                        self._plain[opened[0]].remove(opened[1])
                    continue
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno,
                                   source=source)

    def _database_reports(self, still_open):
        hkn = self._hkn
        databases = self._databases()
        if not databases:
            return []
        held = _Held.scan(databases)
        if held is None:
            return []
        databases = [path for path in databases if held.holds(path)]
        if not databases:
            return []                       # no descriptor, so no mapping: nothing to see
        peak = max(self._recorded.peak, hkn.stats()["peak_live"])
        mine = {}
        for row in still_open:
            if row[0]:
                mine[self._realpath(row[0])] = mine.get(self._realpath(row[0]), 0) + 1
        reports = []
        for path in databases:
            try:
                info = hkn.sqlite_fds(path)
            except FileNotFoundError:
                continue
            reasons = []
            if info.stale:
                reasons.append(f"{len(info.stale)} stale sidecar descriptor(s)/mapping(s): "
                               f"the -wal/-shm were unlinked or replaced while in use")
            if info.locks_lost and not info.guarded:
                reasons.append("the process uses the WAL but holds no lock on the "
                               "database: its POSIX locks were cancelled by a stray close")
            live = len(info.live or ())
            base = self._baseline.get(path)
            plain = self._plain.get(path, [])
            if (live == 0 and (info.db or info.wal) and base in (None, (0, 0))
                    and path not in self._fixture_held):
                left = f"{len(info.db)} database and {len(info.wal)} WAL descriptor(s) remain"
                if base is None:
                    reasons.append(f"{left} with no WalSafeConnection open")
                elif plain:
                    reasons.append(f"{left} on a database nobody had open before the test: "
                                   f"of the {len(plain)} plain sqlite3 connection(s) it "
                                   f"opened and the garbage collector did not close, one "
                                   f"or more are still open (opened at {'; '.join(plain)})")
                else:
                    reasons.append(f"{left} on a database nobody had open before the test: "
                                   f"a connection it opened is still open")
            elif not plain and path not in _PLAIN_EVER:
                # SQLite parks the database descriptor of a connection that
                # closes while another holds a lock on the file, and reuses it
                # at the next open: what the test found parked stays, and the
                # test's own connections add at most one each beyond that.
                allowed = max(live + peak, base[0] if base else 0)
                if len(info.db) > allowed or len(info.wal) > live:
                    before = f", {base[0]} before the test" if base and base[0] else ""
                    reasons.append(
                        f"{len(info.db)} database / {len(info.wal)} WAL descriptors for "
                        f"{live} open connection(s); SQLite's parking explains at most "
                        f"{allowed} / {live} (peak concurrency {peak}{before})")
            if reasons:
                summary = (f"  live WalSafeConnections: {live}, {mine.get(path, 0)} of them "
                           f"opened by this test (listed above)")
                reports.append("\n".join([f"{path}:"] + [f"  - {r}" for r in reasons]
                                         + [info.report(), summary]))
        return reports


def _wider_fixture_code(item):
    """{(file name, function name): (first line, last line)} of the fixture
    functions of ``item`` whose scope is wider than one test.  Read from
    pytest's record of the test's fixtures (``_fixtureinfo``); empty where
    that is missing."""
    info = getattr(item, "_fixtureinfo", None)
    spans = {}
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        for definition in definitions:
            if getattr(definition, "scope", "function") == "function":
                continue
            function = getattr(definition, "func", None)
            function = getattr(function, "__func__", function)     # a class's fixture
            try:
                function = inspect.unwrap(function)
            except ValueError:
                continue                                            # a cycle of wrappers
            code = getattr(function, "__code__", None)
            if code is None:
                continue
            span = _CODE_SPANS.get(code)
            if span is None:
                lines = [line for _, _, line in code.co_lines() if line is not None]
                span = _CODE_SPANS[code] = (min(lines), max(lines)) if lines else ()
            if span:
                spans[code.co_filename, code.co_name] = span
    return spans


# code object -> (first line, last line): a fixture's lines are read once per
# run, not once per test that uses it.
_CODE_SPANS: dict = {}


def _describe(where, via):
    """"file:line (via helper frames)" from an opener's primary frame and
    its captured stack."""
    for index, frame in enumerate(via):
        if frame.startswith(where + " in "):
            if index:
                return f"{where} (via {', '.join(via[:index])})"
            break
    return where


class _Held:
    """Which of some databases this process holds descriptors on (the file
    or a sidecar), from one scan of its descriptors that makes a row only
    for those files and for unlinked ones (pytest's capture files are some),
    reading only the unlinked ones' names."""

    def __init__(self, held, unlinked):
        self._held = held               # the databases a descriptor is on
        self._unlinked = unlinked       # the names of unlinked files held

    @classmethod
    def scan(cls, databases):
        """None where descriptors cannot be listed (no /proc)."""
        from hermes_kanban_native.stray import _KINDS
        owners = {database + suffix: database for database in databases for _, suffix in _KINDS}
        found, rows = _descriptors(owners, unlinked=True)
        if rows is None:
            return None
        owner = {identity: owners[path] for path, identity in found.items()}
        held = {owner[row[2], row[3]] for row in rows if (row[2], row[3]) in owner}
        return cls(held, [row[1] for row in rows if row[4] == 0 and row[1]])

    def holds(self, database):
        """Whether the database or a sidecar may be held: one of the files
        at those paths is, or an unlinked file that had one of those names
        is (a sidecar unlinked under a live connection)."""
        return database in self._held or any(
            name.startswith(database) for name in self._unlinked)


def _identity(path):
    """(st_dev, st_ino) of the file at path, None if there is none.  Most
    sidecars asked about do not exist: os.access answers that without the
    exception a failed os.stat costs."""
    if not os.access(path, os.F_OK):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None                     # gone since
    return (st.st_dev, st.st_ino)


def _descriptors(paths, unlinked=False):
    """One scan of this process's descriptors for the files at paths:
    ({path: (st_dev, st_ino)} for those that exist, the _scan_fds rows on
    them), the rows None where descriptors cannot be listed (no /proc).
    With unlinked, the rows also hold every unlinked file, with its name
    read; without, there is nothing to scan for when no path exists."""
    from hermes_kanban_native import _native
    found = {}
    for path in paths:
        identity = _identity(path)
        if identity is not None:
            found[path] = identity
    if not found and not unlinked:
        return found, []
    try:
        rows = _native._scan_fds(os.getpid(), links=unlinked, only=list(found.values()))
    except NotImplementedError:
        return found, None
    return found, rows


def _descriptors_on(database):
    """(database descriptors, WAL descriptors) this process holds now."""
    paths = (database, database + "-wal")
    found, rows = _descriptors(paths)
    identities = [found.get(path) for path in paths]
    return tuple(sum(1 for row in rows or () if (row[2], row[3]) == identity)
                 for identity in identities)


class _OptionCheck:
    """--sqlite-fd-check: one listener for the whole session, and a tracker
    for a test only once it does something to a database.

    A test that touches no database then costs one call into the extension
    at setup and one at teardown.  A tracker made part-way through a test
    sees all of it: it starts with the test's first database event (every
    connection raises one before it opens; a stray open raises one too), the
    option's own record (a recorder of _RECORDING, emptied as each test
    begins) hands it the paths WalSafeConnections opened since the test
    began, and the count of opened connections, read at setup, catches one
    whose event did not reach us.
    """

    def __init__(self):
        import hermes_kanban_native as hkn
        self._native = hkn._native
        self._stray = hkn.stray
        self._lock = threading.Lock()
        self._item = None               # the test running, between our two hooks
        self._tracker = None            # its tracker, once it has one
        self._opted_out = None          # its marker, read at its first event
        self._serial = 0
        self._recorded = _Recorded()    # since the running test began
        _RECORDING.join(self._recorded)
        self._stray._listen(self)

    def pytest_unconfigure(self, config):
        self._stray._unlisten(self)
        _RECORDING.leave(self._recorded)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        # A hook, not an autouse fixture: a fixture costs every test tens of
        # microseconds even when it does nothing.  First, so that connections
        # the test's fixtures open count as the test's (those of fixtures
        # that outlive it are told apart at the check, by their openers).
        serial = _RECORDING.start(self._recorded)
        if serial != self._serial or self._recorded.log:
            # What was recorded belongs to the tests before (a connection
            # opened since the last test began, or one collected).
            _RECORDING.deliver()
            self._recorded.paths.clear()
            self._recorded.log.clear()
        self._serial = serial
        self._stray._forget_settled()       # each test hears each database's first connect
        self._tracker = self._opted_out = None
        self._item = item

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item, nextitem):
        # Last, after the test's fixtures were torn down (connections they
        # close are closed); an exception here is the test's teardown error.
        with self._lock:
            tracker, running = self._tracker, self._item
            self._tracker = self._item = None
        if running is not item:
            return                      # skipped by another plugin before our setup
        if tracker is None:
            if self._native._opened() == self._serial or self._is_opted_out(item):
                return                  # touched no database, or opted out
            # A WalSafeConnection opened, and its event did not reach us (a
            # listener that failed): checked all the same.
            tracker = self._new_tracker()
        tracker.check()

    def tracker_for(self, item):
        """The tracker of `item` if it is the test running and not opted out
        (made now if it has none yet), else None."""
        with self._lock:
            if item is None or item is not self._item:
                return None
            if self._tracker is None and not self._is_opted_out(item):
                self._tracker = self._new_tracker()
            return self._tracker

    def _new_tracker(self):
        # Started at the test's setup (its serial and peak), with what was
        # recorded since; the events come through this listener.
        return SqliteFdTracker(every_database=True, _since=self._serial,
                               _recorded=self._recorded, _item=self._item)

    def _is_opted_out(self, item):
        if self._opted_out is None:
            self._opted_out = item.get_closest_marker(MARKER) is not None
        return self._opted_out

    # The listener stray.py calls, from whichever thread the event is in; an
    # event between tests belongs to none.

    def before_connect(self, path):
        tracker = self.tracker_for(self._item)
        if tracker is not None:
            tracker.before_connect(path)

    def connected(self, path, connection, opener):
        tracker = self.tracker_for(self._item)
        if tracker is not None:
            tracker.connected(path, connection, opener)

    def stray_open(self, stray):
        tracker = self.tracker_for(self._item)
        if tracker is not None:
            tracker.stray_open(stray)


@pytest.fixture
def sqlite_fd_tracker(request):
    """A SqliteFdTracker: ``watch(path)`` the databases the test uses; the
    test fails at teardown if it left any of them in a bad state.  Under
    ``--sqlite-fd-check`` it is the tracker the option already runs."""
    check = request.config.pluginmanager.get_plugin(_OPTION_CHECK)
    tracker = check.tracker_for(request.node) if check is not None else None
    if tracker is not None:
        yield tracker
        return
    tracker = SqliteFdTracker(every_database=False, _item=request.node)
    yield tracker
    tracker.check()
