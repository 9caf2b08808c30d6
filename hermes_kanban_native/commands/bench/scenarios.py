"""Scenarios 1 to 7: the contenders, the timed user code, the databases
they run on, and one function per scenario returning its results."""
from __future__ import annotations

import contextlib
import gc
import os
import resource
import shutil
import sqlite3
import subprocess
import warnings

from ... import ClosingWalSafeConnection, WalSafeConnection, sqlite_fds
from ..databases import make_wal_db
from ..reference import ReaderProcess, TruncatingConnection
from . import plugin
from .measure import _block_ratios, _gc_paused, _interleave, _results, _timed_batch

TIMEOUT = 120               # hermes' busy timeout, seconds
CAPPED_TIMEOUT = 2.0        # the Python subclass in scenario 3 (it waits this long)
EXTRA_FDS = 1000            # scenario 6
GC_CONNECTIONS = 100        # scenario 7


class TruncatingWalSafeConnection(WalSafeConnection):
    """WalSafeConnection with the TRUNCATE policy (never waits either)."""

    checkpoint_on_close = "truncate"


# name -> (factory, label) for the connection contenders, in table order.
CONTENDERS = {
    "plain": (sqlite3.Connection, "sqlite3.Connection"),
    "python_truncate": (TruncatingConnection, "Python subclass, TRUNCATE"),
    "walsafe": (WalSafeConnection, "WalSafeConnection (passive)"),
    "walsafe_truncate": (TruncatingWalSafeConnection, "WalSafeConnection truncate"),
}


class EmptyPythonSubclass(sqlite3.Connection):
    """A Python subclass with no code of its own: what being a subclass of
    sqlite3.Connection costs before any bookkeeping."""


class InitPythonSubclass(sqlite3.Connection):
    """A Python subclass whose __init__ only calls the base's: about a
    microsecond more per open, all of it with the GIL held, which under
    threads weighs several times that (docs/performance.md, "Under
    threads")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


# Contenders that only some scenarios run, as a floor for the others.
FLOOR_CONTENDERS = {
    "python_empty": (EmptyPythonSubclass, "Python subclass, empty"),
    "python_init": (InitPythonSubclass, "Python subclass, __init__ only"),
}

# The timed operations are compiled under a file name outside this package,
# so that WalSafeConnection's opener capture stops at their frame as it
# would at the caller's frame in hermes (it skips frames of this package).
_USER_CODE = '''
import sqlite3
from time import perf_counter_ns

def make_tick(path, factory, timeout, sql):
    """A gateway tick: connect, one statement, close."""
    def tick():
        conn = sqlite3.connect(path, factory=factory, isolation_level=None, timeout=timeout)
        conn.execute(sql).fetchall()
        conn.close()
    return tick

def make_timed_close(path, factory, timeout):
    """ns spent in close() after writing one row."""
    def timed_close():
        conn = sqlite3.connect(path, factory=factory, isolation_level=None, timeout=timeout)
        conn.execute("INSERT INTO t (x) VALUES ('blocked')")
        start = perf_counter_ns()
        conn.close()
        return perf_counter_ns() - start, conn
    return timed_close

def make_connect_close(path, factory, timeout):
    def connect_close():
        sqlite3.connect(path, factory=factory, isolation_level=None, timeout=timeout).close()
    return connect_close

def leave_unclosed(path, factory, timeout, count):
    """Open `count` connections the way a gateway tick did: in a with block,
    never closed, references dropped."""
    for _ in range(count):
        with sqlite3.connect(path, factory=factory, isolation_level=None,
                             timeout=timeout) as conn:
            conn.execute("INSERT INTO t (x) VALUES ('gc')")
    del conn
'''
_user = {}
exec(compile(_USER_CODE, "<hkn-bench user code>", "exec"), _user)


def _labels(names):
    known = {**CONTENDERS, **FLOOR_CONTENDERS}
    return {name: known[name][1] for name in names}



# ------------------------------------------------------------ databases

def _make_db(path):
    """A scenario's database: 100 rows in t, already in WAL mode."""
    return make_wal_db(path, [(None, "row")] * 100, table="t (id INTEGER PRIMARY KEY, x TEXT)")


