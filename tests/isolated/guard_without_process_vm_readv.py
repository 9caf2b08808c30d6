"""Guarded connections to the database argv[1] in a process where a seccomp
filter refuses process_vm_readv with EPERM (as some sandboxes do) and allows
everything else: the guard cannot read SQLite's file objects there.  The
filter is written for x86_64 (other architectures: allowed).

Prints one JSON object: the warnings raised while opening two connections
("Category: message"), sqlite_api(), whether the database is guarded, the
guard_failures count, the connection's guard_wal and the row count a second
connection sees.  Exits 0; an assertion error if the filter cannot be
installed."""
import ctypes
import errno


class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]


LOAD, JUMP_IF_EQUAL, RETURN = 0x20, 0x15, 0x06
rules = (Filter * 6)(
    Filter(LOAD, 0, 0, 4),                      # seccomp_data.arch
    Filter(JUMP_IF_EQUAL, 0, 3, 0xC000003E),    # not x86_64: allow
    Filter(LOAD, 0, 0, 0),                      # seccomp_data.nr
    Filter(JUMP_IF_EQUAL, 0, 1, 310),           # process_vm_readv
    Filter(RETURN, 0, 0, 0x00050000 | errno.EPERM),
    Filter(RETURN, 0, 0, 0x7FFF0000),
)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                          # PR_SET_NO_NEW_PRIVS
program = Program(len(rules), rules)
assert libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0      # SECCOMP_MODE_FILTER

# Imported once the filter is in place.
import json                             # noqa: E402
import sqlite3                          # noqa: E402
import sys                              # noqa: E402
import warnings                         # noqa: E402

import hermes_kanban_native as hkn      # noqa: E402

db = sys.argv[1]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    conns = [sqlite3.connect(db, factory=hkn.WalSafeConnection, isolation_level=None)
             for _ in range(2)]
conns[0].execute("INSERT INTO t VALUES (1)")
report = {
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "api": hkn.sqlite_api(), "guarded": hkn.sqlite_fds(db).guarded,
    "failures": hkn.stats()["guard_failures"], "guard_wal": conns[0].guard_wal,
    "rows": conns[1].execute("SELECT count(*) FROM t").fetchone()[0],
}
for conn in conns:
    conn.close()
print(json.dumps(report))
