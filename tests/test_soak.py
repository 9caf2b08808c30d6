"""``python -m hermes_kanban_native soak``: the gateway model, run briefly.

Each run is a fresh interpreter started outside the checkout, so it uses the
installed package."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def soak(*args, timeout=240):
    """Run the soak with --json; returns (exit status, report, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "hermes_kanban_native", "soak", "--json",
                           *args], capture_output=True, text=True, cwd="/", timeout=timeout)
    print(proc.stderr[-6000:])
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else None
    return proc.returncode, report, proc.stderr


@pytest.fixture(scope="module")
def walsafe_run():
    return soak("--factory", "walsafe", "--seconds", "20")


def test_walsafe_soak_is_clean(walsafe_run):
    status, report, stderr = walsafe_run
    assert report is not None, stderr
    assert report["violations"] == [], report["violations"]
    assert status == 0
    assert report["factory"] == "walsafe"
    assert report["rows_verified"] > 0 and report["rows_verified"] == report["rows_logged"]
    assert report["rows_missing"] == 0
    assert report["main_rows_verified"] == report["main_transactions"] > 0
    assert report["verifiers_run"] > 0 and report["child_failures"] == 0
    assert report["integrity_check"] == "ok"
    assert report["stale_seen"] == 0 and report["locks_lost_seen"] == 0
    # Parked database fds never exceed the peak number of connections, but
    # for the transient zombies of connections the collector is closing (one
    # per thread at most; see the soak's fd check).
    assert report["fd_high_water"]["db"] <= report["peak_live"] + report["threads"] + 1
    assert report["fd_high_water"]["shm"] == 1
    # Every never-closed connection was finalized by the collector, with
    # exactly one ResourceWarning each.
    assert report["unclosed_total"] > 0
    assert report["unclosed_collected"] == report["unclosed_total"]
    assert report["resource_warnings"] == report["unclosed_total"]
    assert "violations: none" in stderr


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason="on 3.10 refcounting frees unclosed connections at once")
def test_sqlite3_soak_shows_the_fd_growth_that_the_bound_stops():
    # No periodic collection during the run: a large busy process where the
    # cyclic collector rarely runs.  sqlite3's never-closed connections pile
    # up; WalSafeConnection collects once its bound is reached.
    common = ("--seconds", "8", "--gc-every", "600", "--unclosed-every", "2")
    status, report, stderr = soak("--factory", "sqlite3", *common)
    assert report is not None, stderr
    assert status == 0, report["violations"]
    hw = report["fd_high_water"]
    steady = report["steady_concurrency"]
    assert report["unclosed_high_water"] >= 20
    assert hw["db"] >= steady + 20 and hw["wal"] >= steady + 20

    status, walsafe, stderr = soak("--factory", "walsafe", "--max-live", "8", *common)
    assert walsafe is not None, stderr
    assert status == 0, walsafe["violations"]
    print(f"sqlite3: fd high-water {hw}; walsafe (max_live_per_database=8): "
          f"{walsafe['fd_high_water']}")
    assert walsafe["fd_high_water"]["wal"] <= 8 + steady
    assert hw["db"] >= 2 * walsafe["fd_high_water"]["db"]
    assert hw["wal"] >= 2 * walsafe["fd_high_water"]["wal"]


def test_stray_close_without_the_guard_is_reported_as_violations():
    status, report, stderr = soak("--factory", "walsafe", "--seconds", "5", "--stray-close",
                                  "--no-guard", "--processes", "2")
    assert status != 0
    if report is not None:      # a SIGBUS (fact 8) ends it without a report
        assert status == 1
        assert report["stray_closes"] > 0
        assert "lost locks" in report["violation_kinds"]
        assert "VIOLATIONS" in stderr


@pytest.mark.native       # the guard
def test_stray_closes_of_the_database_and_shm_under_the_guard_are_clean():
    # Both files of both databases (the archive is attached): the guard
    # keeps each database's SHARED range, and SQLite's own -shm locks are OFD
    # locks (the write lock of a transaction in progress included), so no
    # stray close can cost a commit.  A job runner forks workers meanwhile.
    status, report, stderr = soak("--factory", "walsafe", "--seconds", "8", "--stray-close",
                                  "--stray-files", "both", "--processes", "2", "--fork-workers")
    assert report is not None, stderr
    assert report["stray_closes"] > 0
    assert report["violations"] == [], report["violations"]
    assert status == 0
    assert report["stale_seen"] == 0 and report["rows_missing"] == 0
    assert report["rows_verified"] == report["rows_logged"] > 0
    # The attached archive, under the same stray closes, lost nothing either.
    assert report["archive_rows_verified"] == report["archive_rows_logged"] > 0
    assert report["integrity_check"] == "ok"


def test_forked_workers_of_plain_sqlite3_are_reported_with_lost_locks():
    # A forked worker's own connection inherits SQLite's belief that the
    # process holds the database's read lock, so it takes none: the worker
    # finds that itself while its connection is open.  (The inherited
    # descriptors it holds before and after are not judged: see the soak's
    # children._check_own_health.)
    status, report, stderr = soak("--factory", "sqlite3", "--seconds", "4", "--processes", "0",
                                  "--fork-workers")
    assert report is not None, stderr
    assert status == 1
    lost = [v for v in report["violations"] if "lost locks: worker forked by forker 0" in v]
    assert lost, report["violations"]
    assert report["locks_lost_seen"] >= len(lost)
    assert report["rows_verified"] == report["rows_logged"] > 0


def test_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "hermes_kanban_native", "soak",
                           "--factory", "nope"], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
