"""A sqlite3.Connection that checkpoints the WAL natively on close without
ever blocking, and tools that show what a process holds on a SQLite database.

    import sqlite3, hermes_kanban_native as hkn
    conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, timeout=120)
    ...
    conn.close()        # native, non-blocking checkpoint, then the usual close
    conn.last_checkpoint

This module is the public API and nothing else; the work is done in the C
extension ``hermes_kanban_native._native``.
"""
from __future__ import annotations

import importlib
import os
import sqlite3
import threading
from typing import TYPE_CHECKING, NamedTuple

from . import _native
from ._native import CheckpointResult, WalSafeConnection, sqlite_api, stats
from .stray import StrayOpenWarning, _database_path, warn_on_stray_open

__all__ = [
    "CheckpointResult",
    "ClosingWalSafeConnection",
    "FdInfo",
    "Holders",
    "LiveConnection",
    "LockInfo",
    "MapInfo",
    "SqliteFds",
    "StaleWalGenerationError",
    "StrayOpenWarning",
    "WalSafeConnection",
    "connect",
    "holders",
    "live_connections",
    "mapped_files",
    "open_fds",
    "sqlite_api",
    "sqlite_fds",
    "stats",
    "warn_on_stray_open",
]

__version__ = "0.1.0"


class ClosingWalSafeConnection(WalSafeConnection):
    """A WalSafeConnection whose ``with`` block also closes it.

    ``with sqlite3.connect(...) as conn:`` only commits or rolls back; the
    connection stays open until it is garbage-collected, which on CPython
    3.11+ waits for the cyclic collector (that is how a gateway collected
    ~1,000 open descriptors).  This class commits or rolls back as
    sqlite3.Connection does, then closes.
    """

    # No new slots: instances keep WalSafeConnection's layout, so
    # ``conn.__class__ = ClosingWalSafeConnection`` works both ways.
    __slots__ = ()

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            return super().__exit__(exc_type, exc_value, traceback)
        finally:
            self.close()


class LiveConnection(NamedTuple):
    """An open WalSafeConnection of this process, as live_connections() shows it."""

    path: str
    """The database file as SQLite resolved it ("" for in-memory/temporary)."""
    thread: str
    """Name of the thread that opened it (``"<gone>"`` if that thread ended)."""
    thread_id: int
    opened_at: str
    """``file:line`` of the code that opened it: the caller of the function
    that called ``sqlite3.connect`` when that function is a helper (see
    ``opened_via``), else that function itself."""
    opened_time: float
    """``time.time()`` when it was opened."""
    opened_via: tuple = ()
    """The stack when it was opened, as ``"file:line in function"``, innermost
    first, from the call of ``sqlite3.connect`` outward (up to 5 frames)."""


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def live_connections(database=None) -> list[LiveConnection]:
    """live_connections(database=None) -> list[LiveConnection]

    The WalSafeConnections of this process that are open now, oldest first.
    With ``database`` (str, bytes or path-like), only those on that file,
    matched by identity (device and inode), so relative and symlinked paths
    find the same connections.
    """
    names = {t.ident: t.name for t in threading.enumerate()}
    rows = _native._live_connections()
    if database is not None:
        wanted = os.fsdecode(os.fspath(database))
        ident = _identity(wanted)
        real = os.path.realpath(wanted)
        rows = [
            row for row in rows
            if row[0] and ((ident is not None and _identity(row[0]) == ident)
                           or os.path.realpath(row[0]) == real)
        ]
    return [
        LiveConnection(path, names.get(thread_id, "<gone>"), thread_id, opened_at, opened_time,
                       opened_via)
        for path, thread_id, opened_at, opened_time, opened_via, _serial in rows
    ]


def _is_file_database(conn) -> bool:
    row = conn.execute("PRAGMA database_list").fetchone()
    return bool(row[2])


class StaleWalGenerationError(sqlite3.OperationalError):
    """Another process still holds a retired WAL generation of the database.

    Its ``-wal``/``-shm`` were unlinked while it kept them open or mapped (its
    locks were cancelled by a stray close): its commits go to files nobody
    else sees.  Opening the database now would start a second generation
    beside the stranded one.  ``holders`` maps each such pid to its
    SqliteFds; restart those processes (or close their connections) first.
    """

    def __init__(self, message, holders):
        super().__init__(message)
        self.holders = holders


