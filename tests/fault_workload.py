"""The driving workload of test_faults.py: every public entry point of the
package (and the private ones the package and its plugin use), so that every
fault point of the C extension is reached from one of them.

A Workload runs its steps against one instance of the extension module:
the package's own (native mode, with the public Python API on top), or a
private instance loaded in SQL mode.  Whatever a step raises that a caller
of that API could see (the sqlite3 exceptions, MemoryError, OSError, and the
documented errors of bad input) is recorded and the next step runs; anything
else (SystemError above all) propagates and fails the test.  Warnings and
unraisable exceptions are recorded as text, so that nothing keeps an object
alive.
"""
from __future__ import annotations

import _thread
import abc
import atexit
import collections
import concurrent.futures
import functools
import gc
import itertools
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import types
import warnings

# exec_instance is shared with conftest.py's fixture hkn; test_faults.py
# imports it from here.
from modes import exec_instance

# What a user of the API may see from any call when something fails inside.
EXPECTED = (sqlite3.Error, MemoryError, OSError)
DEADLINE = 10.0
# A close that fails leaves its connection, and any transaction it had, open
# until finish(): the others then wait this long for its locks, not 5 s.
TIMEOUT = 0.05
ALWAYS = 10 ** 9                # _fault_arm(times=ALWAYS): every hit fails

# Points on paths that only another failure leads to: that one is armed
# (first hit) together with the point under test.
PREREQUISITES = {
    # the guard cannot be taken for a structural reason: SQLite gives no
    # file object (the warning is once per module: _fault_reset_once())
    "guard.cannot.PyUnicode_FromString": ("guard.file_pointer.sqlite3_file_control",),
    "guard.cannot.PyErr_WarnFormat": ("guard.file_pointer.sqlite3_file_control",),
    # a route not taken (where every route works unarmed)
    "sqlite_api.why.PyUnicode_FromFormatV": ("sqlite_api.route_symbols.dlopen",),
    "sqlite_api.try_route.PyDict_SetItemString": ("sqlite_api.route_symbols.dlopen",),
    # no route taken (where one works unarmed)
    "sqlite_api.init.PyUnicode_FromFormat": ("sqlite_api.route_symbols.dlopen",
                                             "sqlite_api.route_extension.dladdr"),
    # exec failed after atexit.register(); taking that back is what fails
    "module.register_hooks.PyObject_CallMethod.2": ("module.register_hooks.PyObject_VectorcallDict",),
}

# Failures on top of another failure's cleanup: (point, armed first).
COMBINATIONS = [
    # __init__ fails after the base opened the database, then its cleanup
    # close fails too: the handle must still be closed.
    ("connection.base_close.PyObject_CallOneArg", ("connection.path_str.PyUnicode_DecodeFSDefault",)),
    # the same in SQL mode, where nothing can close natively
    ("connection.base_close.PyObject_CallOneArg", ("connection.init.PySequence_GetItem",)),
]

# Initialisation points whose failure leaves the failed instance alive by
# design: atexit still holds it.
KEPT_ALIVE = {"module.register_hooks.PyObject_CallMethod.2"}


def _pid_nobody_has():
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())        # pids are always below pid_max


def _crowded_scan(mod):
    """_scan_fds of this process with enough descriptors open that they are
    tried number by number instead of listed (fdscan.c: where the descriptor
    table is at most about twice as large as their count)."""
    with open("/proc/self/status") as status:
        table = next(int(line.split()[1]) for line in status if line.startswith("FDSize:"))
    base = os.open(os.devnull, os.O_RDONLY)
    crowd = [base]
    try:
        missing = (table - 64) // 2 + 1 - (len(os.listdir("/proc/self/fd")) - 1)
        crowd += [os.dup(base) for _ in range(max(0, missing))]
        mod._scan_fds(os.getpid(), links=False)
    finally:
        for fd in crowd:
            os.close(fd)


def _without_frames(function, *args):
    """function(*args) in a new thread that runs no Python code (so it has
    no frame), waiting until that thread is gone, its thread state included:
    only then is all it held released."""
    call = functools.partial(function, *args)
    if hasattr(_thread, "start_joinable_thread"):          # 3.13+
        _thread.start_joinable_thread(call).join()
        return
    # Before 3.13, the thread makes a lock that CPython releases when the
    # thread state is deleted, then makes the call.
    box = collections.deque()
    steps = itertools.chain(itertools.starmap(_thread._set_sentinel, [()]),
                            itertools.starmap(call, [()]))
    _thread.start_new_thread(box.extend, (steps,))
    _wait_for(lambda: box)
    box[0].acquire(timeout=DEADLINE)


