"""Holds a read transaction open on the database argv[1] (its snapshot keeps
the WAL from being reset) until a line arrives on stdin.

Prints "ready" once the transaction is open; commits, closes and exits 0
after reading the line.  Run by conftest.reader_process()."""
import sqlite3
import sys

conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM t").fetchone()
print("ready", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
