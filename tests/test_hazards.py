"""Each production hazard reproduced end to end, with other processes, and
shown handled through the public API.

The single-process versions live in test_connection.py, test_lifecycle.py and
test_fds.py; these put the holder, the other processes and the checks in
separate interpreters, configured as hermes configures its connections."""
from __future__ import annotations

import json
import os
import sys

import pytest

import hermes_kanban_native as hkn
from hermes_kanban_native.commands.databases import make_wal_db
from conftest import reader_process, run_isolated, wait_for
from fds_helpers import Holder, stray_open_close_code, unlinking_stray_close_code

DEADLINE = 60.0

# The other processes play hermes: they connect as hermes configures its
# connections, with kanban() from tests/isolated/hermes_connect.py.


def other_process(name, database, *args, **kwargs):
    """Run tests/isolated/<name>.py (with the database as its first argument)
    in a fresh interpreter; returns the value it printed as JSON on its last
    line."""
    result = run_isolated(name, os.fspath(database), *args, timeout=DEADLINE, **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_and_close(database, persist_wal=False):
    """Another process opens, reads, checks and closes; returns what it saw
    (or the error it got, as text)."""
    return other_process("hermes_read_and_close", database, json.dumps(persist_wal))


def hermes_holder(database, persist_wal=False, guard_wal=True, ofd_shm_locks=True):
    """A Holder child with a hermes-configured WalSafeConnection in conns[0]."""
    env = None
    if not ofd_shm_locks:
        env = dict(os.environ, HERMES_KANBAN_NATIVE_SHM_LOCKS="posix")
    holder = Holder(cwd="/", env=env)
    # The child runs from tests/isolated/, where hermes_connect is.
    holder.run("import hermes_kanban_native as hkn\n"
               "from hermes_connect import kanban\n"
               f"DB = {os.fspath(database)!r}\n"
               f"conns.append(kanban(DB, persist_wal={persist_wal!r}, "
               f"guard_wal={guard_wal!r}))\n"
               "conns[0].execute('SELECT count(*) FROM t').fetchone()\n")
    return holder


HEALTH = "f = hkn.sqlite_fds(DB)\nresult = [f.locks_lost, sorted({i.path for i in f.stale})]\n"


# ------------------------------------------------------- lock cancellation


def test_stray_close_is_detected_and_the_unlink_loses_commits(tmp_path):
    # The hazard itself, without the WAL-generation guard and with SQLite's
    # own -shm locks (test_guard.py shows the guard preventing it).
    db = make_wal_db(tmp_path / "kanban.db", rows=3)
    with hermes_holder(db, guard_wal=False, ofd_shm_locks=False) as holder:
        holder.run("conns[0].execute('INSERT INTO t VALUES (100)')\n")
        assert holder.run(HEALTH) == [False, []]

        holder.run(unlinking_stray_close_code(db))   # from SQLite 3.51 the -shm's too
        assert holder.run(HEALTH) == [True, []]          # locks gone, nothing stale yet

        # Another process believes it is the last: it checkpoints and unlinks
        # the -wal/-shm pair the holder still uses.
        assert read_and_close(db)["rows"] == [0, 1, 2, 100]
        assert not os.path.exists(db + "-wal") and not os.path.exists(db + "-shm")
        locks_lost, stale = holder.run(HEALTH)
        assert locks_lost and db + "-wal" in stale and db + "-shm" in stale
        seen_from_here = hkn.holders(db)[holder.pid]
        assert seen_from_here.stale and seen_from_here.locks_lost

        # The damage: a commit that returned in the holder goes to the
        # orphaned WAL, where no other process will ever look.
        holder.run("conns[0].execute('INSERT INTO t VALUES (101)')\n")
        seen = read_and_close(db)
        assert "error" in seen or 101 not in seen["rows"], seen
        holder.run("conns[0].close()\nconns.clear()\n")


@pytest.mark.native
def test_persist_wal_in_every_process_survives_stray_closes(tmp_path):
    db = make_wal_db(tmp_path / "kanban.db", rows=3)
    expected = [0, 1, 2]
    with hermes_holder(db, persist_wal=True, guard_wal=False) as holder:
        for round_no in range(5):
            holder.run(stray_open_close_code(db))
            assert holder.run(HEALTH)[0] is True         # its locks are gone ...
            seen = read_and_close(db, persist_wal=True)
            assert seen == {"rows": expected, "integrity": "ok"}
            # ... but nobody unlinked the sidecars it uses.
            assert os.path.exists(db + "-wal") and os.path.exists(db + "-shm")
            assert holder.run(HEALTH)[1] == []
            # The holder keeps committing, with its long-lived connection and
            # with new ones, and every other process sees every commit.
            value = 1000 + round_no
            holder.run(f"conns[0].execute('INSERT INTO t VALUES ({value})')\n"
                       f"extra = kanban(DB, persist_wal=True)\n"
                       f"extra.execute('INSERT INTO t VALUES ({value + 100})')\n"
                       f"result = extra.execute('SELECT count(*) FROM t').fetchone()[0]\n"
                       f"extra.close()\n")
            expected = sorted(expected + [value, value + 100])
            assert read_and_close(db, persist_wal=True) == {"rows": expected,
                                                            "integrity": "ok"}
        holder.run("conns[0].close()\nconns.clear()\n")
    assert read_and_close(db) == {"rows": expected, "integrity": "ok"}


# ---------------------------------------------- unclosed with-block connections


def test_unclosed_with_block_connections_are_finalized_by_the_gc(tmp_path):
    # A gateway-like process: a long-lived connection, and every tick a
    # ``with`` connection that writes and is never closed.  Automatic
    # collection is off, as in a large process where it runs rarely.
    db = make_wal_db(tmp_path / "kanban.db")
    ticks, every = 60, 20
    seen = other_process("unclosed_with_block_connections", db, ticks, every,
                         env={"PYTHONWARNINGS": ""})
    print(f"\nunclosed with-block connections: {seen}")
    assert seen["warned"] == ticks                   # one ResourceWarning each
    assert seen["finalized"] == ticks
    assert seen["checkpoints"] == ticks              # each wrote: each checkpointed
    if sys.version_info >= (3, 11):
        assert seen["piled_high"] == every           # alive until the collector ran
    else:
        assert seen["piled_high"] == 0               # refcounting freed them at once
    # Bounded: the long-lived one, the pile, and parked fds reused by it.
    assert seen["fds_high"] <= every + 1
    assert seen["left"] == 0
    assert read_and_close(db) == {"rows": list(range(1, ticks + 1)), "integrity": "ok"}


# ------------------------------------------------------------- zombie handle


@pytest.mark.native       # sql mode cannot see a stepping statement
def test_close_with_a_cursor_mid_iteration_keeps_files_until_the_cursor_goes(tmp_path):
    db = make_wal_db(tmp_path / "kanban.db", rows=20)
    with hermes_holder(db) as holder:
        warned = holder.run(
            "import warnings\n"
            "conns[0].execute('INSERT INTO t VALUES (99)')\n"
            "cursor = conns[0].execute('SELECT x FROM t')\n"
            "cursor.fetchone()\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    conns[0].close()\n"
            "result = [str(w.message) for w in caught if w.category is ResourceWarning]\n"
            "del caught\n"
            "conns.clear()\n")
        during = hkn.holders(db).get(holder.pid)
        if sys.version_info >= (3, 11):
            assert len(warned) == 1 and "still stepping" in warned[0], warned
            assert during is not None and during.db     # zombie: files still open
        else:
            assert warned == []
            assert during is None                       # 3.10 finalized the statement
        # Another process is not disturbed by the zombie.
        assert read_and_close(db)["integrity"] == "ok"
        holder.run("del cursor\nimport gc\ngc.collect()\n")
        assert wait_for(lambda: holder.pid not in hkn.holders(db), timeout=DEADLINE)
    assert read_and_close(db)["rows"] == list(range(20)) + [99]


# ------------------------------------------------------- reader elsewhere


def test_close_with_a_reader_in_another_process_does_not_wait(tmp_path):
    db = make_wal_db(tmp_path / "kanban.db", rows=5)
    with hermes_holder(db) as closer:
        with reader_process(db):
            result = closer.run(
                "import time\n"
                "conns[0].checkpoint_on_close = 'truncate'\n"
                "conns[0].executemany('INSERT INTO t VALUES (?)', [(i,) for i in range(50)])\n"
                "start = time.perf_counter()\n"
                "conns[0].close()\n"
                "elapsed = time.perf_counter() - start\n"
                "r = conns.pop().last_checkpoint\n"
                "result = [elapsed, r.mode, r.busy, hkn.stats()['checkpoints_busy']]\n")
            elapsed, mode, busy, busy_count = result
            print(f"\nclose() with timeout=120 and a reader in another process: "
                  f"{elapsed * 1e3:.3f} ms, busy={busy}")
            assert (mode, busy) == ("truncate", True)
            assert busy_count >= 1
        # With the reader gone the next truncating close empties the WAL.
        result = closer.run(
            "conn = kanban(DB)\n"
            "conn.checkpoint_on_close = 'truncate'\n"
            "keeper = kanban(DB)\n"
            "keeper.execute('SELECT 1 FROM t').fetchone()\n"
            "conn.execute('INSERT INTO t VALUES (-1)')\n"
            "conn.close()\n"
            "result = [conn.last_checkpoint.busy, os.path.getsize(DB + '-wal')]\n"
            "keeper.close()\n")
        assert result == [False, 0]
    assert len(read_and_close(db)["rows"]) == 5 + 50 + 1


# ------------------------------------------------------------------- fork


@pytest.mark.native
def test_fork_with_open_connections_leaves_the_parent_unharmed(tmp_path):
    db = make_wal_db(tmp_path / "kanban.db")
    seen = other_process("fork_with_open_connections", db)
    assert seen["statuses"] == [0, 0, 0]
    assert seen["stale"] == 0 and seen["locks_lost"] is False
    assert seen["integrity"] == "ok"
    assert read_and_close(db) == {"rows": [1, 2, 3], "integrity": "ok"}


# --------------------------------------------------------- interpreter exit


@pytest.mark.isolated
def test_interpreter_exit_with_open_connections_in_busy_daemon_threads(tmp_path):
    # Connections left open by the main module, by an idle daemon thread and
    # by daemon threads still committing when the interpreter exits.  Every
    # id whose commit returned is logged (after the commit) and must survive.
    db = make_wal_db(tmp_path / "kanban.db")
    log = str(tmp_path / "committed.log")
    result = run_isolated("exit_with_busy_daemon_threads", db, log,
                          env={"PYTHONWARNINGS": "ignore"}, timeout=DEADLINE)
    print(f"\nexit: status {result.returncode}, stderr {result.stderr[-500:]!r}")
    assert result.returncode == 0, result.stderr
    assert "Fatal" not in result.stderr and "Segmentation" not in result.stderr
    with open(log) as f:
        committed = {int(line) for line in f if line.strip()}
    assert {-1, -2} <= committed and len(committed) > 2
    seen = read_and_close(db)
    assert seen["integrity"] == "ok"
    missing = committed - set(seen["rows"])
    assert not missing, sorted(missing)[:10]
    print(f"{len(committed)} commits logged before exit, all present")


# --------------------------------------------- collected in another thread

# hermes' dispatcher thread opens, the collector runs anywhere: the base's
# close() refuses that thread and from 3.13 its dealloc no longer closes, so
# WalSafeConnection's finalizer closes the handle natively (a regression
# found by this test on 3.13).


def test_connection_collected_in_another_thread_closes_its_files(tmp_path):
    db = make_wal_db(tmp_path / "kanban.db")
    seen = other_process("collect_in_another_thread", db)
    print(f"\nafter collecting 10 connections opened in another thread: {seen}")
    assert seen == {"live": 0, "db": 0, "wal": 0, "shm": 0}
    assert read_and_close(db) == {"rows": list(range(10)), "integrity": "ok"}
