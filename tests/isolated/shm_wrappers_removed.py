"""Someone else (as SQLite's own test harness does with
xSetSystemCall(vfs, NULL, NULL)) restores SQLite's default system calls
while a guarded connection to the database argv[1] is open: our -shm
wrappers are gone after it, and sqlite_api() must say so.  Needs SQLite's
symbols to be visible.

Prints a JSON list: sqlite_api()["shm_locks"] before ("ofd") and after
("posix: the system-call wrappers were removed ...").  Exits 0."""
import ctypes
import json
import sqlite3
import sys

import hermes_kanban_native as hkn

db = sys.argv[1]
conn = sqlite3.connect(db, factory=hkn.WalSafeConnection, isolation_level=None)
conn.execute("SELECT count(*) FROM t").fetchone()
before = hkn.sqlite_api()["shm_locks"]

# Restores SQLite's default system calls, as SQLite's own test harness does
# with xSetSystemCall(vfs, NULL, NULL): our -shm wrappers are gone after it.
library = ctypes.CDLL(hkn.sqlite_api()["library"])
SYSCALL = ctypes.CFUNCTYPE(None)


class Vfs(ctypes.Structure):
    _fields_ = [("iVersion", ctypes.c_int), ("szOsFile", ctypes.c_int),
                ("mxPathname", ctypes.c_int), ("pNext", ctypes.c_void_p),
                ("zName", ctypes.c_char_p), ("pAppData", ctypes.c_void_p)]
    _fields_ += [(name, ctypes.c_void_p) for name in (
        "xOpen", "xDelete", "xAccess", "xFullPathname", "xDlOpen", "xDlError", "xDlSym",
        "xDlClose", "xRandomness", "xSleep", "xCurrentTime", "xGetLastError",
        "xCurrentTimeInt64")]
    _fields_ += [("xSetSystemCall", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p,
                                                     ctypes.c_char_p, ctypes.c_void_p))]


library.sqlite3_vfs_find.restype = ctypes.POINTER(Vfs)
vfs = library.sqlite3_vfs_find(b"unix")
assert vfs.contents.iVersion >= 3
assert vfs.contents.xSetSystemCall(vfs, None, None) == 0

after = hkn.sqlite_api()["shm_locks"]
conn.close()
print(json.dumps([before, after]))
