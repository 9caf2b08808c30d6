"""The WAL-generation guard: each hazard reproduced without it, then shown
handled with it; normal life unchanged; no lock outlives its connection."""
from __future__ import annotations

import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import urllib.parse

import pytest

import hermes_kanban_native as hkn
from hermes_kanban_native.commands.databases import make_wal_db
from conftest import (SQLITE_CHECKS_THE_SHM, SQLITE_SYMBOLS_VISIBLE, isolated_script,
                      run_isolated, unlinking_stray_closes)
from fds_helpers import Holder, unlinking_stray_close_code

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(hkn.sqlite_api()["mode"] == "native"
                       and hkn.sqlite_api()["guard"] != "available",
                       reason="the guard needs open-file-description locks (Linux)"),
]


class Guarded(hkn.WalSafeConnection):
    guard_wal = True


class Unguarded(hkn.WalSafeConnection):
    guard_wal = False


FACTORIES = {"guard": Guarded, "no guard": Unguarded}


def ofd_locks(path):
    """OFD lock records on the database's inode (all processes)."""
    st = os.stat(path)
    return [row for row in hkn._native._scan_locks()
            if row[0] == "OFDLCK" and (row[4], row[5]) == (st.st_dev, st.st_ino)]


def child_reads(path):
    """Another process opens the database normally, reads, and closes."""
    subprocess.run([sys.executable, isolated_script("open_read_and_close"), path], check=True,
                   cwd="/")


def child_rows(path):
    """Another process reads every row of t, sorted, and the integrity check."""
    out = subprocess.run([sys.executable, isolated_script("print_rows_and_integrity"), path],
                         check=True, capture_output=True, text=True, cwd="/").stdout.splitlines()
    return json.loads(out[0]), out[1]


def child_count(path):
    rows, integrity = child_rows(path)
    return len(rows), integrity


@pytest.mark.parametrize("mode", FACTORIES)
def test_stray_close_of_the_database(tmp_path, mode):
    path = make_wal_db(tmp_path / "board.db", rows=5)
    holder = sqlite3.connect(path, factory=FACTORIES[mode], isolation_level=None)
    holder.execute("INSERT INTO t VALUES (100)")
    os.close(os.open(path, os.O_RDONLY))            # a header probe, a backup by copy
    info = hkn.sqlite_fds(path)
    assert info.locks_lost
    assert info.guarded == (mode == "guard")
    child_reads(path)                               # it believes it is the last user
    if mode == "no guard" and not SQLITE_CHECKS_THE_SHM:
        assert not os.path.exists(path + "-wal")    # unlinked under the live holder
        assert hkn.sqlite_fds(path).stale
        holder.close()
        return
    # Kept by the guard's locks; from SQLite 3.51 also by the holder's lock
    # on the -shm, which the stray close of the database left alone.
    assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
    assert not hkn.sqlite_fds(path).stale
    for value in range(101, 111):
        holder.execute("INSERT INTO t VALUES (?)", (value,))
    assert child_count(path) == (16, "ok")          # later commits reach other processes
    holder.close()
    assert child_count(path) == (16, "ok")


@pytest.mark.parametrize("mode", FACTORIES)
def test_stray_close_then_a_process_in_exclusive_locking_mode(tmp_path, mode):
    # SQLite 3.51's own defence (conftest.SQLITE_CHECKS_THE_SHM) needs the
    # -shm, which a process in exclusive locking mode never opens: on every
    # version only the guard's locks keep it out.
    path = make_wal_db(tmp_path / "board.db", rows=2)
    holder = sqlite3.connect(path, factory=FACTORIES[mode], isolation_level=None)
    holder.execute("INSERT INTO t VALUES (100)")
    os.close(os.open(path, os.O_RDONLY))
    other = subprocess.run([sys.executable, isolated_script("write_in_exclusive_locking_mode"),
                            path], capture_output=True, text=True, cwd="/", timeout=60)
    assert other.returncode == 0, other.stderr
    holder.execute("INSERT INTO t VALUES (101)")
    holder.close()
    rows, integrity = child_rows(path)
    if mode == "no guard":
        # It took the lock, committed, and deleted the -wal under the holder:
        # the holder's later commit or its own is gone.
        assert other.stdout.strip() == "committed"
        assert not {0, 1, 100, 101, 777} <= set(rows) or integrity != "ok"
        return
    assert other.stdout.strip() == "database is locked"
    assert rows == [0, 1, 100, 101] and integrity == "ok"


