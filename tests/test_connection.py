"""WalSafeConnection: close-time checkpoint, drop-in behaviour, errors."""
from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import inspect
import os
import re
import sqlite3
import sys
import threading
import time
import traceback
import warnings

import pytest

from hermes_kanban_native import _native
from hermes_kanban_native.commands.databases import make_wal_db
from conftest import fds_on, is_native, reader_process

# Every test takes the fixture `hkn`: the package in native mode, then in
# SQL mode (conftest.py), so each runs in both.


def open_wal(hkn, path, *, threshold=0, **kwargs):
    """A WalSafeConnection in autocommit.  Its close checkpoints after any
    write (checkpoint_threshold 0), which is what most tests here look at;
    the default threshold has tests of its own."""
    kwargs.setdefault("isolation_level", None)
    conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, **kwargs)
    if threshold is not None:
        conn.checkpoint_threshold = threshold
    return conn


# ------------------------------------------------------------------ close


def test_close_checkpoints_what_this_connection_wrote(hkn, db):
    conn = open_wal(hkn, db)
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    before = hkn.stats()
    conn.close()
    result = conn.last_checkpoint
    assert isinstance(result, hkn.CheckpointResult)
    assert result.mode == "passive"
    assert result.busy is False
    assert result.log_frames > 0
    assert result.checkpointed_frames == result.log_frames
    after = hkn.stats()
    assert after["checkpoints"] == before["checkpoints"] + 1
    assert after["closed"] == before["closed"] + 1
    assert after["frames_checkpointed"] >= before["frames_checkpointed"] + result.log_frames


def _wal_frames(db):
    size = os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0
    return max(0, (size - 32) // (4096 + 24))


def _write_ticks(factory, db, ticks):
    """Gateway write ticks: connect, one INSERT, close.  Which closes
    checkpointed, and the most frames the WAL file held."""
    ran, most = [], 0
    for tick in range(ticks):
        conn = sqlite3.connect(db, factory=factory, isolation_level=None)
        conn.execute("INSERT INTO t VALUES (?)", (tick,))
        conn.close()
        ran.append(conn.last_checkpoint is not None)
        most = max(most, _wal_frames(db))
    return ran, most


def test_passive_close_checkpoints_once_the_threshold_of_frames_waits(hkn, db):
    assert hkn.WalSafeConnection.checkpoint_threshold == 256
    Small = type("Small", (hkn.WalSafeConnection,), {"checkpoint_threshold": 10})
    keeper = sqlite3.connect(db)        # keeps the WAL from SQLite's last-close checkpoint
    keeper.execute("SELECT count(*) FROM t").fetchone()
    before = hkn.stats()
    ran, most = _write_ticks(Small, db, 35)
    keeper.close()
    after = hkn.stats()
    if is_native(hkn) and hkn.sqlite_api()["guard"] == "available":
        # A frame or two per tick: the close that finds 10 waiting copies
        # them, the others leave the WAL alone, and it never grows past the
        # threshold and one tick's frames.
        assert 2 <= ran.count(True) <= 4, ran
        assert most <= 10 + 2, most
        assert after["checkpoints_skipped"] - before["checkpoints_skipped"] == ran.count(False)
    else:
        # No frame count without the guard's -shm descriptor: every close
        # that wrote checkpoints, as with a threshold of 0.
        assert all(ran), ran


def test_without_the_guard_every_write_close_checkpoints(hkn, db):
    Unguarded = type("Unguarded", (hkn.WalSafeConnection,), {"guard_wal": False})
    keeper = sqlite3.connect(db)
    keeper.execute("SELECT count(*) FROM t").fetchone()
    ran, _ = _write_ticks(Unguarded, db, 5)
    keeper.close()
    assert all(ran), ran


@pytest.mark.parametrize("bad", [-1, "10", 2.5, True, None, 10**30])
def test_invalid_threshold_still_checkpoints_and_closes_then_raises(hkn, db, bad):
    conn = open_wal(hkn, db, threshold=None)
    conn.checkpoint_threshold = bad
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    assert conn.last_checkpoint is not None     # run as with a threshold of 0
    conn.close()                                # closing again: a no-op


def test_subclass_that_skips_our_init_closes_on_collection(hkn, db):
    # Only the base's __init__ ran: nothing of ours to checkpoint, but the
    # collector must still close the handle, as plain sqlite3's would (from
    # 3.12 the base closes it in the finalizer that ours replaces).
    class BaseInitOnly(hkn.WalSafeConnection):
        def __init__(self, *args, **kwargs):
            sqlite3.Connection.__init__(self, *args, **kwargs)

    before = fds_on(db)
    conn = sqlite3.connect(db, factory=BaseInitOnly)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert fds_on(db) > before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)   # 3.13's own warning
        del conn
        gc.collect()
    assert fds_on(db) == before


def test_invalid_threshold_raises_at_the_close_of_a_reader_too(hkn, db):
    # What a setting means must not depend on what the connection did.
    conn = open_wal(hkn, db, threshold=None)
    conn.checkpoint_threshold = -1
    conn.execute("SELECT count(*) FROM t").fetchone()
    with pytest.raises(ValueError, match="-1"):
        conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def test_threshold_only_concerns_the_passive_policy(hkn, db):
    conn = open_wal(hkn, db, threshold=None)
    conn.checkpoint_on_close = "truncate"
    conn.checkpoint_threshold = "not read"
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert conn.last_checkpoint.mode == "truncate"


def test_reader_close_skips_the_passive_checkpoint(hkn, db):
    # A connection that wrote nothing added no frames: the default policy
    # leaves the WAL to the writers' autocheckpoint.
    conn = open_wal(hkn, db)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    skipped = hkn.stats()["checkpoints_skipped"]
    conn.close()
    assert conn.last_checkpoint is None
    assert hkn.stats()["checkpoints_skipped"] == skipped + 1


def test_truncate_policy_empties_the_wal(hkn, db):
    conn = open_wal(hkn, db)
    conn.checkpoint_on_close = "truncate"
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
    assert os.path.getsize(db + "-wal") > 0
    keeper = open_wal(hkn, db)      # keeps -wal from being unlinked by the last close
    keeper.execute("SELECT count(*) FROM t").fetchone()
    conn.close()
    assert conn.last_checkpoint.mode == "truncate"
    assert conn.last_checkpoint.log_frames == 0
    assert os.path.getsize(db + "-wal") == 0
    keeper.close()


