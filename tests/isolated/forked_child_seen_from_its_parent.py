"""How sqlite_fds() sees a forked child of a process that holds a connection
to the database argv[1] (argv[2]: "walsafe" or "plain" for the child's own
connection): before the child opens one, while it is open, and after it
closed it.  The parent holds a guarded connection throughout.

Prints one line per phase: "<phase> locks_lost=<bool> guarded=<bool>"."""
import os
import sqlite3
import sys

import hermes_kanban_native as hkn

path, kind = sys.argv[1], sys.argv[2]
factory = hkn.WalSafeConnection if kind == "walsafe" else sqlite3.Connection
held = hkn.connect(path, isolation_level=None)
held.execute("SELECT count(*) FROM t").fetchone()
to_child_r, to_child_w = os.pipe()
to_parent_r, to_parent_w = os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        os.write(to_parent_w, b"1")
        os.read(to_child_r, 1)
        conn = sqlite3.connect(path, factory=factory, isolation_level=None)
        conn.execute("INSERT INTO t VALUES (1)")
        os.write(to_parent_w, b"2")
        os.read(to_child_r, 1)
        conn.close()
        os.write(to_parent_w, b"3")
        os.read(to_child_r, 1)
        code = 0
    finally:
        os._exit(code)
for phase in ("before", "open", "closed"):
    assert os.read(to_parent_r, 1)
    seen = hkn.sqlite_fds(path, pid=pid)
    print(f"{phase} locks_lost={seen.locks_lost} guarded={seen.guarded}", flush=True)
    os.write(to_child_w, b"x")
_, status = os.waitpid(pid, 0)
assert status == 0, status
held.close()
