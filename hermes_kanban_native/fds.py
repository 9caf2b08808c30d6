"""What the descriptors and mappings a process holds on a SQLite database mean.

The native scanners (``_native._scan_*``, csrc/linux/fdscan.c) return raw
records from ``/proc``; this module decides what they are:

* which descriptors belong to the database and which to its ``-wal``,
  ``-shm`` and ``-journal`` sidecars: by inode identity with the files at
  those paths now, and, for files that are no longer there, by path name;
* which of them are *stale*: the inode is no longer the file at its path
  (unlinked, or replaced by a rename).  This is decided by identity, never by
  the ``" (deleted)"`` text the kernel appends to a link (some filesystems
  show it on live files; the suffix is only stripped from the path);
* whether the process has lost its POSIX locks on the database while it
  still uses the WAL (a stray ``open()``/``close()`` of the database file in
  that process does this, and another process's last close then unlinks the
  live ``-wal``/``-shm`` pair);
* whether the process holds OFD locks on the database (the guard).

Sidecar names follow SQLite's: ``<db>-wal`` etc. next to the database path
with symlinks resolved.  Paths are compared as this process sees them: a
process in another mount namespace (a container) may name other files.

Only Linux is supported; elsewhere every function raises NotImplementedError.
"""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple, Optional, Union

from . import _native
from .stray import _KINDS

__all__ = [
    "FdInfo",
    "MapInfo",
    "LockInfo",
    "SqliteFds",
    "Holders",
    "open_fds",
    "mapped_files",
    "sqlite_fds",
    "holders",
]

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

_DELETED_SUFFIX = " (deleted)"
_MISSING = "missing"
_UNKNOWN = "unknown"


class FdInfo(NamedTuple):
    """One open descriptor: its number, the path it names (without the
    kernel's " (deleted)" suffix; None when the kernel cannot print it, for a
    path longer than a page), the inode's st_dev/st_ino/st_nlink (None when
    the inode could not be stat()ed), and whether the inode is no longer the
    file at that path."""

    fd: int
    path: Optional[str]
    dev: Optional[int]
    ino: Optional[int]
    nlink: Optional[int]
    deleted: bool


class MapInfo(NamedTuple):
    """One file-backed memory mapping (a line of /proc/<pid>/maps)."""

    start: int
    end: int
    perms: str
    offset: int
    dev: int
    ino: int
    path: str
    deleted: bool

    def __repr__(self) -> str:
        return (f"MapInfo(start={self.start:#x}, end={self.end:#x}, perms={self.perms!r}, "
                f"offset={self.offset:#x}, dev={self.dev}, ino={self.ino}, "
                f"path={self.path!r}, deleted={self.deleted})")


