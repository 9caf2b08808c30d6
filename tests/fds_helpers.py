"""Helpers shared by test_fds.py and test_fds_command.py: a child process that
holds SQLite connections and runs what the test sends it, and a waiter."""
import fcntl
import json
import os
import select
import subprocess
import sys
import time

from conftest import isolated_script, unlinking_stray_closes

DEADLINE = 30.0


class Holder:
    """A Python child process that keeps SQLite connections in ``conns``."""

    def __init__(self, cwd=None, env=None):
        # The child executes one JSON-encoded snippet per line and answers one
        # JSON line: {"ok": true, "result": <the value of `result`>} or the error.
        self.proc = subprocess.Popen(
            [sys.executable, isolated_script("hold_connections_and_run_snippets")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env)
        self.pid = self._answer()
        assert self.pid == self.proc.pid

    def _answer(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE)
        assert ready, "the child did not answer in time"
        line = self.proc.stdout.readline()
        assert line, f"the child exited ({self.proc.poll()})"
        answer = json.loads(line)
        assert answer["ok"], answer["error"]
        return answer["result"]

    def run(self, code):
        """Execute *code* in the child; returns its variable ``result``."""
        self.proc.stdin.write(json.dumps(code) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def connect(self, database, read=True):
        """Open a connection kept in the child; after a read it holds its
        SHARED lock for as long as it is open."""
        code = f"conns.append(sqlite3.connect({os.fspath(database)!r}))\n"
        if read:
            code += "conns[-1].execute('SELECT count(*) FROM sqlite_master').fetchall()\n"
        self.run(code)

    def close(self):
        """Close the child's connections and wait for it to exit."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(DEADLINE)
        self.proc.stdout.close()
        assert self.proc.returncode == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_in_another_process(database):
    """Open, read and close the database in a fresh process: as the last
    connection it sees, its close checkpoints and unlinks -wal and -shm."""
    subprocess.run([sys.executable, "-c",
                    "import sqlite3, sys\n"
                    "c = sqlite3.connect(sys.argv[1])\n"
                    "c.execute('SELECT * FROM t').fetchall()\n"
                    "c.close()\n", os.fspath(database)],
                   check=True, timeout=DEADLINE)


def stray_open_close_code(database):
    """Code that drops a process's POSIX locks on the file (fact 2)."""
    return f"os.close(os.open({os.fspath(database)!r}, os.O_RDONLY))\n"


def unlinking_stray_close_code(database):
    """Code after which another process's close unlinks the child's live
    -wal/-shm, on this SQLite (conftest.unlinking_stray_closes)."""
    return "".join(stray_open_close_code(path) for path in unlinking_stray_closes(database))


def ofd_guard_code(database):
    """Code taking an OFD read lock on the SHARED range (0x40000002, 510
    bytes) through each of SQLite's own descriptors of the database, as the
    guard does (fact 8)."""
    return (
        f"st = os.stat({os.fspath(database)!r})\n"
        "lock = struct.pack('hhqqi4x', fcntl.F_RDLCK, 0, 0x40000002, 510, 0)\n"
        "for name in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        fst = os.stat(int(name))\n"
        "    except OSError:\n"
        "        continue\n"
        "    if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):\n"
        f"        fcntl.fcntl(int(name), {getattr(fcntl, 'F_OFD_SETLK', 37)}, lock)\n"
    )


def wait_until(predicate, what, deadline=DEADLINE):
    """Wait for *predicate* to become true, failing after *deadline* s."""
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


__all__ = ["Holder", "read_in_another_process", "stray_open_close_code",
           "unlinking_stray_close_code", "ofd_guard_code", "wait_until"]
