"""The ``bench`` command: WalSafeConnection against plain sqlite3 and the
Python checkpoint-before-close subclass, on the gateway's access pattern.

    python -m hermes_kanban_native bench [--quick] [--json] [--output FILE] [--dir DIR]

Every scenario runs on a WAL database in a fresh temporary directory while a
long-lived connection to it stays open in this process, as in hermes'
gateway; short connections are opened as hermes does (``isolation_level=None,
timeout=120``).  Contenders run interleaved (A B C D, then B C D A, ...)
after a warm-up, each sample is timed with ``time.perf_counter_ns`` with the
cyclic GC disabled, and each result is the median (and p99 where latency
matters) with its ratio to plain ``sqlite3.Connection``.  Ratios also carry
the range of the same ratio over five consecutive blocks of rounds: a target
whose threshold lies inside that range is within noise, and says so.

The Python subclass is re-implemented here exactly as hermes had it; it is a
reference for this benchmark only.  So is the plain-Python /proc scan of
scenario 6.  Standard library only; ``lsof`` is used when installed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings

from .. import ClosingWalSafeConnection, WalSafeConnection, sqlite_api, sqlite_fds
from . import bench_plugin
from .reference import ReaderProcess, TruncatingConnection

SCHEMA_VERSION = 1
TIMEOUT = 120               # hermes' busy timeout, seconds
CAPPED_TIMEOUT = 2.0        # the Python subclass in scenario 3 (it waits this long)
EXTRA_FDS = 1000            # scenario 6
GC_CONNECTIONS = 100        # scenario 7
BLOCKS = 5                  # noise estimate: ratio per block of rounds


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

# The timed operations are compiled under a file name outside this package,
# so that WalSafeConnection's opener capture stops at their frame as it
# would at the caller's frame in hermes (it skips frames of this package).
_USER_CODE = '''
import sqlite3
from time import perf_counter_ns

def make_read_tick(path, factory, timeout):
    def read_tick():
        conn = sqlite3.connect(path, factory=factory, isolation_level=None, timeout=timeout)
        conn.execute("SELECT count(*) FROM t").fetchone()
        conn.close()
    return read_tick

def make_write_tick(path, factory, timeout):
    def write_tick():
        conn = sqlite3.connect(path, factory=factory, isolation_level=None, timeout=timeout)
        conn.execute("INSERT INTO t (x) VALUES ('tick')")
        conn.close()
    return write_tick

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

# ------------------------------------------------------------ parameters

class Plan:
    """Iteration counts: rounds are interleaved passes over all contenders."""

    def __init__(self, quick: bool):
        self.quick = quick

        def pick(full, fast):
            return fast if quick else full
        self.warmup = pick(50, 10)
        self.read_rounds = pick(5000, 400)
        self.write_rounds = pick(600, 40)
        self.wal_ticks = pick(100, 20)
        self.close_rounds = pick(1000, 80)
        self.capped_closes = pick(3, 1)
        self.ckpt_rounds, self.ckpt_batch = pick(1000, 150), 100
        self.connect_rounds, self.connect_batch = pick(1000, 150), 20
        self.scan_rounds, self.scan_repeat = pick(60, 8), 5
        self.plugin_files, self.plugin_per_file = pick(4, 2), pick(75, 25)
        self.plugin_rounds = pick(5, 1)


# ------------------------------------------------------------- measuring

@contextlib.contextmanager
def _gc_paused():
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _timed_batch(fn, batch=1):
    """A sampler: runs fn `batch` times, returns ns per call."""
    clock = time.perf_counter_ns

    def sample():
        start = clock()
        for _ in range(batch):
            fn()
        return (clock() - start) / batch
    return sample


def _interleave(samplers: dict, rounds: int, warmup: int, *, limits=None, collect_every=200):
    """Run each sampler once per round, rotating the order every round.
    `limits` caps the number of rounds of some contenders.  Returns
    {name: [ns, ...]} without the warm-up rounds."""
    names = list(samplers)
    limits = limits or {}
    out = {name: [] for name in names}
    with _gc_paused():
        for r in range(warmup + rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                cap = limits.get(name)
                if cap is not None and r - warmup >= cap:
                    continue
                if cap is not None and r < warmup:
                    continue    # capped contenders are too slow to warm up
                value = samplers[name]()
                if r >= warmup:
                    out[name].append(value)
            if r % collect_every == collect_every - 1:
                gc.collect()    # closed connections sit in cycles (3.11+)
    return out


def _percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def _median(values):
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _summary(samples, *, p99=True):
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_us": _median(ordered) / 1e3,
        "p99_us": _percentile(ordered, 0.99) / 1e3 if p99 else None,
        "min_us": ordered[0] / 1e3,
    }


def _block_medians(samples):
    """Median in each of BLOCKS consecutive blocks: [low, high] in us."""
    if len(samples) < BLOCKS * 5:
        return None
    size = len(samples) / BLOCKS
    medians = [_median(samples[round(i * size):round((i + 1) * size)]) / 1e3
               for i in range(BLOCKS)]
    return [min(medians), max(medians)]


def _block_ratios(samples, base_samples):
    """Ratio of medians in BLOCKS consecutive blocks: (low, high)."""
    if min(len(samples), len(base_samples)) < BLOCKS * 5:
        return None

    def block(values, i):
        # Both series are in time order: block i spans the same rounds.
        size = len(values) / BLOCKS
        return values[round(i * size):round((i + 1) * size)]
    ratios = [_median(block(samples, i)) / _median(block(base_samples, i))
              for i in range(BLOCKS)]
    return [min(ratios), max(ratios)]


def _results(raw: dict, base: str, *, p99=True, labels=None, notes=None):
    """Per-contender summaries with the ratio to `base`."""
    base_median = _median(raw[base])
    rows = {}
    for name, samples in raw.items():
        row = {"label": (labels or {}).get(name, name), **_summary(samples, p99=p99)}
        row["ratio"] = row["median_us"] * 1e3 / base_median
        row["ratio_blocks"] = _block_ratios(samples, raw[base])
        row["median_blocks_us"] = _block_medians(samples)
        if notes and name in notes:
            row["note"] = notes[name]
        rows[name] = row
    return rows


def _labels(names):
    return {name: CONTENDERS[name][1] for name in names}


# ------------------------------------------------------------ databases

def _make_db(path, rows=100):
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
        conn.executemany("INSERT INTO t (x) VALUES (?)", [("row",)] * rows)
    finally:
        conn.close()
    return path


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
        samplers = {name: _timed_batch(_user["make_read_tick"](path, factory, TIMEOUT))
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
        ticks = {name: _user["make_write_tick"](path, factory, TIMEOUT)
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
# is csrc/fdscan_linux.c).  Per fd: listdir, readlink, stat; classified by
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
    ("plugin_overhead", bench_plugin.scenario),
)


# ------------------------------------------------------------- targets

def _target(name, measured, passed, *, within_noise=False, note=None):
    return {"target": name, "measured": measured, "pass": bool(passed),
            "within_noise": within_noise, "note": note}


def _noise(row, threshold, key="ratio_blocks", invert=False):
    """Whether `threshold` lies inside the ratio's range over the blocks."""
    blocks = row.get(key)
    if not blocks:
        return False
    low, high = (1 / blocks[1], 1 / blocks[0]) if invert else blocks
    return low <= threshold <= high


