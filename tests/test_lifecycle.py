"""Whole-process behaviour, each in a fresh interpreter: fork, interpreter
exit (daemon threads included), reference leaks.  (SQL mode runs in this
process: the fixture hkn of conftest.py.)"""
from __future__ import annotations

import json
import os

import pytest

from hermes_kanban_native.commands.databases import make_wal_db
from conftest import run_isolated, run_python


@pytest.mark.isolated
def test_forked_child_does_no_native_work(tmp_path):
    path = make_wal_db(tmp_path / "fork.db")
    result = run_isolated("forked_child_does_no_native_work", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
@pytest.mark.isolated
def test_exit_counts_only_what_it_closed(tmp_path):
    # atexit runs last-registered first: report() runs after the package's
    # exit-time closer.
    result = run_isolated("exit_counts_what_it_closed", tmp_path,
                          env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.splitlines()[-1])
    # The main thread's connection was finalized; the daemon thread's was
    # checkpointed and left to the process exit: not finalized, not closed.
    assert stats["finalized"] == 1 and stats["closed"] == 0
    assert stats["checkpoints"] == 2
    assert stats["live"] == 0


@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
@pytest.mark.isolated
def test_interpreter_exit_checkpoints_open_connections(tmp_path):
    # The database file stays empty until a checkpoint copies frames back:
    # its size after exit shows that the exit-time checkpoint ran for a
    # connection held by the main module and one held by a daemon thread.
    main_db = str(tmp_path / "main.db")
    daemon_db = str(tmp_path / "daemon.db")
    result = run_isolated("exit_with_open_connections", main_db, daemon_db,
                          env={"PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    assert "Segmentation" not in result.stderr and "Fatal" not in result.stderr
    assert result.stdout.strip() == "exiting"
    for path in (main_db, daemon_db):
        assert os.path.getsize(path) > 4096, path
    assert "unclosed database" in result.stderr and main_db in result.stderr


@pytest.mark.slow
@pytest.mark.isolated
def test_no_reference_or_fd_leak_over_10000_cycles(tmp_path):
    path = make_wal_db(tmp_path / "leak.db")
    result = run_isolated("open_close_10000_cycles", path, timeout=300)
    assert result.returncode == 0, result.stderr
    ref_delta, block_delta, fd_delta, live = map(int, result.stdout.split())
    assert ref_delta == 0
    assert fd_delta == 0
    assert live == 0
    assert block_delta < 200, block_delta      # no per-cycle growth (10,000 cycles)



@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
@pytest.mark.isolated
def test_exit_leaves_daemon_threads_their_statements_and_busy_timeout(tmp_path):
    # The exit-time closer checkpoints connections that daemon threads keep
    # using until the process ends: it must not reset the statement a thread
    # is stepping, nor take away a connection's busy timeout.
    result = run_isolated("exit_beside_daemon_threads_using_their_connections",
                          tmp_path / "daemons.db", env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["stepping"] == {"rows": list(range(10)), "timeout": 5000}
    assert seen["idle"] == {"timeout": 5000}
    assert seen["checkpoints"] == 1         # the idle one's; the stepping one is in use


@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
@pytest.mark.isolated
def test_exit_while_a_daemon_thread_closes_its_connections(tmp_path):
    # The closer waits for a connection the thread is closing, and then
    # finds it closed: five runs (each crashed before the closer looked again).
    for run in range(5):
        result = run_isolated("exit_while_a_daemon_thread_closes", tmp_path / f"churn{run}.db",
                              env={"PYTHONWARNINGS": "ignore"})
        assert result.returncode == 0, (run, result.stderr[-2000:])


@pytest.mark.isolated
def test_weakref_callbacks_of_a_dying_connection_may_collect_and_list(tmp_path):
    # Weakref callbacks run while the connection is freed: one that collects
    # garbage or lists the live connections must find it neither tracked by
    # the collector nor registered, also when a subclass's __del__ replaced
    # the finalizer that unregisters it.  Closed through the base class, a
    # connection dies by its reference count, in our dealloc; left open it
    # may sit in a cycle with its statement cache and die in a collection.
    path = make_wal_db(tmp_path / "weak.db")
    result = run_python(f"""
        import gc, json, sqlite3, weakref
        import hermes_kanban_native as hkn

        class OwnDel(hkn.WalSafeConnection):
            def __del__(self):
                pass

        seen = []
        for factory in (hkn.WalSafeConnection, OwnDel):
            for how in ("open", "closed by the base"):
                def callback(ref, name=factory.__name__, how=how):
                    gc.collect()
                    seen.append((name, how, len(hkn.live_connections())))
                conn = sqlite3.connect({path!r}, factory=factory)
                if how != "open":
                    sqlite3.Connection.close(conn)
                ref = weakref.ref(conn, callback)
                del conn
                gc.collect()
        print(json.dumps(seen))
        """, env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout)
    assert [[name, how] for name, how, _ in seen] == [
        [name, how] for name in ("WalSafeConnection", "OwnDel")
        for how in ("open", "closed by the base")]
    assert all(live == 0 for _, how, live in seen if how == "closed by the base"), seen


@pytest.mark.isolated
def test_connect_refused_by_an_audit_hook_leaves_no_descriptor(tmp_path):
    # The base's __init__ fails after opening the database (the audit event
    # "sqlite3.connect/handle" is raised with the handle open); plain
    # sqlite3 closes that handle, so must we.
    path = make_wal_db(tmp_path / "audited.db")
    result = run_python(f"""
        import gc, sqlite3, sys
        import hermes_kanban_native as hkn

        def refuse(event, args):
            if event == "sqlite3.connect/handle":
                raise PermissionError("refused by policy")
        sys.addaudithook(refuse)
        for factory in (sqlite3.Connection, hkn.WalSafeConnection):
            for _ in range(5):
                try:
                    sqlite3.connect({path!r}, factory=factory)
                except PermissionError:
                    pass
            gc.collect()
            print(factory.__name__, len(hkn.sqlite_fds({path!r}).db),
                  len(hkn.live_connections()))
        """, env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Connection", "0", "0", "WalSafeConnection", "0", "0"]


@pytest.mark.isolated
def test_a_subinterpreter_cannot_import_the_package(tmp_path):
    # Its state is the process's (the fcntl wrappers, the audit hook, SQLite's
    # locks): a subinterpreter's copy would run its handlers in the main
    # interpreter.  3.12+ says so through Py_mod_multiple_interpreters; 3.10
    # and 3.11 are told by the module itself.  The main interpreter's own
    # copy keeps working.
    path = make_wal_db(tmp_path / "sub.db")
    result = run_python(f"""
        import sqlite3, sys, warnings
        import hermes_kanban_native as hkn

        conn = hkn.connect({path!r})
        hkn.warn_on_stray_open(True)
        try:            # CPython's private API: 3.10 to 3.12, then renamed
            try:
                import _interpreters as interpreters
            except ImportError:
                import _xxsubinterpreters as interpreters
            sub = interpreters.create()
            interpreters.run_string(sub, '''if True:
                try:
                    import hermes_kanban_native
                except ImportError as exc:
                    print("refused:", exc, flush=True)
                else:
                    print("imported", flush=True)
                ''')
            interpreters.destroy(sub)
        except (ImportError, AttributeError, TypeError) as exc:
            print("no subinterpreters:", exc)
            sys.exit(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            open({path!r}, "rb").close()
        print([w.category.__name__ for w in caught])
        conn.close()
        """)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    if lines[0].startswith("no subinterpreters:"):
        pytest.skip(lines[0])
    assert lines[0].startswith("refused:"), result.stdout
    assert lines[1] == "['StrayOpenWarning']"
