"""What ``pytest --sqlite-fd-check`` costs a test suite: the bench scenario.

Two generated suites, each run by pytest in a fresh process with and
without the option, interleaved, several times:

* a kanban suite shaped like hermes-agent's (the one the plugin was tried on):
  a project module with one connect helper (``factory=WalSafeConnection``,
  ``timeout=120``, WAL), and tests that each make a board in ``tmp_path``,
  write through a few short connections and read it back, closing them all;
* a suite of tests that never touch SQLite (JSON, regular expressions and a
  small file in ``tmp_path``), for the cost the option adds to them.

"Without" is pytest with this plugin disabled (``-p no:hermes_kanban_native``),
so the ratio is the whole price of the option.  Every test must pass in every
run; a failure under the option would be a false report, and the scenario
records it.  The same suites back the test that a clean suite passes.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HELPER = '''\
"""The project's database module: one helper opens every connection."""
import sqlite3

import hermes_kanban_native as hkn

SCHEMA = "CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, title TEXT, status TEXT)"


def connect(path):
    conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, timeout=120,
                           isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def init(path):
    conn = connect(path)
    try:
        conn.execute(SCHEMA)
    finally:
        conn.close()
'''

KANBAN_TESTS = '''\
import pytest

import kanban_db


@pytest.mark.parametrize("n", range({count}))
def test_board(tmp_path, n):
    path = str(tmp_path / "kanban.db")
    kanban_db.init(path)
    for i in range(3):
        conn = kanban_db.connect(path)
        try:
            conn.execute("INSERT INTO tasks (title, status) VALUES (?, 'todo')", (f"t{{n}}-{{i}}",))
        finally:
            conn.close()
    conn = kanban_db.connect(path)
    try:
        conn.execute("UPDATE tasks SET status = 'done' WHERE id = 1")
        rows = conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
    finally:
        conn.close()
    assert dict(rows) == {{"done": 1, "todo": 2}}
'''

PLAIN_TESTS = '''\
import json
import re

import pytest


@pytest.mark.parametrize("n", range({count}))
def test_work(tmp_path, n):
    data = {{"n": n, "items": list(range(300))}}
    target = tmp_path / "data.json"
    target.write_text(json.dumps(data))
    loaded = json.loads(target.read_text())
    assert loaded["n"] == n
    assert len(re.findall(r"\\d+", " ".join(map(str, loaded["items"])))) == 300
'''

# The suites' conftest.py: the tests' directory on sys.path, and pytest's own
# per-test durations (setup, call and teardown, which include this plugin's
# hooks) summed up for the bench, into the file HKN_BENCH_PHASES names.
CONFTEST = '''\
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

_phases = [0.0, 0]


def pytest_runtest_logreport(report):
    _phases[0] += report.duration
    _phases[1] += report.when == "call"


def pytest_sessionfinish(session):
    out = os.environ.get("HKN_BENCH_PHASES")
    if out:
        with open(out, "w") as f:
            f.write(f"{_phases[0]!r} {_phases[1]}\\n")
