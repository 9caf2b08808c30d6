"""The import of the package on the extension-api route, watched by an audit
hook that records the extension-loading events and keeps their connection
objects, so that the test can see they ended closed; the hook refuses the
event named argv[1] (none if empty) with a RuntimeError.

Prints one JSON object (its last line): "events", [event, its argument,
"open" or "closed"] for each; "api", sqlite_api(); "file", the extension
module's file.  Exits 0."""
import sys

REFUSE = sys.argv[1]
events = []


def hook(event, args):
    if event in ("sqlite3.enable_load_extension", "sqlite3.load_extension"):
        events.append((event, args))
        if event == REFUSE:
            raise RuntimeError("extensions are not allowed here")


sys.addaudithook(hook)

# Imported once the hook is in place, so that it sees the import's loading.
import json                                     # noqa: E402
import sqlite3                                  # noqa: E402

import hermes_kanban_native as hkn              # noqa: E402
from hermes_kanban_native import _native        # noqa: E402

report = []
for event, args in events:
    conn = args[0]
    try:
        conn.execute("SELECT 1")
        state = "open"
    except sqlite3.ProgrammingError:
        state = "closed"
    report.append([event, str(args[1]), state])
print(json.dumps({"events": report, "api": hkn.sqlite_api(), "file": _native.__file__}))
