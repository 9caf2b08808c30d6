"""A service with HERMES_KANBAN_NATIVE_WARN_STRAY_OPEN in its environment
opens the database argv[1] with SQLite, then twice (from one line) with
open(): a header probe.

Prints nothing on stdout.  With the switch on ("1"), stderr has one
StrayOpenWarning (once per location, the default filter), at this file's
line of the open; with "0", none; with another value, a warning naming the
bad value and no StrayOpenWarning.  Exits 0."""
import sqlite3
import sys

import hermes_kanban_native as hkn     # noqa: F401  (its import reads the switch)

db = sys.argv[1]
conn = sqlite3.connect(db)
conn.execute("SELECT * FROM t").fetchall()


def header():
    with open(db, "rb") as f:
        return f.read(16)


header()
header()
conn.close()
