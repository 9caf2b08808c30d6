"""A process exits with a connection to argv[1] held by the main module and
one to argv[2] held by a daemon thread, 200 rows written to each.  The
database files stay empty until a checkpoint copies frames back: their size
after exit shows that the exit-time checkpoint ran for both.

Prints "exiting" just before the interpreter exits; the main module's
connection is reported on stderr ("unclosed database", with
PYTHONWARNINGS=default).  Exits 0; a crash at exit shows as a non-zero
status and "Fatal" or "Segmentation" on stderr."""
import sqlite3
import sys
import threading
import time

import hermes_kanban_native as hkn


def open_db(path):
    conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None,
                           check_same_thread=True)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(200)])
    return conn


held = open_db(sys.argv[1])
ready = threading.Event()


def daemon():
    conn = open_db(sys.argv[2])
    ready.set()
    while True:
        time.sleep(1)


threading.Thread(target=daemon, daemon=True).start()
ready.wait()
print("exiting", flush=True)
