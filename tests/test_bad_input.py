"""Runs README.md's "Bad input" table: every row must raise (or exit) as the
table says, so the documentation and the behaviour cannot drift apart."""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading

import pytest

import hermes_kanban_native as hkn
from hermes_kanban_native import WalSafeConnection
from hermes_kanban_native.__main__ import main as cli_main
from hermes_kanban_native.commands.databases import make_wal_db

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
ROW = re.compile(r"^\| `(?P<call>.+?)` \| (?P<what>.+?) \| (?P<outcome>.+?) \|$")


def table_rows():
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines()]
    return [(m["call"], m["outcome"]) for m in rows if m]


def test_the_table_is_there():
    assert len(table_rows()) >= 40


def dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def in_other_thread(function):
    errors = []

    def call():
        try:
            function()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def cli(*args):
    try:
        return cli_main(list(args))
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def namespace(tmp_path):
    db = make_wal_db(tmp_path / "board.db")
    not_a_db = tmp_path / "noise.db"
    not_a_db.write_bytes(os.urandom(4096))
    rollback_db = str(tmp_path / "rollback.db")
    plain = sqlite3.connect(rollback_db)
    plain.execute("CREATE TABLE t (x)")
    plain.commit()
    plain.close()
    opened = []

    def track(conn):
        opened.append(conn)
        return conn

    def bound(value):
        track(sqlite3.connect(db, factory=WalSafeConnection))   # the bound needs one open
        return type("Bound", (WalSafeConnection,), {"max_live_per_database": value})

    def policy(value):
        conn = track(sqlite3.connect(db, factory=WalSafeConnection))
        conn.checkpoint_on_close = value
        return conn

    def in_own_checkpoint(method):
        # From the trace callback of the connection's own checkpoint's
        # statement; sqlite3 swallows a callback's exception, so it is
        # raised again here.
        conn = track(sqlite3.connect(db, factory=WalSafeConnection))
        errors = []

        def callback(sql):
            try:
                getattr(conn, method)()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        conn.set_trace_callback(callback)
        conn.checkpoint("full", wait=False)
        conn.set_trace_callback(None)
        if errors:
            raise errors[0]

    closed = sqlite3.connect(db, factory=WalSafeConnection)
    closed.close()
    in_txn = track(sqlite3.connect(db, factory=WalSafeConnection, isolation_level=None))
    in_txn.execute("BEGIN")
    in_txn.execute("INSERT INTO t VALUES (1)")
    names = {
        "sqlite3": sqlite3, "hkn": hkn, "WalSafeConnection": WalSafeConnection,
        "db": db, "conn": track(sqlite3.connect(db, factory=WalSafeConnection)),
        "closed": closed, "in_txn": in_txn, "missing": str(tmp_path / "no" / "such.db"),
        "directory": str(tmp_path), "not_a_db": str(not_a_db), "rollback_db": rollback_db,
        "dead_pid": dead_pid(), "in_other_thread": in_other_thread, "cli": cli,
        "Bound": bound, "policy": policy, "in_own_checkpoint": in_own_checkpoint,
    }
    yield names
    for conn in opened:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - policy rows leave a closed connection
            pass


@pytest.mark.parametrize("call, outcome", table_rows(), ids=[row[0] for row in table_rows()])
def test_bad_input(namespace, call, outcome, capsys):
    exit_status = re.match(r"exit (\d+)", outcome)
    if exit_status:
        assert eval(call, namespace) == int(exit_status[1])  # noqa: S307 - our own README
        return
    name = re.match(r"`([\w.]+)`", outcome)[1]
    expected = eval(name, namespace)                         # noqa: S307
    with pytest.raises(expected) as info:
        eval(call, namespace)                                # noqa: S307
    assert str(info.value), "the exception must say what was wrong"
