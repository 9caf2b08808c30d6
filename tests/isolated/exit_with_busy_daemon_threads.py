"""A hermes process exits with connections to the database argv[1] left
open by the main module, by an idle daemon thread and by two daemon threads
still committing.  Every id whose commit returned is appended to the log
argv[2] (after the commit), so the test can check that each survived.

Prints "exiting" just before the interpreter exits.  Exits 0; a crash at
exit shows as a non-zero status and "Fatal" or "Segmentation" on stderr."""
import os
import sys
import threading
import time

from hermes_connect import kanban

DB, LOG = sys.argv[1], sys.argv[2]
out = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
lock = threading.Lock()
held = kanban(DB)
held.execute("INSERT INTO t VALUES (-1)")
os.write(out, b"-1\n")
started = threading.Barrier(4)


def idle():
    conn = kanban(DB)
    conn.execute("INSERT INTO t VALUES (-2)")
    os.write(out, b"-2\n")
    started.wait()
    while True:
        time.sleep(1)


def busy(base):
    conn = kanban(DB)
    started.wait()
    n = 0
    while True:
        n += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (base + n,))
        conn.commit()
        os.write(out, f"{base + n}\n".encode())


threading.Thread(target=idle, daemon=True).start()
threading.Thread(target=busy, args=(1_000_000,), daemon=True).start()
threading.Thread(target=busy, args=(2_000_000,), daemon=True).start()
started.wait()
time.sleep(0.05)                 # let the busy threads commit for a while
print("exiting", flush=True)