class LockInfo(NamedTuple):
    """One lock record as /proc/locks prints it.  ``pid`` is -1 for OFD
    locks, ``end`` None for "to end of file", ``blocked`` True for a request
    still waiting for the lock."""

    kind: str
    mode: str
    access: str
    pid: int
    dev: Optional[int]
    ino: Optional[int]
    start: int
    end: Optional[int]
    blocked: bool

    def __repr__(self) -> str:
        end = "EOF" if self.end is None else f"{self.end:#x}"
        waiting = ", blocked" if self.blocked else ""
        return (f"LockInfo({self.kind} {self.access} pid={self.pid} ino={self.ino} "
                f"{self.start:#x}-{end}{waiting})")


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class SqliteFds:
    """Everything one process holds on one database.

    ``db``, ``wal``, ``shm``, ``journal``: descriptors of each file (tuples of
    FdInfo).  ``shm_maps``: mappings of the ``-shm``.  ``stale``: the
    descriptors and mappings among all of these (database mappings included)
    whose inode is no longer the file at the path.  ``locks``: the process's
    held POSIX locks on the database inode.  ``locks_lost``: it uses the WAL
    (``-wal``/``-shm`` open or mapped) but holds no such lock.  ``guarded``:
    it holds an OFD lock on the database inode.  ``live`` and ``parked`` (this
    process only, else None): its open WalSafeConnections on the database,
    and the database descriptors SQLite keeps open after close.

    A descriptor matched by identity carries the path it is the file of (the
    resolved database or sidecar path), not the kernel's link text.  Only
    unlinked inodes (st_nlink 0) are matched by name, so a replaced sidecar
    that is still hard-linked elsewhere is not reported as stale.
    """

    database: str
    pid: int
    db: tuple
    wal: tuple
    shm: tuple
    journal: tuple
    shm_maps: tuple
    stale: tuple
    locks: tuple
    locks_lost: bool
    guarded: bool
    live: Optional[list]
    parked: Optional[int]

    @property
    def healthy(self) -> bool:
        """Nothing stale, and no POSIX locks lost without a guard.

        Lost POSIX locks under a held guard are reported (``locks_lost``)
        but are healthy: the guard's OFD locks are what other processes'
        last-close checks see, so nobody can unlink the live ``-wal``/``-shm``.
        The ``fds`` command's exit status follows this property.
        """
        return not self.stale and not (self.locks_lost and not self.guarded)

    def __repr__(self) -> str:
        return (f"<SqliteFds pid={self.pid} {self.database!r} db={len(self.db)} "
                f"wal={len(self.wal)} shm={len(self.shm)} journal={len(self.journal)} "
                f"shm_maps={len(self.shm_maps)} stale={len(self.stale)} "
                f"locks={len(self.locks)} locks_lost={self.locks_lost} "
                f"guarded={self.guarded} parked={self.parked}>")

    def kind_of(self, entry: Union[FdInfo, MapInfo]) -> str:
        """'db', 'wal', 'shm' or 'journal' for one of this result's entries."""
        for kind, _ in _KINDS:
            if entry in getattr(self, kind):
                return kind
        if entry in self.shm_maps:
            return "shm"
        # Only stale mappings of another file are in no list; they were
        # matched by name.
        for kind, suffix in _KINDS[1:]:
            if entry.path == self.database + suffix:
                return kind
        return "db"

    def report(self) -> str:
        """Every descriptor and mapping, one per line, with kind and inode."""
        if self.healthy:
            state = "healthy"
            if self.locks_lost:
                state += " (POSIX locks lost, the guard's OFD locks hold)"
        else:
            state = ", ".join(word for word, bad in (("STALE", self.stale),
                                                     ("LOCKS LOST", self.locks_lost
                                                                     and not self.guarded)) if bad)
        lines = [f"{self.database} in pid {self.pid}: {state}"]
        for kind, _ in _KINDS:
            for info in getattr(self, kind):
                mark = "  STALE" if info.deleted else ""
                lines.append(f"  {kind:<7} fd {info.fd:<5} {info.path}  inode {info.ino}{mark}")
        maps = list(self.shm_maps) + [m for m in self.stale
                                      if isinstance(m, MapInfo) and m not in self.shm_maps]
        for info in maps:
            mark = "  STALE" if info.deleted else ""
            lines.append(f"  {self.kind_of(info):<7} map {info.start:#x}-{info.end:#x} "
                         f"{info.perms} {info.path}  inode {info.ino}{mark}")
        held = ", ".join(f"{lock.access} {lock.start:#x}-"
                         f"{'EOF' if lock.end is None else format(lock.end, '#x')}"
                         for lock in self.locks) or "none"
        lines.append(f"  posix locks on db: {held}")
        lines.append(f"  locks lost: {'yes' if self.locks_lost else 'no'}; "
                     f"guarded: {'yes' if self.guarded else 'no'}")
        if self.parked is not None:
            lines.append(f"  live connections: {len(self.live or ())}; "
                         f"parked db fds: {self.parked}")
        return "\n".join(lines)


class Holders(dict):
    """pid -> SqliteFds for each process holding a database; ``skipped``
    counts the processes whose /proc entries we were not permitted to read."""

    __slots__ = ("skipped",)

    def __init__(self, items=(), skipped: int = 0):
        super().__init__(items)
        self.skipped = skipped

    def __repr__(self) -> str:
        return f"Holders({dict.__repr__(self)}, skipped={self.skipped})"


def _pid_or_self(pid: Optional[int]) -> int:
    return os.getpid() if pid is None else pid


def _identity(path: str, cache: dict):
    """(st_dev, st_ino) of the file at *path* now, _MISSING or _UNKNOWN."""
    try:
        return cache[path]
    except KeyError:
        pass
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        found = _MISSING
    except OSError:
        found = _UNKNOWN
    else:
        found = (st.st_dev, st.st_ino)
    cache[path] = found
    return found


