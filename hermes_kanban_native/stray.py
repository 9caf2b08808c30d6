"""Who opens a live database behind SQLite's back: the stray open.

POSIX record locks belong to a process and an inode, not to a descriptor:
when a process closes *any* descriptor of a file, every POSIX lock it holds
on that file is gone.  SQLite's locks are POSIX locks, so code that merely
opens and closes a live database (a header probe such as
``open(path, "rb").read(100)``, a copy, a checksum) silently cancels the
locks of every SQLite connection in its process.  Another process's last
close then believes nobody uses the WAL, checkpoints it and unlinks the
``-wal``/``-shm`` the first process is still writing to: lost commits, then
``disk I/O error``.  Opening the ``-wal`` or ``-shm`` is the same hazard.

Python raises the audit event ``open`` for every file it opens (``open()``,
``io.open``, ``os.open``, ``pathlib``), and ``sqlite3.connect`` and
``sqlite3.connect/handle`` for every connection (plain or not).  SQLite's own
opens are system calls made in C and never raise these events, so every
``open`` event naming a database that this process holds connections to is
code other than SQLite: a stray open.

This module keeps one audit hook, a C function of the extension that drops
every other event with a length check (about 70 ns per event; a hook added
with ``sys.addaudithook`` would cost each event a call).  It also keeps back
what Python would only repeat: the handle events of WalSafeConnections
(their registry knows them), and the connect events of databases this
module has already settled, which it notes itself (``_Listening.seen``).
Audit hooks cannot be removed, so it is added once, on first use, and passes
nothing on while nobody listens:

* ``warn_on_stray_open()`` makes each stray open issue a
  :class:`StrayOpenWarning` attributed to the ``file:line`` of the code that
  opened the file, so an operator can find such code in a running service
  (``HERMES_KANBAN_NATIVE_WARN_STRAY_OPEN=1`` switches it on at import).
  Under ``-W error::hermes_kanban_native.StrayOpenWarning`` the open itself
  raises, before the file is opened.
* the pytest plugin listens to the same events to learn every database a
  test opens, plain sqlite3 included, and to fail a test that opens one of
  them behind SQLite's back.

A database is known from the ``sqlite3.connect`` events seen while the hook
listens (and, when warnings are switched on, from the WalSafeConnections
open at that moment).  An ``open`` of a file whose name is a known
database's, or that name plus ``-wal``, ``-shm`` or ``-journal``, counts
when this process holds a descriptor on that database file: SQLite keeps one
open for every connection.  The C hook looks the name of an ``open`` up in
``_Listening.names`` itself, so only opens of such names (and of files only
Python can name: bytes, path-like objects) reach Python, which then scans
this process's descriptors.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import NamedTuple, Optional

from . import _native

__all__ = ["StrayOpen", "StrayOpenWarning", "warn_on_stray_open"]

ENV_SWITCH = "HERMES_KANBAN_NATIVE_WARN_STRAY_OPEN"

# SQLite's files for a database, by kind, in the order reports list them.
_KINDS = (("db", ""), ("wal", "-wal"), ("shm", "-shm"), ("journal", "-journal"))
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The standard library's files, and frozen modules ("<frozen os>"): a stray
# open through pathlib or shutil is attributed to the code that called them.
_STDLIB = (os.path.dirname(os.path.abspath(os.__file__)) + os.sep, "<frozen ")
_FRAMES = 5


class StrayOpenWarning(RuntimeWarning):
    """Code other than SQLite opened a database (or its ``-wal``/``-shm``)
    that this process holds SQLite connections to; closing that file drops
    every POSIX lock the process holds on it.  Attributed to the line of the
    open."""


class StrayOpen(NamedTuple):
    """One stray open, as the pytest plugin reports it."""

    path: str
    """The file opened, absolute."""
    database: str
    """The database it belongs to, absolute."""
    kind: str
    """``"db"``, ``"wal"``, ``"shm"`` or ``"journal"``."""
    where: str
    """``file:line`` of the code that opened it (outside the standard library)."""
    via: tuple
    """The frames from the open outward to ``where``, as ``file:line in function``."""
    guarded: bool
    """Whether this package's guard held the database's WAL at the time: the
    process's POSIX locks are lost all the same, but other processes still
    see the guard's locks and leave the ``-wal``/``-shm`` alone."""
    thread_id: int

    def describe(self) -> str:
        via = f" (via {', '.join(self.via)})" if self.via else ""
        if self.kind == "db":
            what = f"the database {self.path}"
        else:
            what = f"{self.path}, the -{self.kind} of {self.database}"
        cover = ("the guard's OFD locks covered it: other processes still see the WAL "
                 "in use" if self.guarded else
                 "no guard covered it: another process's last close can then checkpoint "
                 "and unlink the live -wal/-shm")
        return (f"{self.where}{via} opened {what}, which this process holds SQLite "
                f"connections to; closing it drops every POSIX lock the process holds on "
                f"the database ({cover})")


