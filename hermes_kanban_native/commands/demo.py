"""The ``demo`` command: the gateway pattern, three ways, side by side.

On a temporary WAL database it plays what hermes' gateway does: a long-lived
connection, a dispatcher thread opening and closing connections every tick,
``with``-block connections that are never closed, and a reader process
holding a read transaction.  It does so with plain ``sqlite3.Connection``,
with the Python subclass that runs ``PRAGMA wal_checkpoint(TRUNCATE)`` in
``close()``, and with ``WalSafeConnection``, then prints what each left
behind.  Automatic garbage collection is off during each run, as in a large
busy process where collections are rare; the table shows the state before
and after one explicit collection.

Finally it cancels the process's locks with a stray ``open()``/``close()`` of
the database and shows the ``fds`` command detecting the lost locks and,
after another process closes the database, the stale sidecars.
"""
from __future__ import annotations

import gc
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings

from .. import WalSafeConnection, sqlite_fds, stats
from ._args import number
from .databases import make_wal_db
from .reference import ReaderProcess, TruncatingConnection

# The demo's busy timeout.  hermes uses 120 s; the Python subclass waits out
# the whole timeout on every close while a reader is open, so the demo uses
# a short one to finish in seconds.
BUSY_TIMEOUT = 0.5
TICK = 0.01
# The table the gateway's connections use.
TASKS = "task (id INTEGER PRIMARY KEY, body TEXT)"


CONTENDERS = (
    ("sqlite3.Connection", sqlite3.Connection),
    ("Python subclass", TruncatingConnection),
    ("WalSafeConnection", WalSafeConnection),
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the gateway pattern with sqlite3, a Python subclass and "
                     "WalSafeConnection, side by side",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=number(float, low=1.5, high=86400, unit="seconds"),
                        default=10.0, metavar="N",
                        help="about how long the whole demo runs (default 10)")
    parser.set_defaults(run=run)


def _say(text: str) -> None:
    print(text, flush=True)


def _open_connections(keeper) -> int:
    """Connection objects still alive and open, the keeper aside (plain
    sqlite3.Connection takes no weak references, so ask the collector)."""
    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection) and obj is not keeper:
            try:
                obj.in_transaction
            except sqlite3.ProgrammingError:
                continue            # closed
            count += 1
    return count


def _gateway(name: str, factory, path: str, seconds: float) -> dict:
    """Runs the gateway pattern with one connection factory; returns its row."""
    make_wal_db(path, table=TASKS)
    close_times = []
    results = []
    stats_before = stats()

    def connect():
        return sqlite3.connect(path, factory=factory, timeout=BUSY_TIMEOUT,
                               isolation_level=None)

    keeper = connect()
    keeper.execute("SELECT count(*) FROM task").fetchone()
    reader = ReaderProcess(path)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    ticks = 0
    try:
        deadline = time.monotonic() + seconds

        def dispatcher():
            nonlocal ticks
            while time.monotonic() < deadline:
                ticks += 1
                if ticks % 3 == 0:
                    # What the gateway did: `with` commits but never closes.
                    with connect() as conn:
                        conn.execute("INSERT INTO task (body) VALUES ('with-block')")
                else:
                    conn = connect()
                    conn.execute("INSERT INTO task (body) VALUES ('tick')")
                    start = time.perf_counter()
                    conn.close()
                    close_times.append(time.perf_counter() - start)
                    if isinstance(conn, WalSafeConnection) and conn.last_checkpoint:
                        results.append(conn.last_checkpoint)
                del conn
                time.sleep(TICK)

        thread = threading.Thread(target=dispatcher, name="dispatcher")
        thread.start()
        thread.join()
        before = sqlite_fds(path)
        still_open = _open_connections(keeper)
        gc.collect()
        after = sqlite_fds(path)
    finally:
        if gc_was_enabled:
            gc.enable()
        reader.stop()
        keeper.close()
    gc.collect()
    open_now = still_open + 1
    row = {
        "name": name,
        "ticks": ticks,
        "left open": still_open,
        "db fds": len(before.db),
        "wal fds": len(before.wal),
        "shm fds": len(before.shm),
        "parked": max(0, len(before.db) - open_now),
        "stale": len(before.stale),
        "db fds after gc": len(after.db),
        "wal fds after gc": len(after.wal),
        "close median ms": statistics.median(close_times) * 1e3 if close_times else 0.0,
        "close max ms": max(close_times) * 1e3 if close_times else 0.0,
        "wal KiB": os.path.getsize(path + "-wal") // 1024 if os.path.exists(path + "-wal") else 0,
    }
    if factory is WalSafeConnection:
        now = stats()
        busy = sum(1 for r in results if r.busy)
        row["checkpoints"] = (f"{now['checkpoints'] - stats_before['checkpoints']} on close"
                              f" ({busy} busy), {now['finalized'] - stats_before['finalized']}"
                              f" by GC")
    elif factory is TruncatingConnection:
        row["checkpoints"] = "result discarded; never on GC"
    else:
        row["checkpoints"] = "autocheckpoint only"
    return row


