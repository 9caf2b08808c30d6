"""warn_on_stray_open(): code other than SQLite opening a live database is
named, at its own line, and SQLite's own opens never are."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import sqlite3
import sys
import types
import warnings

import pytest

import hermes_kanban_native as hkn
from hermes_kanban_native.commands.databases import make_wal_db
from conftest import isolated_script, run_isolated, sqlite_with_its_own_files

StrayOpenWarning = hkn.StrayOpenWarning


@pytest.fixture
def watching():
    previous = hkn.warn_on_stray_open(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        hkn.warn_on_stray_open(previous)


def _strays(caught):
    return [w for w in caught if issubclass(w.category, StrayOpenWarning)]


def _line_of(fragment, path=__file__):
    lines = pathlib.Path(path).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if fragment in line)


@pytest.mark.parametrize("factory", [sqlite3.Connection, hkn.WalSafeConnection])
def test_an_open_of_a_live_database_warns_at_its_line(tmp_path, watching, factory):
    db = make_wal_db(tmp_path / "board.db")
    conn = sqlite3.connect(db, factory=factory)
    conn.execute("SELECT * FROM t").fetchall()
    with open(db, "rb") as f:                                   # the header probe
        f.read(100)
    stray, = _strays(watching)
    assert stray.filename == __file__
    assert stray.lineno == _line_of("# the header probe")
    message = str(stray.message)
    assert f"opened the database {db}" in message and "POSIX lock" in message
    guarded = hkn.sqlite_fds(db).guarded
    assert ("the guard's OFD locks covered it" in message) == guarded
    assert ("no guard covered it" in message) == (not guarded)
    conn.close()


def test_sidecars_and_library_calls_are_named_at_the_callers_line(tmp_path, watching):
    db = make_wal_db(tmp_path / "board.db")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (1)")
    pathlib.Path(db + "-wal").read_bytes()                      # through pathlib
    os.close(os.open(db + "-shm", os.O_RDONLY))                 # through os.open
    shutil.copyfile(db, tmp_path / "copy.db")                   # through shutil
    wal, shm, copy = _strays(watching)
    assert (wal.filename, wal.lineno) == (__file__, _line_of("# through pathlib"))
    assert "the -wal of" in str(wal.message) and "/pathlib" in str(wal.message)
    assert (shm.filename, shm.lineno) == (__file__, _line_of("# through os.open"))
    assert "the -shm of" in str(shm.message)
    assert (copy.lineno, copy.filename) == (_line_of("# through shutil"), __file__)
    conn.close()


def test_unrelated_files_and_databases_nobody_holds_do_not_warn(tmp_path, watching):
    db = make_wal_db(tmp_path / "board.db")
    other = tmp_path / "notes.txt"
    conn = sqlite3.connect(db)
    other.write_text("x")
    assert other.read_text() == "x"
    (tmp_path / "board.db.bak").write_bytes(b"")                 # a name that only looks alike
    conn.close()
    with open(db, "rb") as f:                                   # closed: harmless now
        f.read(100)
    assert _strays(watching) == []


def test_sqlite_own_opens_never_warn(tmp_path, watching):
    db = make_wal_db(tmp_path / "board.db")
    sqlite_with_its_own_files(hkn.connect(db, isolation_level=None),
                              sqlite3.connect(db, isolation_level=None), str(tmp_path))
    assert _strays(watching) == []


def test_as_an_error_the_open_itself_fails(tmp_path):
    db = make_wal_db(tmp_path / "board.db")
    conn = sqlite3.connect(db)
    previous = hkn.warn_on_stray_open(True)
    try:
        before = hkn.sqlite_fds(db)
        with warnings.catch_warnings():
            warnings.simplefilter("error", StrayOpenWarning)
            with pytest.raises(StrayOpenWarning, match="opened the database"):
                open(db, "rb")
        after = hkn.sqlite_fds(db)
        assert len(after.db) == len(before.db) and not after.locks_lost
    finally:
        hkn.warn_on_stray_open(previous)
        conn.close()


def test_switching_it_off_and_bad_arguments(tmp_path):
    db = make_wal_db(tmp_path / "board.db")
    conn = sqlite3.connect(db)
    assert hkn.warn_on_stray_open(True) is False
    assert hkn.warn_on_stray_open(False) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", StrayOpenWarning)
        open(db, "rb").close()                                  # off: not watched
    with pytest.raises(TypeError, match="'yes'"):
        hkn.warn_on_stray_open("yes")
    conn.close()


def test_the_hook_passes_on_only_what_the_handler_needs(tmp_path):
    # While the pytest plugin listens, the C hook answers a connect to a
    # database the handler has settled by itself, and keeps back the handle
    # events of WalSafeConnections: what reaches Python is what it needs.
    from hermes_kanban_native import _native, stray
    settled, other = str(tmp_path / "settled.db"), str(tmp_path / "other.db")
    # The event names the database as given; CPython 3.10's encodes it.
    key = os.fsencode(settled) if sys.version_info < (3, 11) else settled
    events, note = [], types.SimpleNamespace()
    _native._set_audit_handler(lambda event, args: events.append(event),
                               seen={key: "noted"}, note=note)
    try:
        sqlite3.connect(settled).close()            # handle event only: a plain connection
        sqlite3.connect(settled, factory=hkn.WalSafeConnection).close()     # nothing
        sqlite3.connect(other, factory=hkn.WalSafeConnection).close()       # connect only
        sqlite3.connect(other).close()                                      # both
    finally:
        stray._refresh()
    assert note.pending == "noted"
    assert events == ["sqlite3.connect/handle", "sqlite3.connect",
                      "sqlite3.connect", "sqlite3.connect/handle"]


def test_the_hook_passes_on_only_opens_of_known_names(tmp_path):
    # Every open() in the process raises an "open" event; with warnings on
    # or the plugin listening, only those of a known database's files (or
    # of what only Python can name: bytes, path-like objects) reach Python.
    from hermes_kanban_native import _native, stray
    names = {"known.db"}
    opened = []
    _native._set_audit_handler(
        lambda event, args: opened.append(args[0]) if event == "open" else None, names=names)
    known = tmp_path / "known.db"
    try:
        for path in [known, tmp_path / "known.db-wal", tmp_path / "known.db-journal",
                     tmp_path / "other.db", tmp_path / "known.db-wal-shm"]:
            open(str(path), "a").close()
        open(known, "a").close()                                # a Path: made a str
        sys.audit("open", known, "r", 0)                        # a path-like object
        fd = os.open(os.fsencode(known), os.O_RDONLY)           # bytes
        os.fdopen(fd).close()                                   # a descriptor
        names.add("other.db")                                   # read at each event
        open(str(tmp_path / "other.db-shm"), "a").close()
    finally:
        stray._refresh()
    assert opened == [str(known), str(tmp_path / "known.db-wal"),
                      str(tmp_path / "known.db-journal"), str(known), known,
                      os.fsencode(known), str(tmp_path / "other.db-shm")]


@pytest.mark.parametrize("kwargs, message", [
    ({"seen": [], "note": types.SimpleNamespace()}, "seen must be a dict or None, not []"),
    ({"seen": {}}, "seen and note go together"),
    ({"note": types.SimpleNamespace()}, "seen and note go together"),
    ({"names": ["kanban.db"]}, "names must be a set or None, not ['kanban.db']"),
])
def test_the_hook_refuses_a_half_or_wrong_settlement(kwargs, message):
    from hermes_kanban_native import _native
    with pytest.raises(TypeError, match=re.escape(message)):
        _native._set_audit_handler(lambda event, args: None, **kwargs)


@pytest.mark.isolated
def test_environment_switch_warns_in_a_service(tmp_path):
    db = make_wal_db(tmp_path / "board.db")
    service = "stray_open_in_a_service"
    done = run_isolated(service, db, env={"HERMES_KANBAN_NATIVE_WARN_STRAY_OPEN": "1"})
    assert done.returncode == 0, done.stderr
    # Once per location, at the line of the open (the default filter).
    assert done.stderr.count("StrayOpenWarning") == 1
    script = isolated_script(service)
    line = _line_of('with open(db, "rb") as f:', script)
    assert f"{script}:{line}: StrayOpenWarning" in done.stderr

    quiet = run_isolated(service, db, env={"HERMES_KANBAN_NATIVE_WARN_STRAY_OPEN": "0"})
    assert quiet.returncode == 0 and "StrayOpenWarning" not in quiet.stderr
    bad = run_isolated(service, db, env={"HERMES_KANBAN_NATIVE_WARN_STRAY_OPEN": "maybe"})
    assert bad.returncode == 0
    assert "HERMES_KANBAN_NATIVE_WARN_STRAY_OPEN='maybe'" in bad.stderr
    assert "StrayOpenWarning" not in bad.stderr
