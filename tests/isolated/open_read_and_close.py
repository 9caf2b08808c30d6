"""Another process opens the database argv[1] normally, reads, and closes:
as the last connection it sees, its close checkpoints and unlinks the
-wal/-shm pair.

Prints nothing; exits 0 (non-zero with a traceback if SQLite raised)."""
import sqlite3
import sys

conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM t").fetchone()
conn.close()
