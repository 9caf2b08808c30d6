"""hermes_kanban_native.fds: what a process holds on a SQLite database.

Each test reproduces one fact of the SQLite unix VFS with real connections and
real child processes, and checks it through the public API."""
import contextlib
import inspect
import mmap
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest

import hermes_kanban_native
from hermes_kanban_native import (FdInfo, Holders, MapInfo, SqliteFds, holders, mapped_files,
                                  open_fds, sqlite_fds)
from hermes_kanban_native import _native
from hermes_kanban_native.commands.databases import make_wal_db
from fds_helpers import (Holder, ofd_guard_code, read_in_another_process,
                         stray_open_close_code)
from conftest import SQLITE_CHECKS_THE_SHM


@pytest.fixture
def db(tmp_path):
    return make_wal_db(str(tmp_path / "kanban.db"), rows=1)


@contextlib.contextmanager
def connections(database, count):
    """*count* connections open at the same time, each after a read."""
    conns = []
    try:
        for _ in range(count):
            conns.append(sqlite3.connect(database))
            conns[-1].execute("SELECT * FROM t").fetchall()
        yield conns
    finally:
        for conn in conns:
            conn.close()


def fd_numbers(infos):
    return sorted(info.fd for info in infos)


# -- 1. parked descriptors ----------------------------------------------------

def test_closed_connections_leave_parked_db_fds_bounded_by_peak_concurrency(db):
    n = 6
    with connections(db, 1):
        assert len(sqlite_fds(db).db) == 1
        with connections(db, n):
            during = sqlite_fds(db)
            assert len(during.db) == 1 + n
            assert len(during.wal) == 1 + n
        after = sqlite_fds(db)
        # The db fds stay open (parked: the long-lived connection holds a
        # lock on the inode); the -wal fds close at once; one -shm.
        assert len(after.db) == 1 + n
        assert len(after.wal) == 1
        assert len(after.shm) == 1 and len(after.shm_maps) >= 1
        assert after.parked == len(after.db) - len(after.live) >= n
        assert after.healthy and not after.stale and not after.locks_lost
        parked = fd_numbers(after.db)

        # Reopening as many reuses the parked fds: bounded by peak concurrency.
        with connections(db, n):
            assert fd_numbers(sqlite_fds(db).db) == parked
        assert fd_numbers(sqlite_fds(db).db) == parked
        with connections(db, n + 2):
            assert len(sqlite_fds(db).db) == 1 + n + 2
        assert len(sqlite_fds(db).db) == 1 + n + 2

    # The last connection's close closes them all.
    gone = sqlite_fds(db)
    assert (gone.db, gone.wal, gone.shm, gone.shm_maps) == ((), (), (), ())
    assert gone.parked == 0 and not gone.locks_lost


# -- 2. lock cancellation -------------------------------------------------------

def test_stray_open_close_of_the_database_drops_the_holders_locks(db):
    with Holder() as holder:
        holder.connect(db)
        before = sqlite_fds(db, pid=holder.pid)
        assert before.locks and all(lock.pid == holder.pid for lock in before.locks)
        assert not before.locks_lost and before.healthy

        holder.run(stray_open_close_code(db))
        after = sqlite_fds(db, pid=holder.pid)
        assert after.locks == ()
        assert after.locks_lost and not after.healthy
        assert not after.stale          # nothing deleted yet

        # Another process now believes it is the last one: its close
        # checkpoints and unlinks the -wal/-shm the holder still uses.
        read_in_another_process(db)
        if SQLITE_CHECKS_THE_SHM:
            # Unless SQLite (3.51+) sees the holder's lock on the -shm and
            # refuses the other process its write lock; a stray close of
            # the -shm drops that one too.
            assert os.path.exists(db + "-wal") and os.path.exists(db + "-shm")
            assert not sqlite_fds(db, pid=holder.pid).stale
            holder.run(stray_open_close_code(db + "-shm"))
            read_in_another_process(db)
        assert not os.path.exists(db + "-wal") and not os.path.exists(db + "-shm")
        broken = sqlite_fds(db, pid=holder.pid)
        assert broken.locks_lost
        stale_paths = sorted(info.path for info in broken.stale)
        assert db + "-wal" in stale_paths and db + "-shm" in stale_paths
        assert all(info.deleted for info in broken.stale)
        assert [info.path for info in broken.wal] == [db + "-wal"]
        assert any(m.deleted and m.path == db + "-shm" for m in broken.shm_maps)
        assert broken.db and not any(info.deleted for info in broken.db)
        report = broken.report()
        assert "STALE" in report and db + "-wal" in report and "locks lost: yes" in report


