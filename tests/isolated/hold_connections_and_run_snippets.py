"""The child of fds_helpers.Holder: keeps SQLite connections in ``conns``
and executes what the test sends it.

Prints {"ok": true, "result": <its pid>} first, then executes one
JSON-encoded snippet per stdin line and answers one JSON line:
{"ok": true, "result": <the value of `result`>} or {"ok": false, "error":
<repr of the exception>}.  At the end of stdin it closes ``conns`` and exits
0.  This directory is first on its sys.path, so snippets can import
hermes_connect."""
import fcntl
import json
import os
import sqlite3
import struct
import sys

ns = {"os": os, "sqlite3": sqlite3, "fcntl": fcntl, "struct": struct, "conns": []}
print(json.dumps({"ok": True, "result": os.getpid()}), flush=True)
for line in sys.stdin:
    ns["result"] = None
    try:
        exec(json.loads(line), ns)
        answer = {"ok": True, "result": ns["result"]}
    except Exception as exc:
        answer = {"ok": False, "error": repr(exc)}
    print(json.dumps(answer), flush=True)
for conn in ns["conns"]:
    conn.close()