def connect(database, *, wal=True, persist_wal=False, guard_wal=True, refuse_stale=True,
            factory=WalSafeConnection, **kwargs):
    """connect(database, *, wal=True, persist_wal=False, guard_wal=True, refuse_stale=True, factory=WalSafeConnection, **kwargs)

    Open ``database`` with ``sqlite3.connect(database, factory=factory,
    **kwargs)`` and prepare it for a long-running, multi-process WAL user.

    wal: on a file database, probe ``PRAGMA journal_mode`` and switch to WAL
      only when the database is not already in WAL (the probe is read-only;
      the switch needs an exclusive lock).  sqlite3.OperationalError if the
      database cannot be switched (read-only, or another mode was kept).
    persist_wal: set SQLITE_FCNTL_PERSIST_WAL, so this connection never
      unlinks -wal/-shm when it is the last to close.  Needs native mode
      (sqlite_api()["mode"] == "native"); sqlite3.NotSupportedError otherwise.

    guard_wal: for a WalSafeConnection (Linux, native mode), hold the
      WAL-generation guard while it is open (see WalSafeConnection.guard_wal);
      False opens it without one.
    refuse_stale: before opening, raise StaleWalGenerationError (a
      sqlite3.OperationalError) naming the pids and files if any process we
      may inspect holds deleted sidecars of this database.  This scans every
      process's descriptors and mappings (milliseconds); pass False on paths
      that open very often.

    The connection is closed again if any of this fails.
    """
    if not (isinstance(factory, type) and issubclass(factory, sqlite3.Connection)):
        raise TypeError(f"factory must be a subclass of sqlite3.Connection, not {factory!r}")
    if refuse_stale:
        # With uri=True, "file:" names a URI, whose path is the database.
        target = _database_path(database) if kwargs.get("uri") else database
        if target is not None:
            _refuse_stale(target, database)
    conn = sqlite3.connect(database, factory=factory, **kwargs)
    try:
        guarded = isinstance(conn, WalSafeConnection)
        if guarded and not guard_wal:
            _native._guard(conn, False)
        if persist_wal:
            _native.set_persist_wal(conn, True)
        if wal and _is_file_database(conn):
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                _switch_to_wal(conn, database)
        if guarded and guard_wal and conn.guard_wal:
            # After the probe or the switch the database is in WAL mode and
            # SQLite has mapped the -shm: take (or complete) the guard now.
            _native._guard(conn, True)
    except BaseException:
        conn.close()
        raise
    return conn


def _refuse_stale(path, database):
    from .fds import holders        # loaded on first use (below)
    try:
        found = holders(path)
    except (NotImplementedError, FileNotFoundError):
        return
    stranded = {pid: info for pid, info in found.items() if info.stale}
    if stranded:
        detail = "; ".join(
            f"pid {pid}: " + ", ".join(sorted({entry.path for entry in info.stale}))
            for pid, info in sorted(stranded.items()))
        raise StaleWalGenerationError(
            f"{os.fsdecode(os.fspath(database))!r} has a retired WAL generation still "
            f"in use (deleted sidecars held by {detail}); refusing to start another "
            f"beside it", stranded)


def _switch_to_wal(conn, database):
    # The journal mode cannot change inside a transaction, and with
    # autocommit=False (3.12+) one is always open.
    manual = getattr(conn, "autocommit", True) is False
    if manual:
        conn.commit()
        conn.autocommit = True
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    finally:
        if manual:
            conn.autocommit = False
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(
            f"could not switch {os.fsdecode(os.fspath(database))!r} to WAL: "
            f"journal_mode stays {mode!r}"
        )


# The fd helpers (fds.py) are loaded on first use.  They need dataclasses,
# and with it inspect: about 5 of the package's 16.5 ms of import (CPython
# 3.11, -X importtime), paid by the gateway's CLI commands and workers,
# which import the package to connect and never call them.
_FDS_NAMES = frozenset({"FdInfo", "Holders", "LockInfo", "MapInfo", "SqliteFds", "holders",
                        "mapped_files", "open_fds", "sqlite_fds"})

if TYPE_CHECKING:
    from .fds import (FdInfo, Holders, LockInfo, MapInfo, SqliteFds, holders, mapped_files,
                      open_fds, sqlite_fds)


def __getattr__(name):
    if name in _FDS_NAMES or name == "fds":
        # Not "from . import fds": that asks this function for fds first.
        fds = importlib.import_module(".fds", __name__)
        if name == "fds":
            return fds
        value = getattr(fds, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _FDS_NAMES | {"fds"})


from .stray import _from_environment  # noqa: E402

_from_environment()
