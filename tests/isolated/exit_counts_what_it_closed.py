"""A process exits with a connection held by the main module and one held by
a daemon thread (main.db and daemon.db, created in the directory argv[1]).
atexit runs last-registered first: report() runs after the package's
exit-time closer.

Prints, at exit, hkn.stats() as one JSON object (its last line): the main
thread's connection finalized, the daemon thread's checkpointed and left to
the process exit.  Exits 0."""
import atexit
import json
import sqlite3
import sys
import threading


def report():
    print(json.dumps(hkn.stats()))


# Registered before the package registers its exit-time closer, so run after it.
atexit.register(report)
import hermes_kanban_native as hkn      # noqa: E402


def open_db(name):
    conn = sqlite3.connect(sys.argv[1] + "/" + name, factory=hkn.WalSafeConnection,
                           isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    return conn


held = open_db("main.db")
ready = threading.Event()


def daemon():
    conn = open_db("daemon.db")
    ready.set()
    threading.Event().wait()


threading.Thread(target=daemon, daemon=True).start()
ready.wait()
before = hkn.stats()
