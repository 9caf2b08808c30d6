"""A fork child closes its copy of a guarded connection to the database
argv[1] (no native work in the child): the parent's guard must stay until
the parent itself closes.

Prints "True" (guarded after the child's close) then "False" (after the
parent's close).  Exits 0; an assertion error if the guard was not taken."""
import os
import sys

import hermes_kanban_native as hkn

path = sys.argv[1]
conn = hkn.connect(path, isolation_level=None)
conn.execute("INSERT INTO t VALUES (1)")
assert hkn.sqlite_fds(path).guarded
pid = os.fork()
if pid == 0:
    conn.close()                 # the child's copy: no native work
    os._exit(0)
os.waitpid(pid, 0)
print(hkn.sqlite_fds(path).guarded)
conn.close()
print(hkn.sqlite_fds(path).guarded)
