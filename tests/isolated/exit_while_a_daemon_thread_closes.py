"""A process exits while a daemon thread opens, writes to and closes
connections to the database argv[1] as fast as it can, so that the
exit-time closer may find a connection that the thread closes while the
closer waits for it.  Exits 0; a crash shows as a non-zero status."""
import sqlite3
import sys
import threading

import hermes_kanban_native as hkn

DB = sys.argv[1]
started = threading.Event()


def churn():
    while True:
        conn = sqlite3.connect(DB, factory=hkn.WalSafeConnection, isolation_level=None)
        conn.checkpoint_threshold = 0
        conn.execute("INSERT INTO t VALUES (1)")
        started.set()
        conn.close()


setup = sqlite3.connect(DB, isolation_level=None)
setup.execute("PRAGMA journal_mode = WAL")
setup.execute("CREATE TABLE t (x)")
setup.close()
threading.Thread(target=churn, daemon=True).start()
started.wait()
