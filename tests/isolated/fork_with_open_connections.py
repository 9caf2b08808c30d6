"""A hermes process with three connections to the database argv[1] (one
that wrote, one with a stepped, unfinished cursor, one inside a write
transaction) forks three children that end three ways: collect the
connections then sys.exit, sys.exit (atexit runs), os._exit.  No child may
do native work; the parent must be unharmed.

Prints one JSON object: the children's exit statuses (0 each; 3 if a child
checkpointed), the parent's stale descriptors and lost locks, its integrity
check, and the busy flag of each close-time checkpoint.  Exits 0."""
import gc
import json
import os
import sys
import warnings

import hermes_kanban_native as hkn

from hermes_connect import kanban

DB = sys.argv[1]
warnings.simplefilter("ignore", ResourceWarning)
conns = [kanban(DB) for _ in range(3)]
conns[0].execute("INSERT INTO t VALUES (1)")
cursor = conns[1].execute("SELECT x FROM t")         # stepped, unfinished
cursor.fetchone()
conns[2].execute("BEGIN IMMEDIATE")                   # a write transaction open
conns[2].execute("INSERT INTO t VALUES (2)")
before = hkn.stats()
children = []
for how in ("gc-then-exit", "interpreter-exit", "os-exit"):
    pid = os.fork()
    if pid == 0:
        code = 0
        if how == "gc-then-exit":
            child_conns = conns[:]
            conns.clear()
            del child_conns, cursor
            gc.collect()
        if hkn.stats()["checkpoints"] != before["checkpoints"]:
            code = 3                                 # native work in the child
        if how == "os-exit":
            os._exit(code)
        sys_exit = __import__("sys").exit
        sys_exit(code)                                # atexit runs here
    children.append(pid)
statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
conns[2].execute("COMMIT")
conns[0].execute("INSERT INTO t VALUES (3)")
health = hkn.sqlite_fds(DB)
check = conns[0].execute("PRAGMA integrity_check").fetchone()[0]
del cursor
for conn in conns:
    conn.close()
print(json.dumps({"statuses": statuses, "stale": len(health.stale),
                  "locks_lost": health.locks_lost, "integrity": check,
                  "busy": [c.last_checkpoint.busy for c in conns
                           if c.last_checkpoint is not None]}))