def evaluate_targets(s: dict) -> list:
    targets = []
    close = s["close_with_reader"]["contenders"]
    for name in ("walsafe", "walsafe_truncate"):
        row = close[name]
        targets.append(_target(
            f"3: {row['label']} close() < 1 ms (median and p99)",
            f"median {row['median_us']:.0f} us, p99 {row['p99_us']:.0f} us",
            row["median_us"] < 1000 and row["p99_us"] < 1000))
    row = s["read_tick"]["contenders"]["walsafe"]
    targets.append(_target("1: read tick, default policy <= 1.05x plain",
                           f"{row['ratio']:.3f}x", row["ratio"] <= 1.05,
                           within_noise=_noise(row, 1.05)))
    write = s["write_tick"]["contenders"]
    speedup = write["python_truncate"]["median_us"] / write["walsafe"]["median_us"]
    targets.append(_target("2: write tick, default policy >= 1.5x the Python subclass's "
                           "throughput", f"{speedup:.2f}x", speedup >= 1.5,
                           within_noise=_noise(write["walsafe"], 1.5,
                                               key="speedup_vs_python_blocks")))
    row = s["explicit_checkpoint"]["contenders"]["native"]
    targets.append(_target("4: checkpoint() >= 1.5x faster than the PRAGMA",
                           f"{1 / row['ratio']:.2f}x", 1 / row["ratio"] >= 1.5,
                           within_noise=_noise(row, 1.5, invert=True)))
    for variant, rows in s["connect_overhead"]["variants"].items():
        row = rows["walsafe"]
        targets.append(_target(f"5: connect+close ({variant}) <= 1.05x plain",
                               f"{row['ratio']:.3f}x", row["ratio"] <= 1.05,
                               within_noise=_noise(row, 1.05)))
    scan = s["fd_scan"]["contenders"]
    native_us = scan["native"]["median_us"]
    targets.append(_target("6: sqlite_fds() < 2 ms", f"{native_us / 1000:.3f} ms",
                           native_us < 2000,
                           within_noise=_noise(scan["native"], 2000, key="median_blocks_us")))
    for name, factor in (("python_fd_scan", 3), ("python_full", 3), ("lsof", 20)):
        if name in scan:
            ratio = scan[name]["ratio"]
            targets.append(_target(f"6: >= {factor}x faster than {scan[name]['label']}",
                                   f"{ratio:.1f}x", ratio >= factor,
                                   within_noise=_noise(scan[name], factor)))
    row = s["gc_connections"]["contenders"]["walsafe"]
    targets.append(_target(
        "7: zero fds left for WalSafeConnection after gc",
        f"{row['fds_left']} ({row['parked_db_fds_after_gc']} parked db, "
        f"{row['wal_fds_after_gc']} wal, {row['open_connections_after_gc']} open)",
        row["fds_left"] == 0,
        note="parked db fds are SQLite's: bounded by peak concurrency while another "
             "connection of the process holds the database" if row["fds_left"] else None))
    suites = s["plugin_overhead"]["suites"]
    if "kanban" in suites:
        row = suites["kanban"]
        targets.append(_target("8: pytest --sqlite-fd-check on a kanban suite <= 1.10x "
                               "wall clock", f"{row['ratio']:.3f}x ({row['per_test_ratio']:.3f}x "
                               f"per test)", row["ratio"] <= 1.10))
        row = suites["no_sqlite"]
        targets.append(_target("8: --sqlite-fd-check on tests that open no connection "
                               "< 1.02x per test",
                               f"{row['per_test_ratio']:.3f}x ({row['overhead_per_test_us']:.0f} "
                               f"us per test; whole run {row['ratio']:.3f}x, "
                               f"{row['startup_overhead_ms']:.0f} ms once)",
                               row["per_test_ratio"] < 1.02))
        failures = sum(row["failures"] for row in suites.values())
        targets.append(_target("8: every generated test passes, with and without the option",
                               f"{failures} failed", failures == 0))
    return targets


