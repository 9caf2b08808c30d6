"""Whole-process behaviour, each in a fresh interpreter: fork, interpreter
exit (daemon threads included), reference leaks.  (SQL mode runs in this
process: the fixture hkn of conftest.py.)"""
from __future__ import annotations

import json
import os

import pytest

from hermes_kanban_native.commands.databases import make_wal_db
from conftest import run_isolated


@pytest.mark.isolated
def test_forked_child_does_no_native_work(tmp_path):
    path = make_wal_db(tmp_path / "fork.db")
    result = run_isolated("forked_child_does_no_native_work", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
@pytest.mark.isolated
def test_exit_counts_only_what_it_closed(tmp_path):
    # atexit runs last-registered first: report() runs after the package's
    # exit-time closer.
    result = run_isolated("exit_counts_what_it_closed", tmp_path,
                          env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.splitlines()[-1])
    # The main thread's connection was finalized; the daemon thread's was
    # checkpointed and left to the process exit: not finalized, not closed.
    assert stats["finalized"] == 1 and stats["closed"] == 0
    assert stats["checkpoints"] == 2
    assert stats["live"] == 0


@pytest.mark.native       # sql mode cannot use a daemon thread's connection at exit
@pytest.mark.isolated
def test_interpreter_exit_checkpoints_open_connections(tmp_path):
    # The database file stays empty until a checkpoint copies frames back:
    # its size after exit shows that the exit-time checkpoint ran for a
    # connection held by the main module and one held by a daemon thread.
    main_db = str(tmp_path / "main.db")
    daemon_db = str(tmp_path / "daemon.db")
    result = run_isolated("exit_with_open_connections", main_db, daemon_db,
                          env={"PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    assert "Segmentation" not in result.stderr and "Fatal" not in result.stderr
    assert result.stdout.strip() == "exiting"
    for path in (main_db, daemon_db):
        assert os.path.getsize(path) > 4096, path
    assert "unclosed database" in result.stderr and main_db in result.stderr


@pytest.mark.slow
@pytest.mark.isolated
def test_no_reference_or_fd_leak_over_10000_cycles(tmp_path):
    path = make_wal_db(tmp_path / "leak.db")
    result = run_isolated("open_close_10000_cycles", path, timeout=300)
    assert result.returncode == 0, result.stderr
    ref_delta, block_delta, fd_delta, live = map(int, result.stdout.split())
    assert ref_delta == 0
    assert fd_delta == 0
    assert live == 0
    assert block_delta < 200, block_delta      # no per-cycle growth (10,000 cycles)