@pytest.mark.parametrize("mode", FACTORIES)
def test_stray_close_of_the_shm_then_a_new_process(tmp_path, mode):
    path = make_wal_db(tmp_path / "board.db")
    script = isolated_script("write_after_a_stray_shm_close")
    keeper = sqlite3.connect(path)                  # keeps -shm from being unlinked
    keeper.execute("SELECT count(*) FROM t").fetchone()
    with subprocess.Popen([sys.executable, script, path, mode], stdout=subprocess.PIPE,
                          text=True, cwd="/") as holder:
        assert holder.stdout.readline().strip() == "ready"
        keeper.close()
        openers = 0
        while holder.poll() is None and openers < 20:
            child_reads(path)                       # each is the first -shm opener of its process
            openers += 1
        open(path + ".stop", "w").close()
        out = holder.stdout.read().split()
        holder.wait(timeout=60)
    print(f"{mode}: holder exit {holder.returncode} after {openers} new processes; {out}")
    if mode == "no guard":
        # The opener rebuilt the -shm the holder has mapped: SIGBUS (or, if
        # the holder survives the window, a damaged index).
        assert holder.returncode != 0 or out[1] != "ok"
        return
    assert holder.returncode == 0
    written, integrity = int(out[0]), out[1]
    assert integrity == "ok"
    assert child_count(path) == (written, "ok")     # every commit kept


@pytest.mark.parametrize("mode", ["guard", "no guard", "posix shm locks"])
def test_stray_close_of_the_shm_during_a_write_transaction(tmp_path, mode):
    # The WAL write lock is a transient lock on the -shm, taken by SQLite
    # itself: only its own locks being OFD locks (shmlock.c) keep it.
    path = make_wal_db(tmp_path / "board.db")
    script = isolated_script("stray_shm_close_mid_transaction")
    other = isolated_script("write_without_waiting")
    env = dict(os.environ)
    if mode == "posix shm locks":
        env["HERMES_KANBAN_NATIVE_SHM_LOCKS"] = "posix"
    result = subprocess.run([sys.executable, script, path,
                             "no guard" if mode == "no guard" else "guard", other],
                            capture_output=True, text=True, cwd="/", env=env)
    assert result.returncode == 0, result.stderr
    shm_locks, other_said, holder_said = result.stdout.strip().split("\n")
    rows, integrity = child_rows(path)
    print(f"{mode}: shm locks {shm_locks}; other writer: {other_said}; "
          f"holder: {holder_said}; rows {rows}")
    assert integrity == "ok"
    if mode == "guard":
        assert shm_locks == "ofd"
        assert other_said == "database is locked"
        assert holder_said == "committed" and rows == [0, 1]
        return
    # Reproduced: the other process took the write lock while the holder's
    # transaction was open, and committed; the two commits, written at the
    # same WAL frame, do not both survive.
    assert shm_locks == "posix"
    assert other_said == "committed"
    assert holder_said != "committed" or 2 not in rows


def test_shm_locks_are_ofd_locks_of_sqlites_own_descriptor(tmp_path):
    path = make_wal_db(tmp_path / "board.db")
    conn = hkn.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    assert hkn.sqlite_api()["shm_locks"] == "ofd"
    shm = hkn.sqlite_fds(path).shm
    assert len(shm) == 1
    st = os.stat(path + "-shm")
    rows = [row for row in hkn._native._scan_fd_locks(os.getpid(), shm[0].fd)
            if (row[4], row[5]) == (st.st_dev, st.st_ino)]
    kinds = {(row[0], row[6]) for row in rows}
    # The write lock (120), this reader's mark, the dead-man switch (128):
    # all OFD, none a POSIX lock of this process a stray close could drop.
    assert ("OFDLCK", 120) in kinds and ("OFDLCK", 128) in kinds
    assert not [row for row in rows if row[0] == "POSIX" and row[3] == os.getpid()]
    os.close(os.open(path + "-shm", os.O_RDONLY))
    assert ("OFDLCK", 120) in {(row[0], row[6])
                               for row in hkn._native._scan_fd_locks(os.getpid(), shm[0].fd)}
    conn.execute("COMMIT")
    stats = hkn.stats()
    assert stats["shm_ofd_open"] >= 1 and stats["shm_ofd_files"] >= stats["shm_ofd_open"]
    conn.close()