@pytest.mark.parametrize("policy", ["truncate", "restart", "full"])
def test_close_with_reader_in_other_process_never_waits(hkn, db, policy):
    conn = open_wal(hkn, db, timeout=120)
    conn.execute("PRAGMA busy_timeout = 120000")
    conn.checkpoint_on_close = policy
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20)])
    with reader_process(db):
        conn.execute("INSERT INTO t VALUES (-1)")     # frames the reader cannot see
        start = time.perf_counter()
        conn.close()
        elapsed = time.perf_counter() - start
    print(f"close() with a reader open, policy={policy}: {elapsed * 1e3:.3f} ms")
    assert conn.last_checkpoint.mode == policy
    assert conn.last_checkpoint.busy is True
    assert hkn.stats()["checkpoints_busy"] >= 1


def test_close_is_idempotent(hkn, db):
    conn = open_wal(hkn, db)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    first = conn.last_checkpoint
    closed = hkn.stats()["closed"]
    conn.close()
    assert conn.last_checkpoint is first
    assert hkn.stats()["closed"] == closed


def test_off_policy_closes_without_checkpoint(hkn, db):
    conn = open_wal(hkn, db)
    conn.checkpoint_on_close = "off"
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert conn.last_checkpoint is None


def test_policy_on_subclass_and_instance(hkn, db):
    class Truncating(hkn.WalSafeConnection):
        checkpoint_on_close = "truncate"

    assert hkn.WalSafeConnection.checkpoint_on_close == "passive"
    conn = sqlite3.connect(db, factory=Truncating, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert conn.last_checkpoint.mode == "truncate"

    conn = sqlite3.connect(db, factory=Truncating, isolation_level=None)
    conn.checkpoint_on_close = "FULL"            # SQLite's own names are case-insensitive
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert conn.last_checkpoint.mode == "full"


def test_settings_follow_every_change_of_the_classes(hkn, db):
    # The class's settings are read once per type version: a change to the
    # class, to a base of it, or a descriptor in between must still show at
    # the very next close.
    class Base(hkn.WalSafeConnection):
        checkpoint_threshold = 0

    class Child(Base):
        checkpoint_on_close = "full"

    def close_after_a_write(factory=Child):
        conn = sqlite3.connect(db, factory=factory, isolation_level=None)
        conn.execute("INSERT INTO t VALUES (1)")
        conn.close()
        return conn.last_checkpoint.mode

    assert close_after_a_write() == "full"
    assert close_after_a_write() == "full"
    Child.checkpoint_on_close = "truncate"
    assert close_after_a_write() == "truncate"
    del Child.checkpoint_on_close                # back to WalSafeConnection's
    assert close_after_a_write() == "passive"
    Base.checkpoint_on_close = "restart"         # a base changes under the subclass
    assert close_after_a_write() == "restart"
    Base.checkpoint_threshold = 10 ** 6          # a passive close now waits for more frames
    Base.checkpoint_on_close = "passive"
    conn = sqlite3.connect(db, factory=Child, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    if is_native(hkn):
        assert conn.last_checkpoint is None     # the guard counts the frames: too few
    else:
        assert conn.last_checkpoint.mode == "passive"   # no count without the guard

    modes = iter(["full", "truncate", "full"])
    Child.checkpoint_on_close = property(lambda self: next(modes))
    Child.checkpoint_threshold = 0
    assert [close_after_a_write() for _ in range(3)] == ["full", "truncate", "full"]


def test_open_time_settings_follow_every_change_of_the_class(hkn, db):
    # guard_wal and max_live_per_database are read on every open, and what
    # the class's value means is remembered per type version: a change to
    # the class must show at the very next open, and a value whose truth
    # may change between reads is asked every time.
    native_guard = hkn.sqlite_api()["guard"] == "available"

    class Settings(hkn.WalSafeConnection):
        guard_wal = True
        max_live_per_database = 2

    def guarded():
        conn = sqlite3.connect(db, factory=Settings)
        taken = hkn.sqlite_fds(db).guarded
        conn.close()
        return taken

    def warned(count=3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kept = [sqlite3.connect(db, factory=Settings) for _ in range(count)]
        for conn in kept:
            conn.close()
        return len([w for w in caught if "max_live_per_database" in str(w.message)])

    if native_guard:
        assert [guarded(), guarded()] == [True, True]
        Settings.guard_wal = False
        assert [guarded(), guarded()] == [False, False]

        class Flips:
            def __init__(self):
                self.calls = 0

            def __bool__(self):
                self.calls += 1
                return self.calls % 2 == 1

        Settings.guard_wal = Flips()
        assert [guarded(), guarded(), guarded()] == [True, False, True]
    assert [warned(), warned()] == [1, 1]
    Settings.max_live_per_database = None
    assert warned() == 0
    Settings.max_live_per_database = 1
    assert warned() == 1
    Settings.max_live_per_database = 2 ** 70        # too large is a bad value, named
    first = sqlite3.connect(db, factory=Settings)
    with pytest.raises(ValueError, match=str(2 ** 70)):
        sqlite3.connect(db, factory=Settings)
    first.close()
    Settings.max_live_per_database = 2
    assert warned() == 1


@pytest.mark.parametrize("bad", ["sometimes", 3, None, b"passive"])
def test_invalid_policy_still_closes_then_raises(hkn, db, bad):
    conn = open_wal(hkn, db)
    conn.checkpoint_on_close = bad
    with pytest.raises(ValueError, match="'off', 'passive', 'full', 'restart', 'truncate'") as info:
        conn.close()
    assert repr(bad) in str(info.value)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


def test_open_write_transaction_is_skipped_and_discarded(hkn, db):
    conn = open_wal(hkn, db)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (42)")
    skipped = hkn.stats()["checkpoints_skipped"]
    conn.close()
    assert conn.last_checkpoint is None
    assert hkn.stats()["checkpoints_skipped"] == skipped + 1
    check = sqlite3.connect(db)
    assert check.execute("SELECT count(*) FROM t WHERE x = 42").fetchone() == (0,)
    check.close()


def test_open_read_transaction_is_skipped_in_both_modes(hkn, db):
    conn = open_wal(hkn, db)
    conn.execute("INSERT INTO t VALUES (1)")        # wrote: the passive policy would run
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM t").fetchone()
    before = hkn.stats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no "checkpoint failed" warning
        conn.close()
    after = hkn.stats()
    assert conn.last_checkpoint is None
    assert after["checkpoints_skipped"] == before["checkpoints_skipped"] + 1
    assert after["checkpoint_errors"] == before["checkpoint_errors"]


def test_legacy_transaction_mode_discards_like_sqlite3(hkn, db):
    # isolation_level="" : implicit BEGIN
    conn = sqlite3.connect(db, factory=hkn.WalSafeConnection)
    conn.execute("INSERT INTO t VALUES (7)")
    assert conn.in_transaction
    conn.close()
    check = sqlite3.connect(db)
    assert check.execute("SELECT count(*) FROM t WHERE x = 7").fetchone() == (0,)
    check.close()


@pytest.mark.native
def test_cursor_mid_iteration_is_reset_and_warned(hkn, db):
    make_wal_db(db, rows=10)
    conn = open_wal(hkn, db)
    conn.execute("INSERT INTO t VALUES (99)")
    cursor = conn.execute("SELECT x FROM t")
    assert cursor.fetchone() is not None              # stepped, not finished
    if sys.version_info >= (3, 11):
        with pytest.warns(ResourceWarning, match=r"kanban\.db.*1 statement\(s\) still stepping"):
            conn.close()
    else:
        conn.close()                                  # 3.10 finalizes every statement itself
    assert conn.last_checkpoint is not None and conn.last_checkpoint.busy is False
    del cursor
    gc.collect()
    assert fds_on(db) == 0


def test_wrong_thread_close_raises_and_does_nothing(hkn, db):
    conn = open_wal(hkn, db)
    conn.execute("INSERT INTO t VALUES (1)")
    errors = []

    def close_elsewhere():
        try:
            conn.close()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    before = hkn.stats()
    thread = threading.Thread(target=close_elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 1 and type(errors[0]) is sqlite3.ProgrammingError
    assert "same thread" in str(errors[0])
    assert conn.last_checkpoint is None
    assert hkn.stats()["checkpoints"] == before["checkpoints"]
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)    # still open
    conn.close()


def test_check_same_thread_false_closes_from_any_thread(hkn, db):
    conn = open_wal(hkn, db, check_same_thread=False)
    conn.execute("INSERT INTO t VALUES (1)")
    thread = threading.Thread(target=conn.close)
    thread.start()
    thread.join()
    assert conn.last_checkpoint is not None
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def test_concurrent_close_and_checkpoint_from_threads(hkn, db):
    # check_same_thread=False: closes and checkpoints racing from several
    # threads must serialise on the handle, never use it after it is freed.
    for _ in range(20):
        conn = open_wal(hkn, db, check_same_thread=False)
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20)])
        barrier = threading.Barrier(4)
        errors = []

        def worker(action):
            barrier.wait()
            try:
                action()
            except sqlite3.ProgrammingError:
                pass                                  # closed by a sibling first
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(a,))
                   for a in (conn.close, conn.close, conn.checkpoint,
                             lambda: conn.checkpoint("truncate", wait=False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    assert fds_on(db) == 0


@pytest.mark.parametrize("target", [":memory:", ""])
def test_memory_and_temporary_close_without_checkpoint(hkn, target):
    conn = sqlite3.connect(target, factory=hkn.WalSafeConnection)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    assert conn.last_checkpoint is None


def test_read_only_uri_closes_without_checkpoint(hkn, db):
    make_wal_db(db, rows=3)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, factory=hkn.WalSafeConnection)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
    conn.checkpoint_on_close = "truncate"
    conn.close()
    if is_native(hkn):
        assert conn.last_checkpoint is None
    else:
        # SQL cannot see a read-only open beforehand; the attempt is harmless
        # (SQLite refuses to write, or there is nothing to do).
        assert conn.last_checkpoint is None or conn.last_checkpoint.log_frames <= 0


def test_non_wal_database(hkn, tmp_path):
    path = str(tmp_path / "rollback.db")
    conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    result = conn.checkpoint()
    assert (result.busy, result.log_frames, result.checkpointed_frames) == (False, -1, -1)
    conn.checkpoint_on_close = "truncate"
    conn.close()
    assert conn.last_checkpoint is result               # nothing recorded at close
    assert not os.path.exists(path + "-wal")


# -------------------------------------------------------- explicit checkpoint


def test_checkpoint_modes(hkn, db):
    conn = open_wal(hkn, db)
    for mode in ("passive", "full", "restart", "truncate"):
        conn.execute("INSERT INTO t VALUES (1)")
        result = conn.checkpoint(mode)
        assert result.mode == mode and result.busy is False
        assert conn.last_checkpoint is result
    assert conn.checkpoint().mode == "passive"
    assert conn.checkpoint(mode="truncate", wait=True).log_frames == 0
    conn.close()


def test_checkpoint_signature(hkn):
    signature = inspect.signature(hkn.WalSafeConnection.checkpoint)
    assert list(signature.parameters) == ["self", "mode", "wait"]
    assert signature.parameters["wait"].kind is inspect.Parameter.KEYWORD_ONLY


def test_checkpoint_no_wait_with_reader(hkn, db):
    conn = open_wal(hkn, db, timeout=120)
    conn.execute("PRAGMA busy_timeout = 120000")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
    with reader_process(db):
        conn.execute("INSERT INTO t VALUES (-1)")
        start = time.perf_counter()
        result = conn.checkpoint("truncate", wait=False)
        elapsed = time.perf_counter() - start
    print(f"checkpoint('truncate', wait=False) with a reader: {elapsed * 1e3:.3f} ms")
    assert result.busy is True
    # the connection's own timeout is back for everything else
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (120000,)
    conn.close()


def test_checkpoint_with_open_transaction_is_locked(hkn, db):
    conn = open_wal(hkn, db)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1)")
    errors = hkn.stats()["checkpoint_errors"]
    with pytest.raises(sqlite3.OperationalError, match="locked") as info:
        conn.checkpoint()
    if sys.version_info >= (3, 11):
        assert info.value.sqlite_errorname == "SQLITE_LOCKED"
        assert info.value.sqlite_errorcode & 0xFF == sqlite3.SQLITE_LOCKED
    assert hkn.stats()["checkpoint_errors"] == errors + 1
    conn.execute("ROLLBACK")
    conn.close()