def _strip_suffix(text: str, dev, ino, cache: dict) -> str:
    """The path the kernel's link text names.  The " (deleted)" suffix is
    removed unless the text as written is the very inode (a file may really
    be called that)."""
    if text is None or not text.endswith(_DELETED_SUFFIX):
        return text
    if dev is not None and _identity(text, cache) == (dev, ino):
        return text
    return text[: -len(_DELETED_SUFFIX)]


def _is_deleted(path: str, dev, ino, nlink, cache: dict) -> bool:
    """True when the inode is no longer the file at *path*."""
    if nlink == 0:
        return True
    if dev is None or path is None or not path.startswith("/"):
        return False    # sockets, pipes, anonymous inodes; or unknown
    found = _identity(path, cache)
    if found is _UNKNOWN:
        return False
    return found != (dev, ino)


def _map_is_deleted(path: str, dev, ino, cache: dict) -> bool:
    if not path.startswith("/"):
        return False    # [heap], [stack], [vdso] ...
    found = _identity(path, cache)
    if found is _UNKNOWN:
        return False
    if found is _MISSING:
        return True
    # Overlay and btrfs files can show another device number in maps than
    # stat() gives; the same inode number at the path is the same file.
    return found[1] != ino


def open_fds(pid: Optional[int] = None) -> list:
    """Every open descriptor of *pid* (default: this process) as FdInfo."""
    cache: dict = {}
    result = []
    for fd, link, dev, ino, nlink, _mode, _size in _native._scan_fds(_pid_or_self(pid)):
        path = _strip_suffix(link, dev, ino, cache)
        result.append(FdInfo(fd, path, dev, ino, nlink,
                             _is_deleted(path, dev, ino, nlink, cache)))
    return result


def mapped_files(pid: Optional[int] = None) -> list:
    """Every file-backed mapping of *pid* (default: this process) as MapInfo."""
    cache: dict = {}
    result = []
    for start, end, perms, offset, dev, ino, text in _native._scan_maps(_pid_or_self(pid)):
        if not ino:
            continue    # anonymous memory
        path = _strip_suffix(text, dev, ino, cache)
        result.append(MapInfo(start, end, perms, offset, dev, ino, path,
                              _map_is_deleted(path, dev, ino, cache)))
    return result


class _Target:
    """A database and its sidecars: by path name and by current identity."""

    __slots__ = ("database", "path", "by_kind", "by_name", "by_identity", "identity_of")

    def __init__(self, database: PathArg):
        raw = os.fspath(database)
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        self.database = database
        # SQLite opens sidecars next to the database path with symlinks
        # resolved, so they are named after the resolved path.
        self.path = os.path.realpath(raw)
        self.by_kind = {kind: self.path + suffix for kind, suffix in _KINDS}
        self.by_name = {path: kind for kind, path in self.by_kind.items()}
        self.by_identity = {}
        self.identity_of = {}
        for kind, suffix in _KINDS:
            try:
                st = os.stat(raw if kind == "db" else self.path + suffix)
            except OSError:
                continue
            self.by_identity[(st.st_dev, st.st_ino)] = kind
            self.identity_of[kind] = (st.st_dev, st.st_ino)


def _own_connections(database: PathArg, db_fd_count: int):
    """(live, parked) for this process.  The registry of open
    WalSafeConnections lives in the connection type; without it, none are
    known to be live."""
    try:
        # Relative, like every import in the package: a copy of it loaded
        # over another instance of _native (tests/modes.py) asks its own.
        from . import live_connections
        live = live_connections(database)
    except (ImportError, AttributeError):
        live = []
    return live, max(0, db_fd_count - len(live))


