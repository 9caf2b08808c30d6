"""``python -m hermes_kanban_native fds``: output and exit status, as a user
running it from a shell sees them."""
import json
import select
import signal
import subprocess
import sys

import pytest

from hermes_kanban_native.commands.databases import make_wal_db
from fds_helpers import (DEADLINE, Holder, ofd_guard_code, read_in_another_process,
                         stray_open_close_code, unlinking_stray_close_code)



def fds(*args):
    return subprocess.run([sys.executable, "-m", "hermes_kanban_native", "fds", *args],
                          capture_output=True, text=True, timeout=DEADLINE)


@pytest.fixture
def db(tmp_path):
    return make_wal_db(str(tmp_path / "kanban.db"), rows=1)


def row_of(output, pid):
    [row] = [line.split() for line in output.splitlines() if line.split()[:1] == [str(pid)]]
    return dict(zip(["PID", "DB", "WAL", "SHM", "JOURNAL", "PARKED", "STALE", "LOCKS", "LOST",
                     "GUARDED"], row))


def test_healthy_holder_exits_0_with_a_row_per_process(db):
    with Holder() as holder:
        holder.connect(db)
        holder.connect(db)
        for args in ([db], [db, "--all"], [db, "--pid", str(holder.pid)]):
            done = fds(*args)
            assert done.returncode == 0, done.stderr
            row = row_of(done.stdout, holder.pid)
            assert row["DB"] == "2" and row["WAL"] == "2" and row["SHM"] == "1"
            assert (row["PARKED"], row["STALE"], row["LOST"], row["GUARDED"]) == (
                "-", "0", "no", "no")
            assert int(row["LOCKS"]) >= 1
            assert "status: healthy" in done.stdout and db in done.stdout


def test_nobody_holding_the_database_is_healthy(tmp_path):
    done = fds(str(tmp_path / "nothing.db"))
    assert done.returncode == 0 and "no process holds it" in done.stdout


def test_lost_locks_exit_1_then_stale_files_are_listed(db):
    with Holder() as holder:
        holder.connect(db)
        holder.run(unlinking_stray_close_code(db))
        done = fds(db, "--pid", str(holder.pid))
        assert done.returncode == 1
        assert row_of(done.stdout, holder.pid)["LOST"] == "yes"
        assert "holds no POSIX lock" in done.stdout

        read_in_another_process(db)
        done = fds(db)
        assert done.returncode == 1
        assert int(row_of(done.stdout, holder.pid)["STALE"]) >= 3
        assert f"pid {holder.pid}: stale wal fd" in done.stdout
        assert f"{db}-shm" in done.stdout and "UNHEALTHY" in done.stdout


def test_lost_locks_under_a_held_guard_are_reported_but_exit_0(db):
    with Holder() as holder:
        holder.connect(db)
        holder.run(ofd_guard_code(db))
        holder.run(stray_open_close_code(db))
        done = fds(db, "--pid", str(holder.pid))
        assert done.returncode == 0, done.stdout
        row = row_of(done.stdout, holder.pid)
        assert (row["LOST"], row["GUARDED"]) == ("yes*", "yes")
        assert "reported, not counted" in done.stdout


def test_json_is_one_object_per_snapshot_with_a_schema_version(db):
    with Holder() as holder:
        holder.connect(db)
        holder.run(unlinking_stray_close_code(db))
        read_in_another_process(db)
        done = fds(db, "--json", "--pid", str(holder.pid))
    assert done.returncode == 1
    [line] = done.stdout.splitlines()
    snapshot = json.loads(line)
    assert snapshot["schema"] == 1 and snapshot["database"] == db
    assert snapshot["status"] == 1 and snapshot["skipped"] == 0
    [process] = snapshot["processes"]
    assert process["pid"] == holder.pid and process["locks_lost"] is True
    assert process["healthy"] is False and process["guarded"] is False
    assert process["parked"] is None
    assert set(process["counts"]) == {"db", "wal", "shm", "journal", "shm_maps", "stale",
                                      "locks"}
    stale = [entry for entry in process["fds"] if entry["deleted"]]
    assert {entry["kind"] for entry in stale} == {"wal", "shm"}
    assert all(entry["path"].startswith(db) for entry in stale)
    assert any(m["kind"] == "shm" and m["deleted"] for m in process["maps"])


@pytest.mark.parametrize("args", [
    [],
    ["--pid", "1", "--all", "x.db"],
    ["--watch", "0", "x.db"],
    ["--watch", "soon", "x.db"],
    ["--pid", "one", "x.db"],
])
def test_usage_errors_exit_2(args):
    done = fds(*args)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_nonexistent_pid_exits_2_with_a_clear_message(db):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = int(child.stdout)
    done = fds(db, "--pid", str(dead))
    assert done.returncode == 2
    assert f"no process with pid {dead}" in done.stderr and "Traceback" not in done.stderr


def _sigint_by_default():
    # A background job starts with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: the watcher is interrupted as one started from
    # a terminal even when the tests run in one.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_watch_repeats_until_interrupted_and_exits_with_the_last_status(db):
    with Holder() as holder:
        holder.connect(db)
        watcher = subprocess.Popen(
            [sys.executable, "-m", "hermes_kanban_native", "fds", db, "--json",
             "--pid", str(holder.pid), "--watch", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_sigint_by_default)
        try:
            snapshots = []
            while len(snapshots) < 2:
                ready, _, _ = select.select([watcher.stdout], [], [], DEADLINE)
                assert ready, "no snapshot in time"
                snapshots.append(json.loads(watcher.stdout.readline()))
            assert all(s["status"] == 0 for s in snapshots)
            assert snapshots[1]["time"] > snapshots[0]["time"]
            watcher.send_signal(signal.SIGINT)
            _, err = watcher.communicate(timeout=DEADLINE)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.communicate()
    assert watcher.returncode == 0 and "Traceback" not in err