@pytest.mark.parametrize("mode", ["PASSIVE!", "", 0, None, "off"])
def test_checkpoint_unknown_mode(hkn, db, mode):
    conn = open_wal(hkn, db)
    with pytest.raises(ValueError, match="'passive', 'full', 'restart', 'truncate'"):
        conn.checkpoint(mode)
    conn.close()


def test_checkpoint_bad_wait_and_extra_arguments(hkn, db):
    conn = open_wal(hkn, db)
    with pytest.raises(TypeError):
        conn.checkpoint("passive", True)              # wait is keyword-only
    with pytest.raises(TypeError):
        conn.checkpoint(mode="passive", block=True)
    conn.close()


def test_checkpoint_closed_and_wrong_thread(hkn, db):
    conn = open_wal(hkn, db)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(
        pytest.raises(sqlite3.ProgrammingError, conn.checkpoint)))
    thread.start()
    thread.join()
    assert "same thread" in str(errors[0].value)
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        conn.checkpoint()


@pytest.mark.native
def test_native_checkpoint_is_invisible_to_trace_callback(hkn, db):
    seen = []
    conn = open_wal(hkn, db)
    conn.set_trace_callback(seen.append)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.checkpoint()
    conn.checkpoint("truncate")
    conn.checkpoint_on_close = "truncate"
    conn.close()
    assert seen == ["INSERT INTO t VALUES (1)"]
    assert conn.last_checkpoint.mode == "truncate"


