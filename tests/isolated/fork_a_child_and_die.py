"""A parent opens the database argv[1] with the factory argv[2] ("plain":
sqlite3.Connection, "walsafe": WalSafeConnection), forks a child that never
uses SQLite, and dies without closing.  The child sleeps 60 s with its
stdout and stderr on /dev/null (the test's pipes close with the parent); the
test kills it.

Prints the child's pid.  Exits 0 (os._exit: no close, no atexit)."""
import os
import sqlite3
import sys
import time

import hermes_kanban_native as hkn

factory = {"plain": sqlite3.Connection, "walsafe": hkn.WalSafeConnection}[sys.argv[2]]
conn = sqlite3.connect(sys.argv[1], factory=factory, isolation_level=None)
conn.execute("INSERT INTO t VALUES (1)")
child = os.fork()
if child == 0:
    quiet = os.open(os.devnull, os.O_RDWR)
    os.dup2(quiet, 1)               # the test's pipes close with the parent
    os.dup2(quiet, 2)
    time.sleep(60)                  # never touches SQLite; killed by the test
    os._exit(0)
print(child, flush=True)
os._exit(0)                         # dies without closing