def _wait_for(predicate, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


class Workload:
    """One run of the steps against `mod` (an instance of _native), with
    `api` the package when `mod` is the package's own instance."""

    def __init__(self, mod, db, scratch, api=None):
        self.mod = mod
        self.api = api
        self.db = db
        self.scratch = scratch
        self.native = mod.sqlite_api()["mode"] == "native"
        self.opened = []            # strong references: closed by finish()
        self.raised = []
        self.warned = []
        self.unraisable = []
        self.durations = {}
        self._fresh = 0

    # ------------------------------------------------------------ helpers

    def connect(self, path=None, factory=None, **kwargs):
        kwargs.setdefault("isolation_level", None)
        kwargs.setdefault("timeout", TIMEOUT)
        conn = sqlite3.connect(path or self.db, factory=factory or self.mod.WalSafeConnection,
                               **kwargs)
        self.opened.append(conn)
        return conn

    def _record_unraisable(self, unraisable):
        self.unraisable.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")

    def _step(self, step):
        started = time.monotonic()
        try:
            step()
        except EXPECTED as exc:
            self.raised.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
        self.durations[step.__name__] = time.monotonic() - started

    def _expect(self, errors, call, *args, **kwargs):
        """A call that must fail with one of `errors` (bad input), or with
        what any call may raise when something fails inside."""
        try:
            call(*args, **kwargs)
        except errors + EXPECTED:
            return
        raise AssertionError(f"{call!r}{args} did not raise {errors}")

    # -------------------------------------------------------------- steps

    def step_connect(self):
        if self.api is not None:
            conn = self.api.connect(self.db, isolation_level=None, timeout=TIMEOUT)
            self.opened.append(conn)
        else:
            conn = self.connect()
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20)])
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] >= 20
        conn.checkpoint()
        try:
            conn.checkpoint("Truncate", wait=False)     # mixed case; reads the busy timeout
        finally:
            # Failed or not, it must leave the busy timeout as it was.
            timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
            assert timeout == int(TIMEOUT * 1000), f"busy timeout {timeout} after checkpoint"
        conn.last_checkpoint
        conn.execute("INSERT INTO t VALUES (-1)")
        conn.close()

    def step_factory(self):
        conn = self.connect(check_same_thread=False)
        conn.execute("INSERT INTO t VALUES (1)")
        conn.checkpoint_on_close = "full"
        conn.close()
        reader = self.connect()                     # wrote nothing: nothing to checkpoint
        reader.execute("SELECT count(*) FROM t").fetchone()
        reader.close()

    def step_guard_options(self):
        conn = self.api.connect(self.db, guard_wal=False, persist_wal=True, refuse_stale=False,
                                timeout=TIMEOUT)
        self.opened.append(conn)
        conn.execute("INSERT INTO t VALUES (2)")
        self.mod._guard(conn, True)
        self.mod._guard(conn, False)
        conn.close()

    def step_new_database(self):
        # An empty file switched to WAL keeps its first pages in the -wal.
        self._fresh += 1
        path = os.path.join(self.scratch, f"fresh-{self._fresh}.db")
        try:
            conn = self.api.connect(path, refuse_stale=False, isolation_level=None,
                                    timeout=TIMEOUT)
            self.opened.append(conn)
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.close()
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    os.unlink(path + suffix)
                except FileNotFoundError:
                    pass

    def step_transactions(self):
        conn = self.connect()
        conn.execute("INSERT INTO t VALUES (3)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (4)")
        self._expect((sqlite3.OperationalError,), conn.checkpoint)   # locked
        conn.close()                                # discards the transaction
        # A read transaction open at close: the checkpoint meets it.
        conn = self.connect()
        conn.execute("INSERT INTO t VALUES (5)")
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM t").fetchall()
        conn.close()

    def step_stepping_cursor(self):
        conn = self.connect()
        conn.checkpoint_threshold = 0               # the close checkpoints: resets the cursor
        conn.execute("INSERT INTO t VALUES (6)")
        cursor = conn.execute("SELECT x FROM t")
        cursor.fetchone()                           # still stepping
        conn.close()
        del cursor

    def step_read_only(self):
        conn = self.connect(f"file:{self.db}?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM t").fetchone()
        conn.checkpoint_on_close = "full"
        conn.close()

    def step_bad_input(self):
        conn = self.connect()
        self._expect((ValueError,), conn.checkpoint, "sometimes")
        self._expect((TypeError,), conn.checkpoint, block=True)
        conn.checkpoint_on_close = "bogus"
        try:
            self._expect((ValueError,), conn.close)     # closes, then raises
        finally:
            conn.checkpoint_on_close = "passive"        # for finish(), if still open
        if not _is_open(conn):                          # unless the close itself failed
            self._expect((sqlite3.ProgrammingError,), conn.checkpoint)
            if self.native:
                self._expect((sqlite3.ProgrammingError,), self.mod.set_persist_wal, conn, True)
        uninitialised = self.mod.WalSafeConnection.__new__(self.mod.WalSafeConnection)
        self._expect((sqlite3.ProgrammingError,), uninitialised.checkpoint)
        abstract = abc.ABCMeta("Abstract", (self.mod.WalSafeConnection,),
                               {"f": abc.abstractmethod(lambda self: None)})
        self._expect((TypeError,), sqlite3.connect, self.db, factory=abstract)
        self._expect((TypeError,), self.mod._guard, 42, True)
        self._expect((TypeError,), self.mod._guard, conn)

    def step_bad_threshold(self):
        conn = self.connect()
        conn.execute("INSERT INTO t VALUES (7)")
        conn.checkpoint_threshold = "many"
        try:
            conn.close()        # checkpoints as with 0, closes, then raises ValueError
        except ValueError:      # (not when a failure left no database path to check)
            pass
        finally:
            conn.checkpoint_threshold = 0               # for finish(), if still open

    def step_other_thread(self):
        # Opened in a thread without a Python frame (the opener is then
        # "<unknown>"), used and collected from this one.
        holder = collections.deque()
        _without_frames(holder.extend, map(self.mod.WalSafeConnection, [self.db], [TIMEOUT]))
        if not holder:
            return                                  # its open failed (an unraisable)
        conn = holder.pop()
        self._expect((sqlite3.ProgrammingError,), conn.close)
        self._expect((sqlite3.ProgrammingError,), conn.checkpoint)
        self.mod._live_connections()
        del conn
        gc.collect()                                # finalized from the wrong thread

    def step_contention(self):
        # close() from another thread while checkpoint() holds the
        # connection: the closer waits its turn.
        conn = self.connect(check_same_thread=False)
        conn.execute("INSERT INTO t VALUES (7)")
        closer = threading.Thread(target=self._close_quietly, args=(conn,))
        waiting = "connection.lock.nanosleep"
        hits = getattr(self.mod, "_fault_hits", None)

        def trace(statement):
            if statement == "PRAGMA busy_timeout" and hits and closer.ident is None:
                before = hits()[waiting]
                closer.start()
                _wait_for(lambda: hits()[waiting] > before)

        conn.set_trace_callback(trace)
        try:
            conn.checkpoint("full", wait=False)
        finally:
            if closer.ident is not None:
                closer.join()
        if closer.ident is None:                    # nothing traced: close it here
            conn.close()

    def _close_quietly(self, conn):
        try:
            conn.close()
        except EXPECTED as exc:
            self.raised.append(f"closer: {type(exc).__name__}: {exc}")

    def step_garbage(self):
        conn = sqlite3.connect(self.db, factory=self.mod.WalSafeConnection, isolation_level=None,
                               timeout=TIMEOUT)
        try:
            conn.execute("INSERT INTO t VALUES (8)")
        finally:
            del conn
            gc.collect()

    def step_bound(self):
        class Bound(self.mod.WalSafeConnection):
            max_live_per_database = 2

        held = [self.connect(factory=Bound) for _ in range(2)]
        held.append(self.connect(factory=Bound))    # over the bound: collect, warn
        held.append(self.connect(factory=Bound))    # still over: no second warning
        for conn in held[1:]:
            conn.close()
        again = self.connect(factory=Bound)         # under the bound again: forgets
        held[0].close()
        again.close()

    def step_introspection(self):
        mod = self.mod
        mod.stats()
        mod.sqlite_api()
        mod._bound_functions()
        mod._start_test()
        mod._opened()
        mod._track(True)
        try:
            conn = self.connect()
            conn.execute("SELECT count(*) FROM t").fetchone()
            mod._live_connections()
            mod._live_connections(0)
            mod._opener_here()
            # Opened by a pool's worker: the report passes over its
            # standard-library frames to name an opener.  (The pool keeps a
            # failed open's exception, where a thread would print it.)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(self.connect, check_same_thread=False).exception()
            mod._live_connections()
            mod._set_audit_handler(lambda event, args: None, names={"nonexistent"})
            try:
                sys.audit("open", "/nonexistent", "r", 0)   # a known name: passed on
                sys.audit("os.listdir", ".")        # filtered out in C
            finally:
                mod._set_audit_handler(None)
            # A database the handler settled: noted in C, without the handler
            # (which a failed lookup or note falls back to).
            note = types.SimpleNamespace()
            mod._set_audit_handler(lambda event, args: None, seen={self.db: self.db}, note=note)
            try:
                sys.audit("sqlite3.connect", self.db)
            finally:
                mod._set_audit_handler(None)
            self.step_garbage()                     # logged while tracked
            mod._track(True)
        finally:
            # Left on, every later finalization would grow the log: a leak
            # the next points' checks would be blamed for.
            mod._track(False)
        if self.api is not None:
            self.api.live_connections()
            self.api.live_connections(self.db)
            self.api.stats()
            self.api.sqlite_api()
            self.api.sqlite_fds(self.db).report()
            self.api.holders(self.db)
            self.api.open_fds()
            self.api.mapped_files()
            try:
                self.api.open_fds(os.getppid())     # another process: fstatat
            except PermissionError:
                pass
            nobody = _pid_nobody_has()
            self._expect((ProcessLookupError,), self.api.open_fds, nobody)
            self._expect((ProcessLookupError,), self.api.mapped_files, nobody)
            self._expect((ProcessLookupError,), mod._scan_fd_locks, nobody, 0)
            self._expect((ValueError,), mod._scan_maps, -5)
            mod._scan_fds(os.getpid(), links=False)
            _crowded_scan(mod)
            mod._scan_fd_locks(os.getpid(), 1 << 20)      # not open: no locks
            mod._scan_locks()
        conn.close()

    def step_at_exit(self):
        # What atexit does: checkpoint and close what is still open; one
        # connection belongs to a thread that is still running.
        if mod_has_others(self):
            return
        release = threading.Event()
        opened = threading.Event()

        def owner():
            own = None
            try:
                own = sqlite3.connect(self.db, factory=self.mod.WalSafeConnection,
                                      isolation_level=None, timeout=TIMEOUT)
                own.execute("INSERT INTO t VALUES (9)")
            except EXPECTED as exc:
                self.raised.append(f"owner: {type(exc).__name__}: {exc}")
            opened.set()
            if own is not None:
                release.wait(DEADLINE)
                self._close_quietly(own)

        thread = threading.Thread(target=owner)
        thread.start()
        try:
            opened.wait(DEADLINE)
            mine = sqlite3.connect(self.db, factory=self.mod.WalSafeConnection,
                                   isolation_level=None, timeout=TIMEOUT)
            try:
                mine.execute("INSERT INTO t VALUES (10)")
                self.mod._close_all_at_exit()
            finally:
                del mine
        finally:
            release.set()
            thread.join()

    # SQL mode only: a subclass whose total_changes fails, as a broken
    # subclass or a MemoryError would make it.
    def step_broken_subclass(self):
        class Broken(self.mod.WalSafeConnection):
            broken = False

            @property
            def total_changes(self):
                if self.broken:
                    raise RuntimeError("broken on purpose")
                return super().total_changes

        conn = self.connect(factory=Broken)
        conn.execute("INSERT INTO t VALUES (11)")
        conn.broken = True
        conn.close()                                # warns, closes

    # ---------------------------------------------------------------- run

    def steps(self):
        both = [self.step_connect, self.step_factory, self.step_transactions,
                self.step_stepping_cursor, self.step_read_only, self.step_bad_input,
                self.step_bad_threshold,
                self.step_other_thread, self.step_contention, self.step_garbage,
                self.step_bound, self.step_introspection, self.step_at_exit]
        if self.api is not None:
            both[2:2] = [self.step_guard_options, self.step_new_database]
        if not self.native:
            both.append(self.step_broken_subclass)
        return both

    def run(self, only=None):
        """Every step, or those named in `only`; returns self."""
        hook = sys.unraisablehook
        sys.unraisablehook = self._record_unraisable
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for step in self.steps():
                    if only is None or step.__name__ in only:
                        self._step(step)
                gc.collect()
                self.warned.extend(f"{w.category.__name__}: {w.message}" for w in caught)
                del caught[:]
        finally:
            sys.unraisablehook = hook
        return self

    def finish(self):
        """Close every connection the run opened (with nothing armed, this
        must succeed) and forget them."""
        hook = sys.unraisablehook
        sys.unraisablehook = self._record_unraisable
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                for conn in self.opened:
                    conn.close()
                self.opened.clear()
                gc.collect()
        finally:
            sys.unraisablehook = hook