def test_close_or_checkpoint_from_a_callback_of_its_checkpoint_is_refused(hkn, db):
    # A trace callback runs inside the checkpoint's own statements (wait=False
    # reads the busy timeout with one; SQL mode's checkpoints are statements):
    # a close there would free the handle under them (plain sqlite3 crashes
    # on a close inside its own execute).  Refused, as sqlite3 refuses the
    # recursive use of a cursor; the outer checkpoint or close completes.
    conn = open_wal(hkn, db)
    conn.execute("INSERT INTO t VALUES (1)")
    refused = []

    def callback(sql):
        for action in (conn.close, conn.checkpoint):
            try:
                action()
            except sqlite3.ProgrammingError as exc:
                refused.append(str(exc))

    conn.set_trace_callback(callback)
    result = conn.checkpoint("full", wait=False)
    conn.set_trace_callback(None)       # (a close inside sqlite3's own execute crashes)
    assert result.busy is False and result.log_frames >= 0
    assert refused and len(refused) % 2 == 0
    assert set(refused) == {
        "close() called from inside this connection's checkpoint (a callback of its statement)",
        "checkpoint() called from inside this connection's checkpoint (a callback of its "
        "statement)"}
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)

    conn.execute("INSERT INTO t VALUES (2)")
    refused.clear()
    conn.checkpoint_on_close = "truncate"
    conn.set_trace_callback(callback)
    conn.close()                        # SQL mode's close runs a statement too
    assert len(refused) % 2 == 0 and (refused != []) == (not is_native(hkn))
    assert conn.last_checkpoint.mode == "truncate"
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def test_uninitialized_instance(hkn, db):
    conn = hkn.WalSafeConnection.__new__(hkn.WalSafeConnection)
    with pytest.raises(sqlite3.ProgrammingError):
        conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.checkpoint()


# ---------------------------------------------------------- garbage collection


def _leak(hkn, path):
    conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None)
    conn.checkpoint_threshold = 0       # its one write is then checkpointed
    conn.execute("INSERT INTO t VALUES (1)")
    return conn


def test_garbage_collected_connection_is_checkpointed_closed_and_warned(hkn, db):
    opener_line = inspect.getsourcelines(_leak)[1] + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = hkn.stats()
        conn = _leak(hkn, db)
        assert fds_on(db) >= 1
        del conn
        gc.collect()
    resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(resource) == 1, [str(w.message) for w in caught]
    message = str(resource[0].message)
    assert os.path.realpath(db) in message
    assert f"test_connection.py:{opener_line}" in message
    after = hkn.stats()
    assert after["finalized"] == before["finalized"] + 1
    assert after["checkpoints"] == before["checkpoints"] + 1
    assert after["live"] == before["live"]
    assert fds_on(db) == 0


def test_collected_connection_whose_trace_callback_closes_it(hkn, db):
    # SQL mode's close-time checkpoint is a statement, whose trace callback
    # here closes the connection being finalized: refused, as in close(),
    # and the collector still checkpoints and closes it.
    refused = []
    conn = _leak(hkn, db)

    def callback(sql, box=[conn]):      # conn -> callback -> box -> conn: a cycle
        try:
            box[0].close()
        except sqlite3.ProgrammingError as exc:
            refused.append(str(exc))

    conn.set_trace_callback(callback)
    del conn, callback
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [issubclass(w.category, ResourceWarning) for w in caught] == [True]
    if is_native(hkn):
        assert refused == []            # a native checkpoint runs no statement
    else:
        assert refused and set(refused) == {
            "close() called from inside this connection's checkpoint (a callback of its "
            "statement)"}
    assert fds_on(db) == 0
    check = sqlite3.connect(db)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)
    check.close()


def test_garbage_collected_in_another_thread_still_closes(hkn, db):
    # The collector runs in whatever thread triggers it; the base's close()
    # refuses a thread other than the opener's, yet the files must close.
    opened = []
    thread = threading.Thread(target=lambda: opened.append(_leak(hkn, db)))
    thread.start()
    thread.join()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opened.clear()
        gc.collect()
    resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
    # Without native access only the base can close it there, and from 3.13
    # its finalizer adds its own "unclosed database" warning.
    expected = 1 if is_native(hkn) or sys.version_info < (3, 13) else 2
    assert len(resource) == expected
    del caught, resource            # the base's warning holds the connection
    gc.collect()
    assert fds_on(db) == 0
    assert fds_on(db + "-wal") == 0


def test_with_block_connection_left_to_gc(hkn, db):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            with sqlite3.connect(db, factory=hkn.WalSafeConnection) as conn:
                conn.execute("INSERT INTO t VALUES (1)")
        del conn
        gc.collect()
    assert len([w for w in caught if issubclass(w.category, ResourceWarning)]) == 5
    assert fds_on(db) == 0


def test_finalizer_policy_error_does_not_keep_files_open(hkn, db):
    conn = _leak(hkn, db)
    conn.checkpoint_on_close = "bogus"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen = []
        old_hook = sys.unraisablehook
        sys.unraisablehook = seen.append
        try:
            del conn
            gc.collect()
        finally:
            sys.unraisablehook = old_hook
    assert any(isinstance(u.exc_value, ValueError) for u in seen)
    assert fds_on(db) == 0


# --------------------------------------------------------------- drop-in


def test_is_a_sqlite3_connection(hkn, db):
    conn = open_wal(hkn, db)
    assert isinstance(conn, sqlite3.Connection)
    conn.row_factory = sqlite3.Row
    conn.execute("INSERT INTO t VALUES (5)")
    row = conn.execute("SELECT x FROM t").fetchone()
    assert row["x"] == 5
    assert conn.total_changes == 1
    conn.close()


