"""A fork child inherits SQLite's -shm descriptor of the database argv[1];
after the parent's last close the child, still alive, must keep none of
the parent's OFD locks on the -shm (it gets an open file description of its
own).

Prints two numbers: the lock lines in /proc/locks on the -shm's inode
before the fork (at least 1) and after the parent's close (0).  Exits 0."""
import os
import sys

import hermes_kanban_native as hkn

path = sys.argv[1]
conn = hkn.connect(path, isolation_level=None)
conn.execute("INSERT INTO t VALUES (1)")
ino = os.stat(path + "-shm").st_ino
held = [line for line in open("/proc/locks") if f":{ino} " in line]
r, w = os.pipe()
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(ready_w, b"x")     # the fork handlers have run
    os.read(r, 1)
    os._exit(0)
os.read(ready_r, 1)
conn.close()                # the last close: -shm unlinked and closed
left = [line for line in open("/proc/locks") if f":{ino} " in line]
os.write(w, b"x")
os.waitpid(pid, 0)
print(len(held), len(left))