class _Listening:
    """The hook's shared state; every field but ``seen`` and ``names`` is
    replaced, never mutated in place, so the hook reads a consistent value
    without a lock.  Those two the C hook holds, so they change in place,
    under the GIL."""

    warn = False
    listeners: tuple = ()
    # The databases (as their connect events name them, absolute) whose connect
    # event every listener has had: the C hook notes their later connects
    # itself instead of calling _handle.  A new dict whenever the listeners
    # change; in between only added to, or emptied (_forget_settled).
    seen: dict = {}

    def __init__(self):
        # Base names of the databases known: the C hook passes on only the
        # open events of files with these names (or their -wal, -shm,
        # -journal).  Never forgotten: a process knows a handful.
        self.names = set()


# Enough for every database of a test suite or a service; a process that
# connects to more distinct files calls _handle for the rest.
_SEEN_MAX = 1024


_state = _Listening()
_lock = threading.Lock()
_local = threading.local()


def warn_on_stray_open(enable: bool = True) -> bool:
    """warn_on_stray_open(enable=True) -> bool

    Switch :class:`StrayOpenWarning` on (or off) for stray opens anywhere in
    this process, from now on; returns whether it was on.  Databases are
    learnt from the connections opened from now on and from the
    WalSafeConnections open now.
    """
    if not isinstance(enable, bool):
        raise TypeError(f"enable must be a bool, not {enable!r}")
    with _lock:
        previous = _state.warn
        if enable:
            _learn_many(row[0] for row in _native._live_connections())
        _state.warn = enable
        _refresh()
    return previous


def _listen(listener) -> None:
    """Start passing events to ``listener`` (the pytest plugin's tracker):
    ``listener.before_connect(database)``, ``listener.connected(database,
    connection, opener)`` and ``listener.stray_open(StrayOpen)``."""
    with _lock:
        _state.listeners = _state.listeners + (listener,)
        _refresh()


def _unlisten(listener) -> None:
    with _lock:
        _state.listeners = tuple(item for item in _state.listeners if item is not listener)
        _refresh()


def _refresh() -> None:
    """The hook is C (_native): it drops every event but the three _handle
    takes before any Python code runs, adds itself once, and passes events
    on only while someone wants them."""
    _state.seen = {}
    if _state.warn or _state.listeners:
        _native._set_audit_handler(_handle, seen=_state.seen, note=_local, names=_state.names)
    else:
        _native._set_audit_handler(None)


def _forget_settled() -> None:
    """Make the next connect to each database reach the listeners again (the
    pytest plugin, at each test's start); in place, as the C hook holds it."""
    _state.seen.clear()


def _learn_many(paths) -> None:
    _state.names.update(os.path.basename(path) for path in paths if path)


def _handle(event, args):
    if event == "open":
        if _state.names:
            _guarded_call(_on_open, args[0])
        return
    # The sqlite3 events: nothing here opens a file or a connection, so no
    # recursion guard, but our failures must not fail the user's connect.
    try:
        if event == "sqlite3.connect":
            _on_connect(args[0])
        elif _state.listeners:                  # sqlite3.connect/handle, plain only
            _on_handle(args[0])
    except Exception:
        pass


def _guarded_call(function, argument):
    # For the open events.  An exception out of an audit hook aborts the
    # operation it audits (the user's open()), so our own failures are
    # swallowed; only a StrayOpenWarning made an error by the user's filters
    # gets through.  The flag stops recursion: scanning /proc may itself
    # open files.
    if getattr(_local, "busy", False):
        return
    _local.busy = True
    try:
        function(argument)
    except StrayOpenWarning:
        raise
    except Exception:
        pass
    finally:
        _local.busy = False