def test_named_like_a_class_of_the_package(hkn, db):
    # Named as a class statement in hermes_kanban_native would name it: the
    # errors about an instance say 'WalSafeConnection', the repr of the
    # class says where it lives.
    cls = hkn.WalSafeConnection
    assert (cls.__module__, cls.__name__, cls.__qualname__) == (
        "hermes_kanban_native", "WalSafeConnection", "WalSafeConnection")
    assert repr(cls) == "<class 'hermes_kanban_native.WalSafeConnection'>"
    conn = open_wal(hkn, db)
    with pytest.raises(AttributeError,
                       match="^'WalSafeConnection' object has no attribute 'nothing'"):
        conn.nothing
    assert repr(conn).startswith("<hermes_kanban_native.WalSafeConnection object at ")
    conn.close()


def _connect_args():
    cases = [
        ((), {"timeout": 1.5}),
        ((), {"detect_types": sqlite3.PARSE_DECLTYPES}),
        ((), {"isolation_level": "IMMEDIATE"}),
        ((), {"isolation_level": None}),
        ((), {"check_same_thread": False}),
        ((), {"cached_statements": 7}),
        ((2.0, 0, None, False), {}),                  # the positional form
    ]
    if sys.version_info >= (3, 12):
        cases.append(((), {"autocommit": True}))
        cases.append(((), {"autocommit": False}))
    return cases


@pytest.mark.parametrize("args, kwargs", _connect_args())
def test_accepts_every_connect_argument(hkn, db, args, kwargs):
    if args and sys.version_info >= (3, 15):
        # 3.15 takes only the database positionally: refused the same way.
        with pytest.raises(TypeError) as plain:
            sqlite3.connect(db, *args, **kwargs)
        with pytest.raises(TypeError) as ours:
            sqlite3.connect(db, *args, factory=hkn.WalSafeConnection, **kwargs)
        assert str(ours.value) == str(plain.value)
        return
    with warnings.catch_warnings():
        # 3.13 deprecates positional arguments beyond the database; the
        # warning is sqlite3's own and equally raised for plain connections.
        warnings.simplefilter("ignore", DeprecationWarning)
        plain = sqlite3.connect(db, *args, **kwargs)
        ours = sqlite3.connect(db, *args, factory=hkn.WalSafeConnection, **kwargs)
    assert ours.isolation_level == plain.isolation_level
    if sys.version_info >= (3, 12):
        assert ours.autocommit == plain.autocommit
    ours.checkpoint_threshold = 0       # checkpoint after any write
    ours.execute("INSERT INTO t VALUES (1)")
    ours.commit()
    plain.close()
    ours.close()
    assert ours.last_checkpoint is not None


def test_uri_argument(hkn, db):
    conn = sqlite3.connect(f"file:{db}?cache=private", uri=True, factory=hkn.WalSafeConnection)
    conn.checkpoint_threshold = 0
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    assert conn.last_checkpoint is not None


def _bad_connect_args():
    cases = [
        {"timeout": "soon"},
        {"detect_types": "yes"},
        {"isolation_level": "SOMETIMES"},
        {"cached_statements": "many"},
        {"no_such_argument": 1},
    ]
    if sys.version_info >= (3, 12):
        cases.append({"autocommit": "maybe"})
    return cases


@pytest.mark.parametrize("kwargs", _bad_connect_args())
def test_bad_connect_arguments_raise_like_sqlite3(hkn, db, kwargs):
    with pytest.raises(Exception) as plain:
        sqlite3.connect(db, **kwargs)
    with pytest.raises(Exception) as ours:
        sqlite3.connect(db, factory=hkn.WalSafeConnection, **kwargs)
    assert type(ours.value) is type(plain.value)
    assert str(ours.value) == str(plain.value)
    gc.collect()
    assert hkn.live_connections(db) == []


def test_bad_database_paths(hkn, tmp_path):
    with pytest.raises(sqlite3.OperationalError) as plain:
        sqlite3.connect(tmp_path / "missing" / "x.db")
    with pytest.raises(sqlite3.OperationalError) as ours:
        sqlite3.connect(tmp_path / "missing" / "x.db", factory=hkn.WalSafeConnection)
    assert str(ours.value) == str(plain.value)
    with pytest.raises(TypeError):
        sqlite3.connect(42, factory=hkn.WalSafeConnection)


def test_pathlib_and_bytes_paths(hkn, tmp_path):
    path = tmp_path / "p.db"
    make_wal_db(path)
    for database in (path, os.fsencode(path)):
        conn = sqlite3.connect(database, factory=hkn.WalSafeConnection)
        assert hkn.live_connections(path)[0].path == str(path)
        conn.close()


def test_python_mixin_subclass_and_class_swap(hkn, db):
    class Mixin:
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tracked = True

        def close(self):
            self.closed_by_mixin = True
            super().close()

    Tracked = type("TrackedWalSafeConnection", (Mixin, hkn.WalSafeConnection),
                   {"checkpoint_threshold": 0})
    conn = sqlite3.connect(db, factory=Tracked, isolation_level=None)
    assert conn.tracked and isinstance(conn, hkn.WalSafeConnection)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert conn.closed_by_mixin and conn.last_checkpoint is not None

    plain = sqlite3.connect(db, factory=hkn.WalSafeConnection, isolation_level=None)
    plain.__class__ = Tracked           # and with it checkpoint_threshold 0
    plain.execute("INSERT INTO t VALUES (2)")
    plain.close()
    assert plain.closed_by_mixin and plain.last_checkpoint is not None
    back = sqlite3.connect(db, factory=Tracked)
    back.__class__ = hkn.WalSafeConnection
    back.close()


def test_subclasses_with_new_or_abstract_methods_behave_like_sqlite3(hkn, db):
    class Made(hkn.WalSafeConnection):
        def __new__(cls, *args, **kwargs):
            made = super().__new__(cls, *args, **kwargs)
            made.note = "made"          # the instance dict, made when first needed
            return made

    conn = sqlite3.connect(db, factory=Made)
    assert conn.note == "made"
    conn.checkpoint_on_close = "off"
    conn.close()
    assert conn.last_checkpoint is None

    for base in (sqlite3.Connection, hkn.WalSafeConnection):
        abstract = abc.ABCMeta("Abstract", (base,), {"f": abc.abstractmethod(lambda self: None)})
        with pytest.raises(TypeError, match="abstract"):
            sqlite3.connect(db, factory=abstract)