'''

SUITES = {"kanban": KANBAN_TESTS, "no_sqlite": PLAIN_TESTS}
PLUGIN = "hermes_kanban_native"


def write_suite(directory, kind, files, per_file):
    """Write suite `kind` ("kanban" or "no_sqlite") of `files` files with
    `per_file` tests each into `directory`; returns the test count."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "kanban_db.py"), "w") as f:
        f.write(HELPER)
    with open(os.path.join(directory, "conftest.py"), "w") as f:
        f.write(CONFTEST)
    # Its own (empty) configuration: a project's pytest settings further up
    # the tree must not change what is measured.
    with open(os.path.join(directory, "pytest.ini"), "w") as f:
        f.write("[pytest]\n")
    for index in range(files):
        with open(os.path.join(directory, f"test_{kind}_{index:02}.py"), "w") as f:
            f.write(SUITES[kind].format(count=per_file))
    return files * per_file


def run_suite(directory, option, basetemp=None):
    """(seconds, passed, failed or errored, seconds per test inside pytest's
    setup+call+teardown or None) of one pytest run in a fresh process.
    The tests' tmp_path directories are made in `basetemp` (pytest wipes it
    each run), by default beside `directory`, on the filesystem the bench
    was pointed at."""
    basetemp = basetemp or f"{directory.rstrip(os.sep)}-tmp"
    phases = f"{directory.rstrip(os.sep)}-phases.txt"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--basetemp={basetemp}", directory]
    command += ["--sqlite-fd-check"] if option else ["-p", f"no:{PLUGIN}"]
    if os.path.exists(phases):
        os.remove(phases)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True,
                          env={**os.environ, "HKN_BENCH_PHASES": phases})
    elapsed = time.perf_counter() - started
    counts = {word: int(number) for number, word in
              re.findall(r"(\d+) (passed|failed|errors?)", done.stdout)}
    bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    if done.returncode not in (0, 1):
        bad = max(bad, 1)
    per_test = None
    try:
        with open(phases) as f:
            total, tests = f.read().split()
        per_test = float(total) / int(tests) if int(tests) else None
    except (OSError, ValueError):
        pass
    return elapsed, counts.get("passed", 0), bad, per_test


def _us(seconds):
    return None if seconds is None else round(seconds * 1e6, 1)


def pytest_available():
    return importlib.util.find_spec("pytest") is not None


def _best(values):
    # The fastest of the interleaved runs: on a shared machine the noise only
    # ever adds time, so the minimum is the steadiest estimate of the cost.
    return min(values)


def scenario(tmp, plan, log):
    """The bench scenario.  Each suite is written at two sizes, `files` and
    one file, and each size is run with and without the option, interleaved;
    each result is the fastest run.
    The whole-run ratio is the larger size's.  The per-test cost is measured
    twice: as the slope between the sizes, which leaves out what a run pays
    once (importing this package when the option is on, reported apart as
    the startup cost), and as pytest's own durations of each test's setup,
    call and teardown (which hold the plugin's hooks), summed by the suite's
    conftest.py.  The slope also holds what pytest does between tests, but
    it is the difference of two whole runs, whose noise is tens of
    microseconds per test; the durations leave out startup and collection,
    and vary by a few, so they are what the per-test target is judged on."""
    files, per_file, rounds = plan.plugin_files, plan.plugin_per_file, plan.plugin_rounds
    title = (f"pytest --sqlite-fd-check on generated suites of {files * per_file} tests, "
             f"against the same runs without the plugin")
    if not pytest_available():
        return {"title": title, "unit": "s per run", "skipped": "pytest is not installed",
                "suites": {}, "on_tmpfs": False, "files": files}
    # The tests' tmp_path directories go on tmpfs when there is one: on a
    # shared disk the cost of their files and fsyncs varies more from run to
    # run than the plugin's whole cost.  Shorter tests also make the ratio
    # stricter than on a disk (the plugin's cost is per test, not per fsync).
    scratch = {}
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        for kind in SUITES:
            scratch[kind] = os.path.join(tempfile.mkdtemp(prefix=f"hkn-plugin-{kind}-",
                                                          dir="/dev/shm"), "tmp")
    suites = {}
    for kind in SUITES:
        sizes = {}
        for size_files in (files, 1):
            directory = os.path.join(tmp, f"suite-{kind}-{size_files}")
            sizes[size_files] = (directory, write_suite(directory, kind, size_files, per_file))
        times = {(size, option): [] for size in sizes for option in (False, True)}
        in_test = {False: [], True: []}
        passed = {False: [], True: []}
        bad = 0
        order = [(size, option) for size in sizes for option in (False, True)]
        for _ in range(rounds):
            for size, option in order:
                seconds, ok, failed, per_test = run_suite(sizes[size][0], option,
                                                          scratch.get(kind))
                times[size, option].append(seconds)
                if size == files:
                    passed[option].append(ok)
                    if per_test is not None:
                        in_test[option].append(per_test)
                bad += failed
            order.reverse()
        med = {key: _best(values) for key, values in times.items()}
        big, small = sizes[files][1], sizes[1][1]
        slope = {option: (med[files, option] - med[1, option]) / (big - small)
                 for option in (False, True)}
        startup = {option: med[1, option] - slope[option] * small for option in (False, True)}
        # None (null in the JSON) where no run wrote its durations (pytest
        # died): the runs are then counted as failures too.
        phases = {option: _best(values) if values else None
                  for option, values in in_test.items()}
        timed = None not in phases.values()
        suites[kind] = {
            "tests": big,
            "runs": rounds,
            "without_s": round(med[files, False], 3),
            "with_s": round(med[files, True], 3),
            "ratio": round(med[files, True] / med[files, False], 4),
            "per_test_without_us": round(slope[False] * 1e6, 1),
            "per_test_with_us": round(slope[True] * 1e6, 1),
            "per_test_ratio": round(slope[True] / slope[False], 4),
            "overhead_per_test_us": round((slope[True] - slope[False]) * 1e6, 1),
            "in_test_without_us": _us(phases[False]),
            "in_test_with_us": _us(phases[True]),
            "in_test_ratio": round(phases[True] / phases[False], 4) if timed else None,
            "in_test_overhead_us": _us(phases[True] - phases[False]) if timed else None,
            "startup_overhead_ms": round((startup[True] - startup[False]) * 1e3, 1),
            "passed_without": min(passed[False]),
            "passed_with": min(passed[True]),
            "failures": bad,
        }
        per_test = suites[kind]["in_test_ratio"]
        log(f"  {kind}: {suites[kind]['ratio']:.3f}x whole run, "
            + (f"{per_test:.3f}x per test " if timed else "no durations per test ")
            + f"(slope {suites[kind]['per_test_ratio']:.3f}x)")
    for path in scratch.values():
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return {"title": title, "unit": "s per run (fastest of the interleaved runs)",
            "suites": suites, "on_tmpfs": bool(scratch), "files": files}
