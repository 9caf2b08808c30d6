"""This process's own write locks on the database argv[1], taken with the
factory argv[2] ("plain": sqlite3.Connection, "walsafe": WalSafeConnection)
in the scenario argv[3] (a function below): the guarded connection must see
exactly what plain sqlite3 sees.  timeout=1: a refused lock shows as
"database is locked" within a second instead of hermes' 120.

Prints one JSON object: "seen", what the scenario saw (the SQLite error it
ended with, if any, as "Class: message"), then the integrity check of a
fresh connection; "guarded_after", set by a scenario that checks the guard
at its end (else null); "stepped", the guard_stepped_aside count.  Exits 0.

Each scenario keeps its connection in the global `conn` (and sets the global
`guarded_after`), as when they were executed at module level: a connection
left open by an error stays open through the integrity check."""
import json
import os
import sqlite3
import sys

import hermes_kanban_native as hkn


def locking_mode_exclusive():
    global conn
    conn = sqlite3.connect(db, factory=factory, isolation_level=None, timeout=1)
    seen.append(conn.execute("PRAGMA locking_mode = EXCLUSIVE").fetchone()[0])
    conn.execute("INSERT INTO t VALUES (1)")
    seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    conn.close()


def locking_mode_exclusive_then_normal():
    # After a first read the wal-index is shared memory, so NORMAL mode can
    # come back: the next transaction drops to SHARED, and the guard holds again.
    global conn, guarded_after
    conn = sqlite3.connect(db, factory=factory, isolation_level=None, timeout=1)
    seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    seen.append(conn.execute("PRAGMA locking_mode = EXCLUSIVE").fetchone()[0])
    conn.execute("INSERT INTO t VALUES (1)")
    seen.append(conn.execute("PRAGMA locking_mode = NORMAL").fetchone()[0])
    conn.execute("INSERT INTO t VALUES (2)")
    seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    guarded_after = hkn.sqlite_fds(db).guarded
    conn.close()


def unix_excl_vfs():
    global conn
    conn = sqlite3.connect(f"file:{db}?vfs=unix-excl", factory=factory, uri=True,
                           isolation_level=None, timeout=1)
    conn.execute("INSERT INTO t VALUES (1)")
    seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    conn.close()


def journal_mode_change():
    global conn
    conn = sqlite3.connect(db, factory=factory, isolation_level=None, timeout=1)
    conn.execute("INSERT INTO t VALUES (1)")
    seen.append(conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0])
    conn.execute("INSERT INTO t VALUES (2)")
    seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    seen.append(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
    conn.close()
    seen.append(os.path.exists(db + "-wal"))


SCENARIOS = {scenario.__name__: scenario for scenario in (
    locking_mode_exclusive, locking_mode_exclusive_then_normal, unix_excl_vfs,
    journal_mode_change)}

db, kind, name = sys.argv[1], sys.argv[2], sys.argv[3]
factory = {"plain": sqlite3.Connection, "walsafe": hkn.WalSafeConnection}[kind]
seen, guarded_after = [], None
try:
    SCENARIOS[name]()
except sqlite3.Error as exc:
    seen.append(f"{type(exc).__name__}: {exc}")
check = sqlite3.connect(db)
seen.append(check.execute("PRAGMA integrity_check").fetchone()[0])
check.close()
print(json.dumps({"seen": seen, "guarded_after": guarded_after,
                  "stepped": hkn.stats()["guard_stepped_aside"]}))
