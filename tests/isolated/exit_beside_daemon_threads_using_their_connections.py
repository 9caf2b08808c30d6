"""A process exits while two daemon threads keep their connections to the
database argv[1] (ten rows, 0 to 9) open: one has written and stands in the
middle of a SELECT, the other has written and is idle.  The exit-time
checkpoint must leave both usable by their threads: the SELECT goes on from
where it stood, and neither loses its busy timeout (5 s).

atexit runs last-registered first, so check() runs after the package's
exit-time closer: it lets the threads go on and prints, as one JSON object,
the rows the SELECT returned, each connection's busy timeout afterwards and
the checkpoints stats() counted.  Exits 0."""
import atexit
import json
import sqlite3
import sys
import threading

results = {}
go = threading.Event()
done = {"stepping": threading.Event(), "idle": threading.Event()}


def check():
    go.set()
    for event in done.values():
        event.wait(10)
    results["checkpoints"] = hkn.stats()["checkpoints"]
    print(json.dumps(results), flush=True)


# Registered before the package registers its exit-time closer, so run after it.
atexit.register(check)
import hermes_kanban_native as hkn      # noqa: E402

DB = sys.argv[1]
ready = threading.Barrier(3)


def open_and_write():
    conn = sqlite3.connect(DB, factory=hkn.WalSafeConnection, timeout=5,
                           isolation_level=None)
    conn.checkpoint_threshold = 0          # whatever it wrote is checkpointed
    conn.execute("INSERT INTO t VALUES (100)")
    return conn


def stepping():
    conn = open_and_write()
    rows = conn.execute("SELECT x FROM t WHERE x < 100 ORDER BY x")
    seen = [next(rows)[0]]
    ready.wait()
    go.wait()
    seen += [x for (x,) in rows]
    results["stepping"] = {"rows": seen,
                           "timeout": conn.execute("PRAGMA busy_timeout").fetchone()[0]}
    done["stepping"].set()
    threading.Event().wait()


def idle():
    conn = open_and_write()
    ready.wait()
    go.wait()
    results["idle"] = {"timeout": conn.execute("PRAGMA busy_timeout").fetchone()[0]}
    done["idle"].set()
    threading.Event().wait()


setup = sqlite3.connect(DB, isolation_level=None)
setup.execute("PRAGMA journal_mode = WAL")
setup.execute("CREATE TABLE t (x)")
setup.executemany("INSERT INTO t VALUES (?)", [(x,) for x in range(10)])
setup.close()
threading.Thread(target=stepping, daemon=True).start()
threading.Thread(target=idle, daemon=True).start()
ready.wait()
