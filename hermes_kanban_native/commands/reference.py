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


class ReaderProcess:
    """Another process with a read transaction open on `path` (a CLI listing
    the board): its snapshot keeps every checkpoint from finishing until
    stop().  The scene the demo and the benchmark play the contenders in."""

    _CODE = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=120)\n"
        "conn.execute('BEGIN')\n"
        "conn.execute('SELECT count(*) FROM sqlite_master').fetchone()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "conn.execute('ROLLBACK')\n"
        "conn.close()\n"
    )

    def __init__(self, path):
        import select
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-c", self._CODE, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        if not ready or self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError("the reader process did not start")

    def stop(self):
        import subprocess
        try:
            self.proc.communicate("", timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