def _database_path(database) -> Optional[str]:
    """The absolute path of a sqlite3.connect() database argument, or None
    for in-memory and temporary databases."""
    if isinstance(database, int):
        return None
    text = os.fsdecode(os.fspath(database))
    if text.startswith("file:"):
        # A URI (uri=True is not part of the event; a file really named
        # "file:..." is rare enough to be read as a URI too).
        from urllib.parse import unquote, urlsplit
        parts = urlsplit(text)
        if "mode=memory" in parts.query:
            return None
        text = unquote(parts.path)
    if text in ("", ":memory:"):
        return None
    return os.path.abspath(text)


def _on_connect(database):
    path = _database_path(database)
    _local.pending = path
    if path is None:
        return
    name = os.path.basename(path)
    _state.names.add(name)
    for listener in _state.listeners:
        listener.before_connect(path)
    # Settled: the next connects to it need only the note above, which the
    # hook makes itself.  Only for an absolute name, which no chdir changes,
    # given as a str (or as bytes: CPython 3.10's event encodes the name).
    seen = _state.seen
    if (type(database) in (str, bytes) and os.fsdecode(database) == path
            and len(seen) < _SEEN_MAX):
        seen[database] = path


def _on_handle(connection):
    path = getattr(_local, "pending", None)
    _local.pending = None
    if path is None:
        return
    opener = None
    if not isinstance(connection, _native.WalSafeConnection):
        # WalSafeConnections keep their own opener; a plain one gets the
        # same frames, captured here (our package's frames are skipped).
        opener = _native._opener_here()
    for listener in _state.listeners:
        listener.connected(path, connection, opener)


def _on_open(file):
    if isinstance(file, int):
        return                                  # os.fdopen() and friends
    path = os.fsdecode(os.fspath(file))
    name = path.rpartition(os.sep)[2]
    kind = "db"
    for sidecar, suffix in _KINDS[1:]:
        if name.endswith(suffix):
            name, kind = name[: -len(suffix)], sidecar
            break
    if name not in _state.names:
        return
    path = os.path.abspath(path)
    database = path if kind == "db" else os.path.join(os.path.dirname(path), name)
    try:
        st = os.stat(database)
    except OSError:
        return
    identity = (st.st_dev, st.st_ino)
    held = [row for row in _native._scan_fds(os.getpid(), links=False)
            if (row[2], row[3]) == identity]
    if not held:
        return                                  # no connection holds it: harmless
    frame, via = _open_site()
    where = "<unknown>" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"
    stray = StrayOpen(path, database, kind, where, via, _guarded(database),
                      threading.get_ident())
    for listener in _state.listeners:
        listener.stray_open(stray)
    if _state.warn:
        # As warnings.warn() would from that frame: its module's registry
        # makes the default filter show each location once.
        module_globals = frame.f_globals if frame is not None else {}
        warnings.warn_explicit(stray.describe(), StrayOpenWarning,
                               frame.f_code.co_filename if frame is not None else "<unknown>",
                               frame.f_lineno if frame is not None else 0,
                               module=module_globals.get("__name__"),
                               registry=module_globals.setdefault("__warningregistry__", {}))


def _guarded(database) -> bool:
    try:
        from .fds import sqlite_fds
        return sqlite_fds(database).guarded
    except (OSError, NotImplementedError):
        return False


def _open_site():
    """(frame, via) of the code that opened the file: the innermost frame
    outside this package and the standard library (None if there is none),
    and the standard-library frames from the open to it, as "file:line in
    function"."""
    frame = sys._getframe(1)
    via = []
    while frame is not None and len(via) < _FRAMES:
        filename = frame.f_code.co_filename
        if filename.startswith(_PACKAGE_DIR):
            frame = frame.f_back
            continue
        if not filename.startswith(_STDLIB):
            return frame, tuple(via)
        via.append(f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
    return None, tuple(via)


def _from_environment() -> None:
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("", "0", "no", "false", "off"):
        return
    if value not in ("1", "yes", "true", "on"):
        warnings.warn(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r} is not one of 1/yes/true/on or "
                      f"0/no/false/off; stray opens are not watched", RuntimeWarning,
                      stacklevel=3)
        return
    warn_on_stray_open(True)
