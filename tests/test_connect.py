"""hkn.connect(): WAL probing, persist_wal, factory, failures; each test in
both modes (the fixture hkn)."""
from __future__ import annotations

import os
import sqlite3
import sys

import pytest

import hermes_kanban_native
from hermes_kanban_native.commands.databases import make_wal_db
from conftest import is_native


def journal_mode(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_connect_switches_a_new_database_to_wal(hkn, tmp_path):
    path = tmp_path / "new.db"
    conn = hkn.connect(path, isolation_level=None)
    assert isinstance(conn, hkn.WalSafeConnection)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert journal_mode(path) == "wal"


def test_connect_leaves_a_wal_database_alone(hkn, tmp_path):
    path = make_wal_db(tmp_path / "wal.db")
    inode = os.stat(path).st_ino
    seen = []
    conn = hkn.connect(path)
    conn.set_trace_callback(seen.append)
    conn.close()
    assert os.stat(path).st_ino == inode


def test_connect_wal_false_keeps_rollback_journal(hkn, tmp_path):
    path = tmp_path / "rollback.db"
    conn = hkn.connect(path, wal=False, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert journal_mode(path) == "delete"


def test_connect_memory_database(hkn):
    conn = hkn.connect(":memory:")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
    conn.close()


def test_connect_with_autocommit_false(hkn, tmp_path):
    if sys.version_info < (3, 12):
        pytest.skip("autocommit= exists from 3.12")
    path = tmp_path / "manual.db"
    conn = hkn.connect(path, autocommit=False)
    assert conn.autocommit is False
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert journal_mode(path) == "wal"


def test_connect_read_only_rollback_database_cannot_switch(hkn, tmp_path):
    path = tmp_path / "ro.db"
    plain = sqlite3.connect(path)
    plain.execute("CREATE TABLE t (x)")
    plain.commit()
    plain.close()
    with pytest.raises(sqlite3.OperationalError):
        hkn.connect(f"file:{path}?mode=ro", uri=True)
    assert hkn.live_connections(path) == []


def test_connect_passes_arguments_and_factory(hkn, tmp_path):
    class Mine(hkn.WalSafeConnection):
        pass

    conn = hkn.connect(tmp_path / "f.db", factory=Mine, timeout=120, isolation_level=None,
                       check_same_thread=False)
    assert type(conn) is Mine
    assert conn.isolation_level is None
    conn.close()

    plain = hkn.connect(tmp_path / "f.db", factory=sqlite3.Connection)
    assert type(plain) is sqlite3.Connection
    plain.close()


def test_connect_bad_arguments(hkn, tmp_path):
    with pytest.raises(TypeError):
        hkn.connect(tmp_path / "x.db", no_such_argument=1)
    with pytest.raises(sqlite3.OperationalError):
        hkn.connect(tmp_path / "missing" / "x.db")
    with pytest.raises(TypeError):
        hkn.connect(tmp_path / "x.db", factory=dict)


@pytest.mark.native
def test_persist_wal_keeps_sidecars_after_last_close(hkn, tmp_path):
    path = str(tmp_path / "persist.db")
    conn = hkn.connect(path, persist_wal=True, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")

    conn = hkn.connect(path, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (2)")
    conn.close()
    assert not os.path.exists(path + "-wal")


def test_persist_wal_errors(hkn, tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.close()
    if is_native(hkn):
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            hkn._native.set_persist_wal(conn, True)
    else:
        with pytest.raises(sqlite3.NotSupportedError, match="native"):
            hkn.connect(tmp_path / "y.db", persist_wal=True)
    with pytest.raises(TypeError, match="sqlite3.Connection"):
        hkn._native.set_persist_wal("not a connection", True)


def test_the_helpers_see_the_connections_of_their_own_mode(hkn, request, db):
    # In sql mode the fixture gives a copy of the package over a second
    # instance of the extension: its Python helpers must ask that instance,
    # and the package's own registry must not see its connections.
    assert hkn.sqlite_api()["mode"] == request.node.callspec.params["hkn"]
    conn = hkn.connect(db)
    assert [entry.path for entry in hkn.live_connections(db)] == [os.path.realpath(db)]
    assert len(hkn.sqlite_fds(db).live) == 1
    if hkn is not hermes_kanban_native:
        assert hermes_kanban_native.live_connections(db) == []
        assert hkn.WalSafeConnection is not hermes_kanban_native.WalSafeConnection
    conn.close()
    assert hkn.live_connections(db) == []
