"""A holder whose stray close of the -shm dropped its dead-man-switch lock,
writing while other processes open the database argv[1]; argv[2] is
"guard" for a guarded connection, anything else for none.

Prints "ready" after the stray close, then commits a row at a time until
the file <database>.stop appears (or 20 s pass); then prints one line: the
number of rows it wrote and the result of PRAGMA integrity_check.  Dies of
SIGBUS (non-zero status) if a new process rebuilt the -shm it has mapped."""
import os
import sys
import time

import hermes_kanban_native as hkn


class Factory(hkn.WalSafeConnection):
    guard_wal = sys.argv[2] == "guard"


path = sys.argv[1]
conn = hkn.connect(path, factory=Factory, isolation_level=None)
conn.execute("SELECT count(*) FROM t").fetchone()
os.close(os.open(path + "-shm", os.O_RDONLY))   # drops the dead-man-switch lock
print("ready", flush=True)
written = 0
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not os.path.exists(path + ".stop"):
    conn.execute("INSERT INTO t VALUES (?)", (written,))
    conn.execute("SELECT count(*) FROM t").fetchone()
    written += 1
print(written, conn.execute("PRAGMA integrity_check").fetchone()[0], flush=True)
conn.close()
