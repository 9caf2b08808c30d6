"""A stray close of the -shm while this process holds the WAL write lock,
then another process (the script argv[3], run on the database) tries to
write.  argv[1] is the database; argv[2] is "guard" for a guarded
connection, anything else for none.

Prints three lines: how SQLite's -shm locks are taken ("ofd" or "posix"),
what the other writer printed ("committed" or its error), and what this
process's COMMIT gave ("committed" or its error).  Exits 0."""
import os
import sqlite3
import subprocess
import sys

import hermes_kanban_native as hkn


class Factory(hkn.WalSafeConnection):
    guard_wal = sys.argv[2] == "guard"


path, other_writer = sys.argv[1], sys.argv[3]
conn = sqlite3.connect(path, factory=Factory, isolation_level=None)
conn.execute("INSERT INTO t VALUES (0)")        # opens the -shm; a frame in the WAL
sqlite3.connect(path, factory=Factory).close()  # the guard, if any, now holds the DMS too
conn.execute("BEGIN IMMEDIATE")                 # holds the WAL write lock
conn.execute("INSERT INTO t VALUES (1)")
os.close(os.open(path + "-shm", os.O_RDONLY))   # a stray close mid-transaction
other = subprocess.run([sys.executable, other_writer, path], capture_output=True,
                       text=True, check=True).stdout.strip()
try:
    conn.execute("COMMIT")
    committed = "committed"
except sqlite3.OperationalError as exc:
    committed = str(exc)
conn.close()
print(hkn.sqlite_api()["shm_locks"].split(":")[0])
print(other)
print(committed)
