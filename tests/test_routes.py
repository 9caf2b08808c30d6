"""How the package reaches SQLite, chosen at import in a fresh interpreter.

Three routes, tried in this order: "symbols" (SQLite's functions looked up
in the library _sqlite3 uses), "extension-api" (the table of functions
SQLite hands a loadable extension: the way in where SQLite is linked into
_sqlite3 with hidden symbols, as in uv's python-build-standalone builds),
and "sql" (no native access).  Whatever happens, the import must not raise,
and sqlite_api() must say which route is in use and why the others were not
taken.  Tests marked with needs_loadable need a sqlite3 module built with
loadable extensions (Debian's python3, python-build-standalone, CI's
static-SQLite stage); pyenv's default builds have none.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

import hermes_kanban_native as hkn
from hermes_kanban_native import _native

from conftest import SQLITE_SYMBOLS_VISIBLE, run_isolated, run_python

LOADABLE = hasattr(sqlite3.Connection, "enable_load_extension")
needs_loadable = pytest.mark.skipif(
    not LOADABLE, reason="this sqlite3 module is built without loadable extensions")


SYMBOLS = SQLITE_SYMBOLS_VISIBLE


def api_in_fresh_interpreter(mode=None, prelude=""):
    """sqlite_api() of a fresh import, with HERMES_KANBAN_NATIVE_MODE=mode;
    `prelude` runs first (audit hooks)."""
    env = {"HERMES_KANBAN_NATIVE_MODE": mode} if mode else {}
    if mode is None:
        env["HERMES_KANBAN_NATIVE_MODE"] = ""
    proc = run_python(prelude + "\nimport json, hermes_kanban_native as hkn\n"
                      "print(json.dumps(hkn.sqlite_api()))\n", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_route_agrees_with_the_mode():
    api = hkn.sqlite_api()
    assert api["route"] in ("symbols", "extension-api", "sql")
    assert (api["mode"] == "native") == (api["route"] != "sql")
    assert api["route"] not in api["routes_not_taken"]
    if api["route"] == "extension-api":
        assert "symbols" in api["routes_not_taken"]
    if api["route"] == "sql":
        assert api["reason"]
        assert api["guard"] == "needs native access to SQLite"
    else:
        assert api["reason"] is None
        assert api["self_check"] == "passed"


@pytest.mark.skipif(not SYMBOLS, reason="SQLite's symbols are hidden in this _sqlite3")
def test_visible_symbols_are_the_first_choice():
    api = api_in_fresh_interpreter()
    assert api["route"] == "symbols", api
    assert api["routes_not_taken"] == {}


@pytest.mark.skipif(SYMBOLS, reason="SQLite's symbols are visible in this _sqlite3")
def test_hidden_symbols_are_reported():
    api = api_in_fresh_interpreter()
    assert "hidden symbols" in api["routes_not_taken"]["symbols"], api
    assert api["route"] == ("extension-api" if LOADABLE else "sql"), api


def test_forced_sql_mode_skips_every_route():
    api = api_in_fresh_interpreter("sql")
    assert api["route"] == "sql" and api["mode"] == "sql"
    assert api["routes_not_taken"] == {
        "symbols": "skipped: HERMES_KANBAN_NATIVE_MODE=sql",
        "extension-api": "skipped: HERMES_KANBAN_NATIVE_MODE=sql",
    }
    assert api["reason"] == "forced by HERMES_KANBAN_NATIVE_MODE=sql"
    assert api["self_check"] == "not run"


@pytest.mark.skipif(LOADABLE, reason="this sqlite3 module can load extensions")
def test_without_loadable_extensions_the_route_says_so():
    api = api_in_fresh_interpreter("extension-api")
    assert api["route"] == "sql"
    assert api["routes_not_taken"]["symbols"] == "skipped: HERMES_KANBAN_NATIVE_MODE=extension-api"
    assert "built without loadable extensions" in api["routes_not_taken"]["extension-api"]
    # The reason for sql mode names both.
    assert "symbols: skipped" in api["reason"] and "loadable extensions" in api["reason"]


@needs_loadable
def test_the_extension_route_is_fully_native():
    api = api_in_fresh_interpreter("extension-api")
    assert api["route"] == "extension-api", api
    assert api["mode"] == "native" and api["self_check"] == "passed"
    assert api["sqlite_version"] == sqlite3.sqlite_version
    if sys.platform.startswith("linux"):
        assert api["guard"] == "available"


@needs_loadable
@pytest.mark.skipif(not SYMBOLS, reason="SQLite's symbols are hidden: nothing to compare with")
@pytest.mark.isolated
def test_both_routes_bind_the_same_functions():
    """The slot numbers of sqlite3_api_routines are right on this SQLite:
    every function bound through the table is the one dlsym finds."""
    proc = run_isolated("bound_functions_of_both_routes", os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr
    routes = json.loads(proc.stdout)
    assert routes[:2] == ["symbols", "extension-api"]
    by_symbols, by_table = routes[2], routes[3]
    assert by_table == by_symbols
    required = {name for name, address in by_symbols.items()
                if name not in ("sqlite3_txn_state", "sqlite3_vfs_find")}
    assert all(by_symbols[name] for name in required)


def _load_events(refuse=""):
    # An audit hook records the extension-loading events, keeping the
    # connection objects so the test can see they ended closed.
    proc = run_isolated("record_extension_loading", refuse,
                        env={"HERMES_KANBAN_NATIVE_MODE": "extension-api"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@needs_loadable
def test_loading_is_switched_off_again_and_the_connection_closed():
    result = _load_events()
    assert result["api"]["route"] == "extension-api"
    assert result["events"] == [
        ["sqlite3.enable_load_extension", "True", "closed"],
        ["sqlite3.load_extension", result["file"], "closed"],
        ["sqlite3.enable_load_extension", "False", "closed"],
    ]


@needs_loadable
@pytest.mark.parametrize("refused", ["sqlite3.load_extension", "sqlite3.enable_load_extension"])
def test_an_audit_hook_that_refuses_leads_to_sql_mode_with_the_reason(refused):
    result = _load_events(refuse=refused)
    api = result["api"]
    assert api["route"] == "sql" and api["mode"] == "sql"
    why = api["routes_not_taken"]["extension-api"]
    assert "refused: RuntimeError: extensions are not allowed here" in why
    expected = [["sqlite3.enable_load_extension", "True", "closed"]]
    if refused == "sqlite3.load_extension":
        # Switched off again after the refused load.
        expected += [["sqlite3.load_extension", result["file"], "closed"],
                     ["sqlite3.enable_load_extension", "False", "closed"]]
    assert result["events"] == expected


@needs_loadable
@pytest.mark.isolated
def test_no_second_copy_of_the_extension_is_mapped():
    """Loading the already imported shared object again maps nothing new."""
    proc = run_isolated("mapped_copies_of_the_extension",
                        env={"HERMES_KANBAN_NATIVE_MODE": "extension-api"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["extension-api", 1]


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_only_the_module_and_extension_entry_points_are_exported():
    out = subprocess.run(["nm", "-D", "--defined-only", _native.__file__], capture_output=True,
                         text=True, check=True).stdout
    exported = {fields[2] for fields in (line.split() for line in out.splitlines())
                if len(fields) == 3 and fields[1] in "TDBRVW"}
    assert exported == {"PyInit__native", "sqlite3_native_init"}


def _info(mode, *extra):
    """The info command; mode None keeps this process's environment."""
    env = dict(os.environ)
    if mode is not None:
        env["HERMES_KANBAN_NATIVE_MODE"] = mode
    return subprocess.run([sys.executable, "-m", "hermes_kanban_native", "info", *extra],
                          capture_output=True, text=True, env=env, cwd="/", timeout=120)


def test_info_names_the_route_and_what_sql_mode_loses():
    native = _info(None)
    assert native.returncode == 0, native.stderr
    route = hkn.sqlite_api()["route"]
    assert f"  route           {route}: " in native.stdout
    if route != "sql":
        assert "sql mode loses" not in native.stdout

    sql = _info("sql")
    assert sql.returncode == 0, sql.stderr       # sql mode works, it is only weaker
    lines = sql.stdout.splitlines()
    assert "  route           sql: no native access to SQLite" in lines
    assert "  not taken       symbols: skipped: HERMES_KANBAN_NATIVE_MODE=sql" in lines
    assert any(line.startswith("  sql mode loses  no WAL-generation guard") for line in lines)
    assert any(line.startswith("  native needs    ") and "loadable" in line for line in lines)

    report = json.loads(_info("sql", "--json").stdout)
    assert report["route"] == "sql" and report["mode"] == "sql"
    assert set(report["routes_not_taken"]) == {"symbols", "extension-api"}
