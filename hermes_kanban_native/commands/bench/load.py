"""Scenarios measured under load and by instruction count: the gateway's read
tick from 1, 16 and 64 threads at once, the write tick as sqlite3's default
isolation writes it (commit()), and the instructions per tick under
callgrind, which a noisy machine cannot move."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from .measure import _interleave, _results, _timed_batch
from .scenarios import CONTENDERS, FLOOR_CONTENDERS, TIMEOUT, _holder, _labels, _make_db

THREAD_COUNTS = (1, 16, 64)
TICKS_PER_BURST = 256       # split over the threads of one burst
LOAD_CONTENDERS = ("plain", "walsafe", "walsafe_truncate")
# Under threads only the one holding the GIL runs Python code (or ours), so
# what any subclass pays weighs more than in a single thread: the empty
# Python subclass shows how much of a ratio is that floor, and the one whose
# __init__ only calls super() what a microsecond of work per open becomes.
GATEWAY_CONTENDERS = ("plain", "python_empty", "python_init", "walsafe", "walsafe_truncate")

# The timed operations, compiled under the same file name outside the
# package as scenarios.py's (the opener capture stops there, as in hermes).
_LOAD_CODE = '''
import sqlite3
import threading
from time import perf_counter_ns

def make_burst(path, factory, timeout, threads, ticks):
    """ns per gateway read tick, `threads` threads doing `ticks` each."""
    def worker():
        for _ in range(ticks):
            conn = sqlite3.connect(path, factory=factory, timeout=timeout,
                                   check_same_thread=False)
            conn.execute("SELECT count(*) FROM t").fetchall()
            conn.close()
    def burst():
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        start = perf_counter_ns()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return (perf_counter_ns() - start) / (threads * ticks)
    return burst

def make_commit_tick(path, factory, timeout):
    """A write tick in sqlite3's default isolation: the INSERT opens a
    transaction, commit() ends it."""
    def tick():
        conn = sqlite3.connect(path, factory=factory, timeout=timeout)
        conn.execute("INSERT INTO t (x) VALUES ('tick')")
        conn.commit()
        conn.close()
    return tick
'''
_load = {}
exec(compile(_LOAD_CODE, "<hkn-bench user code>", "exec"), _load)


def scenario_gateway_threads(tmp, plan, log):
    """The read tick as the gateway opens it (timeout=120,
    check_same_thread=False), from 1, 16 and 64 threads at once."""
    path = _make_db(os.path.join(tmp, "gateway.db"))
    holder = _holder(path)
    factories = {name: factory for name, (factory, _) in
                 {**CONTENDERS, **FLOOR_CONTENDERS}.items()}
    variants = {}
    try:
        for threads in THREAD_COUNTS:
            ticks = max(2, TICKS_PER_BURST // threads)
            samplers = {name: _load["make_burst"](path, factories[name], TIMEOUT, threads,
                                                  ticks)
                        for name in GATEWAY_CONTENDERS}
            raw = _interleave(samplers, plan.burst_rounds, 2)
            variants[f"{threads} thread{'s' if threads > 1 else ''}"] = _results(
                raw, "plain", p99=False, labels=_labels(raw))
    finally:
        holder.close()
    return {"title": "gateway read tick (timeout=120, check_same_thread=False) from "
                     "several threads at once",
            "unit": f"per tick ({TICKS_PER_BURST} ticks per burst, split over the threads)",
            "variants": variants}


def scenario_write_commit(tmp, plan, log):
    """The write tick with sqlite3's default isolation level."""
    path = _make_db(os.path.join(tmp, "commit.db"))
    holder = _holder(path)
    try:
        samplers = {name: _timed_batch(_load["make_commit_tick"](path, CONTENDERS[name][0],
                                                                 TIMEOUT))
                    for name in CONTENDERS}
        raw = _interleave(samplers, plan.write_rounds, plan.warmup // 5)
    finally:
        holder.close()
    return {"title": "write tick, default isolation: connect, INSERT, commit(), close",
            "unit": "per tick", "contenders": _results(raw, "plain", labels=_labels(raw))}


# ---------------------------------------------------------- instructions

# Run under callgrind: OPERATION, CONTENDER, TICKS, DATABASE.  A long-lived
# WalSafeConnection holds the database, as in the other scenarios.
_DRIVER = '''
import gc, sqlite3, sys
import hermes_kanban_native as hkn
from hermes_kanban_native.commands.bench import scenarios
operation, contender, ticks, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
factory = scenarios.CONTENDERS[contender][0]
holder = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None)
holder.execute("SELECT count(*) FROM t").fetchone()
user = scenarios._user
if operation == "connect_close":
    tick = user["make_connect_close"](path, factory, scenarios.TIMEOUT)
elif operation == "read_tick":
    tick = user["make_tick"](path, factory, scenarios.TIMEOUT, "SELECT count(*) FROM t")
else:
    tick = user["make_tick"](path, factory, scenarios.TIMEOUT, "INSERT INTO t (x) VALUES ('i')")
tick()                                   # the first open's one-time work is not a tick
gc.disable()                             # as in the timed scenarios; a collection's cost
                                         # lands on whichever run it falls in
for _ in range(ticks):
    tick()
holder.close()
'''
OPERATIONS = ("connect_close", "read_tick", "write_tick")


def _collected(valgrind, operation, contender, ticks, path):
    # A fixed hash seed: with a random one, dict and set layouts differ from
    # run to run, and so did plain sqlite3's count, by +-0.3%.
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-c", _DRIVER, operation, contender, str(ticks), path],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONHASHSEED="0"))
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({operation}, {contender}): "
                           f"{done.stderr[-2000:]}")
    return int(found.group(1))


def scenario_instructions(tmp, plan, log, operations=OPERATIONS, contenders=LOAD_CONTENDERS):
    """Instructions per tick (callgrind): the difference between a run of
    `ticks` ticks and a run of none, divided by `ticks`.  The first of
    `contenders` is the baseline of the ratios."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {"title": "instructions per tick (callgrind)", "unit": "per tick",
                "skipped": "valgrind is not installed", "operations": {}}
    if not plan.instructions:
        return {"title": "instructions per tick (callgrind)", "unit": "per tick",
                "skipped": "not in --quick runs (--instructions to add it)", "operations": {}}
    path = _make_db(os.path.join(tmp, "instructions.db"))
    results = {}
    for operation in operations:
        rows = {}
        for contender in contenders:
            log(f"  callgrind: {operation}, {contender}")
            base = _collected(valgrind, operation, contender, 0, path)
            full = _collected(valgrind, operation, contender, plan.instruction_ticks, path)
            rows[contender] = {"label": CONTENDERS[contender][1],
                               "instructions": (full - base) / plan.instruction_ticks}
        for row in rows.values():
            row["ratio"] = row["instructions"] / rows[contenders[0]]["instructions"]
        results[operation] = rows
    return {"title": "instructions per tick (callgrind)",
            "unit": f"per tick ({plan.instruction_ticks} ticks minus none)",
            "operations": results}