def test_closing_subclass_closes_on_with(hkn, db):
    with sqlite3.connect(db, factory=hkn.ClosingWalSafeConnection) as conn:
        conn.checkpoint_threshold = 0
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    assert conn.last_checkpoint is not None
    check = sqlite3.connect(db)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)
    check.close()

    with pytest.raises(ZeroDivisionError):
        with sqlite3.connect(db, factory=hkn.ClosingWalSafeConnection) as conn:
            conn.execute("INSERT INTO t VALUES (2)")
            1 / 0
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    check = sqlite3.connect(db)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)   # rolled back
    check.close()


def test_weakref_and_dict(hkn, db):
    import weakref
    conn = open_wal(hkn, db)
    ref = weakref.ref(conn)
    conn.anything = 1
    conn.close()
    del conn
    gc.collect()
    assert ref() is None


# ------------------------------------------------------- registry and stats


def test_live_connections_and_stats_from_threads(hkn, db):
    conn = open_wal(hkn, db)
    seen = []

    def look():
        seen.append((hkn.live_connections(db), hkn.stats()))

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    (live, stats), = seen
    assert len(live) == 1
    entry = live[0]
    assert entry.path == os.path.realpath(db)
    assert entry.thread == threading.current_thread().name
    assert entry.thread_id == threading.get_ident()
    assert entry.opened_at.startswith(__file__ + ":") or "test_connection.py:" in entry.opened_at
    assert stats["live"] >= 1
    conn.close()
    assert hkn.live_connections(db) == []


def _connect_helper(hkn, db):
    return sqlite3.connect(db, factory=hkn.WalSafeConnection)     # the helper's line


@contextlib.contextmanager
def _connect_context(hkn, db):
    conn = sqlite3.connect(db, factory=hkn.WalSafeConnection)
    try:
        yield conn
    finally:
        conn.close()


def _line_here():
    return inspect.currentframe().f_back.f_lineno


def test_opener_is_the_caller_of_a_connect_helper(hkn, db):
    helper_line = inspect.getsourcelines(_connect_helper)[1] + 1
    conn = _connect_helper(hkn, db); line = _line_here()         # noqa: E702
    entry, = hkn.live_connections(db)
    assert entry.opened_at == f"{__file__}:{line}"
    assert entry.opened_via[:2] == (
        f"{__file__}:{helper_line} in _connect_helper",
        f"{__file__}:{line} in test_opener_is_the_caller_of_a_connect_helper")
    assert len(entry.opened_via) <= 5
    conn.close()

    # A helper written as a context manager: contextlib's frame is skipped.
    with _connect_context(hkn, db) as conn:
        line = _line_here() - 1
        entry, = hkn.live_connections(db)
        assert entry.opened_at == f"{__file__}:{line}"
        assert "contextlib.py" in entry.opened_via[1]

    # Called directly by a test: the test is the opener, not pytest's code.
    conn = sqlite3.connect(db, factory=hkn.WalSafeConnection); line = _line_here()  # noqa: E702
    entry, = hkn.live_connections(db)
    assert entry.opened_at == f"{__file__}:{line}"
    assert entry.opened_via[0].startswith(f"{__file__}:{line} in test_opener")
    conn.close()


def test_opener_in_the_site_packages_inside_the_standard_library(hkn, db):
    # Without a venv (pyenv, python.org and source builds, Docker's python
    # images) site-packages lies inside the standard library's directory:
    # installed code there is not the standard library, and an installed
    # connect helper's caller there is the opener.
    app = os.path.join(os.path.dirname(os.__file__), "site-packages", "app")
    helper, board = {}, {}
    exec(compile("import sqlite3\n"
                 "def connect(db, factory):\n"
                 "    return sqlite3.connect(db, factory=factory)\n",
                 os.path.join(app, "db.py"), "exec"), helper)
    exec(compile("def open_board(connect, db, factory):\n"
                 "    return connect(db, factory)\n",
                 os.path.join(app, "board.py"), "exec"), board)
    conn = board["open_board"](helper["connect"], db, hkn.WalSafeConnection)
    entry, = hkn.live_connections(db)
    assert entry.opened_at == os.path.join(app, "board.py") + ":2", entry.opened_via
    conn.close()


def test_opener_outlives_the_code_that_opened_it(hkn, db):
    # A connection keeps the code objects of where it was opened alive
    # (csrc/opener.c): a helper that is gone, and other connections opened
    # and closed since, must change no report.  A borrowed reference here
    # reads freed memory, which CI's valgrind stage reports.
    def open_through_a_helper_that_goes_away(filename):
        namespace = {}
        exec(compile("import sqlite3\n"
                     "def open_it(path, factory):\n"
                     "    return sqlite3.connect(path, factory=factory)\n",
                     filename, "exec"), namespace)
        return namespace["open_it"](db, hkn.WalSafeConnection)

    first = open_through_a_helper_that_goes_away("/gone/first_helper.py")
    shared = [_connect_helper(hkn, db) for _ in range(3)]
    second = open_through_a_helper_that_goes_away("/gone/second_helper.py")
    for conn in shared:
        conn.close()
    del shared, conn
    gc.collect()
    assert sorted(entry.opened_via[0] for entry in hkn.live_connections(db)) == [
        "/gone/first_helper.py:3 in open_it", "/gone/second_helper.py:3 in open_it"]
    first.close()
    second.close()


def _stack_pair():
    # Both on one line, the opener's first: it must not find frame objects
    # that traceback made.
    here = _native._opener_here()[1]; stack = traceback.extract_stack()        # noqa: E702
    return here, [f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(stack)][:5]


class _Finalized:
    def __init__(self, seen):
        self.seen = seen

    def __del__(self):
        self.seen.append(_stack_pair())


def _stacks_in_awkward_places():
    """(place, opener's frames, traceback's frames) for each place."""
    seen = []

    def nested(depth):
        if depth:
            return nested(depth - 1)
        return _stack_pair()
    seen.append(("nested calls", *nested(8)))

    def generator():
        yield _stack_pair()
        yield _stack_pair()
    for pair in generator():
        seen.append(("generator", *pair))

    async def coroutine():
        await asyncio.sleep(0)
        return _stack_pair()
    seen.append(("coroutine", *asyncio.run(coroutine())))

    class Body:
        pair = _stack_pair()
    seen.append(("class body", *Body.pair))

    namespace = {"_stack_pair": _stack_pair}
    exec(compile("pair = _stack_pair()", "<exec'd>", "exec"), namespace)
    seen.append(("exec", *namespace["pair"]))

    pairs = []
    sorted([0], key=lambda _: pairs.append(_stack_pair()))
    seen.append(("a key function", *pairs[0]))
    seen.append(("map", *list(map(lambda _: _stack_pair(), [0]))[0]))
    seen.append(("comprehension", *[_stack_pair() for _ in range(1)][0]))

    finalized = []
    cycle = _Finalized(finalized)
    cycle.self = cycle
    del cycle
    gc.collect()
    seen += [("finalizer", *pair) for pair in finalized]

    result = []
    thread = threading.Thread(target=lambda: result.append(_stack_pair()))
    thread.start()
    thread.join()
    seen.append(("thread", *result[0]))
    return seen


