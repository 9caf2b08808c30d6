"""Shared helpers: WAL databases, other processes that hold them, fd counts."""
from __future__ import annotations

import contextlib
import inspect
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import hermes_kanban_native as hkn

pytest_plugins = ["pytester"]

NATIVE = hkn.sqlite_api()["mode"] == "native"

def _sqlite_symbols_visible():
    """Whether dlsym sees SQLite's functions from _sqlite3's library (False
    where they are hidden, as in python-build-standalone)."""
    import ctypes
    import _sqlite3

    try:
        ctypes.CDLL(getattr(_sqlite3, "__file__", None)).sqlite3_vfs_find
    except (OSError, AttributeError):
        return False
    return True


SQLITE_SYMBOLS_VISIBLE = _sqlite_symbols_visible()

# Skip reasons that begin with this mean "not run for lack of native mode";
# CI's static-SQLite stage fails if any test reports one.
NEEDS_NATIVE = "needs native access to SQLite"


def pytest_report_header(config):
    """Which copy of the package this run imports (CI's wheel stage checks
    that it is the installed wheel's, not the checkout's)."""
    return [f"hermes_kanban_native {hkn.__version__}: {hkn.__file__}",
            f"hermes_kanban_native._native: {hkn._native.__file__} "
            f"(route {hkn.sqlite_api()['route']})"]


# What makes a test `isolated`: it starts a fresh interpreter (directly, or
# through the helpers below that run the package in another process).
_FRESH_INTERPRETER = ("run_python(", "runpytest_subprocess(", "sys.executable", "Holder(",
                     "reader_process(")


def pytest_collection_modifyitems(config, items):
    """Tests marked `native` (pyproject.toml registers the markers) are
    skipped in sql mode, saying why this interpreter has no native route.
    Tests whose own source starts a fresh interpreter are marked
    `isolated`, so that nobody has to remember to."""
    skip = None
    if not NATIVE:
        skip = pytest.mark.skip(reason=f"{NEEDS_NATIVE} (sql mode: {hkn.sqlite_api()['reason']})")
    sources = {}
    for item in items:
        if skip is not None and item.get_closest_marker("native") is not None:
            item.add_marker(skip)
        function = getattr(item, "function", None)
        if function is not None:
            if function not in sources:
                try:
                    sources[function] = inspect.getsource(function)
                except (OSError, TypeError):
                    sources[function] = ""
            if any(marker in sources[function] for marker in _FRESH_INTERPRETER):
                item.add_marker(pytest.mark.isolated)


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path, monkeypatch):
    """Every test (and every subprocess it starts, `python -m ...` and `-c`
    put the working directory on sys.path) runs away from the source tree,
    so the installed package is the one tested."""
    monkeypatch.chdir(tmp_path)


def make_wal_db(path, rows=0):
    """A WAL database with table t(x) and `rows` rows, all connections closed."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        if rows:
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    finally:
        conn.close()
    return str(path)


@pytest.fixture
def db(tmp_path):
    return make_wal_db(tmp_path / "kanban.db")


def fds_on(path):
    """Descriptors of this process whose link names `path` (deleted or not)."""
    real = os.path.realpath(path)
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.removesuffix(" (deleted)") == real:
            count += 1
    return count


def wait_for(predicate, timeout=10.0, interval=0.01):
    """Poll `predicate` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@contextlib.contextmanager
def reader_process(path):
    """Another process holding a read transaction open on `path` until the
    block ends (its snapshot keeps the WAL from being reset): the same
    reader the demo and the benchmark play against.  Yields its Popen."""
    from hermes_kanban_native.commands.reference import ReaderProcess
    reader = ReaderProcess(path)
    try:
        yield reader.proc
    finally:
        reader.stop()


def run_python(code, env=None, timeout=120, cwd=None):
    """Runs `code` in a fresh interpreter (the installed package, never the
    source tree: the working directory is not the checkout)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=timeout,
                          cwd=cwd or "/")


# Whole programs the tests run in a fresh interpreter, one file each.
ISOLATED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "isolated")


def isolated_script(name):
    """The path of tests/isolated/<name>.py, for a test that starts it itself."""
    path = os.path.join(ISOLATED, name + ".py")
    if not os.path.isfile(path):
        raise FileNotFoundError(path)       # here, not as a child's exit status 2
    return path


def run_isolated(name, *args, env=None, timeout=120, cwd=None):
    """Runs tests/isolated/<name>.py with `args` (as strings) in a fresh
    interpreter, as run_python runs code: its sys.path starts with
    tests/isolated/, which holds no package, and the working directory is
    not the checkout, so the installed package is the one imported.

    _FRESH_INTERPRETER does not list it: a test whose source has no other
    sign of a fresh interpreter marks itself @pytest.mark.isolated."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, isolated_script(name), *map(str, args)],
                          capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=cwd or "/")
