"""The guard's last release, after SQLite closed the -shm of the database
argv[1] and opened it again (same descriptor number, same inode) with OFD
locks of its own: the release must leave SQLite's dead-man-switch lock
alone.  Another process keeps the -shm from being unlinked.

Prints "1 1" (guarded -shm files, dead-man-switch locks) before the
release and "1" (dead-man-switch locks) after it.  Exits 0; an assertion
error (non-zero status) if the -shm was not reopened as expected."""
import os
import sqlite3
import sys

import hermes_kanban_native as hkn
from hermes_kanban_native import _native

path = sys.argv[1]


def dms_locks():
    fd = hkn.sqlite_fds(path).shm[0].fd
    st = os.stat(path + "-shm")
    return [row for row in _native._scan_fd_locks(os.getpid(), fd)
            if row[0] == "OFDLCK" and row[6] == 128 and row[5] == st.st_ino]


plain = sqlite3.connect(path)
plain.execute("SELECT count(*) FROM t").fetchone()   # -shm opened, POSIX locks
first = hkn.connect(path)
first.execute("SELECT count(*) FROM t").fetchone()
first.checkpoint()                                   # the guard locks the DMS
second = sqlite3.connect(path, factory=hkn.WalSafeConnection)  # a claim, no read
fd, ino = hkn.sqlite_fds(path).shm[0].fd, os.stat(path + "-shm").st_ino
plain.close()
first.close()                                        # SQLite closes the -shm
again = sqlite3.connect(path)
again.execute("SELECT count(*) FROM t").fetchone()   # and opens it again
assert (hkn.sqlite_fds(path).shm[0].fd, os.stat(path + "-shm").st_ino) == (fd, ino)
print(hkn.stats()["shm_ofd_open"], len(dms_locks()))
second.close()                                       # the guard's last release
print(len(dms_locks()))
again.close()
