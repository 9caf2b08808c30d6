"""10,000 open/(write)/checkpoint/close cycles of a WalSafeConnection to the
database argv[1], after 500 to warm caches and interned strings: nothing
may grow per cycle.

Prints four integers on one line: the change in WalSafeConnection's
reference count, in allocated blocks, in open descriptors, and the live
connections left.  Exits 0."""
import gc
import os
import sqlite3
import sys

import hermes_kanban_native as hkn

WalSafe = hkn.WalSafeConnection


def cycle(n):
    for i in range(n):
        conn = sqlite3.connect(sys.argv[1], factory=WalSafe, isolation_level=None)
        if i % 2:
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.checkpoint()
        conn.close()


cycle(500)                              # warm-up: caches, interned strings
gc.collect()
refs = sys.getrefcount(WalSafe)
blocks = sys.getallocatedblocks()
fds = len(os.listdir("/proc/self/fd"))
cycle(10_000)
gc.collect()
print(sys.getrefcount(WalSafe) - refs, sys.getallocatedblocks() - blocks,
      len(os.listdir("/proc/self/fd")) - fds, hkn.stats()["live"])
