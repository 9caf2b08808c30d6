"""The WAL databases the commands play in and the tests start from: one
helper, so that they all start from the same state."""
from __future__ import annotations

import sqlite3


def make_wal_db(path, rows=0, *, table="t (x)"):
    """make_wal_db(path, rows=0, *, table="t (x)") -> str

    Puts the database at ``path`` (str or path-like; created if missing) in
    WAL mode, creates ``table`` (its name and columns) unless it exists, and
    inserts ``rows``: a count (the values 0, 1, ... into a one-column table)
    or the rows themselves (tuples, one value per column).  A plain
    ``sqlite3`` connection does it in autocommit mode (each row its own
    transaction) and is closed before this returns, so no connection of
    this process holds the database afterwards.  Returns ``str(path)``.
    """
    if isinstance(rows, int):
        rows = [(i,) for i in range(rows)]
    name = table.split("(", 1)[0].strip()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table}")
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
    finally:
        conn.close()
    return str(path)
