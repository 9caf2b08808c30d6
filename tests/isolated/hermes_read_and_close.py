"""Another hermes process opens the database argv[1] (persist_wal: argv[2],
JSON true or false), reads, checks and closes.

Prints one JSON object: {"rows": <t.x sorted>, "integrity": <PRAGMA
integrity_check>}, or {"error": <message>} if SQLite raised a
DatabaseError.  Exits 0."""
import json
import sqlite3
import sys

from hermes_connect import kanban

DB, PERSIST_WAL = sys.argv[1], json.loads(sys.argv[2])
try:
    conn = kanban(DB, persist_wal=PERSIST_WAL)
    rows = sorted(x for (x,) in conn.execute("SELECT x FROM t"))
    check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    print(json.dumps({"rows": rows, "integrity": check}))
except sqlite3.DatabaseError as exc:
    print(json.dumps({"error": str(exc)}))
