"""The approach WalSafeConnection replaces, kept as the one reference that
the demo, the soak and the benchmark compare against.  Not for use.

hermes shipped this Python subclass: a TRUNCATE checkpoint before close().
It waits up to the busy timeout whenever another process has a read open,
throws the result away, shows its PRAGMA to set_trace_callback, and never
runs for a connection that is garbage-collected.
"""
import sqlite3


class TruncatingConnection(sqlite3.Connection):
    """sqlite3.Connection with ``PRAGMA wal_checkpoint(TRUNCATE)`` in close()."""

    def close(self):
        try:
            self.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass
        super().close()