def mod_has_others(workload):
    """Whether connections the workload does not own are open in this
    module instance (then the at-exit step would close them too)."""
    mine = sum(1 for conn in workload.opened if _is_open(conn))
    return workload.mod.stats()["live"] > mine


def _is_open(conn):
    try:
        conn.total_changes
    except sqlite3.ProgrammingError:
        return False
    return True


# ------------------------------------------------------ shared by the checks


def fd_table():
    """{fd: what it names} for this process (the listing's own left out)."""
    table = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass                    # the listing's own descriptor, closed by now
    return table


def leak_probes(mod):
    """Reference counts of long-lived objects the extension increfs: a
    leaked reference to any of them shows here, not in allocated blocks."""
    objects = [mod.WalSafeConnection, mod.CheckpointResult, sqlite3.Connection, sqlite3.Error,
               sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.InternalError]
    return [sys.getrefcount(obj) for obj in objects]


def fill_memory_error_cache():
    """CPython keeps up to 16 freed MemoryError objects for reuse: fill
    that cache first, or it looks like a leak of the first few."""
    errors = [MemoryError() for _ in range(32)]
    del errors


class _Resync(ResourceWarning):
    """Issued only to make the warnings machinery reread its filters."""


def settle():
    """Collect garbage after emptying two CPython caches that would look
    like leaks: the type attribute cache keeps a reference to the name of
    each of up to 4096 recent lookups (PyObject_GetAttrString makes a new
    string per call), and the C half of warnings keeps the filter list of
    the last warning, which after catch_warnings() is a discarded copy."""
    try:
        warnings.warn("resync", _Resync)    # ignored by default, raised under -W error
    except _Resync:
        pass
    # 3.13 added _clear_internal_caches() (the type cache among them) and
    # 3.14 warns that _clear_type_cache() is deprecated.
    clear_caches = getattr(sys, "_clear_internal_caches", None) or sys._clear_type_cache
    clear_caches()
    # Twice: what a finalizer or weakref callback of the first releases
    # would otherwise be freed inside the next measurement.
    gc.collect()
    gc.collect()