def test_opener_stack_is_the_stack_traceback_sees():
    # The opener reads the interpreter's frames without making frame objects
    # where it can (csrc/stack.c); it must see what traceback sees, also where
    # C code, generators, coroutines and finalizers sit in between.
    for place, here, expected in _stacks_in_awkward_places():
        assert list(here) == expected, place


def test_resource_warning_names_the_caller_and_the_helper(hkn, db):
    helper_line = inspect.getsourcelines(_connect_helper)[1] + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = _connect_helper(hkn, db); line = _line_here()     # noqa: E702
        del conn
        gc.collect()
    message, = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert (f"opened at {__file__}:{line} (via {__file__}:{helper_line} in _connect_helper)"
            in message)


def test_live_connections_by_relative_and_symlinked_path(hkn, db, tmp_path, monkeypatch):
    link = tmp_path / "link.db"
    os.symlink(db, link)
    conn = sqlite3.connect(link, factory=hkn.WalSafeConnection)
    monkeypatch.chdir(tmp_path)
    assert len(hkn.live_connections("kanban.db")) == 1
    assert len(hkn.live_connections(link)) == 1
    assert hkn.live_connections(tmp_path / "other.db") == []
    conn.close()


def test_connection_closed_through_the_base_leaves_the_registry(hkn, db):
    conn = open_wal(hkn, db)
    sqlite3.Connection.close(conn)
    assert hkn.live_connections(db) == []
    conn.close()


def test_stats_keys(hkn):
    assert set(hkn.stats()) >= {
        "opened", "closed", "finalized", "live", "checkpoints", "checkpoints_busy",
        "checkpoints_skipped", "checkpoint_errors", "frames_checkpointed",
    }


def test_sqlite_api_reports_the_mode(hkn):
    api = hkn.sqlite_api()
    assert api["mode"] in ("native", "sql")
    assert api["sqlite_version"] == sqlite3.sqlite_version
    if is_native(hkn):
        assert api["self_check"] == "passed" and "sqlite" in api["library"]
        assert api["reason"] is None
    else:
        assert api["library"] is None and api["reason"]


# ------------------------------------------------------------- leak bound


def _bounded(hkn):
    """The mode's connection type with a bound of 8."""
    return type("Bounded", (hkn.WalSafeConnection,), {"max_live_per_database": 8})


def test_default_bound(hkn):
    assert hkn.WalSafeConnection.max_live_per_database == 64


def test_bound_collects_abandoned_connections(hkn, db):
    Bounded = _bounded(hkn)
    was_enabled = gc.isenabled()
    gc.disable()                    # a busy process where collections are rare
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            before = hkn.stats()
            high_water = 0
            for _ in range(100):
                with sqlite3.connect(db, factory=Bounded) as conn:    # never closed
                    conn.execute("INSERT INTO t VALUES (1)")
                high_water = max(high_water, fds_on(db + "-wal"))
            del conn
            gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    after = hkn.stats()
    if sys.version_info >= (3, 11):
        # 3.10 frees an unclosed connection at once (no reference cycle)
        assert after["bound_collections"] > before["bound_collections"]
    assert after["finalized"] - before["finalized"] == 100
    # each open connection holds one -wal descriptor: never more than the bound
    assert high_water <= Bounded.max_live_per_database
    assert fds_on(db) == 0


def test_bound_warns_once_naming_the_openers(hkn, db):
    Bounded = _bounded(hkn)
    kept = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            kept.append(sqlite3.connect(db, factory=Bounded))
    bound = [w for w in caught if "max_live_per_database=8" in str(w.message)]
    assert len(bound) == 1
    assert issubclass(bound[0].category, ResourceWarning)
    assert "test_connection.py:" in str(bound[0].message) and "(x8)" in str(bound[0].message)
    assert len(hkn.live_connections(db)) == 12          # opened anyway
    for conn in kept:
        conn.close()


def test_bound_names_only_connections_still_open(hkn, db):
    # One closed through the base class stays registered until collected,
    # but holds no handle: the warning must not send anyone looking for it.
    Bounded = _bounded(hkn)
    kept = []

    def open_one():
        kept.append(sqlite3.connect(db, factory=Bounded))
        return inspect.currentframe().f_back.f_lineno

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        closed_line = open_one()
        sqlite3.Connection.close(kept[0])
        open_lines = {open_one() for _ in range(8)}
        open_one()                                  # the ninth open: over the bound
    bound = [str(w.message) for w in caught if "max_live_per_database=8" in str(w.message)]
    assert len(bound) == 1, bound
    assert f"test_connection.py:{closed_line} " not in bound[0]
    assert all(f"test_connection.py:{line} " in bound[0] for line in open_lines), bound[0]
    for conn in kept:
        conn.close()


def _remembered(hkn, db):
    """Whether the module still remembers `db` as over its bound."""
    path = os.path.realpath(db)
    return any(isinstance(ref, set) and path in ref for ref in gc.get_referents(hkn._native))


