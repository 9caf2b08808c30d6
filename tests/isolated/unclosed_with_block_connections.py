"""A gateway-like hermes process on the database argv[1]: a long-lived
connection, and every tick (argv[2] ticks) a ``with`` connection that writes
and is never closed.  Automatic collection is off, as in a large process
where it runs rarely; a collection runs every argv[3] ticks.

Prints one JSON object: "warned", the ResourceWarnings naming the database;
"piled_high", the most unclosed connections alive at once; "fds_high", the
most descriptors of the database; "finalized" and "checkpoints", what the
package counted meanwhile; "left", the database's descriptors at the end.
Exits 0; an assertion error if a collection left more than the long-lived
connection."""
import gc
import json
import sys
import warnings

import hermes_kanban_native as hkn

from hermes_connect import kanban

DB, TICKS, EVERY = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Every close that follows a write checkpoints, so the count of checkpoints
# shows that the collector's finalizer ran the close-time work.
hkn.WalSafeConnection.checkpoint_threshold = 0
gc.disable()
long_lived = kanban(DB)
stats0 = hkn.stats()
fds_high = piled_high = warned = 0


def count(message, category, *args, **kwargs):
    global warned
    if issubclass(category, ResourceWarning) and DB in str(message):
        warned += 1


warnings.simplefilter("always", ResourceWarning)
warnings.showwarning = count
for tick in range(1, TICKS + 1):
    with kanban(DB) as conn:
        conn.execute("INSERT INTO t VALUES (?)", (tick,))
    del conn
    piled_high = max(piled_high, len(hkn.live_connections(DB)) - 1)
    fds_high = max(fds_high, len(hkn.sqlite_fds(DB).db))
    if tick % EVERY == 0:
        gc.collect()
        assert len(hkn.live_connections(DB)) == 1, hkn.live_connections(DB)
stats1 = hkn.stats()
long_lived.close()
print(json.dumps({"warned": warned, "piled_high": piled_high, "fds_high": fds_high,
                  "finalized": stats1["finalized"] - stats0["finalized"],
                  "checkpoints": stats1["checkpoints"] - stats0["checkpoints"],
                  "left": len(hkn.sqlite_fds(DB).db)}))