# --------------------------------------------------------------- machine

def _cpu_model():
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _filesystem(path):
    """(type, mount point) of the mount holding `path`, from /proc/mounts."""
    real = os.path.realpath(path)
    best = (None, "")
    with contextlib.suppress(OSError):
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[1]):
                    best = (fields[2], mount)
    return best


def machine(tmp) -> dict:
    api = sqlite_api()
    fstype, mount = _filesystem(tmp)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "sqlite_version": sqlite3.sqlite_version,
        "sqlite_api_mode": api["mode"],
        "sqlite_library": api["library"],
        "temp_dir": tmp,
        "filesystem": fstype,
        "mount_point": mount,
    }


# ----------------------------------------------------------------- output

def _fmt_us(value):
    if value is None:
        return "-"
    if value >= 100_000:
        return f"{value / 1e6:.2f} s"
    if value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.1f} us"


def _fmt_ratio(row):
    text = f"{row['ratio']:.3f}x" if row["ratio"] < 10 else f"{row['ratio']:.1f}x"
    blocks = row.get("ratio_blocks")
    if blocks:
        text += f" ({blocks[0]:.2f}-{blocks[1]:.2f})"
    return text


def _table(rows, headers):
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    lines = ["  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths)))
             for r in [headers] + rows]
    return lines


def _timing_lines(rows, extra=()):
    headers = ["contender", "n", "median", "p99", "ratio (blocks)"] + [e[0] for e in extra]
    body = []
    for row in rows.values():
        body.append([row["label"], row["n"], _fmt_us(row["median_us"]), _fmt_us(row["p99_us"]),
                     _fmt_ratio(row)] + [fmt(row) for _, fmt in extra])
    lines = _table(body, headers)
    for row in rows.values():
        if row.get("note"):
            lines.append(f"  note: {row['label']}: {row['note']}")
    return lines