def test_bound_forgets_a_database_once_its_connections_are_gone(hkn, db):
    Bounded = _bounded(hkn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        kept = [sqlite3.connect(db, factory=Bounded) for _ in range(12)]
    assert _remembered(hkn, db)         # over the bound: warned once, remembered
    for conn in kept:
        conn.close()
    assert not _remembered(hkn, db)


def test_bound_warns_again_once_a_database_was_left_and_collected(hkn, db):
    # The episode ends when the last connection to the database goes, also
    # when that one was closed through the base's close() or only abandoned:
    # the next excess then collects and warns anew.
    Bounded = _bounded(hkn)

    def excess():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kept = [sqlite3.connect(db, factory=Bounded) for _ in range(10)]
        return kept, [w for w in caught if "max_live_per_database=8" in str(w.message)]

    kept, warned = excess()
    assert len(warned) == 1
    sqlite3.Connection.close(kept[0])           # behind the type's back
    for conn in kept[2:]:
        conn.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del kept, conn
        gc.collect()                            # kept[0] and the abandoned kept[1]
    assert hkn.live_connections(db) == []
    assert not _remembered(hkn, db)
    kept, warned = excess()
    assert len(warned) == 1
    for conn in kept:
        conn.close()


def test_bound_forgets_a_database_left_by_init_onto_another(hkn, db, tmp_path):
    # The last connection to a remembered database, closed through the
    # base's close() and then initialised onto another database, leaves the
    # first: it is forgotten then, not at the next open of it.
    Bounded = _bounded(hkn)
    other = make_wal_db(str(tmp_path / "other.db"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        kept = [sqlite3.connect(db, factory=Bounded) for _ in range(10)]
    assert _remembered(hkn, db)
    for conn in kept[1:]:
        conn.close()
    assert _remembered(hkn, db)                 # kept[0] is still open on it
    sqlite3.Connection.close(kept[0])           # behind the type's back
    assert _remembered(hkn, db)                 # still registered, so still counted
    kept[0].__init__(other)
    assert not _remembered(hkn, db)
    assert hkn.live_connections(db) == []
    assert len(hkn.live_connections(other)) == 1
    kept[0].close()


def test_bound_counts_each_database_on_its_own(hkn, db, tmp_path):
    Bounded = _bounded(hkn)
    other = make_wal_db(str(tmp_path / "other.db"))
    before = hkn.stats()["bound_collections"]
    kept = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Alternating, so that each open names its database with a new str.
        for _ in range(6):
            kept.append(sqlite3.connect(db, factory=Bounded))
            kept.append(sqlite3.connect(other, factory=Bounded))
        assert not [w for w in caught if "max_live_per_database" in str(w.message)]
        assert hkn.stats()["bound_collections"] == before
        for _ in range(3):
            kept.append(sqlite3.connect(other, factory=Bounded))
    bound = [str(w.message) for w in caught if "max_live_per_database" in str(w.message)]
    assert len(bound) == 1
    assert f"8 WalSafeConnections to {os.path.realpath(other)!r} are open" in bound[0]
    for conn in kept:
        conn.close()


def test_bound_leaves_out_connections_closed_by_the_base_close(hkn, db):
    # sqlite3.Connection.close(conn) closes the handle behind the type's
    # back: those connections stay registered until collected, but are not
    # open, and must not count towards the bound.
    Bounded = _bounded(hkn)
    kept = [sqlite3.connect(db, factory=Bounded) for _ in range(8)]
    for conn in kept:
        sqlite3.Connection.close(conn)
    before = hkn.stats()["bound_collections"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extra = sqlite3.connect(db, factory=Bounded)
    assert not [w for w in caught if "max_live_per_database" in str(w.message)]
    assert hkn.stats()["bound_collections"] == before
    assert len(hkn.live_connections(db)) == 1
    extra.close()
    del kept
    gc.collect()


@pytest.mark.parametrize("value", [None, 0])
def test_bound_can_be_turned_off(hkn, db, value):
    class Unbounded(hkn.WalSafeConnection):
        max_live_per_database = value

    kept = [sqlite3.connect(db, factory=Unbounded) for _ in range(70)]
    assert len(hkn.live_connections(db)) == 70
    for conn in kept:
        conn.close()


@pytest.mark.parametrize("value", ["64", -1, 2.5, True])
def test_bad_bound_is_a_clear_error_and_leaves_nothing_open(hkn, db, value):
    class Broken(hkn.WalSafeConnection):
        max_live_per_database = value

    # The bound is read when one is open.
    keeper = sqlite3.connect(db, factory=hkn.WalSafeConnection)
    with pytest.raises(ValueError, match="max_live_per_database") as info:
        sqlite3.connect(db, factory=Broken)
    assert repr(value) in str(info.value)
    gc.collect()
    assert len(hkn.live_connections(db)) == 1
    keeper.close()
    assert fds_on(db) == 0


# ------------------------------------------------------ re-initialisation


@pytest.mark.parametrize("factory", ["Connection", "WalSafeConnection"])
def test_init_again_closes_the_old_database_and_opens_the_new(hkn, tmp_path, factory):
    factory = sqlite3.Connection if factory == "Connection" else hkn.WalSafeConnection
    first = make_wal_db(tmp_path / "first.db")
    second = make_wal_db(tmp_path / "second.db")
    conn = sqlite3.connect(first, factory=factory)
    conn.execute("INSERT INTO t VALUES (1)")        # uncommitted: discarded, as sqlite3 does
    before = hkn.stats()
    conn.__init__(second, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("PRAGMA database_list").fetchone()[2] == os.path.realpath(second)
    if factory is hkn.WalSafeConnection or sys.version_info >= (3, 11):
        # (CPython 3.10's own re-initialisation leaves the old handle open.)
        assert fds_on(first) == 0                   # the old handle is gone
    check = sqlite3.connect(first)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (0,)
    check.close()
    if factory is hkn.WalSafeConnection:
        after = hkn.stats()
        # One close of the old database, through our close path, one open.
        assert after["closed"] - before["closed"] == 1
        assert after["opened"] - before["opened"] == 1
        assert after["live"] == before["live"]
        assert hkn.live_connections(first) == []
        assert len(hkn.live_connections(second)) == 1
        if hkn.sqlite_api()["guard"] == "available":
            assert not hkn.sqlite_fds(first).guarded
            assert hkn.sqlite_fds(second).guarded
    conn.close()
    assert fds_on(second) == 0


def test_init_again_from_another_thread_is_refused_like_close(hkn, db):
    conn = open_wal(hkn, db)
    errors = []

    def other():
        try:
            conn.__init__(db)
        except sqlite3.ProgrammingError as exc:
            errors.append(exc)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    if is_native(hkn):
        assert len(errors) == 1 and "thread" in str(errors[0])
    conn.execute("SELECT 1")
    conn.close()


def test_the_module_shows_the_gc_every_object_it_holds(hkn):
    held = gc.get_referents(hkn._native)
    expected = [sqlite3.Connection, sqlite3.Error, sqlite3.InterfaceError, sqlite3.DatabaseError,
                sqlite3.DataError, sqlite3.OperationalError, sqlite3.IntegrityError,
                sqlite3.InternalError, sqlite3.ProgrammingError, sqlite3.NotSupportedError,
                hkn.WalSafeConnection, hkn.CheckpointResult, sys.modules["sqlite3"],
                vars(sqlite3.Connection)["close"]]
    missing = [obj for obj in expected if not any(ref is obj for ref in held)]
    assert missing == []
