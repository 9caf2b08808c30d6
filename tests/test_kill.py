"""Writers and closers killed with SIGKILL at random moments.

Each child loops: open a WalSafeConnection, BEGIN IMMEDIATE, insert rows with
unique ids, commit, report the ids on its stdout (a pipe) only after
``commit()`` returned, close (with the close-time checkpoint).  Two children
run at once on one database; the test kills each 0-30 ms after it says it is
running, then opens the database again and checks that it recovers, that
``PRAGMA integrity_check`` is ok and that no reported id is missing.

Each child also writes the phase it is in to a one-byte shared mapping
(``MAP_SHARED`` survives SIGKILL), so the test can show where kills landed.
"""
from __future__ import annotations

import collections
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import hermes_kanban_native as hkn
from hermes_kanban_native.commands.databases import make_wal_db
from conftest import isolated_script

pytestmark = pytest.mark.slow

KILLS = 200
DEADLINE = 30.0

PHASES = {0: "starting", 1: "opening", 2: "in transaction", 3: "committing",
          4: "between commit and report", 5: "closing (checkpoint)", 6: "closed"}


class Child:
    def __init__(self, database, policy, prefix, per_txn, phase_path):
        with open(phase_path, "wb") as f:
            f.write(b"\0")
        self.phase_path = phase_path
        self.proc = subprocess.Popen(
            [sys.executable, isolated_script("commit_until_killed"), database, policy, prefix,
             str(per_txn), phase_path],
            stdout=subprocess.PIPE, cwd="/", bufsize=0)
        self.buffer = b""

    def wait_running(self):
        end = time.monotonic() + DEADLINE
        while b"go\n" not in self.buffer:
            remaining = end - time.monotonic()
            assert remaining > 0, "the child did not start in time"
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"the child exited early ({self.proc.wait()})"
                self.buffer += chunk

    def kill(self):
        """SIGKILL; returns (ids reported before the kill, phase it died in)."""
        self.proc.send_signal(signal.SIGKILL)
        rest = self.proc.stdout.read()
        self.proc.stdout.close()
        code = self.proc.wait(DEADLINE)
        assert code == -signal.SIGKILL, code
        data = self.buffer + rest
        # A line cut short cannot happen (pipe writes under PIPE_BUF are
        # atomic); only complete lines count anyway.
        data = data[: data.rfind(b"\n") + 1]
        ids = [line.decode() for line in data.split(b"\n") if line and line != b"go"]
        with open(self.phase_path, "rb") as f:
            phase = f.read(1)[0]
        return ids, phase


def verify(database, new_ids):
    """The next open recovers; integrity ok; every reported id is there."""
    conn = sqlite3.connect(database, factory=hkn.WalSafeConnection, isolation_level=None,
                           timeout=120)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        for start in range(0, len(new_ids), 500):
            chunk = new_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found = {row[0] for row in conn.execute(
                f"SELECT id FROM k WHERE id IN ({marks})", chunk)}
            missing = sorted(set(chunk) - found)
            assert not missing, f"reported committed but missing after a kill: {missing[:10]}"
    finally:
        conn.close()


def kill_loop(tmp_path, policies, per_txn):
    database = make_wal_db(tmp_path / "killed.db", table="k (id TEXT PRIMARY KEY, pad BLOB)")
    rng = random.Random()
    phases = collections.Counter()
    reported = []
    kills = 0
    round_no = 0
    started = time.monotonic()
    while kills < KILLS:
        round_no += 1
        children = [Child(database, policies[i % len(policies)], f"r{round_no}c{i}", per_txn,
                          str(tmp_path / f"phase-{i}")) for i in range(2)]
        for child in children:
            child.wait_running()
        # Each child dies at its own random moment 0-30 ms from now.
        now = time.monotonic()
        schedule = sorted((now + rng.uniform(0, 0.030), i) for i in range(2))
        new_ids = []
        for when, i in schedule:
            delay = when - time.monotonic()
            if delay > 0:
                time.sleep(delay)       # the random kill moment itself
            ids, phase = children[i].kill()
            new_ids += ids
            phases[PHASES[phase]] += 1
            kills += 1
        verify(database, new_ids)
        reported += new_ids
    verify(database, reported)          # once more, everything at the end
    elapsed = time.monotonic() - started
    print(f"\n{kills} kills ({policies}, {per_txn} rows per transaction) in {elapsed:.1f} s; "
          f"{len(reported)} reported rows verified; kills by phase: {dict(phases)}")
    return kills, reported, phases


def test_killed_writers_lose_no_reported_commit(tmp_path):
    kills, reported, phases = kill_loop(tmp_path, ["passive", "truncate"], per_txn=1)
    assert kills >= KILLS
    assert len(reported) > 0
    assert phases["in transaction"] + phases["committing"] > 0


def test_killed_closers_lose_no_reported_commit(tmp_path):
    # Bigger transactions: the close-time checkpoint copies more pages and
    # fsyncs, so more kills land inside it.
    kills, reported, phases = kill_loop(tmp_path, ["truncate", "passive"], per_txn=20)
    assert kills >= KILLS
    assert len(reported) > 0
    assert phases["closing (checkpoint)"] > 0