def _table(rows: list) -> str:
    keys = ["ticks", "left open", "db fds", "wal fds", "shm fds", "parked", "stale",
            "db fds after gc", "wal fds after gc", "close median ms", "close max ms",
            "wal KiB", "checkpoints"]
    header = [""] + [row["name"] for row in rows]
    lines = [header]
    for key in keys:
        cells = [key]
        for row in rows:
            value = row[key]
            cells.append(f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(line)) for line in lines)


def _fds_command(path: str) -> int:
    from ..__main__ import main
    return main(["fds", path, "--pid", str(os.getpid())])


def _lock_cancellation(path: str) -> None:
    make_wal_db(path, table=TASKS)
    holder = sqlite3.connect(path, factory=WalSafeConnection, isolation_level=None)
    try:
        holder.execute("INSERT INTO task (body) VALUES ('before')")
        _say("\n$ fds (a WalSafeConnection is open and has written)")
        _fds_command(path)
        _say("\n... something in this process opens and closes the database file "
             "(a header probe, a backup by copy):  os.close(os.open(db, os.O_RDONLY))")
        os.close(os.open(path, os.O_RDONLY))
        guarded = sqlite_fds(path).guarded
        _say("$ fds")
        _fds_command(path)
        _say("\n... another process opens the database, reads, and closes it")
        subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3
            conn = sqlite3.connect({path!r})
            conn.execute("SELECT count(*) FROM task").fetchone()
            conn.close()
        """)], check=True)
        _say("$ fds")
        status = _fds_command(path)
        if status:
            _say("\nThe other process believed it was the last user: it checkpointed and "
                 "unlinked -wal and -shm\nwhile this process still has them open. Its next "
                 "commits would go to files nobody else sees.")
        elif guarded:
            _say("\nThe sidecars survived: the guard's open-file-description locks, which "
                 "the stray close could not drop,\nkept the other process from the write "
                 "lock its checkpoint-and-unlink needs.")
        else:
            _say(f"\nThe sidecars survived: SQLite {sqlite3.sqlite_version} refuses another "
                 "process that write lock while this one\nstill holds the -shm (its own "
                 "defence since 3.51.0; a stray close of the -shm drops that lock too).")
    finally:
        holder.close()


def run(args) -> int:
    phase = max(0.5, (args.seconds - 1.0) / len(CONTENDERS))
    rows = []
    with tempfile.TemporaryDirectory(prefix="hkn-demo-") as tmp:
        with warnings.catch_warnings():
            # Unclosed connections are the point of the demo; their warnings
            # are counted in the table instead.
            warnings.simplefilter("ignore", ResourceWarning)
            for index, (name, factory) in enumerate(CONTENDERS, 1):
                _say(f"[{index}/{len(CONTENDERS) + 1}] {name}: {phase:.1f} s of gateway ticks "
                     f"with a reader open in another process ...")
                rows.append(_gateway(name, factory, os.path.join(tmp, f"board{index}.db"),
                                     phase))
        _say("\n" + _table(rows))
        _say(f"\nbusy timeout {BUSY_TIMEOUT} s here (120 s in hermes): the Python subclass "
             f"waits it out on every close\nwhile the reader is open; "
             f"'left open' are with-block connections waiting for the garbage collector.")
        _say(f"\n[{len(CONTENDERS) + 1}/{len(CONTENDERS) + 1}] lock cancellation by a stray "
             f"close")
        _lock_cancellation(os.path.join(tmp, "cancel.db"))
    return 0