@pytest.mark.isolated
def test_guard_release_leaves_sqlites_own_dead_man_switch_alone(tmp_path):
    # The guard locked the dead-man switch of a -shm opened before the
    # wrappers were in place; SQLite closes it and opens it again (same
    # number, same inode) with OFD locks.  The guard's last release must not
    # unlock that, which would unlock SQLite's own lock.
    path = make_wal_db(tmp_path / "reopen.db")
    keeper = sqlite3.connect(path)                  # the -shm is never unlinked
    keeper.execute("SELECT count(*) FROM t").fetchone()
    result = run_isolated("guard_release_beside_a_reopened_shm", path)
    keeper.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1"]


@pytest.mark.isolated
def test_a_claim_never_waits_for_a_connection_busy_in_another_thread(tmp_path):
    # A guarded open looks for the -shm through the other guarded
    # connections of the process.  One of them is inside SQLite (holding its
    # connection mutex) in a user function that waits for this open: the
    # open must not wait for that mutex while it holds the GIL (found by the
    # fault tests as a hang on 3.10).
    path = make_wal_db(tmp_path / "busy.db", rows=3)
    result = run_isolated("claim_beside_a_busy_connection", path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3"]


@pytest.mark.isolated
def test_forked_child_does_not_keep_the_parents_shm_locks(tmp_path):
    # A fork child inherits SQLite's -shm descriptor; with a shared open
    # file description it would keep the parent's OFD locks alive after the
    # parent closed (or died).  The child gets a description of its own.
    path = make_wal_db(tmp_path / "fork.db")
    result = run_isolated("forked_child_and_the_shm_locks", path)
    assert result.returncode == 0, result.stderr
    held, left = map(int, result.stdout.split())
    assert held >= 1 and left == 0


@pytest.mark.parametrize("mode", FACTORIES)
def test_normal_life_is_unchanged(tmp_path, mode):
    path = str(tmp_path / "board.db")
    factory = FACTORIES[mode]
    conn = hkn.connect(path, factory=factory, isolation_level=None, guard_wal=mode == "guard")
    conn.execute("CREATE TABLE t (x)")
    assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
    others = [sqlite3.connect(path, factory=factory) for _ in range(3)]
    for other in others:
        other.execute("SELECT count(*) FROM t").fetchone()
    assert bool(ofd_locks(path)) == (mode == "guard")
    for other in others:
        other.close()
    parked = len(hkn.sqlite_fds(path).db)
    assert parked == 4                              # 1 open + 3 parked, with or without guard
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    # The last close checkpointed and unlinked the sidecars, as without a guard.
    assert not os.path.exists(path + "-wal") and not os.path.exists(path + "-shm")
    assert ofd_locks(path) == []
    assert hkn.sqlite_fds(path).db == ()
    # journal-mode changes after all connections closed work as usual
    plain = sqlite3.connect(path)
    assert plain.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    plain.close()


@pytest.mark.slow
def test_no_lock_outlives_its_connection_over_10000_cycles(tmp_path):
    path = make_wal_db(tmp_path / "cycles.db")
    rng = random.Random(1234)
    before = hkn.stats()
    shm_inodes = set()
    open_now = []
    for _ in range(10_000):
        if open_now and (len(open_now) >= 6 or rng.random() < 0.5):
            open_now.pop(rng.randrange(len(open_now))).close()
        else:
            conn = sqlite3.connect(path, factory=Guarded, isolation_level=None)
            if rng.random() < 0.5:
                conn.execute("SELECT count(*) FROM t").fetchone()
                shm_inodes.add(os.stat(path + "-shm").st_ino)
            open_now.append(conn)
        if open_now:
            assert ofd_locks(path), "a live guarded connection lost its guard"
        else:
            assert ofd_locks(path) == []
    for conn in open_now:
        conn.close()
    after = hkn.stats()
    assert ofd_locks(path) == []
    assert after["guards_taken"] - before["guards_taken"] == \
        after["guards_released"] - before["guards_released"] > 0
    assert hkn.sqlite_fds(path).db == ()
    # Each -shm generation of the run (ext4 hands the unlinked one's inode
    # number to the next) was opened with OFD locks, and none left a lock or
    # a descriptor-table entry behind.  Inode numbers are reused machine-wide
    # once the files are gone, so only this process's records count: its
    # POSIX locks by pid, and its OFD locks through the descriptors and
    # mappings that alone keep an OFD lock alive.
    assert after["shm_ofd_files"] - before["shm_ofd_files"] > 100 and shm_inodes
    assert after["shm_ofd_open"] == before["shm_ofd_open"]
    dev = os.stat(path).st_dev
    ours = {(dev, ino) for ino in shm_inodes}
    assert [fd for fd in hkn.open_fds() if (fd.dev, fd.ino) in ours] == []
    assert [m for m in hkn.mapped_files() if (m.dev, m.ino) in ours] == []
    assert [row for row in hkn._native._scan_locks()
            if row[3] == os.getpid() and (row[4], row[5]) in ours] == []


def test_guard_can_be_turned_off_on_the_instance_before_it_opens(tmp_path):
    path = make_wal_db(tmp_path / "opt.db")

    class Mixin:
        def __init__(self, *args, **kwargs):
            self.guard_wal = False
            super().__init__(*args, **kwargs)

    factory = type("Tracked", (Mixin, hkn.WalSafeConnection), {})
    conn = sqlite3.connect(path, factory=factory)
    conn.execute("SELECT 1").fetchone()
    assert ofd_locks(path) == []
    conn.close()

    conn = hkn.connect(path, guard_wal=False)
    assert ofd_locks(path) == [] and not hkn.sqlite_fds(path).guarded
    conn.close()


@pytest.mark.isolated
def test_forked_child_leaves_the_parents_guard_alone(tmp_path):
    path = make_wal_db(tmp_path / "fork.db")
    result = run_isolated("forked_child_and_the_guard", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


@pytest.mark.isolated
@pytest.mark.native       # the guard
def test_a_forked_childs_own_connection_is_guarded_its_inherited_ones_are_not(tmp_path):
    # POSIX locks are not inherited, so a child holding only its parent's
    # connections (which SQLite forbids it to use) is lockless, and is
    # reported so, with plain sqlite3 as with the guard.  Its own connection
    # believes the process holds SQLite's read lock and takes none: the
    # guard locks it for that connection's life.
    seen = {}
    for kind in ("walsafe", "plain"):
        path = make_wal_db(tmp_path / f"{kind}.db")
        result = run_isolated("forked_child_seen_from_its_parent", path, kind)
        assert result.returncode == 0, result.stderr
        seen[kind] = result.stdout.split("\n")[:3]
    assert seen["walsafe"] == ["before locks_lost=True guarded=False",
                               "open locks_lost=True guarded=True",
                               "closed locks_lost=True guarded=False"]
    assert seen["plain"] == ["before locks_lost=True guarded=False",
                             "open locks_lost=True guarded=False",
                             "closed locks_lost=True guarded=False"]


def _assert_connect_refuses(path, pid):
    with pytest.raises(hkn.StaleWalGenerationError) as info:
        hkn.connect(path)
    assert isinstance(info.value, sqlite3.OperationalError)
    assert f"pid {pid}" in str(info.value) and "-wal" in str(info.value)
    assert pid in info.value.holders
    # The same database named by a URI (its path quoted, options after it).
    uri = "file:" + urllib.parse.quote(path) + "?cache=private"
    with pytest.raises(hkn.StaleWalGenerationError) as info:
        hkn.connect(uri, uri=True)
    assert pid in info.value.holders
    conn = hkn.connect(path, refuse_stale=False)
    conn.close()


@pytest.mark.skipif(SQLITE_CHECKS_THE_SHM, reason="SQLite 3.51+ refuses the unlink while this "
                    "process holds the -shm, whose locks may be OFD locks here")
def test_connect_refuses_a_generation_stranded_in_this_process(tmp_path):
    path = make_wal_db(tmp_path / "stranded.db", rows=1)
    holder = sqlite3.connect(path, factory=Unguarded, isolation_level=None)
    holder.execute("INSERT INTO t VALUES (2)")
    os.close(os.open(path, os.O_RDONLY))
    child_reads(path)                               # unlinks the live -wal/-shm
    _assert_connect_refuses(path, os.getpid())
    holder.close()
    hkn.connect(path).close()                       # the stranded generation is gone


def test_connect_refuses_a_generation_stranded_in_another_process(tmp_path):
    path = make_wal_db(tmp_path / "stranded.db", rows=1)
    with Holder() as holder:                        # plain sqlite3
        holder.connect(path)
        holder.run("conns[0].execute('INSERT INTO t VALUES (2)')\nconns[0].commit()\n")
        holder.run(unlinking_stray_close_code(path))
        child_reads(path)                           # unlinks the holder's live -wal/-shm
        assert not os.path.exists(path + "-wal")
        _assert_connect_refuses(path, holder.pid)
    hkn.connect(path).close()                       # the stranded generation is gone


def test_fds_command_counts_lost_locks_under_a_guard_as_healthy(tmp_path):
    path = make_wal_db(tmp_path / "cli.db")
    conn = hkn.connect(path, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (1)")
    os.close(os.open(path, os.O_RDONLY))
    result = subprocess.run([sys.executable, "-m", "hermes_kanban_native", "fds", path,
                             "--pid", str(os.getpid())], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stdout
    assert "yes*" in result.stdout
    # The library, the JSON and the help text tell the same story.
    seen = hkn.sqlite_fds(path)
    assert seen.locks_lost and seen.guarded and seen.healthy
    assert "POSIX locks lost, the guard's OFD locks hold" in seen.report()
    as_json = subprocess.run([sys.executable, "-m", "hermes_kanban_native", "fds", path,
                              "--pid", str(os.getpid()), "--json"],
                             capture_output=True, text=True, cwd="/")
    process = json.loads(as_json.stdout)["processes"][0]
    assert as_json.returncode == 0 and process["healthy"] is True and process["locks_lost"]
    usage = subprocess.run([sys.executable, "-m", "hermes_kanban_native", "fds", "--help"],
                           capture_output=True, text=True, cwd="/")
    assert "without a guard" in " ".join(usage.stdout.split())
    conn.close()


def test_guard_statistics():
    stats = hkn.stats()
    assert {"guards_taken", "guards_released", "relocks", "guard_failures"} <= set(stats)
    assert stats["guard_available"] is True
    assert hkn.WalSafeConnection.guard_wal is True


# ------------------------------------------------- a guard that cannot be taken

@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter is written for x86_64")
@pytest.mark.isolated
def test_a_refused_process_vm_readv_is_warned_about_once_and_named(tmp_path):
    # A seccomp filter refuses process_vm_readv with EPERM, as some sandboxes
    # do: the guard cannot read SQLite's file objects there.
    db = make_wal_db(tmp_path / "kanban.db")
    result = run_isolated("guard_without_process_vm_readv", db)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["warnings"]) == 1, report["warnings"]
    assert report["warnings"][0].startswith("RuntimeWarning: hermes_kanban_native: the "
                                            "WAL-generation guard cannot be taken (first for ")
    assert f"(first for {os.path.realpath(db)}): reading" in report["warnings"][0]
    assert "process_vm_readv was refused" in report["warnings"][0]
    assert report["api"]["guard"].startswith("unavailable: reading SQLite's file object")
    assert "process_vm_readv" in report["api"]["guard_failure"]
    assert report["guarded"] is False and report["failures"] == 2
    assert report["guard_wal"] is True and report["rows"] == 1


@pytest.mark.skipif(not SQLITE_SYMBOLS_VISIBLE, reason="needs SQLite's symbols to call xSetSystemCall")
@pytest.mark.isolated
def test_wrappers_removed_by_someone_else_are_reported(tmp_path):
    # The process restores SQLite's default system calls, as SQLite's own test
    # harness does with xSetSystemCall(vfs, NULL, NULL): our -shm wrappers are
    # gone after it.
    db = make_wal_db(tmp_path / "kanban.db")
    result = run_isolated("shm_wrappers_removed", db)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert before == "ofd"
    assert after.startswith("posix: the system-call wrappers were removed"), after


# ---------------------------------------------- forked children (D4)

# A parent opens the database, forks a child that never uses SQLite, and dies
# without closing; while the child lives, another process changes the journal
# mode (which needs EXCLUSIVE).  Plain sqlite3 leaves the child no lock.


def _journal_mode_change_beside_a_forked_child(tmp_path, factory):
    db = make_wal_db(tmp_path / f"{factory}.db")
    parent = subprocess.run([sys.executable, isolated_script("fork_a_child_and_die"), db,
                             factory], capture_output=True, text=True, timeout=60, cwd="/")
    assert parent.returncode == 0, parent.stderr
    child = int(parent.stdout.split()[0])
    try:
        conn = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            return conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        except sqlite3.OperationalError as exc:
            return str(exc)
        finally:
            conn.close()
    finally:
        os.kill(child, 9)


def test_a_forked_child_does_not_keep_the_parents_guard(tmp_path):
    plain = _journal_mode_change_beside_a_forked_child(tmp_path, "plain")
    walsafe = _journal_mode_change_beside_a_forked_child(tmp_path, "walsafe")
    assert plain == "delete"
    assert walsafe == plain


# ---------------------------------- this process's own write locks (D1, D2)

# Each scenario (a function in tests/isolated/own_write_locks.py) runs in a
# fresh process with the factory named on the command line and prints what a
# user sees; the guarded connection must see exactly what plain sqlite3 sees.
OWN_LOCK_SCENARIOS = ("locking_mode_exclusive", "locking_mode_exclusive_then_normal",
                      "unix_excl_vfs", "journal_mode_change")


def _own_lock_scenario(tmp_path, name, kind):
    db = make_wal_db(tmp_path / f"{name}-{kind}.db")
    proc = subprocess.run([sys.executable, isolated_script("own_write_locks"), db, kind, name],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", sorted(OWN_LOCK_SCENARIOS))
def test_own_write_locks_work_as_with_plain_sqlite3(tmp_path, name):
    plain = _own_lock_scenario(tmp_path, name, "plain")
    walsafe = _own_lock_scenario(tmp_path, name, "walsafe")
    assert not any("locked" in str(item) for item in plain["seen"]), plain
    assert walsafe["seen"] == plain["seen"]
    if hkn.sqlite_api()["shm_locks"] != "posix: turned off by HERMES_KANBAN_NATIVE_SHM_LOCKS=posix":
        assert walsafe["stepped"] >= 1
    if name == "locking_mode_exclusive_then_normal":
        assert walsafe["guarded_after"] is True


# ------------------------------------------------- attached databases (D3)

def _attached_scenario(tmp_path, kind):
    main = make_wal_db(tmp_path / f"main-{kind}.db")
    aux = make_wal_db(tmp_path / f"aux-{kind}.db")
    script = isolated_script("stray_close_of_an_attached_database")
    with subprocess.Popen([sys.executable, script, main, aux, kind,
                           *unlinking_stray_closes(aux)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd="/") as holder:
        first = json.loads(holder.stdout.readline())
        # Another process commits a row and closes; a third reads and closes.
        writer = sqlite3.connect(aux, isolation_level=None)
        writer.execute("INSERT INTO t VALUES (2)")
        writer.close()
        child_reads(aux)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.stdout.readline()
        # One more commit by another process, while the holder is open.
        writer = sqlite3.connect(aux, isolation_level=None)
        writer.execute("INSERT INTO t VALUES (4)")
        writer.close()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        second = json.loads(holder.stdout.readline())
        assert holder.wait(timeout=60) == 0
    return first, second, child_rows(aux)


def test_an_attached_database_is_guarded_and_nothing_is_lost(tmp_path):
    first, second, (rows, integrity) = _attached_scenario(tmp_path, "walsafe")
    assert first["guarded"] is True
    assert rows == [1, 2, 3, 4] and integrity == "ok"
    assert second["after_detach"] is False          # released on DETACH


def test_without_the_guard_the_attached_database_loses_a_commit(tmp_path):
    # The hazard itself, so that the test above can fail: plain sqlite3.
    first, _, (rows, integrity) = _attached_scenario(tmp_path, "plain")
    assert first["guarded"] is False
    assert rows != [1, 2, 3, 4] or integrity != "ok"
