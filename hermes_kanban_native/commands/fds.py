"""The ``fds`` subcommand: what processes hold on a SQLite database.

    hermes-kanban-native fds DATABASE [--pid PID | --all] [--json] [--watch SECONDS]

Without ``--pid`` every process whose /proc entries we may read is scanned
(``--all`` says so explicitly); processes we may not read are counted as
skipped.  The table has one row per process holding the database: its
descriptors on the database and on ``-wal``, ``-shm`` and ``-journal``, the
database descriptors SQLite keeps parked after close (this process only, so
``-`` here), stale descriptors and mappings (their file was unlinked or
replaced), POSIX locks held on the database, whether they were lost while the
WAL is in use, and whether the guard's OFD locks are held.

Exit status:
  0  every process is healthy (or none holds the database)
  1  a process has stale descriptors or mappings, or lost its POSIX locks on
     the database without holding the guard's OFD locks (lost locks under a
     held guard are reported but do not count)
  2  usage error, no such pid, a pid we may not inspect, or no /proc
With ``--watch`` the status is the last snapshot's (130 when interrupted
before the first one completed).

JSON (``--json``): one object per snapshot, each on one line.  Schema 1:

  {"schema": 1,                     # bumped only when a key changes meaning
   "database": "/resolved/path.db",
   "time": 1700000000.123,          # seconds since the epoch
   "status": 0,                     # the exit status of this snapshot
   "skipped": 0,                    # processes we were not permitted to read
   "processes": [
     {"pid": 1234, "healthy": true, "locks_lost": false, "guarded": false,
      "parked": null,               # an int for the scanning process only
      "counts": {"db": 2, "wal": 1, "shm": 1, "journal": 0,
                 "shm_maps": 1, "stale": 0, "locks": 1},
      "fds":  [{"kind": "db", "fd": 3, "path": "...", "dev": 65024,
                "ino": 12, "nlink": 1, "deleted": false}, ...],
      "maps": [{"kind": "shm", "start": 1407..., "end": 1407..., "perms": "rw-s",
                "path": "...", "dev": 65024, "ino": 13, "deleted": false}, ...],
      "locks": [{"kind": "POSIX", "access": "READ", "start": 1073741826,
                 "end": 1073742335}, ...]}]}   # end null: to end of file

``maps`` lists the ``-shm`` mappings and any stale mapping of the database
or a sidecar.  Later versions may add keys; consumers should ignore unknown
keys.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .. import fds as fds_module
from ._args import number

SCHEMA_VERSION = 1
_PROG = "hermes-kanban-native fds"
_COLUMNS = ("PID", "DB", "WAL", "SHM", "JOURNAL", "PARKED", "STALE", "LOCKS", "LOST", "GUARDED")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``fds`` parser to an argparse subparsers object; the parsed
    namespace's ``run`` attribute is :func:`run`."""
    parser = subparsers.add_parser(
        "fds",
        help="show the descriptors, mappings and locks processes hold on a database",
        description="Show the descriptors, mappings and locks processes hold on a SQLite "
                    "database and its -wal/-shm/-journal files.  Exit status 0 when "
                    "healthy, 1 when anything is stale or POSIX locks are lost without "
                    "a guard holding its OFD locks, 2 on errors.",
    )
    parser.add_argument("database", metavar="DATABASE",
                        help="the database path (it need not exist any more)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pid", type=int, metavar="PID", help="inspect this process only")
    which.add_argument("--all", action="store_true",
                       help="inspect every process we may read (the default)")
    parser.add_argument("--json", action="store_true",
                        help=f"print JSON (schema {SCHEMA_VERSION}, one object per line)")
    parser.add_argument("--watch", type=number(float, low=0, low_open=True, unit="seconds"),
                        metavar="SECONDS",
                        help="repeat every SECONDS until interrupted")
    parser.set_defaults(run=run)
    return parser


def _counts_against(result) -> bool:
    """Whether this process makes the exit status 1: the same rule as
    SqliteFds.healthy, so the two never disagree."""
    return not result.healthy


def _scan(args):
    """(results by pid, skipped count)."""
    if args.pid is not None:
        return {args.pid: fds_module.sqlite_fds(args.database, pid=args.pid)}, 0
    found = fds_module.holders(args.database)
    return dict(found), found.skipped