def test_without_the_stray_close_nothing_is_lost_or_stale(db):
    with Holder() as holder:
        holder.connect(db)
        read_in_another_process(db)
        result = sqlite_fds(db, pid=holder.pid)
        assert result.locks and not result.locks_lost
        assert not result.stale and result.healthy
        assert os.path.exists(db + "-wal")


def test_guarded_reports_ofd_locks_on_the_database(db):
    with Holder() as holder:
        holder.connect(db)
        assert not sqlite_fds(db, pid=holder.pid).guarded
        holder.run(ofd_guard_code(db))
        holder.run(stray_open_close_code(db))
        result = sqlite_fds(db, pid=holder.pid)
        assert result.guarded
        assert result.locks_lost      # the POSIX ones are gone; the guard is not
        # The guard refuses the other process's EXCLUSIVE attempt: no unlink.
        read_in_another_process(db)
        assert not sqlite_fds(db, pid=holder.pid).stale


# -- 3. other processes ----------------------------------------------------------

def test_another_process_and_holders(db):
    with Holder() as first, Holder() as second:
        first.connect(db)
        second.connect(db)
        second.connect(db)
        theirs = sqlite_fds(db, pid=second.pid)
        assert theirs.pid == second.pid and len(theirs.db) == 2
        assert theirs.live is None and theirs.parked is None

        found = holders(db)
        assert isinstance(found, Holders) and isinstance(found.skipped, int)
        assert {first.pid, second.pid} <= set(found)
        assert os.getpid() not in found     # we hold nothing on it
        assert len(found[first.pid].db) == 1 and found[first.pid].healthy
        assert "skipped=" in repr(found)

        with connections(db, 1):
            mine = holders(db)[os.getpid()]
            assert isinstance(mine.live, list) and mine.parked == 1 - len(mine.live)
    assert set(holders(db)) == set()


# -- 4. deleted by identity --------------------------------------------------------

def by_fd(infos, fd):
    [info] = [info for info in infos if info.fd == fd]
    return info


def test_unlinked_file_is_deleted_and_path_loses_the_suffix(tmp_path):
    path = tmp_path / "gone.txt"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert by_fd(open_fds(), fd) == FdInfo(fd, str(path), *by_fd(open_fds(), fd)[2:4], 1,
                                               False)
        os.unlink(path)
        info = by_fd(open_fds(), fd)
        assert info.deleted and info.nlink == 0 and info.path == str(path)
    finally:
        os.close(fd)


def test_file_replaced_by_rename_is_deleted(tmp_path):
    path = tmp_path / "config"
    path.write_text("old")
    old = os.open(path, os.O_RDONLY)
    try:
        new_file = tmp_path / "config.tmp"
        new_file.write_text("new")
        os.replace(new_file, path)
        new = os.open(path, os.O_RDONLY)
        try:
            infos = open_fds()
            assert by_fd(infos, old).deleted and by_fd(infos, old).path == str(path)
            assert not by_fd(infos, new).deleted
        finally:
            os.close(new)
    finally:
        os.close(old)


def test_a_live_file_named_like_the_suffix_is_not_deleted(tmp_path):
    path = tmp_path / "notes (deleted)"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        info = by_fd(open_fds(), fd)
        assert info.path == str(path) and not info.deleted
    finally:
        os.close(fd)


def test_unlinked_mapping_is_deleted(tmp_path):
    path = tmp_path / "mapped.bin"
    path.write_bytes(b"\0" * 8192)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 8192) as view:
        ino = os.fstat(f.fileno()).st_ino
        [mine] = [m for m in mapped_files() if m.ino == ino]
        assert mine.path == str(path) and not mine.deleted and isinstance(mine, MapInfo)
        os.unlink(path)
        [mine] = [m for m in mapped_files() if m.ino == ino]
        assert mine.deleted and mine.path == str(path)
        view[0] = 1


