"""A writer for test_kill.py that loops until SIGKILL: open a
WalSafeConnection to the database argv[1] with checkpoint_on_close argv[2],
BEGIN IMMEDIATE, insert argv[4] rows with the unique ids "<argv[3]>-<n>",
commit, report the ids, close (with the close-time checkpoint).

Writes "go" on stdout once the first connection is open, then the ids of
each transaction, one per line, only after commit() returned.  Keeps the
phase it is in (1 opening, 2 in transaction, 3 committing, 4 between commit
and report, 5 closing, 6 closed) in the first byte of the file argv[5],
mapped MAP_SHARED so that it survives the kill.  Never exits by itself."""
import mmap
import os
import sqlite3
import sys

import hermes_kanban_native as hkn

path, policy, prefix, per_txn, phase_path = sys.argv[1:6]
per_txn = int(per_txn)
fd = os.open(phase_path, os.O_RDWR)
phase = mmap.mmap(fd, 1)
out = sys.stdout.fileno()
n = 0
first = True
while True:
    phase[0] = 1
    conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None,
                           timeout=120)
    conn.execute("PRAGMA synchronous = FULL")
    conn.checkpoint_on_close = policy
    if first:
        os.write(out, b"go\n")
        first = False
    phase[0] = 2
    conn.execute("BEGIN IMMEDIATE")
    ids = []
    for _ in range(per_txn):
        n += 1
        ids.append(f"{prefix}-{n}")
        conn.execute("INSERT INTO k (id, pad) VALUES (?, randomblob(1500))", (ids[-1],))
    phase[0] = 3
    conn.commit()
    phase[0] = 4
    os.write(out, ("\n".join(ids) + "\n").encode())
    phase[0] = 5
    conn.close()
    phase[0] = 6