def allocation_state(mod):
    """What a leak changes: allocated blocks, objects the collector tracks
    (containers: connections, cursors, tuples, exceptions, types), and the
    reference counts of leak_probes()."""
    settle()
    return sys.getallocatedblocks(), len(gc.get_objects()), leak_probes(mod)


# The routes a fresh instance can be made to take (HERMES_KANBAN_NATIVE_MODE):
# the default (symbols first), SQL mode, and the extension-API route alone.
MODES = (None, "sql", "extension-api")


# ------------------------------------------- initialisation, in a subprocess


def _release(instance):
    # os.register_at_fork has no way back: the instance lives on in that
    # hook, in every cycle alike, so the leak check compares with a clean one.
    atexit.unregister(instance._close_all_at_exit)


def _use(instance, db):
    """An instance that initialised must work: open, write, close."""
    conn = sqlite3.connect(":memory:", factory=instance.WalSafeConnection)
    conn.execute("SELECT 1").fetchone()
    conn.close()
    conn = sqlite3.connect(db, factory=instance.WalSafeConnection, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    instance.stats()
    instance.sqlite_api()


def _init_cycle(native, name, times, mode, db):
    """One initialisation of a fresh instance with `name` armed: what came
    of it, and how often `name` was hit."""
    before = native._fault_hits()[name]
    for prerequisite in PREREQUISITES.get(name, ()):
        native._fault_arm(prerequisite)
    native._fault_arm(name, 1, times)
    instance = None
    try:
        instance = exec_instance(native.__file__, mode)
        outcome = "imported"
    except EXPECTED + (ImportError,) as exc:    # what a failing import may raise
        outcome = type(exc).__name__
    finally:
        native._fault_disarm()
    hit = native._fault_hits()[name] - before
    if instance is not None:
        outcome += f" ({instance.sqlite_api()['route']} route)"
        _use(instance, db)
        _release(instance)
    return outcome, hit


def growth(mod, cycle, repeat):
    """(blocks, tracked objects, [reference counts]) that `repeat` calls of
    `cycle` left behind, net of what measuring itself leaves."""
    def measure(run):
        fill_memory_error_cache()
        before = allocation_state(mod)
        for _ in range(repeat):
            run()
        after = allocation_state(mod)
        return (after[0] - before[0], after[1] - before[1],
                [b - a for a, b in zip(before[2], after[2])])

    baseline = measure(lambda: None)
    result = measure(cycle)
    return (result[0] - baseline[0], result[1] - baseline[1],
            [r - b for r, b in zip(result[2], baseline[2])])


def init_faults(repeat, windows, warm_up=20):
    """Every point the module's initialisation reaches (natively or in SQL
    mode), failed at its first and at every hit; a report per point."""
    import hermes_kanban_native._native as native

    scratch = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        db = os.path.join(scratch, "init.db")
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.close()

        reached = {}
        for mode in MODES:
            before = native._fault_hits()
            _release(exec_instance(native.__file__, mode))
            after = native._fault_hits()
            for name in after:
                if after[name] > before[name]:
                    reached.setdefault(name, mode)
        targets = dict(reached)
        compiled = set(native._fault_points())
        for target, prerequisites in PREREQUISITES.items():
            if prerequisites[0] in reached and target in compiled:
                targets.setdefault(target, reached[prerequisites[0]])

        # CPython fills caches of its own the first times an extension
        # initialises: warm them first.
        for _ in range(warm_up):
            for mode in MODES:
                _release(exec_instance(native.__file__, mode))

        routes = {}

        def clean_cycle(mode):
            instance = exec_instance(native.__file__, mode)
            routes[mode] = instance.sqlite_api()["route"]
            _use(instance, db)
            _release(instance)

        clean = {mode: growth(native, lambda mode=mode: clean_cycle(mode), repeat)
                 for mode in MODES}
        points = {}
        for name, mode in targets.items():
            report = {"reached_unarmed": name in reached, "cycles": 0, "problems": [],
                      "outcomes": []}
            for times in (1, ALWAYS):
                print(f"{name} times={times}", file=sys.stderr, flush=True)
                fds = fd_table()
                outcome, hit = _init_cycle(native, name, times, mode, db)
                for _ in range(2):          # this path's own first-time costs
                    _init_cycle(native, name, times, mode, db)
                if hit == 0:
                    report["problems"].append(f"times={times}: not reached")
                # A failed initialisation must leave nothing; one that went on
                # no more than a clean one that took the same route (a failed
                # route leads to the next one, or to SQL mode); each lives on
                # in os.register_at_fork.
                kept = outcome.startswith("imported") or name in KEPT_ALIVE
                ended = next((m for m in MODES if outcome.endswith(f"({routes[m]} route)")),
                             mode)
                allowed = clean[ended] if kept else (0, 0, [0] * 8)
                if name in KEPT_ALIVE:      # and atexit's record of it: a
                    # block per cycle, from 3.14 a tracked (func, args,
                    # kwargs) tuple
                    tuples = repeat if sys.version_info >= (3, 14) else 0
                    allowed = (allowed[0] + repeat, allowed[1] + tuples) + allowed[2:]
                problems = []
                for _ in range(windows):    # a leak grows in every window
                    blocks, objects, refs = growth(
                        native, lambda: _init_cycle(native, name, times, mode, db), repeat)
                    problems = []
                    if blocks > allowed[0] + repeat // 2 or objects > allowed[1]:
                        problems.append(
                            f"times={times}: {blocks} blocks and {objects} tracked objects "
                            f"more after {repeat} cycles ({outcome}; a clean import adds "
                            f"{clean[ended][0]} and {clean[ended][1]})")
                    if any(grown > limit for grown, limit in zip(refs, allowed[2])):
                        problems.append(
                            f"times={times}: reference counts grew by {refs} ({outcome})")
                    if not problems:
                        break
                report["problems"].extend(problems)
                if fd_table() != fds:
                    report["problems"].append(f"times={times}: descriptors left open")
                report["outcomes"].append(outcome)
                report["cycles"] += 1
            points[name] = report
        return {"points": points, "clean": {str(mode): value for mode, value in clean.items()}}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
