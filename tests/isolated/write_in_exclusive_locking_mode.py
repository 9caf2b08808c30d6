"""Another process in exclusive locking mode: sets PRAGMA locking_mode =
EXCLUSIVE before its first read of the database argv[1], so that SQLite
takes the database's EXCLUSIVE lock before it opens the -shm (its wal-index
then lives in its own memory), commits the row 777, and closes.

Prints "committed", or the error SQLite gave ("database is locked" while
another process holds a lock on the database).  Exits 0 either way."""
import sqlite3
import sys

conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("SELECT count(*) FROM t").fetchone()
    conn.execute("INSERT INTO t VALUES (777)")
    print("committed")
except sqlite3.OperationalError as exc:
    print(exc)
finally:
    conn.close()