def _holder(path):
    """The gateway's long-lived connection.  hermes opens every connection
    through one connect() with one factory, so once it adopts
    WalSafeConnection its long-lived connection is one too (and holds the
    WAL guard that the short connections then only re-lock)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=TIMEOUT,
                           factory=WalSafeConnection)
    conn.execute("SELECT count(*) FROM t").fetchone()
    return conn


def _truncate_wal(holder):
    holder.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


def _wal_size(path):
    try:
        return os.path.getsize(path + "-wal")
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------ scenarios

def scenario_read_tick(tmp, plan, log):
    path = _make_db(os.path.join(tmp, "read.db"))
    holder = _holder(path)
    try:
        read = "SELECT count(*) FROM t"
        samplers = {name: _timed_batch(_user["make_tick"](path, factory, TIMEOUT, read))
                    for name, (factory, _) in CONTENDERS.items()}
        raw = _interleave(samplers, plan.read_rounds, plan.warmup)
    finally:
        holder.close()
    return {"title": "read tick: connect, one SELECT, close",
            "unit": "per tick",
            "contenders": _results(raw, "plain", labels=_labels(raw))}


def scenario_write_tick(tmp, plan, log):
    path = _make_db(os.path.join(tmp, "write.db"))
    holder = _holder(path)
    try:
        write = "INSERT INTO t (x) VALUES ('tick')"
        ticks = {name: _user["make_tick"](path, factory, TIMEOUT, write)
                 for name, (factory, _) in CONTENDERS.items()}
        raw = _interleave({name: _timed_batch(fn) for name, fn in ticks.items()},
                          plan.write_rounds, plan.warmup // 5)
        # The WAL each contender leaves: its ticks alone, from an empty WAL.
        wal = {}
        for name, tick in ticks.items():
            _truncate_wal(holder)
            for _ in range(plan.wal_ticks):
                tick()
            wal[name] = _wal_size(path)
    finally:
        holder.close()
    rows = _results(raw, "plain", labels=_labels(raw))
    for name, row in rows.items():
        row["ticks_per_s"] = 1e6 / row["median_us"]
        row["wal_bytes_after"] = wal[name]
        # Throughput relative to the Python subclass (> 1: faster).
        row["speedup_vs_python"] = rows["python_truncate"]["median_us"] / row["median_us"]
        blocks = _block_ratios(raw["python_truncate"], raw[name])
        row["speedup_vs_python_blocks"] = blocks
    return {"title": "write tick: connect, one INSERT (autocommit), close",
            "unit": "per tick",
            "wal_note": f"WAL file size after {plan.wal_ticks} ticks of that contender "
                        f"alone, starting from an empty WAL",
            "contenders": rows}


def scenario_close_with_reader(tmp, plan, log):
    path = _make_db(os.path.join(tmp, "reader.db"))
    holder = _holder(path)
    reader = ReaderProcess(path)
    busy = {"walsafe": 0, "walsafe_truncate": 0}
    try:
        samplers = {}
        for name, (factory, _) in CONTENDERS.items():
            timeout = CAPPED_TIMEOUT if name == "python_truncate" else TIMEOUT
            timed = _user["make_timed_close"](path, factory, timeout)

            def sample(name=name, timed=timed):
                elapsed, conn = timed()
                result = getattr(conn, "last_checkpoint", None)
                if result is not None and result.busy:
                    busy[name] += 1
                return elapsed
            samplers[name] = sample
        log(f"  the Python subclass runs {plan.capped_closes} close(s) with "
            f"timeout={CAPPED_TIMEOUT:g} s")
        raw = _interleave(samplers, plan.close_rounds, plan.warmup,
                          limits={"python_truncate": plan.capped_closes})
    finally:
        reader.stop()
        holder.close()
    notes = {"python_truncate":
             f"measured with timeout={CAPPED_TIMEOUT:g} s ({plan.capped_closes} close(s)); "
             f"it waits out the whole busy timeout, so with hermes' timeout={TIMEOUT} "
             f"each close() blocks ~{TIMEOUT} s"}
    rows = _results(raw, "plain", labels=_labels(raw), notes=notes)
    for name, count in busy.items():
        rows[name]["checkpoints_busy"] = count
    return {"title": "close() with a read transaction open in another process",
            "unit": "per close()",
            "contenders": rows}


def scenario_explicit_checkpoint(tmp, plan, log):
    path = _make_db(os.path.join(tmp, "checkpoint.db"))
    holder = _holder(path)
    plain = sqlite3.connect(path, isolation_level=None, timeout=TIMEOUT)
    native = sqlite3.connect(path, factory=WalSafeConnection, isolation_level=None,
                             timeout=TIMEOUT)
    try:
        # A connection enters WAL mode at its first read; before that a
        # checkpoint reports -1 frames and does nothing.
        for conn in (plain, native):
            conn.execute("SELECT count(*) FROM t").fetchone()
        _truncate_wal(holder)
        frames = native.checkpoint().log_frames
        samplers = {
            "pragma": _timed_batch(
                lambda: plain.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone(),
                plan.ckpt_batch),
            "native": _timed_batch(native.checkpoint, plan.ckpt_batch),
        }
        raw = _interleave(samplers, plan.ckpt_rounds, plan.warmup)
    finally:
        native.close()
        plain.close()
        holder.close()
    labels = {"pragma": 'execute("PRAGMA wal_checkpoint(PASSIVE)")',
              "native": "WalSafeConnection.checkpoint()"}
    return {"title": f"one explicit PASSIVE checkpoint on an empty WAL ({frames} frames)",
            "unit": f"per call (batches of {plan.ckpt_batch})",
            "contenders": _results(raw, "pragma", p99=False, labels=labels)}


def scenario_connect_overhead(tmp, plan, log):
    path = _make_db(os.path.join(tmp, "connect.db"))
    holder = _holder(path)
    variants = {}
    try:
        for variant, target in ((":memory:", ":memory:"), ("file", path)):
            samplers = {name: _timed_batch(_user["make_connect_close"](target, factory, TIMEOUT),
                                           plan.connect_batch)
                        for name, (factory, _) in CONTENDERS.items()}
            raw = _interleave(samplers, plan.connect_rounds, plan.warmup)
            variants[variant] = _results(raw, "plain", p99=False, labels=_labels(raw))
    finally:
        holder.close()
    return {"title": "connect + close without work (the type's own overhead)",
            "unit": f"per connect+close (batches of {plan.connect_batch})",
            "variants": variants}


# The reference scan in plain Python (benchmark only; the package's scanner
# is csrc/linux/fdscan.c).  Per fd: listdir, readlink, stat; classified by
# inode against the database and its sidecars.
def _python_fd_scan(target):
    found = {"db": 0, "wal": 0, "shm": 0, "journal": 0}
    for name in os.listdir("/proc/self/fd"):
        link_path = f"/proc/self/fd/{name}"
        try:
            os.readlink(link_path)
            st = os.stat(link_path)
        except OSError:
            continue            # the listdir's own fd, closed meanwhile
        kind = target.get((st.st_dev, st.st_ino))
        if kind is not None:
            found[kind] += 1
    return found


def _python_full_scan(target, db_identity):
    """The fd scan plus what sqlite_fds also reads: -shm mappings and the
    POSIX locks on the database inode."""
    found = _python_fd_scan(target)
    shm = {identity for identity, kind in target.items() if kind == "shm"}
    maps = 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            if len(fields) < 6 or fields[4] == "0":
                continue
            major, minor = fields[3].split(":")
            identity = (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))
            if identity in shm:
                maps += 1
    locks = 0
    pid = os.getpid()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields:
                continue
            major, minor, ino = fields[5].split(":")
            if (fields[1] == "POSIX" and int(fields[4]) == pid
                    and (os.makedev(int(major, 16), int(minor, 16)), int(ino)) == db_identity):
                locks += 1
    found["shm_maps"] = maps
    found["locks"] = locks
    return found


def _raise_fd_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return soft, hard


def scenario_fd_scan(tmp, plan, log):
    path = _make_db(os.path.join(tmp, "scan.db"))
    holder = _holder(path)
    extra = []
    limits = _raise_fd_limit(EXTRA_FDS + 256)
    try:
        while len(extra) < EXTRA_FDS:
            extra.append(os.open(os.devnull, os.O_RDONLY))
        nfds = len(os.listdir("/proc/self/fd"))
        target = {}
        for kind, suffix in (("db", ""), ("wal", "-wal"), ("shm", "-shm"), ("journal", "-journal")):
            with contextlib.suppress(OSError):
                st = os.stat(path + suffix)
                target[(st.st_dev, st.st_ino)] = kind
        st = os.stat(path)
        db_identity = (st.st_dev, st.st_ino)
        native = sqlite_fds(path)
        reference = _python_full_scan(target, db_identity)
        agree = (reference["db"], reference["wal"], reference["shm"], reference["shm_maps"],
                 reference["locks"]) == (len(native.db), len(native.wal), len(native.shm),
                                         len(native.shm_maps), len(native.locks))
        samplers = {
            "native": _timed_batch(lambda: sqlite_fds(path)),
            "python_fd_scan": _timed_batch(lambda: _python_fd_scan(target)),
            "python_full": _timed_batch(lambda: _python_full_scan(target, db_identity)),
        }
        lsof = shutil.which("lsof")
        lsof_note = None
        if lsof:
            command = [lsof, "-n", "-P", "-p", str(os.getpid())]
            samplers["lsof"] = _timed_batch(
                lambda: subprocess.run(command, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, check=False))
        else:
            lsof_note = "lsof is not installed: skipped"
            log(f"  {lsof_note}")
        # lsof is ~100x slower: one lsof per round, the scans repeated.
        repeated = {name: (lambda fn=fn: [fn() for _ in range(plan.scan_repeat)])
                    for name, fn in samplers.items() if name != "lsof"}
        raw = {name: [] for name in samplers}
        rounds = _interleave({**repeated, **({"lsof": samplers["lsof"]} if lsof else {})},
                             plan.scan_rounds, 2)
        for name, values in rounds.items():
            raw[name] = ([v for group in values for v in group]
                         if name in repeated else values)
    finally:
        for fd in extra:
            os.close(fd)
        holder.close()
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    labels = {"native": "hkn.sqlite_fds()",
              "python_fd_scan": "Python: listdir+readlink+stat per fd",
              "python_full": "Python: the same + maps + /proc/locks",
              "lsof": "lsof -n -P -p PID"}
    rows = _results(raw, "native", labels=labels)
    return {"title": f"sqlite_fds() in a process holding {nfds} fds",
            "unit": "per scan; ratio = time / native",
            "fds_open": nfds,
            "python_agrees_with_native": agree,
            "lsof_note": lsof_note,
            "contenders": rows}


def scenario_gc_connections(tmp, plan, log):
    contenders = dict(CONTENDERS)
    contenders["closing_walsafe"] = (ClosingWalSafeConnection,
                                     "ClosingWalSafeConnection (with closes)")
    rows = {}
    for name, (factory, label) in contenders.items():
        # A fresh database each: parked db fds are per inode and reused.
        path = _make_db(os.path.join(tmp, f"gc-{name}.db"))
        holder = _holder(path)
        try:
            base = sqlite_fds(path)
            with warnings.catch_warnings():
                # "ignore", not record: a recorded ResourceWarning keeps its
                # connection alive on 3.13.
                warnings.simplefilter("ignore", ResourceWarning)
                with _gc_paused():
                    _user["leave_unclosed"](path, factory, TIMEOUT, GC_CONNECTIONS)
                    before = sqlite_fds(path)
                    gc.collect()
                after = sqlite_fds(path)
        finally:
            holder.close()
        db_before = len(before.db) - len(base.db)
        wal_before = len(before.wal) - len(base.wal)
        db_after = len(after.db) - len(base.db)
        wal_after = len(after.wal) - len(base.wal)
        rows[name] = {
            "label": label,
            "db_fds_before_gc": db_before,
            "wal_fds_before_gc": wal_before,
            "db_fds_after_gc": db_after,
            "wal_fds_after_gc": wal_after,
            "fds_left": db_after + wal_after,
            # What SQLite parked after close (section 1 of the notes): db
            # fds beyond those of connections still open.  Counted from the
            # wal fds, one per open connection.
            "parked_db_fds_after_gc": db_after - wal_after,
            "open_connections_after_gc": wal_after,
        }
    return {"title": f"{GC_CONNECTIONS} connections opened in `with` blocks, never closed, "
                     f"then gc.collect()",
            "unit": "fds on the database beyond the long-lived connection's",
            "contenders": rows}


SCENARIOS = (
    ("read_tick", scenario_read_tick),
    ("write_tick", scenario_write_tick),
    ("close_with_reader", scenario_close_with_reader),
    ("explicit_checkpoint", scenario_explicit_checkpoint),
    ("connect_overhead", scenario_connect_overhead),
    ("fd_scan", scenario_fd_scan),
    ("gc_connections", scenario_gc_connections),
    ("plugin_overhead", plugin.scenario),
)