def test_database_replaced_by_rename_is_stale(db, tmp_path):
    replacement = make_wal_db(str(tmp_path / "new.db"), rows=1)
    conn = sqlite3.connect(db)
    try:
        conn.execute("SELECT * FROM t").fetchall()
        os.replace(replacement, db)
        result = sqlite_fds(db)
        [old] = result.db
        assert old.deleted and old.path == db and old in result.stale
        assert not result.healthy
    finally:
        conn.close()


def test_database_path_gone_still_finds_its_deleted_files(db):
    with Holder() as holder:
        holder.connect(db)
        for suffix in ("", "-wal", "-shm"):
            os.unlink(db + suffix)
        result = sqlite_fds(db, pid=holder.pid)
        assert [info.path for info in result.db] == [db]
        assert [info.path for info in result.wal] == [db + "-wal"]
        assert [info.path for info in result.shm] == [db + "-shm"]
        assert len(result.stale) >= 3 and all(info.deleted for info in result.stale)
        # The locks sit on the (now unlinked) inode the holder has open.
        assert result.locks and not result.locks_lost


def test_long_paths(tmp_path):
    # Long but printable: the whole path comes back.
    long_dir = tmp_path.joinpath(*["d" * 200] * 5)
    long_dir.mkdir(parents=True)
    fd = os.open(long_dir / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert by_fd(open_fds(), fd).path == str(long_dir / "f")
    finally:
        os.close(fd)
    # Longer than a page: the kernel cannot print it; the fd is still listed.
    top = tmp_path / "deep"
    top.mkdir()
    dir_fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir("x" * 250, dir_fd=dir_fd)
            inner = os.open("x" * 250, os.O_RDONLY, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = inner
        fd = os.open("f", os.O_RDWR | os.O_CREAT, dir_fd=dir_fd)
        try:
            info = by_fd(open_fds(), fd)
            assert info.path is None and not info.deleted
            assert info.ino == os.fstat(fd).st_ino
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
        shutil.rmtree(top)     # walks by directory fd, so depth is no problem


# -- 5. SQLite's own temp files ------------------------------------------------------

def test_sqlite_temp_files_are_not_stale(db):
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA temp_store=FILE")
        conn.execute("PRAGMA cache_size=10")
        conn.execute("CREATE TEMP TABLE scratch(a)")
        conn.execute("INSERT INTO scratch WITH RECURSIVE r(i) AS "
                     "(SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 2000) "
                     "SELECT randomblob(1000) FROM r")
        temp = [info for info in open_fds()
                if os.path.basename(info.path).startswith("etilqs_")]
        assert temp and all(info.deleted for info in temp)
        result = sqlite_fds(db)
        assert result.stale == () and result.healthy
        assert not any(info.fd in {t.fd for t in temp}
                       for info in result.db + result.wal + result.shm + result.journal)
    finally:
        conn.close()


# -- 6. path forms ----------------------------------------------------------------------

def test_path_forms_find_the_same_descriptors(db, tmp_path, monkeypatch):
    link = tmp_path / "link-to.db"
    link.symlink_to(db)
    with connections(str(link), 2):
        # SQLite names the sidecars after the resolved path.
        assert os.path.exists(db + "-wal") and not os.path.exists(str(link) + "-wal")
        expected = sqlite_fds(db)
        assert len(expected.db) == 2 and expected.wal and expected.shm
        monkeypatch.chdir(tmp_path)
        for form in (db, os.fsencode(db), pathlib.Path(db), "kanban.db", "./kanban.db",
                     link, "link-to.db", os.fsencode("link-to.db")):
            result = sqlite_fds(form)
            assert result.database == db, form
            assert (result.db, result.wal, result.shm) == (
                expected.db, expected.wal, expected.shm), form


# -- 7. errors ----------------------------------------------------------------------------

def test_nonexistent_pid_raises_process_lookup_error(db):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = int(child.stdout)        # exited and reaped: the pid is free
    for call in (lambda: sqlite_fds(db, pid=dead), lambda: open_fds(dead),
                 lambda: mapped_files(dead)):
        with pytest.raises(ProcessLookupError) as info:
            call()
        assert info.value.pid == dead and str(dead) in str(info.value)
    with pytest.raises(ValueError):
        open_fds(-1)


def _unreadable_pid():
    """A pid whose fds we may not read, or None."""
    try:
        open_fds(1)
    except PermissionError:
        return 1
    return None


def test_pid_we_may_not_inspect_raises_permission_error(db):
    pid = _unreadable_pid()
    if pid is not None:
        with pytest.raises(PermissionError) as info:
            sqlite_fds(db, pid=pid)
        assert info.value.pid == pid and f"pid {pid}" in str(info.value)
        return
    if os.geteuid() != 0:
        pytest.skip("pid 1 is readable by this user and we cannot change user")
    # As root every pid is readable: drop to an unprivileged user in a child
    # (after importing, since the interpreter may live under /root) and
    # inspect this root-owned process from there.
    code = ("import os, hermes_kanban_native as h\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            f"    h.sqlite_fds({db!r}, pid={os.getpid()})\n"
            "except PermissionError as exc:\n"
            "    print('PermissionError', exc.pid, exc.errno)\n")
    # cwd "/": "-c" puts the working directory first on sys.path, and the
    # checkout's unbuilt package must not shadow the installed one.
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=30, cwd="/")
    assert child.stdout.split() == ["PermissionError", str(os.getpid()), "13"], child.stderr


def test_holders_counts_the_processes_it_may_not_read(db):
    pid = _unreadable_pid()
    if pid is None:
        pytest.skip("every process is readable here (running as root)")
    assert holders(db).skipped >= 1


# -- the raw layer and the types ------------------------------------------------------------

def test_raw_scanners_have_signatures_and_plain_tuples():
    for name in ("_scan_fds", "_scan_maps", "_scan_locks", "_scan_fd_locks"):
        inspect.signature(getattr(_native, name))
    with tempfile.TemporaryFile() as f:
        rows = {row[0]: row for row in _native._scan_fds(os.getpid())}
        fd, link, dev, ino, nlink, mode, size = rows[f.fileno()]
        st = os.fstat(f.fileno())
        assert (dev, ino, nlink, mode, size) == (st.st_dev, st.st_ino, st.st_nlink,
                                                 st.st_mode, st.st_size)
        assert _native._scan_fds(os.getpid(), links=False)[0][1] is None
    maps = _native._scan_maps(os.getpid())
    exe = os.stat(sys.executable)
    assert any((row[4], row[5]) == (exe.st_dev, exe.st_ino) for row in maps)
    assert isinstance(_native._scan_locks(), list)
    assert _native._scan_fd_locks(os.getpid(), 10**6) == []


def test_a_scan_limited_to_identities_keeps_those_and_the_unlinked(tmp_path):
    kept_path, other_path = tmp_path / "kept", tmp_path / "other"
    with open(kept_path, "w") as kept, open(other_path, "w") as other, \
            tempfile.TemporaryFile() as unlinked:
        st = os.fstat(kept.fileno())
        rows = _native._scan_fds(os.getpid(), only=[(st.st_dev, st.st_ino)])
        fds = {row[0] for row in rows}
        assert kept.fileno() in fds and other.fileno() not in fds
        assert unlinked.fileno() in fds         # unlinked: only its name can tell
        assert all(row[4] == 0 or (row[2], row[3]) == (st.st_dev, st.st_ino) for row in rows)
        by_fd = {row[0]: row for row in rows}
        assert by_fd[kept.fileno()][1] == str(kept_path)
        assert _native._scan_fds(os.getpid(), links=False, only=()) == \
            [row for row in _native._scan_fds(os.getpid(), links=False) if row[4] == 0]


def test_a_scan_without_link_texts_finds_the_same_descriptors_as_the_listing(tmp_path):
    # Without link texts our own descriptors are found by trying each number
    # below the descriptor table's size, when /proc/self/fd gives their
    # count (Linux 6.2+) and the table is at most about twice as large;
    # with link texts, by listing /proc/self/fd.  Both must find the same
    # ones.  300 descriptors and one at 400 make a table of 512 numbers:
    # tried one by one, the highest one included.
    high = 400
    files = [open(tmp_path / f"f{i}", "w") for i in range(10)]
    dups = [os.dup(files[i % 10].fileno()) for i in range(290)]
    try:
        os.dup2(files[0].fileno(), high)
        listed = {row[0]: row[2:] for row in _native._scan_fds(os.getpid())}
        probed = {row[0]: row[2:] for row in _native._scan_fds(os.getpid(), links=False)}
        assert high in probed and dups[-1] in probed
        assert probed == listed
    finally:
        os.close(high)
        for fd in dups:
            os.close(fd)
        for f in files:
            f.close()


def test_a_map_scan_limited_to_identities_or_a_name(tmp_path):
    path = tmp_path / "mapped.bin"
    path.write_bytes(b"x" * 4096)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mapped:
        st = os.fstat(f.fileno())
        everything = _native._scan_maps(os.getpid())
        ours = [row for row in everything if (row[4], row[5]) == (st.st_dev, st.st_ino)]
        assert ours and len(everything) > len(ours)
        assert _native._scan_maps(os.getpid(), only=[(st.st_dev, st.st_ino)]) == ours
        assert _native._scan_maps(os.getpid(), prefix=str(path)) == ours
        assert _native._scan_maps(os.getpid(), prefix=os.fsencode(tmp_path)) == ours
        assert _native._scan_maps(os.getpid(), only=[], prefix=str(path) + "-shm") == []
        assert _native._scan_maps(os.getpid(), only=[]) == []
        mapped[0] = 1
    with pytest.raises(TypeError):
        _native._scan_maps(os.getpid(), prefix=5)
    with pytest.raises(TypeError, match="only must"):
        _native._scan_maps(os.getpid(), only=[(1,)])


@pytest.mark.parametrize("only", [5, [(1,)], [(1, "2")], ["ab"]])
def test_a_bad_identity_filter_is_a_type_error_naming_it(only):
    with pytest.raises(TypeError, match="only must"):
        _native._scan_fds(os.getpid(), only=only)


def test_result_types_are_frozen_and_readable(db):
    with connections(db, 1):
        result = sqlite_fds(db)
    assert isinstance(result, SqliteFds)
    with pytest.raises(AttributeError):
        result.locks_lost = True
    assert repr(result).startswith("<SqliteFds pid=")
    assert "healthy" in result.report()
    assert hermes_kanban_native.sqlite_fds is sqlite_fds


# ------------------------------------------------ platforms without /proc

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
_SCANNERS = {"hkn_scan_fds", "hkn_scan_maps", "hkn_scan_locks", "hkn_scan_fd_locks"}


def _defined(name):
    """The scanner functions and docstrings a platform's file defines (the
    stubs of other/fdscan.c through one macro, HKN_UNSUPPORTED)."""
    text = (CSRC / name).read_text()
    stubs = {"hkn_" + stub for stub in re.findall(r"^HKN_UNSUPPORTED\((\w+),", text, re.M)}
    return (set(re.findall(r"^(hkn_scan_\w+)\(", text, re.M)) | stubs,
            set(re.findall(r"^const char (hkn_scan_\w+)_doc\[\]", text, re.M)) | stubs)


@pytest.mark.skipif(not CSRC.is_dir(), reason="needs the source tree")
def test_the_stub_scanners_take_the_same_arguments_as_the_linux_ones():
    # One method table (module.c) lists them with their flags; fdscan.h
    # gives the signatures both files must define, and both define all four.
    assert _defined("linux/fdscan.c") == _defined("other/fdscan.c") == (_SCANNERS, _SCANNERS)
    table = re.findall(r'\{"(_scan_\w+)", [^,]*(hkn_scan_\w+), ', (CSRC / "module.c").read_text())
    assert sorted(table) == sorted(("_" + name[4:], name) for name in _SCANNERS)


def _stub_build():
    try:
        _native._scan_locks()
    except NotImplementedError:
        return True
    return False


@pytest.mark.skipif(not _stub_build(), reason="needs a build of csrc/other/fdscan.c "
                    "(HKN_FDSCAN_STUB=1 on Linux; CI has one)")
@pytest.mark.parametrize("call", [
    lambda db: hermes_kanban_native.sqlite_fds(db), lambda db: hermes_kanban_native.holders(db),
    lambda db: hermes_kanban_native.open_fds(), lambda db: hermes_kanban_native.mapped_files(),
])
def test_without_proc_every_scanner_says_not_implemented(call, db):
    with pytest.raises(NotImplementedError, match="needs /proc"):
        call(db)