def _classify(target: _Target, pid: int, fd_rows, map_rows, lock_rows) -> SqliteFds:
    by_identity = target.by_identity
    by_name = target.by_name
    cache: dict = {}
    files: dict = {kind: [] for kind, _ in _KINDS}
    stale = []

    for fd, link, dev, ino, nlink, _mode, _size in fd_rows:
        kind = by_identity.get((dev, ino))
        if kind is not None and nlink:
            path = link if link is not None else target.by_kind[kind]
            files[kind].append(FdInfo(fd, path, dev, ino, nlink, False))
            continue
        if nlink:
            continue    # still linked, and not as our database or a sidecar
        # Unlinked (or not stat()able): only its name can tie it to us.
        # Reading the link costs a /proc lookup, so only these pay for it.
        if link is None:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue    # closed since the scan
            except PermissionError:
                raise
            except OSError:
                continue    # no name the kernel can print: not ours by name
        path = _strip_suffix(link, dev, ino, cache)
        kind = by_name.get(path) if kind is None else kind
        if kind is None:
            continue    # e.g. SQLite's own unlinked temp files
        # An inode we could not stat() cannot be judged stale.
        info = FdInfo(fd, path, dev, ino, nlink, dev is not None)
        files[kind].append(info)
        if info.deleted:
            stale.append(info)

    shm_maps = []
    for start, end, perms, offset, dev, ino, text in map_rows:
        if not ino:
            continue
        kind = by_identity.get((dev, ino))
        if kind is not None:
            path, deleted = text, False
        else:
            path = _strip_suffix(text, dev, ino, cache)
            kind = by_name.get(path)
            if kind is None:
                continue
            current = target.identity_of.get(kind)
            # Same inode number at the path: the same file seen with another
            # device number (overlayfs, btrfs), not a stale one.
            deleted = current is None or current[1] != ino
        info = MapInfo(start, end, perms, offset, dev, ino, path, deleted)
        if kind == "shm":
            shm_maps.append(info)
        if deleted:
            stale.append(info)

    # The process's locks sit on the inode its descriptors have open, which
    # is the database's current inode unless the file was replaced.
    db_inodes = {(info.dev, info.ino) for info in files["db"] if info.dev is not None}
    if "db" in target.identity_of:
        db_inodes.add(target.identity_of["db"])
    locks = []
    ofd_on_db = False
    for row in lock_rows:
        if row[8] or (row[4], row[5]) not in db_inodes:
            continue
        if row[0] == "POSIX" and row[3] == pid:
            locks.append(LockInfo(*row))
        elif row[0] == "OFDLCK":
            ofd_on_db = True

    guarded = False
    if ofd_on_db:
        # /proc/locks shows OFD locks without a pid; the fdinfo of each of the
        # process's database descriptors says which are its own.
        for info in files["db"]:
            for row in _native._scan_fd_locks(pid, info.fd):
                if row[0] == "OFDLCK" and not row[8] and (row[4], row[5]) in db_inodes:
                    guarded = True
                    break
            if guarded:
                break

    uses_wal = bool(files["wal"] or files["shm"] or shm_maps)
    live = parked = None
    if pid == os.getpid():
        live, parked = _own_connections(target.database, len(files["db"]))
    return SqliteFds(
        database=target.path,
        pid=pid,
        db=tuple(files["db"]),
        wal=tuple(files["wal"]),
        shm=tuple(files["shm"]),
        journal=tuple(files["journal"]),
        shm_maps=tuple(shm_maps),
        stale=tuple(stale),
        locks=tuple(locks),
        locks_lost=uses_wal and not locks,
        guarded=guarded,
        live=live,
        parked=parked,
    )


def sqlite_fds(database: PathArg, pid: Optional[int] = None) -> SqliteFds:
    """What process *pid* (default: this one) holds on *database*.

    *database* may be str, bytes or a path-like, relative or through
    symlinks; it need not exist any more (its deleted files are then found
    by name).  Raises ProcessLookupError for a pid that does not exist and
    PermissionError for one we may not inspect.
    """
    target = _Target(database)
    pid = _pid_or_self(pid)
    only = tuple(target.by_identity)
    fd_rows = _native._scan_fds(pid, links=False, only=only)
    map_rows = _native._scan_maps(pid, only=only, prefix=target.path)
    return _classify(target, pid, fd_rows, map_rows, _native._scan_locks())


def holders(database: PathArg) -> Holders:
    """Every process holding *database* (its files open or mapped), as
    {pid: SqliteFds}.  Processes we may not inspect are counted in
    ``.skipped``; processes that exit during the scan are left out."""
    target = _Target(database)
    only = tuple(target.by_identity)
    lock_rows = _native._scan_locks()
    found = {}
    skipped = 0
    pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    for pid in pids:
        try:
            fd_rows = _native._scan_fds(pid, links=False, only=only)
            map_rows = _native._scan_maps(pid, only=only, prefix=target.path)
            result = _classify(target, pid, fd_rows, map_rows, lock_rows)
        except ProcessLookupError:
            continue
        except PermissionError:
            skipped += 1
            continue
        if result.db or result.wal or result.shm or result.journal or result.shm_maps:
            found[pid] = result
    return Holders(found, skipped)
