"""Another writer, with timeout=0: tries to commit the row 2 to the database
argv[1] at once.

Prints "committed", or the error SQLite gave ("database is locked" while
someone holds the WAL write lock).  Exits 0 either way."""
import sqlite3
import sys

conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("COMMIT")
    print("committed")
except sqlite3.OperationalError as exc:
    print(exc)
