"""The pytest plugin, run on small suites with pytester in fresh processes."""
from __future__ import annotations

import textwrap

import pytest

LEAKY_AND_CLEAN = textwrap.dedent(
    """
    import gc, os, sqlite3, warnings
    import pytest
    import hermes_kanban_native as hkn

    def make(tmp_path):
        path = str(tmp_path / "kanban.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.close()
        return path

    KEPT = []

    def test_clean(tmp_path, sqlite_fd_tracker):
        path = make(tmp_path)
        sqlite_fd_tracker.watch(path)
        keeper = sqlite3.connect(path, factory=hkn.WalSafeConnection)
        for _ in range(3):
            conn = sqlite3.connect(path, factory=hkn.WalSafeConnection)
            conn.execute("SELECT * FROM t").fetchall()
            conn.close()
        keeper.close()

    def test_never_closed(tmp_path, sqlite_fd_tracker):
        path = make(tmp_path)
        sqlite_fd_tracker.watch(path)
        KEPT.append(sqlite3.connect(path, factory=hkn.WalSafeConnection))

    def test_left_to_gc(tmp_path, sqlite_fd_tracker):
        path = make(tmp_path)
        sqlite_fd_tracker.watch(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            conn = sqlite3.connect(path, factory=hkn.WalSafeConnection)
            conn.execute("INSERT INTO t VALUES (1)")
            del conn

    class Unguarded(hkn.WalSafeConnection):
        guard_wal = False

    def test_lost_locks(tmp_path, sqlite_fd_tracker):
        path = make(tmp_path)
        sqlite_fd_tracker.watch(path)
        conn = sqlite3.connect(path, factory=Unguarded, isolation_level=None)
        conn.execute("SELECT * FROM t").fetchall()
        os.close(os.open(path, os.O_RDONLY))        # a stray close cancels our locks
        KEPT.append(conn)

    def test_lost_locks_under_the_guard_are_no_failure(tmp_path, sqlite_fd_tracker):
        path = make(tmp_path)
        sqlite_fd_tracker.watch(path)
        conn = hkn.connect(path, isolation_level=None)
        conn.execute("SELECT * FROM t").fetchall()
        os.close(os.open(path, os.O_RDONLY))
        assert hkn.sqlite_fds(path).guarded == (hkn.sqlite_api()["guard"] == "available")
        conn.close()
    """
)


def test_fixture_fails_leaky_tests_and_passes_clean_ones(pytester):
    pytester.makepyfile(test_suite=LEAKY_AND_CLEAN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W",
                                           "ignore::pytest.PytestUnraisableExceptionWarning")
    result.assert_outcomes(passed=5, errors=3)
    out = result.stdout.str()
    assert "ERROR at teardown of test_never_closed" in out
    assert "opened by this test are still open" in out
    assert "test_suite.py:" in out                        # the opener's file:line
    assert "ERROR at teardown of test_left_to_gc" in out
    assert "garbage collector closed them" in out
    assert "ERROR at teardown of test_lost_locks" in out
    assert "POSIX locks were cancelled" in out
    assert "kanban.db" in out and "inode" in out           # the readable report
    assert "ERROR at teardown of test_clean" not in out


def test_command_line_option_checks_every_database(pytester):
    pytester.makepyfile(test_suite=textwrap.dedent(
        """
        import sqlite3
        import pytest
        import hermes_kanban_native as hkn

        KEPT = []

        def opener(path):
            # a suite that wraps sqlite3.connect, as hermes' does
            return sqlite3.connect(path, factory=hkn.WalSafeConnection)

        def test_clean(tmp_path, monkeypatch):
            real = sqlite3.connect
            monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real(*a, **k))
            conn = opener(str(tmp_path / "a.db"))
            conn.execute("CREATE TABLE t (x)")
            conn.close()

        def test_leaky(tmp_path):
            KEPT.append(opener(str(tmp_path / "b.db")))

        @pytest.mark.no_sqlite_fd_check
        def test_opted_out(tmp_path):
            KEPT.append(opener(str(tmp_path / "c.db")))
        """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sqlite-fd-check")
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_leaky" in out
    assert "b.db" in out and "still open" in out

    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    plain.assert_outcomes(passed=3)


def test_tracker_problems_api(tmp_path, sqlite_fd_tracker):
    import sqlite3

    import hermes_kanban_native as hkn
    path = tmp_path / "api.db"
    sqlite_fd_tracker.watch(path)
    conn = hkn.connect(path)
    assert sqlite_fd_tracker.watched == [str(path.resolve())]
    problems = sqlite_fd_tracker.problems()
    assert len(problems) == 1 and "still open" in problems[0]
    conn.close()
    assert sqlite_fd_tracker.problems() == []
    assert isinstance(conn, sqlite3.Connection)


@pytest.mark.no_sqlite_fd_check
def test_marker_is_registered(pytestconfig):
    assert any(line.startswith("no_sqlite_fd_check")
               for line in pytestconfig.getini("markers"))
