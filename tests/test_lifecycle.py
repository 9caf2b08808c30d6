"""Whole-process behaviour, each in a fresh interpreter: fork, interpreter
exit (daemon threads included), reference leaks, and the SQL fallback mode."""
from __future__ import annotations

import json
import os

import pytest

from conftest import make_wal_db, run_python


def test_forked_child_does_no_native_work(tmp_path):
    path = make_wal_db(tmp_path / "fork.db")
    result = run_python(f"""
        import os, sqlite3, warnings
        import hermes_kanban_native as hkn
        warnings.simplefilter("error")
        conn = sqlite3.connect({path!r}, factory=hkn.WalSafeConnection, isolation_level=None)
        conn.execute("INSERT INTO t VALUES (1)")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                conn.checkpoint()
                code = 3                       # must refuse
            except sqlite3.ProgrammingError as exc:
                code = 0 if "forked child" in str(exc) else 4
            before = hkn.stats()["checkpoints"]
            conn.close()                       # plain close, no checkpoint
            if hkn.stats()["checkpoints"] != before or conn.last_checkpoint is not None:
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
        assert conn.last_checkpoint is not None and not conn.last_checkpoint.busy
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
def test_exit_counts_only_what_it_closed(tmp_path):
    # atexit runs last-registered first: report() runs after the package's
    # exit-time closer.
    result = run_python(f"""
        import atexit, json, sqlite3, threading

        def report():
            print(json.dumps(hkn.stats()))

        atexit.register(report)
        import hermes_kanban_native as hkn

        def open_db(name):
            conn = sqlite3.connect({str(tmp_path)!r} + "/" + name, factory=hkn.WalSafeConnection,
                                   isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
            return conn

        held = open_db("main.db")
        ready = threading.Event()

        def daemon():
            conn = open_db("daemon.db")
            ready.set()
            threading.Event().wait()

        threading.Thread(target=daemon, daemon=True).start()
        ready.wait()
        before = hkn.stats()
    """, env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.splitlines()[-1])
    # The main thread's connection was finalized; the daemon thread's was
    # checkpointed and left to the process exit: not finalized, not closed.
    assert stats["finalized"] == 1 and stats["closed"] == 0
    assert stats["checkpoints"] == 2
    assert stats["live"] == 0


@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
def test_interpreter_exit_checkpoints_open_connections(tmp_path):
    # The database file stays empty until a checkpoint copies frames back:
    # its size after exit shows that the exit-time checkpoint ran for a
    # connection held by the main module and one held by a daemon thread.
    main_db = str(tmp_path / "main.db")
    daemon_db = str(tmp_path / "daemon.db")
    result = run_python(f"""
        import sqlite3, threading, time
        import hermes_kanban_native as hkn

        def open_db(path):
            conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None,
                                   check_same_thread=True)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE t (x)")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(200)])
            return conn

        held = open_db({main_db!r})
        ready = threading.Event()

        def daemon():
            conn = open_db({daemon_db!r})
            ready.set()
            while True:
                time.sleep(1)

        threading.Thread(target=daemon, daemon=True).start()
        ready.wait()
        print("exiting", flush=True)
    """, env={"PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    assert "Segmentation" not in result.stderr and "Fatal" not in result.stderr
    assert result.stdout.strip() == "exiting"
    for path in (main_db, daemon_db):
        assert os.path.getsize(path) > 4096, path
    assert "unclosed database" in result.stderr and main_db in result.stderr


@pytest.mark.slow
def test_no_reference_or_fd_leak_over_10000_cycles(tmp_path):
    path = make_wal_db(tmp_path / "leak.db")
    result = run_python(f"""
        import gc, os, sqlite3, sys
        import hermes_kanban_native as hkn
        WalSafe = hkn.WalSafeConnection

        def cycle(n):
            for i in range(n):
                conn = sqlite3.connect({path!r}, factory=WalSafe, isolation_level=None)
                if i % 2:
                    conn.execute("INSERT INTO t VALUES (?)", (i,))
                conn.checkpoint()
                conn.close()

        cycle(500)                              # warm-up: caches, interned strings
        gc.collect()
        refs = sys.getrefcount(WalSafe)
        blocks = sys.getallocatedblocks()
        fds = len(os.listdir("/proc/self/fd"))
        cycle(10_000)
        gc.collect()
        print(sys.getrefcount(WalSafe) - refs, sys.getallocatedblocks() - blocks,
              len(os.listdir("/proc/self/fd")) - fds, hkn.stats()["live"])
    """, timeout=300)
    assert result.returncode == 0, result.stderr
    ref_delta, block_delta, fd_delta, live = map(int, result.stdout.split())
    assert ref_delta == 0
    assert fd_delta == 0
    assert live == 0
    assert block_delta < 200, block_delta      # no per-cycle growth (10,000 cycles)


@pytest.mark.skipif(os.environ.get("HERMES_KANBAN_NATIVE_MODE") == "sql",
                    reason="already running in SQL mode")
@pytest.mark.slow
def test_suite_passes_in_sql_fallback_mode():
    here = os.path.dirname(os.path.abspath(__file__))
    result = run_python(f"""
        import sys, pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", {here!r},
                              {os.path.join(here, "test_connection.py")!r},
                              {os.path.join(here, "test_connect.py")!r}]))
    """, env={"HERMES_KANBAN_NATIVE_MODE": "sql"}, timeout=600, cwd=here)
    print(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
