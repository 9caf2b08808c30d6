"""The pytest plugin, run on small suites with pytester in fresh processes."""
from __future__ import annotations

import inspect
import sys
import textwrap

import pytest

import hermes_kanban_native as hkn
from conftest import sqlite_with_its_own_files

LEAKY_AND_CLEAN = textwrap.dedent(
    """
    import gc, os, sqlite3, warnings
    import pytest
    import hermes_kanban_native as hkn
    from hermes_kanban_native.commands.databases import make_wal_db

    def make(tmp_path):
        return make_wal_db(tmp_path / "kanban.db")

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


def _line_of(path, fragment, occurrence=1):
    """The line number of the n-th line of a written test file holding
    `fragment`."""
    found = [number for number, line in enumerate(path.read_text().splitlines(), 1)
             if fragment in line]
    return found[occurrence - 1]


def _section(out, test):
    """The teardown report of one test in pytest's output.

    It ends at the next report or at the short summary, which under CI
    (the CI variable set) repeats every message in full.
    """
    start = out.index(f"ERROR at teardown of {test} ")
    ends = [out.find(mark, start + 1) for mark in ("ERROR at teardown of",
                                                   "short test summary info")]
    return out[start:min((e for e in ends if e > 0), default=len(out))]


def test_fixture_fails_leaky_tests_and_passes_clean_ones(pytester):
    suite = pytester.makepyfile(test_suite=LEAKY_AND_CLEAN)
    kept = _line_of(suite, "KEPT.append(sqlite3.connect(")
    dropped = _line_of(suite, "conn = sqlite3.connect(path, factory=hkn.WalSafeConnection)", 2)
    stray, covered_stray = (_line_of(suite, "os.close(os.open(path", n) for n in (1, 2))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W",
                                           "ignore::pytest.PytestUnraisableExceptionWarning")
    result.assert_outcomes(passed=5, errors=4)
    out = result.stdout.str()
    assert "ERROR at teardown of test_clean" not in out
    never = _section(out, "test_never_closed")
    assert "opened by this test are still open" in never
    assert f"test_suite.py:{kept} in thread MainThread" in never       # the opener's line
    gc_closed = _section(out, "test_left_to_gc")
    assert "never closed, collected" in gc_closed and f"test_suite.py:{dropped} " in gc_closed
    assert "still open" not in gc_closed                          # listed once, as collected
    lost = _section(out, "test_lost_locks")
    assert "POSIX locks were cancelled" in lost
    assert f"test_suite.py:{stray} opened the database" in lost and "no guard covered it" in lost
    assert "kanban.db" in lost and "inode" in lost                 # the readable report
    # Under the guard the stray open is still reported, with the guard's
    # cover, and the lost POSIX locks are not a second problem.
    covered = _section(out, "test_lost_locks_under_the_guard_are_no_failure")
    assert f"test_suite.py:{covered_stray} opened the database" in covered
    if hkn.sqlite_api()["guard"] == "available":
        assert "the guard's OFD locks covered it" in covered
        assert "POSIX locks were cancelled" not in covered
    else:                                   # SQL mode, or a system without OFD locks
        assert "no guard covered it" in covered


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


def test_option_follows_each_test_from_its_first_database_event(pytester):
    # The option makes a test's tracker only when the test does something to
    # a database: whatever that first thing is, and in whatever thread, the
    # test is checked as a whole.
    pytester.makepyfile(test_suite=textwrap.dedent(
        """
        import sqlite3
        import threading
        import pytest
        import hermes_kanban_native as hkn

        KEPT = []

        def test_quiet(tmp_path):
            (tmp_path / "notes.txt").write_text("no database here")

        def test_class_called_directly(tmp_path):
            KEPT.append(hkn.WalSafeConnection(str(tmp_path / "d.db")))

        def test_in_a_thread(tmp_path):
            def work():
                KEPT.append(sqlite3.connect(str(tmp_path / "e.db"),
                                            factory=hkn.WalSafeConnection))
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()

        def test_fixture_is_the_options(tmp_path, sqlite_fd_tracker):
            path = tmp_path / "f.db"
            sqlite_fd_tracker.watch(path)
            sqlite3.connect(str(path), factory=hkn.WalSafeConnection).close()
            assert sqlite_fd_tracker.problems() == []

        @pytest.mark.no_sqlite_fd_check
        def test_opted_out_but_the_fixture_checks(tmp_path, sqlite_fd_tracker):
            sqlite_fd_tracker.watch(tmp_path / "g.db")
            KEPT.append(sqlite3.connect(str(tmp_path / "g.db"), factory=hkn.WalSafeConnection))

        def test_clean_after_the_leaks(tmp_path):
            sqlite3.connect(str(tmp_path / "h.db"), factory=hkn.WalSafeConnection).close()
        """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sqlite-fd-check")
    result.assert_outcomes(passed=6, errors=3)
    out = result.stdout.str()
    for name, database in [("test_class_called_directly", "d.db"), ("test_in_a_thread", "e.db"),
                           ("test_opted_out_but_the_fixture_checks", "g.db")]:
        assert f"ERROR at teardown of {name}" in out
        section = out.split(f"ERROR at teardown of {name}")[1].split("ERROR at teardown")[0]
        assert database in section and "still open" in section
    for name in ["test_quiet", "test_fixture_is_the_options", "test_clean_after_the_leaks"]:
        assert f"ERROR at teardown of {name}" not in out


def test_option_ignores_a_test_skipped_before_its_setup(pytester):
    # Another plugin's setup hook can skip a test before ours runs (a
    # conftest.py found while collecting is registered after our option's
    # hooks, and so is called before them); pytest still tears the test down.
    # Nothing of it was watched, so nothing of it is reported (not the leak
    # of the test before it, again).
    sub = pytester.mkdir("sub")
    (sub / "conftest.py").write_text(textwrap.dedent(
        """
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_setup(item):
            if "skipped_early" in item.name:
                pytest.skip("skipped before the plugin's setup")
        """))
    (sub / "test_suite.py").write_text(textwrap.dedent(
        """
        import sqlite3
        import hermes_kanban_native as hkn

        KEPT = []

        def test_leaky(tmp_path):
            KEPT.append(sqlite3.connect(str(tmp_path / "a.db"), factory=hkn.WalSafeConnection))

        def test_skipped_early():
            pass
        """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sqlite-fd-check")
    result.assert_outcomes(passed=1, skipped=1, errors=1)
    assert "ERROR at teardown of test_leaky" in result.stdout.str()


def test_option_leaves_no_listener_behind(pytester):
    # The option's listener lives as long as its session: a run inside this
    # process (as pytester's in-process runs are) leaves none.
    from hermes_kanban_native import stray
    before = stray._state.listeners
    pytester.makepyfile(test_one=textwrap.dedent(
        """
        import sqlite3
        import hermes_kanban_native as hkn

        def test_connects(tmp_path):
            sqlite3.connect(str(tmp_path / "a.db"), factory=hkn.WalSafeConnection).close()
        """))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--sqlite-fd-check",
                                          "-W", "ignore::pytest.PytestAssertRewriteWarning")
    result.assert_outcomes(passed=1)
    assert stray._state.listeners == before


@pytest.mark.parametrize("mode", ["fixture", "option"])
def test_a_tracker_inside_another_hides_nothing_from_it(pytester, mode):
    # A test (or a helper it calls) may run its own SqliteFdTracker while the
    # fixture's or the option's runs: each sees everything from its own start.
    pytester.makepyfile(test_nested=textwrap.dedent(
        """
        import gc, sqlite3, warnings
        import pytest
        import hermes_kanban_native as hkn
        from hermes_kanban_native.commands.databases import make_wal_db
        from hermes_kanban_native.pytest_plugin import SqliteFdTracker

        @pytest.fixture
        def watcher(request):
            if request.config.getoption("--sqlite-fd-check"):
                return None
            return request.getfixturevalue("sqlite_fd_tracker")

        def test_nested(tmp_path, watcher):
            path = make_wal_db(tmp_path / "kanban.db")
            if watcher is not None:
                watcher.watch(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                conn = sqlite3.connect(path, factory=hkn.WalSafeConnection)
                del conn
                gc.collect()
            inner = SqliteFdTracker(every_database=True)
            other = make_wal_db(tmp_path / "other.db")
            sqlite3.connect(other, factory=hkn.WalSafeConnection).close()
            assert inner.problems() == []
            inner.check()
        """))
    args = ["-p", "no:cacheprovider"] + (["--sqlite-fd-check"] if mode == "option" else [])
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "1 WalSafeConnection(s) opened by this test were never closed, collected" in out
    assert "kanban.db opened at" in out and "other.db" not in out


# A module's long-lived connection (the gateway's own, in hermes) and a test
# that has four more open at once: SQLite parks the database descriptor of
# each that closes while the long-lived one holds a lock on the file.
KEEPER_AND_FOUR = textwrap.dedent(
    """
    import os, sqlite3
    import pytest
    import hermes_kanban_native as hkn
    from hermes_kanban_native.pytest_plugin import SqliteFdTracker

    @pytest.fixture(scope="module")
    def keeper(tmp_path_factory):
        # Made by a WalSafeConnection: a plain connection would make the
        # option leave the descriptor count of this database alone.
        path = str(tmp_path_factory.mktemp("db") / "kanban.db")
        conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        yield path
        conn.close()

    @pytest.fixture
    def watcher(request, keeper):
        if not request.config.getoption("--sqlite-fd-check"):
            request.getfixturevalue("sqlite_fd_tracker").watch(keeper)
        return keeper

    def open_four_at_once(path):
        many = [sqlite3.connect(path, factory=hkn.WalSafeConnection) for _ in range(4)]
        for conn in many:
            conn.execute("SELECT * FROM t").fetchall()
        for conn in many:
            conn.close()
        assert len(hkn.sqlite_fds(path).db) == 5     # 1 live, 4 parked
    """)


@pytest.mark.parametrize("mode", ["fixture", "option"])
def test_a_tracker_inside_another_leaves_its_parking_allowance_alone(pytester, mode):
    # The descriptors a test may leave are bounded by the most connections
    # open at once since it began.  An inner tracker starts its own count:
    # the outer one must still count those open at once before that.
    pytester.makepyfile(test_parked=KEEPER_AND_FOUR + textwrap.dedent(
        """
        def test_parks_then_nests(watcher):
            open_four_at_once(watcher)
            inner = SqliteFdTracker()
            inner.watch(watcher)
            sqlite3.connect(watcher, factory=hkn.WalSafeConnection).close()
            assert inner.problems() == []
            inner.check()

        def test_z_last(keeper):
            pass        # the keeper stays open through test_parks_then_nests's check
        """))
    args = ["-p", "no:cacheprovider"] + (["--sqlite-fd-check"] if mode == "option" else [])
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("mode", ["fixture", "option"])
def test_descriptors_parked_before_a_test_are_not_its_doing(pytester, mode):
    # What an earlier test parked stays parked while the keeper lives: a later
    # test that opens one connection is clean; one that leaves a descriptor
    # more than that is not.
    pytester.makepyfile(test_parked=KEEPER_AND_FOUR + textwrap.dedent(
        """
        KEPT = []

        def test_a_opens_four_at_once(watcher):
            open_four_at_once(watcher)

        def test_b_opens_one(watcher):
            sqlite3.connect(watcher, factory=hkn.WalSafeConnection).close()

        def test_c_leaves_a_descriptor(watcher):
            conn = sqlite3.connect(watcher, factory=hkn.WalSafeConnection)
            conn.close()
            KEPT.append(os.open(watcher, os.O_RDONLY))

        @pytest.mark.no_sqlite_fd_check
        def test_d_cleans_up(keeper):
            os.close(KEPT.pop())
        """))
    args = ["-p", "no:cacheprovider"] + (["--sqlite-fd-check"] if mode == "option" else [])
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=4, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_c_leaves_a_descriptor" in out
    assert ("6 database / 1 WAL descriptors for 1 open connection(s); SQLite's parking "
            "explains at most 5 / 1 (peak concurrency 2, 5 before the test)") in out


@pytest.mark.parametrize("mode", ["fixture", "option"])
def test_connections_of_wider_fixtures_are_not_the_tests(pytester, mode):
    # A module fixture opens its connections while the first test using it
    # sets up, and closes them after the last: they are not that test's
    # leak.  What the test itself leaves open still is.
    source = textwrap.dedent(
        """
        import sqlite3
        import pytest
        import hermes_kanban_native as hkn

        def open_board(path):
            conn = sqlite3.connect(path, factory=hkn.WalSafeConnection, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            return conn

        @pytest.fixture(scope="module")
        def path(tmp_path_factory):
            return str(tmp_path_factory.mktemp("db") / "kanban.db")

        @pytest.fixture(scope="module")
        def board(path):
            conn = open_board(path)
            yield conn
            conn.close()

        @pytest.fixture(scope="module")
        def archive(tmp_path_factory):
            conn = sqlite3.connect(str(tmp_path_factory.mktemp("db") / "archive.db"))
            conn.execute("CREATE TABLE a (x)")
            yield conn
            conn.close()

        @pytest.fixture
        def watcher(request, path, board):
            if not request.config.getoption("--sqlite-fd-check"):
                request.getfixturevalue("sqlite_fd_tracker").watch(path)
            return path

        KEPT = []

        def test_uses_them(watcher, board, archive):
            board.execute("INSERT INTO t VALUES (1)")
            archive.execute("SELECT * FROM a").fetchall()

        def test_leaves_its_own_open(watcher):
            KEPT.append(open_board(watcher))   # the leak

        def test_closes_it(watcher, archive):
            KEPT.pop().close()
        """).lstrip("\n")
    pytester.makepyfile(test_scoped=source)
    args = ["-p", "no:cacheprovider"] + (["--sqlite-fd-check"] if mode == "option" else [])
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_leaves_its_own_open" in out
    lines = source.splitlines()
    leak = next(n for n, line in enumerate(lines, 1) if "# the leak" in line)
    fixture = next(n for n, line in enumerate(lines, 1) if "conn = open_board(path)" in line)
    assert "1 WalSafeConnection(s) opened by this test are still open:\n  - " in out
    assert f"test_scoped.py:{leak} (via " in out
    assert f"test_scoped.py:{fixture}" not in out


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


# -- a suite shaped like hermes-agent's: one connect helper for everything --

PROJECT_HELPER = textwrap.dedent(
    """
    import sqlite3
    import hermes_kanban_native as hkn

    FACTORY = {factory}

    def connect(path):
        conn = sqlite3.connect(path, factory=FACTORY, isolation_level=None, timeout=120)
        conn.execute("PRAGMA journal_mode = WAL")
        return conn
    """)

PROJECT_TESTS = textwrap.dedent(
    """
    import os
    import sqlite3
    import kb

    KEPT = []

    def board(tmp_path):
        path = str(tmp_path / "board.db")
        conn = kb.connect(path)
        conn.execute("CREATE TABLE t (x)")
        conn.close()
        return path

    def test_keeps_a_connection(tmp_path):
        KEPT.append(kb.connect(board(tmp_path)))                    # LEAK-KEPT

    def test_with_block_does_not_close(tmp_path):
        with kb.connect(board(tmp_path)) as conn:                   # LEAK-WITH
            conn.execute("INSERT INTO t VALUES (1)")

    def test_closes(tmp_path):
        conn = kb.connect(board(tmp_path))
        conn.execute("INSERT INTO t VALUES (1)")
        conn.close()

    def test_header_probe(tmp_path):
        path = board(tmp_path)
        conn = kb.connect(path)
        conn.execute("INSERT INTO t VALUES (1)")
        with open(path, "rb") as f:                                 # STRAY
            assert f.read(16) == b"SQLite format 3\\x00"
        conn.close()

    def test_unrelated_file(tmp_path):
        path = board(tmp_path)
        conn = kb.connect(path)
        (tmp_path / "notes.txt").write_text("x")
        assert open(str(tmp_path / "notes.txt")).read() == "x"
        conn.close()
        with open(path, "rb") as f:                  # nobody holds it any more
            f.read(16)

    def test_sqlite_alone_with_its_files(tmp_path):
        path = board(tmp_path)
        sqlite_with_its_own_files(kb.connect(path), kb.connect(path), str(tmp_path))
    """) + "\n\n" + inspect.getsource(sqlite_with_its_own_files)


@pytest.mark.parametrize("factory", ["hkn.WalSafeConnection", "sqlite3.Connection"])
def test_option_names_the_caller_and_the_stray_open(pytester, factory):
    pytester.makepyfile(kb=PROJECT_HELPER.format(factory=factory))
    suite = pytester.makepyfile(test_project=PROJECT_TESTS)
    helper_line = _line_of(pytester.path / "kb.py", "conn = sqlite3.connect(")
    kept, with_block, stray = (_line_of(suite, mark) for mark in
                               ("# LEAK-KEPT", "# LEAK-WITH", "# STRAY"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sqlite-fd-check",
                                           "-W", "ignore::ResourceWarning")
    out = result.stdout.str()
    walsafe = factory.startswith("hkn.")
    # A with block does not close: WalSafeConnection sees it collected; a
    # plain connection's collection can only be seen where CPython warns
    # about it (3.13+).
    with_block_fails = walsafe or sys.version_info >= (3, 13)
    result.assert_outcomes(passed=6, errors=2 + with_block_fails)     # teardown errors

    stray_report = _section(out, "test_header_probe")
    assert f"test_project.py:{stray} opened the database" in stray_report
    assert "board.db" in stray_report
    for clean in ("test_closes", "test_unrelated_file", "test_sqlite_alone_with_its_files"):
        assert f"ERROR at teardown of {clean} " not in out

    report = _section(out, "test_keeps_a_connection")
    opener = f"test_project.py:{kept} (via {pytester.path / 'kb.py'}:{helper_line} in connect)"
    assert opener in report                                     # the test's line, then the helper
    assert report.count(f"test_project.py:{kept}") == 1         # listed once
    assert ("still open" in report) and ("collected" not in report)
    if with_block_fails:
        report = _section(out, "test_with_block_does_not_close")
        assert f"test_project.py:{with_block} (via" in report
        assert report.count(f"test_project.py:{with_block}") == 1
        assert "collected" in report and "still open" not in report


@pytest.mark.slow
def test_a_clean_suite_of_hundreds_of_tests_passes(pytester):
    from hermes_kanban_native.commands.bench import plugin as bench_plugin
    count = bench_plugin.write_suite(str(pytester.path), "kanban", files=3, per_file=70)
    bench_plugin.write_suite(str(pytester.path), "no_sqlite", files=1, per_file=40)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sqlite-fd-check")
    result.assert_outcomes(passed=count + 40)
