"""A guarded open of the database argv[1] while another guarded connection
of the process is inside SQLite (holding its connection mutex) in a user
function that waits for that open: the open must not wait for the mutex
while it holds the GIL.

Prints the sum of t.x ("3" for the rows 0, 1, 2).  Exits 0; hangs (the
test's timeout) or fails an assertion if the open waited."""
import sqlite3
import sys
import threading

import hermes_kanban_native as hkn

path = sys.argv[1]
inside, opened = threading.Event(), threading.Event()


def block(x):
    inside.set()
    assert opened.wait(20), "the other thread's open never returned"
    return x


busy = sqlite3.connect(path, factory=hkn.WalSafeConnection)
busy.create_function("block", 1, block)


def open_another():
    inside.wait(20)
    other = sqlite3.connect(path, factory=hkn.WalSafeConnection)
    opened.set()
    other.execute("SELECT count(*) FROM t").fetchone()
    other.close()


thread = threading.Thread(target=open_another)
thread.start()
print(busy.execute("SELECT sum(block(x)) FROM t").fetchone()[0])
thread.join()
busy.close()
