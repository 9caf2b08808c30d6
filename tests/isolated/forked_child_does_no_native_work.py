"""A fork child of a process with a WalSafeConnection to the database
argv[1] (warnings are errors): its checkpoint() must refuse with "forked
child" and its close must be a plain close, with no checkpoint; the parent
goes on unharmed and its own close checkpoints.

Prints "ok".  Exits 0; an assertion error (with the child's status: 3 the
checkpoint ran, 4 another error, 5 the close checkpointed) otherwise."""
import os
import sqlite3
import sys
import warnings

import hermes_kanban_native as hkn

warnings.simplefilter("error")
conn = sqlite3.connect(sys.argv[1], factory=hkn.WalSafeConnection, isolation_level=None)
conn.checkpoint_threshold = 0          # a close after a write checkpoints
conn.execute("INSERT INTO t VALUES (1)")
pid = os.fork()
if pid == 0:
    code = 0
    try:
        conn.checkpoint()
        code = 3                       # must refuse
    except sqlite3.ProgrammingError as exc:
        code = 0 if "forked child" in str(exc) else 4
    before = hkn.stats()["checkpoints"]
    conn.close()                       # plain close, no checkpoint
    if hkn.stats()["checkpoints"] != before or conn.last_checkpoint is not None:
        code = 5
    os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
conn.execute("INSERT INTO t VALUES (2)")
assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
conn.close()
assert conn.last_checkpoint is not None and not conn.last_checkpoint.busy
print("ok")
