"""Shared helpers: the package in each mode, WAL databases, other processes
that hold them, fd counts."""
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
# make_wal_db is the package's; test_faults.py imports it from here.
from hermes_kanban_native.commands.databases import make_wal_db
from modes import exec_instance, package_over

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

# SQLite 3.51.0 added a defence of its own against stray closes: before it
# takes a write lock on the database it asks (F_GETLK) whether another
# process holds the -shm's dead-man switch, and is refused while one does.
# A stray close of the database alone then leaves another process's close
# unable to checkpoint and unlink a live holder's -wal/-shm; a stray close of
# the -shm as well drops that lock too (unless it is an OFD lock, as in a
# process where a guarded connection put SQLite's -shm locks on OFD locks).
# docs/sqlite-internals.md, "Lock cancellation".
SQLITE_CHECKS_THE_SHM = sqlite3.sqlite_version_info >= (3, 51, 0)


def unlinking_stray_closes(database):
    """The files a stray close must hit, in a process whose -shm locks are
    POSIX locks, for another process's close to unlink its live -wal/-shm
    with this SQLite: the database, and from 3.51 the -shm too."""
    database = os.fspath(database)
    return [database, database + "-shm"] if SQLITE_CHECKS_THE_SHM else [database]


# Skip reasons that begin with this mean "not run for lack of native mode";
# CI's static-SQLite stage fails if any test reports one.
NEEDS_NATIVE = "needs native access to SQLite"
# The skip reason of a `native` test's run in SQL mode under the fixture
# `hkn`: that mode is the run's choice, not this interpreter's lack, so it
# must not begin like NEEDS_NATIVE.
SQL_RUN_OF_NATIVE_TEST = "marked native: not run against the package in sql mode"


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
    skipped in sql mode, saying why this interpreter has no native route;
    so are the native runs of tests that take the fixture `hkn`, and the
    sql runs of those that are marked `native` say that they are.  Tests
    whose own source starts a fresh interpreter are marked `isolated`, so
    that nobody has to remember to."""
    skip = None
    if not NATIVE:
        skip = pytest.mark.skip(reason=f"{NEEDS_NATIVE} (sql mode: {hkn.sqlite_api()['reason']})")
    sources = {}
    for item in items:
        marked_native = item.get_closest_marker("native") is not None
        mode = getattr(item, "callspec", None) and item.callspec.params.get("hkn")
        if mode == "sql" and marked_native:
            item.add_marker(pytest.mark.skip(reason=SQL_RUN_OF_NATIVE_TEST))
        elif skip is not None and (marked_native or mode == "native"):
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


# The package in SQL mode beside the native one: its modules loaded again,
# under this name, over a second instance of the extension (modes.py).
SQL_PACKAGE = "hermes_kanban_native[sql]"


@pytest.fixture(scope="session", params=["native", "sql"], name="hkn")
def package_in_mode(request):
    """The package (its whole API: WalSafeConnection, connect(), stats(),
    live_connections(), ...) in one mode; a test that takes it runs once
    per mode, in this process, its id naming the mode ([native], [sql],
    or first among its other parameters: [sql-truncate]).

    sql: a copy of the package over an instance of the extension made in
    SQL mode, or the package itself where it already is in SQL mode
    (HERMES_KANBAN_NATIVE_MODE=sql, or no route to SQLite).  native: the
    package; where it has no native mode, pytest_collection_modifyitems
    has skipped the run, with NEEDS_NATIVE's reason."""
    if request.param == "native":
        assert NATIVE, "the native runs are skipped where there is no native mode"
        return hkn
    if not NATIVE:
        return hkn
    return package_over(hkn, exec_instance(hkn._native.__file__, "sql"), SQL_PACKAGE)


def is_native(api):
    """Whether `api` (what the fixture hkn gave) is in native mode."""
    return api.sqlite_api()["mode"] == "native"


@pytest.fixture
def db(tmp_path):
    return make_wal_db(tmp_path / "kanban.db")


def sqlite_with_its_own_files(first, second, directory):
    """Everything SQLite itself opens files for, through two connections to
    one WAL database with a table t(x): writes the other connection reads,
    truncating checkpoints (a WalSafeConnection's own too), ATTACH and
    DETACH of a new database in `directory`, a backup to another one there;
    then it closes both.  None of it is a stray open.  test_pytest_plugin.py
    runs this function's source in a generated suite (which imports os and
    sqlite3), so it uses nothing else of this module."""
    for i in range(300):
        first.execute("INSERT INTO t VALUES (?)", (i,))
    assert second.execute("SELECT count(*) FROM t").fetchone()[0] == 300
    if hasattr(first, "checkpoint"):
        first.checkpoint("truncate")
    first.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    first.execute("ATTACH DATABASE ? AS other", (os.path.join(directory, "other.db"),))
    first.execute("CREATE TABLE other.u (y)")
    copy = sqlite3.connect(os.path.join(directory, "copy.db"))
    second.backup(copy)
    copy.close()
    first.execute("DETACH DATABASE other")
    second.execute("PRAGMA wal_checkpoint(PASSIVE)")
    second.close()
    first.close()


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
