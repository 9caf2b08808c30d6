"""The ``info`` command: how this install reaches SQLite, proven end to end.

Prints the self-check (which SQLite library, native or SQL mode, the route
to SQLite's functions and why other routes were not taken, versions)
and then exercises the real path once on a temporary WAL database: open with
WalSafeConnection, write, close, and confirm that the close-time checkpoint
was recorded.  Exit status 0 when that works in either mode, 1 when it does
not (the import-time layout/library check failed, or the checkpoint did not
happen).
"""
from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
import tempfile

from .. import WalSafeConnection, __version__, sqlite_api


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="print the SQLite self-check and exercise one checkpoint on close",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)


def _exercise() -> dict:
    with tempfile.TemporaryDirectory(prefix="hkn-info-") as tmp:
        path = os.path.join(tmp, "info.db")
        conn = sqlite3.connect(path, factory=WalSafeConnection, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
        finally:
            conn.close()
        result = conn.last_checkpoint
    return {
        "checkpoint_on_close": result._asdict() if result is not None else None,
        "ok": result is not None and not result.busy and result.log_frames >= 0,
    }


_ROUTES = {
    "symbols": "SQLite's functions looked up in the library _sqlite3 uses",
    "extension-api": "SQLite's functions from the table it hands a loadable extension "
                     "(its symbols are hidden)",
    "sql": "no native access to SQLite",
}

# What a user gives up in sql mode, and how to get native mode.
_SQL_MODE_LOSES = (
    "no WAL-generation guard and no OFD -shm locks (a stray open()/close() of the "
    "database can get its live -wal/-shm unlinked by another process); checkpoints "
    "run through the connection's Python API (seen by trace callbacks, blind to "
    "stepping cursors)"
)
_NATIVE_NEEDS = (
    "an interpreter whose _sqlite3 shows SQLite's symbols (a shared libsqlite3, as "
    "in Debian's or pyenv's builds) or can load SQLite extensions (uv's "
    "python-build-standalone builds, Debian's python3, CPython configured with "
    "--enable-loadable-sqlite-extensions)"
)


def _route_lines(api) -> list[str]:
    lines = [f"  route           {api['route']}: {_ROUTES.get(api['route'], '?')}"]
    label = "not taken"
    for route, why in api["routes_not_taken"].items():
        lines.append(f"  {label:<15} {route}: {why}")
        label = ""
    if api["mode"] == "sql":
        lines.append(f"  sql mode loses  {_SQL_MODE_LOSES}")
        lines.append(f"  native needs    {_NATIVE_NEEDS}")
    return lines


def run(args) -> int:
    exercise = _exercise()
    api = sqlite_api()          # after the exercise, whose guarded open sets shm_locks
    ok = api["self_check"] != "failed" and exercise["ok"]
    report = {
        "package": __version__,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "sqlite3_module_sqlite_version": sqlite3.sqlite_version,
        **api,
        "exercise": exercise,
        "ok": ok,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"hermes_kanban_native {__version__} on Python {report['python']}")
        print(f"  mode            {api['mode']}")
        for line in _route_lines(api):
            print(line)
        print(f"  self-check      {api['self_check']}")
        print(f"  SQLite library  {api['library'] or '(through the sqlite3 module)'}")
        print(f"  package version {__version__}")
        print(f"  SQLite version  {api['sqlite_version']}")
        print(f"  WAL guard       {api['guard']}")
        print(f"  -shm locks      {api['shm_locks']}")
        ckpt = exercise["checkpoint_on_close"]
        print(f"  close() test    {'ok' if exercise['ok'] else 'FAILED'}: {ckpt}")
    return 0 if ok else 1
