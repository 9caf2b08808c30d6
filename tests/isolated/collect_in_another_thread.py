"""hermes' dispatcher thread opens connections to the database argv[1] in
``with`` blocks and never closes them; the collector then runs in the main
thread.  The base class's close() refuses that thread and from 3.13 its
dealloc no longer closes, so WalSafeConnection's finalizer must close each
handle natively.

Prints one JSON object: the live connections and the database's db, wal
and shm descriptors left after the collection (all 0).  Exits 0."""
import gc
import json
import sys
import threading
import warnings

import hermes_kanban_native as hkn

from hermes_connect import kanban

DB = sys.argv[1]
gc.disable()
warnings.simplefilter("ignore", ResourceWarning)


def dispatcher():
    for i in range(10):
        with kanban(DB) as conn:          # never closed, left to the GC
            conn.execute("INSERT INTO t VALUES (?)", (i,))


thread = threading.Thread(target=dispatcher)
thread.start()
thread.join()
gc.collect()                              # here, in the main thread
f = hkn.sqlite_fds(DB)
print(json.dumps({"live": len(hkn.live_connections(DB)), "db": len(f.db),
                  "wal": len(f.wal), "shm": len(f.shm)}))