def _as_json(database: str, results: dict, skipped: int, status: int) -> str:
    processes = []
    for pid, result in sorted(results.items()):
        fd_entries = [
            {"kind": kind, "fd": info.fd, "path": info.path, "dev": info.dev,
             "ino": info.ino, "nlink": info.nlink, "deleted": info.deleted}
            for kind in ("db", "wal", "shm", "journal") for info in getattr(result, kind)
        ]
        maps = list(result.shm_maps) + [m for m in result.stale
                                        if isinstance(m, fds_module.MapInfo)
                                        and m not in result.shm_maps]
        map_entries = [
            {"kind": result.kind_of(info), "start": info.start, "end": info.end,
             "perms": info.perms, "path": info.path, "dev": info.dev, "ino": info.ino,
             "deleted": info.deleted}
            for info in maps
        ]
        processes.append({
            "pid": pid,
            "healthy": result.healthy,
            "locks_lost": result.locks_lost,
            "guarded": result.guarded,
            "parked": result.parked,
            "counts": {"db": len(result.db), "wal": len(result.wal), "shm": len(result.shm),
                       "journal": len(result.journal), "shm_maps": len(result.shm_maps),
                       "stale": len(result.stale), "locks": len(result.locks)},
            "fds": fd_entries,
            "maps": map_entries,
            "locks": [{"kind": lock.kind, "access": lock.access, "start": lock.start,
                       "end": lock.end} for lock in result.locks],
        })
    return json.dumps({"schema": SCHEMA_VERSION, "database": database, "time": time.time(),
                       "status": status, "skipped": skipped, "processes": processes})


def _as_table(database: str, results: dict, skipped: int, status: int) -> str:
    lines = [f"database: {database}"]
    if not results:
        lines.append("no process holds it")
    else:
        rows = [_COLUMNS]
        for pid, r in sorted(results.items()):
            lost = "no"
            if r.locks_lost:
                lost = "yes" if not r.guarded else "yes*"
            rows.append((str(pid), str(len(r.db)), str(len(r.wal)), str(len(r.shm)),
                         str(len(r.journal)), "-" if r.parked is None else str(r.parked),
                         str(len(r.stale)), str(len(r.locks)), lost,
                         "yes" if r.guarded else "no"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        for row in rows:
            lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        for pid, r in sorted(results.items()):
            for info in r.stale:
                where = (f"fd {info.fd}" if isinstance(info, fds_module.FdInfo)
                         else f"map {info.start:#x}-{info.end:#x}")
                lines.append(f"pid {pid}: stale {r.kind_of(info)} {where} {info.path} "
                             f"inode {info.ino} (no longer the file at that path)")
            if r.locks_lost:
                note = " (the guard's OFD locks still protect it)" if r.guarded else ""
                lines.append(f"pid {pid}: uses the WAL but holds no POSIX lock on the "
                             f"database{note}")
        if any(r.locks_lost and r.guarded for r in results.values()):
            lines.append("yes* = lost POSIX locks under a held guard: reported, not counted")
    word = "healthy" if status == 0 else "UNHEALTHY"
    held = len(results)
    lines.append(f"status: {word}; {held} process{'es' if held != 1 else ''} "
                 f"hold{'s' if held == 1 else ''} it, {skipped} skipped")
    return "\n".join(lines)


def _snapshot(args) -> int:
    database = fds_module._Target(args.database).path
    results, skipped = _scan(args)
    status = 1 if any(_counts_against(r) for r in results.values()) else 0
    if args.json:
        print(_as_json(database, results, skipped, status), flush=True)
    else:
        if args.watch:
            print(time.strftime("--- %Y-%m-%d %H:%M:%S"), flush=True)
        print(_as_table(database, results, skipped, status), flush=True)
    return status


def run(args) -> int:
    """Run the ``fds`` subcommand for parsed *args*; returns the exit status."""
    status = 130
    try:
        while True:
            try:
                status = _snapshot(args)
            except ProcessLookupError:
                print(f"{_PROG}: no process with pid {args.pid}", file=sys.stderr)
                return 2
            except PermissionError:
                print(f"{_PROG}: not permitted to inspect pid {args.pid}; "
                      f"run as its user or as root", file=sys.stderr)
                return 2
            except NotImplementedError as exc:
                print(f"{_PROG}: {exc}", file=sys.stderr)
                return 2
            if not args.watch:
                return status
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return status
