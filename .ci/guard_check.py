"""CI: on the SQLite in use, the guard is taken rightly or refused with a reason.

usage: python guard_check.py ROUTE [SQLITE_VERSION]

Checks that the package took ROUTE and, when given, that sqlite3 runs
SQLITE_VERSION (so LD_LIBRARY_PATH really swapped the library).  Then, on a
WAL database: when sqlite_api() says the guard is available, a guarded
connection must hold it (sqlite_fds().guarded, no guard_failures), and
stray open()/close()s of the database and its -shm in this process followed
by another process's read-and-close must leave the live -wal in place and
the rows there; otherwise the reason must be stated.  Prints one line.
"""
import os
import sqlite3
import subprocess
import sys
import tempfile

import hermes_kanban_native as hkn

READ_AND_CLOSE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
print(conn.execute("SELECT count(*) FROM t").fetchone()[0])
conn.close()
"""


def main():
    route = sys.argv[1]
    api = hkn.sqlite_api()
    problems = []
    if api["route"] != route:
        problems.append(f"route {api['route']!r}, expected {route!r}: {api['routes_not_taken']}")
    if len(sys.argv) > 2 and sqlite3.sqlite_version != sys.argv[2]:
        problems.append(f"sqlite3 runs SQLite {sqlite3.sqlite_version}, not {sys.argv[2]}")
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "kanban.db")
        conn = sqlite3.connect(db, factory=hkn.WalSafeConnection, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.close()
        conn = sqlite3.connect(db, factory=hkn.WalSafeConnection, isolation_level=None)
        conn.execute("INSERT INTO t VALUES (1)")
        guarded = hkn.sqlite_fds(db).guarded
        failures = hkn.stats()["guard_failures"]
        if api["guard"] == "available":
            if not guarded or failures:
                problems.append(f"guard not taken: guarded={guarded}, guard_failures={failures}")
            wal = os.stat(db + "-wal")
            # The stray closes: the -shm's too, since from SQLite 3.51 the
            # -shm's POSIX dead-man-switch lock alone would keep the other
            # process out (docs/sqlite-internals.md, "Lock cancellation").
            os.close(os.open(db, os.O_RDONLY))
            os.close(os.open(db + "-shm", os.O_RDONLY))
            seen = subprocess.run([sys.executable, "-c", READ_AND_CLOSE, db], check=True,
                                  capture_output=True, text=True).stdout.strip()
            try:
                still = os.stat(db + "-wal")
                kept = (still.st_dev, still.st_ino) == (wal.st_dev, wal.st_ino)
            except FileNotFoundError:
                kept = False
            if not kept or seen != "1":
                problems.append(f"guard taken wrongly: -wal kept {kept}, other process saw {seen}")
            shm_locks = hkn.sqlite_api()["shm_locks"]
            if shm_locks != "ofd":
                problems.append(f"SQLite's -shm locks are not OFD locks: {shm_locks}")
            verdict = (f"guard taken (guard_failures {failures}), survived stray closes of "
                       f"the database and its -shm")
        elif not api["guard"]:
            problems.append("guard neither available nor refused with a reason")
            verdict = "?"
        else:
            verdict = f"guard refused: {api['guard']}"
        conn.close()
    print(f"SQLite {sqlite3.sqlite_version}, route {api['route']}, "
          f"shm_locks {hkn.sqlite_api()['shm_locks']}: {verdict}")
    for problem in problems:
        print("FAIL:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
