"""Another process reads every row of t in the database argv[1] and runs the
integrity check.

Prints two lines: the values of t.x, sorted, as a JSON list; then the result
of PRAGMA integrity_check ("ok" when intact).  Exits 0."""
import json
import sqlite3
import sys

conn = sqlite3.connect(sys.argv[1])
print(json.dumps(sorted(x for (x,) in conn.execute("SELECT x FROM t"))))
print(conn.execute("PRAGMA integrity_check").fetchone()[0])
conn.close()