def render(report: dict) -> str:
    m = report["machine"]
    out = [f"hermes_kanban_native bench{' --quick' if report['quick'] else ''}  "
           f"{m['date']}",
           f"{m['cpu_count']} x {m['cpu_model']}; Python {m['python']}; SQLite "
           f"{m['sqlite_version']} ({m['sqlite_api_mode']} mode); temp dir on "
           f"{m['filesystem']} ({m['mount_point']})",
           "ratio = median / baseline median; (blocks) = the same ratio's range over "
           f"{BLOCKS} blocks of rounds", ""]
    for index, (key, _) in enumerate(SCENARIOS, 1):
        s = report["scenarios"][key]
        out.append(f"{index}. {s['title']}  [{s['unit']}]")
        if key == "write_tick":
            out += _timing_lines(s["contenders"], (
                ("ticks/s", lambda r: f"{r['ticks_per_s']:.0f}"),
                ("vs Python", lambda r: f"{r['speedup_vs_python']:.2f}x"),
                ("WAL bytes", lambda r: str(r["wal_bytes_after"])),
            ))
            out.append(f"  WAL bytes: {s['wal_note']}")
        elif key == "close_with_reader":
            out += _timing_lines(s["contenders"], (
                ("busy", lambda r: str(r.get("checkpoints_busy", "-"))),))
        elif key == "connect_overhead":
            for variant, rows in s["variants"].items():
                out.append(f"  {variant}:")
                out += _timing_lines(rows)
        elif key == "gc_connections":
            headers = ["contender", "db before", "wal before", "db after", "wal after",
                       "parked", "fds left"]
            body = [[r["label"], r["db_fds_before_gc"], r["wal_fds_before_gc"],
                     r["db_fds_after_gc"], r["wal_fds_after_gc"],
                     r["parked_db_fds_after_gc"], r["fds_left"]]
                    for r in s["contenders"].values()]
            out += _table(body, headers)
        elif key == "plugin_overhead":
            if s.get("skipped"):
                out.append(f"  skipped: {s['skipped']}")
            headers = ["suite", "tests", "runs", "without", "with option", "ratio",
                       "per test", "per-test ratio", "once", "passed (without/with)"]
            body = [[kind, r["tests"], r["runs"], f"{r['without_s']:.2f} s",
                     f"{r['with_s']:.2f} s", f"{r['ratio']:.3f}x",
                     f"{r['per_test_without_us']:.0f} -> {r['per_test_with_us']:.0f} us",
                     f"{r['per_test_ratio']:.3f}x", f"{r['startup_overhead_ms']:.0f} ms",
                     f"{r['passed_without']}/{r['passed_with']}"]
                    for kind, r in s["suites"].items()]
            if body:
                out += _table(body, headers)
        else:
            out += _timing_lines(s["contenders"])
            if key == "fd_scan":
                out.append(f"  Python reference agrees with sqlite_fds(): "
                           f"{s['python_agrees_with_native']}")
                if s["lsof_note"]:
                    out.append(f"  {s['lsof_note']}")
        out.append("")
    out.append("targets")
    body = []
    for t in report["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        if t["within_noise"]:
            verdict += " (within noise)"
        body.append([t["target"], t["measured"], verdict])
    out += _table(body, ["target", "measured", "result"])
    for t in report["targets"]:
        if t["note"]:
            out.append(f"  note: {t['target']}: {t['note']}")
    out.append("")
    out.append(f"total {report['duration_s']:.1f} s")
    return "\n".join(out)


# ---------------------------------------------------------------- command

def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` parser; the namespace's ``run`` is :func:`run`."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark WalSafeConnection against sqlite3 and the Python subclass",
        description="Benchmark WalSafeConnection against plain sqlite3.Connection and "
                    "the Python subclass that checkpoints (TRUNCATE) before close, on "
                    "the gateway's access pattern.  Prints medians, p99 and ratios, "
                    "and a PASS/MISS line per target.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations (under 30 s instead of under 3 min)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results instead of the table")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the JSON results to FILE")
    parser.add_argument("--dir", metavar="DIR",
                        help="make the temporary databases under DIR (its filesystem "
                             "matters for writes; default: the system temp dir)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    """Run the benchmark for parsed *args*; returns the exit status."""
    plan = Plan(args.quick)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="hkn-bench-", dir=args.dir) as tmp:
        info = machine(tmp)
        for index, (key, scenario) in enumerate(SCENARIOS, 1):
            log(f"[{index}/{len(SCENARIOS)}] {key} ...")
            t0 = time.perf_counter()
            results[key] = scenario(tmp, plan, log)
            results[key]["duration_s"] = round(time.perf_counter() - t0, 2)
    report = {
        "schema": SCHEMA_VERSION,
        "quick": plan.quick,
        "machine": info,
        "scenarios": results,
        "targets": evaluate_targets(results),
        "duration_s": round(time.perf_counter() - started, 2),
    }
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text if args.json else render(report))
    return 0
