"""``python -m hermes_kanban_native soak``: the gateway model, run briefly.

Each run is a fresh interpreter started outside the checkout, so it uses the
installed package."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


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


# See test_hazards.test_connection_collected_in_another_thread_closes_its_files:
# on 3.13 the never-closed connections the dispatcher thread opens and the
# main thread's gc.collect() finalizes keep their fds, more than the live
# connections explain, and the soak reports exactly that.
CROSS_THREAD_GC_BUG = sys.version_info >= (3, 13)
KNOWN_BUG_KINDS = {"db fds", "wal fds", "fds after close"}


def test_walsafe_soak_is_clean(walsafe_run):
    status, report, stderr = walsafe_run
    assert report is not None, stderr
    known_bug = (CROSS_THREAD_GC_BUG and report["violations"]
                 and set(report["violation_kinds"]) <= KNOWN_BUG_KINDS)
    if not known_bug:
        assert report["violations"] == [], report["violations"]
        assert status == 0
    assert report["factory"] == "walsafe"
    assert report["rows_verified"] > 0 and report["rows_verified"] == report["rows_logged"]
    assert report["rows_missing"] == 0
    assert report["main_rows_verified"] == report["main_transactions"] > 0
    assert report["verifiers_run"] > 0 and report["child_failures"] == 0
    assert report["integrity_check"] == "ok"
    assert report["stale_seen"] == 0 and report["locks_lost_seen"] == 0
    if not known_bug:
        # Parked database fds never exceed the peak number of connections.
        assert report["fd_high_water"]["db"] <= report["peak_live"]
    assert report["fd_high_water"]["shm"] == 1
    # Every never-closed connection was finalized by the collector, with
    # exactly one ResourceWarning each.
    assert report["unclosed_total"] > 0
    assert report["unclosed_collected"] == report["unclosed_total"]
    assert report["resource_warnings"] == report["unclosed_total"]
    if known_bug:
        pytest.xfail("WalSafeConnection collected in another thread leaks its fds on 3.13: "
                     + "; ".join(report["violations"][:2]))
    assert "violations: none" in stderr


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason="on 3.10 refcounting frees unclosed connections at once")
def test_sqlite3_soak_shows_the_fd_growth(walsafe_run):
    status, report, stderr = soak("--factory", "sqlite3", "--seconds", "8")
    assert report is not None, stderr
    assert status == 0, report["violations"]
    hw = report["fd_high_water"]
    steady = report["steady_concurrency"]
    print(f"sqlite3: fd high-water {hw}, open high-water "
          f"{report['open_connections_high_water']}, steady {steady}")
    # Never-closed connections pile up until the collector runs: far more
    # database and -wal fds than the connections the code closes explain.
    assert report["unclosed_high_water"] >= 10
    assert hw["db"] >= steady + 10 and hw["wal"] >= steady + 10
    assert hw["db"] <= report["open_connections_high_water"]

    _, walsafe, _ = walsafe_run
    print(f"walsafe: fd high-water {walsafe['fd_high_water']}, open high-water "
          f"{walsafe['open_connections_high_water']}")
    if walsafe["unclosed_high_water"] * 2 > report["unclosed_high_water"]:
        # WalSafeConnection does not bound its live connections yet: with the
        # collector off, its never-closed connections pile up the same way.
        pytest.xfail("WalSafeConnection has no live-connection bound yet; "
                     f"walsafe db fds {walsafe['fd_high_water']['db']} vs "
                     f"sqlite3 {hw['db']}")
    assert hw["db"] >= 2 * walsafe["fd_high_water"]["db"]
    assert hw["wal"] >= 2 * walsafe["fd_high_water"]["wal"]


def test_stray_close_is_reported_as_violations():
    # Without a guard, lock cancellation is expected to show.
    status, report, stderr = soak("--factory", "walsafe", "--seconds", "5", "--stray-close",
                                  "--processes", "2")
    assert status != 0
    if report is not None:      # a SIGBUS (fact 8) ends it without a report
        assert status == 1
        assert report["stray_closes"] > 0
        assert "lost locks" in report["violation_kinds"]
        assert "VIOLATIONS" in stderr


def test_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "hermes_kanban_native", "soak",
                           "--factory", "nope"], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
