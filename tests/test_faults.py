"""Fault injection: every call of the C extension that can fail, made to fail.

Only with a build made with HKN_FAULTS=1 (csrc/faults.h); skipped otherwise.
For each fault point, its failure (first hit, then every hit) during the
driving workload (fault_workload.py) must show as a clean exception, warning
or unraisable report, never a crash or a SystemError; afterwards every
connection still closes, no descriptor and no reference is left behind, and
the database passes PRAGMA integrity_check.

Points are reached in one of three places, found by an unarmed run of each:
the package's own module (native mode, the public API on top), a private
instance of the module in SQL mode, or the module's initialisation, which
runs in a subprocess that executes fresh instances of the module.  The
points of csrc/linux/shmlock.c act once per process (the system-call wrappers are
installed by the first guarded open) or inside those wrappers, without the
GIL: each runs in a fresh process of its own (SHM_SCENARIO); so does adding
the audit hook, once per process too (AUDIT_SCENARIO).
"""
from __future__ import annotations

import gc
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest

import hermes_kanban_native as hkn
from hermes_kanban_native import _native

if not hasattr(_native, "_fault_points"):
    pytest.skip("the extension was built without HKN_FAULTS=1", allow_module_level=True)
if _native.sqlite_api()["mode"] != "native":
    # The native points are driven through the package's own instance.
    pytest.skip("needs native access to SQLite", allow_module_level=True)

from conftest import make_wal_db, run_python  # noqa: E402
from fault_workload import (  # noqa: E402
    ALWAYS,
    COMBINATIONS,
    PREREQUISITES,
    Workload,
    exec_instance,
    fd_table,
    growth,
)

pytestmark = pytest.mark.faults

POINTS = _native._fault_points()
# The extension-API route goes past its first step only where the sqlite3
# module can load extensions (CI's static-SQLite stage has one).
LOADABLE = hasattr(sqlite3.Connection, "enable_load_extension")


def _needs_loadable(name):
    return (name.startswith(("sqlite_api.route_extension.", "sqlite_api.call_refusable."))
            and name != "sqlite_api.route_extension.PyObject_GetAttrString")


TESTS = Path(__file__).resolve().parent
CSRC = TESTS.parent / "csrc"

# Leak check: the workload steps that reach a point run this many more times
# under the fault; allocated blocks may grow by less than one per run (a
# leaked object per run is caught), tracked objects and the reference counts
# of fault_workload.leak_probes() not at all.
REPEAT = 4
WINDOWS = 3


@pytest.fixture(scope="module")
def scratch():
    """Databases on tmpfs when there is one: the workload's commits and
    checkpoints fsync, which costs milliseconds each on a real disk."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="hkn-faults-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sql_module():
    """A private instance of the extension in SQL mode (its own type,
    registry and statistics)."""
    return exec_instance(_native.__file__, "sql")


class Reach:
    """Where each point is reached: 'native', 'sql' or 'init', and which
    workload steps reach it."""

    def __init__(self):
        self.context = {}
        self.steps = {}
        self.hit = set()

    def record(self, context, step, points):
        for name in points:
            self.context.setdefault(name, context)
            if self.context[name] == context:
                self.steps.setdefault(name, [])
                if step not in self.steps[name]:
                    self.steps[name].append(step)
        self.hit |= set(points)


def _hits():
    return _native._fault_hits()


def _reached(before, after):
    return {name for name, count in after.items() if count > before.get(name, 0)}


def _run_steps_recording(reach, context, workload):
    """An unarmed run, step by step, recording what each step reaches; it
    must raise nothing."""
    for step in workload.steps():
        workload.mod._fault_reset_once()    # as each armed run does
        before = _hits()
        workload.run(only=[step.__name__])
        reach.record(context, step.__name__, _reached(before, _hits()))
    workload.finish()
    assert workload.raised == [], workload.raised
    assert workload.unraisable == [], workload.unraisable


@pytest.fixture(scope="module")
def init_results():
    """Runs every initialisation-time point in one subprocess (each cycle
    executes a fresh instance of the module) and returns its report."""
    code = f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        import fault_workload
        print(json.dumps(fault_workload.init_faults({REPEAT}, {WINDOWS})))
    """
    proc = run_python(code, timeout=600)
    assert proc.returncode == 0, (
        f"the initialisation subprocess failed ({proc.returncode}); the last point it "
        f"started is at the end of:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


# Run after a line that sets name, countdown, times and scratch.
SHM_SCENARIO = """
import json, os, sqlite3, sys, tempfile
import hermes_kanban_native as hkn
from hermes_kanban_native import _native

where = tempfile.mkdtemp(dir=scratch)
dbs = [os.path.join(where, f"{i}.db") for i in range(2)]
baseline = sorted(os.listdir("/proc/self/fd"))
before = _native._fault_hits()[name]
_native._fault_arm(name, countdown, times)
conns = []
try:
    for db in dbs:
        conn = hkn.connect(db, isolation_level=None)     # the first installs the wrappers
        conn.execute("CREATE TABLE t (x)")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("COMMIT")
        other = sqlite3.connect(db)
        other.execute("SELECT count(*) FROM t").fetchone()
        other.close()
        try:
            # Opted out of the shadow locks; recording that may fail cleanly.
            unguarded = hkn.connect(db, guard_wal=False)
        except MemoryError:
            pass
        else:
            unguarded.execute("SELECT count(*) FROM t").fetchone()
            unguarded.close()
        conns.append(conn)
    shm_locks = hkn.sqlite_api()["shm_locks"]
    ofd_open = hkn.stats()["shm_ofd_open"]
finally:
    _native._fault_disarm()
    for conn in conns:
        conn.close()
report = {"hits": _native._fault_hits()[name] - before, "shm_locks": shm_locks,
          "ofd_open": ofd_open, "fds_left": sorted(os.listdir("/proc/self/fd")) != baseline,
          "checks": []}
for db in dbs:
    conn = sqlite3.connect(db)
    report["checks"].append([conn.execute("SELECT count(*) FROM t").fetchone()[0],
                             conn.execute("PRAGMA integrity_check").fetchone()[0]])
    conn.close()
print(json.dumps(report))
"""


def _shm_scenario(name, times, scratch, countdown=1):
    proc = run_python(f"name, countdown, times, scratch = {name!r}, {countdown}, {times}, "
                      f"{scratch!r}\n" + SHM_SCENARIO)
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


# The audit hook is added once per process (audit hooks cannot be removed):
# its point runs in a fresh process of its own.  Run after a line that sets
# name and times.
AUDIT_SCENARIO = """
import json
from hermes_kanban_native import _native

events = []
before = _native._fault_hits()[name]
_native._fault_arm(name, 1, times)
try:
    _native._set_audit_handler(lambda event, args: events.append(event))
    refused = None
except (MemoryError, RuntimeError) as exc:
    refused = type(exc).__name__
finally:
    _native._fault_disarm()
hits = _native._fault_hits()[name] - before
# Refused once, the hook can still be added, and then works.
_native._set_audit_handler(lambda event, args: events.append(event))
open("/dev/null").close()
_native._set_audit_handler(None)
open("/dev/null").close()
print(json.dumps({"hits": hits, "refused": refused, "events": events}))
"""


def _audit_scenario(name, times):
    proc = run_python(f"name, times = {name!r}, {times}\n" + AUDIT_SCENARIO)
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def audit_results():
    return {(name, times): _audit_scenario(name, times)
            for name in POINTS if name.startswith("module.set_audit_handler.") for times in (1, ALWAYS)}


@pytest.fixture(scope="module")
def shm_results(scratch):
    """Each shmlock point, first hit and every hit failing, in a process of
    its own."""
    return {(name, times): _shm_scenario(name, times, scratch)
            for name in POINTS if name.startswith("shmlock.") for times in (1, ALWAYS)}


@pytest.fixture(scope="module")
def reach(scratch, sql_module, init_results, shm_results, audit_results):
    reach = Reach()
    # First: the install points are also reached by whichever workload
    # makes this process's first guarded open (or adds the audit hook), but
    # only once per process.
    for (name, _), result in shm_results.items():
        reach.record("shm", "process", [name] if result["hits"] else [])
    for (name, _), result in audit_results.items():
        reach.record("audit", "process", [name] if result["hits"] else [])
    db = make_wal_db(os.path.join(scratch, "reach.db"), rows=5)
    _run_steps_recording(reach, "native", Workload(_native, db, scratch, api=hkn))
    _run_steps_recording(reach, "sql", Workload(sql_module, db, scratch))
    for name, result in init_results["points"].items():
        reach.record("init", "exec", [name] if result["reached_unarmed"] else [])
    for target, prerequisites in PREREQUISITES.items():
        if target in init_results["points"] and init_results["points"][target]["cycles"]:
            reach.record("init", "exec", [target])
        elif target in POINTS and reach.context.get(prerequisites[0]) in ("native", "sql"):
            # Reached in process once its prerequisite fails: by the steps
            # that reach the prerequisite.
            context = reach.context[prerequisites[0]]
            for step in reach.steps[prerequisites[0]]:
                reach.record(context, step, [target])
    return reach


# ------------------------------------------------------------ the checks


def _integrity(db):
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def _assert_clean(workload, name):
    """What a failure may show: expected exceptions (recorded by the
    workload), warnings, and unraisable reports of the same kinds."""
    allowed = {"MemoryError", "OSError", "ValueError"} | {
        cls.__name__ for cls in vars(sqlite3).values()
        if isinstance(cls, type) and issubclass(cls, sqlite3.Error)}
    for report in workload.unraisable:
        kind = report.split(":", 1)[0]
        assert kind in allowed, f"{name}: unraisable {report}"


def _armed_run(mod, api, name, times, db, scratch, only=None, first=None):
    mod._fault_reset_once()     # once-per-module warnings can be reached again
    workload = Workload(mod, db, scratch, api=api)
    before = _hits()[name]
    for prerequisite in PREREQUISITES.get(name, ()) if first is None else first:
        _native._fault_arm(prerequisite)
    _native._fault_arm(name, 1, times)
    try:
        workload.run(only=only)
    finally:
        _native._fault_disarm()
    hit = _hits()[name] - before
    workload.finish()           # every connection must still close
    _assert_clean(workload, name)
    return workload, hit


def _check_in_process(mod, api, name, steps, db, scratch, first=None):
    stats = mod.stats()
    fds = fd_table()
    for times in (1, ALWAYS):
        # The whole workload: the failure, and everything after it.
        workload, hit = _armed_run(mod, api, name, times, db, scratch, first=first)
        assert hit > 0, f"{name} was not reached by the workload"
        # The steps that reach the point, again and again: no growth.
        def again():
            _armed_run(mod, api, name, times, db, scratch, only=steps, first=first)

        for _ in range(2):
            again()
        # CPython's caches may still be settling in the first window; a
        # leak grows in every one.
        for _ in range(WINDOWS):
            blocks, objects, refs = growth(mod, again, REPEAT)
            if blocks <= REPEAT // 2 and objects <= 0 and not any(refs):
                break
        else:
            pytest.fail(f"{name} (times={times}): each {REPEAT} runs leave {blocks} blocks, "
                        f"{objects} tracked objects and references {refs} more")
    after = mod.stats()
    assert after["live"] == stats["live"], "a connection is still registered as live"
    assert (after["guards_taken"] - after["guards_released"]
            == stats["guards_taken"] - stats["guards_released"]), "a guard was left behind"
    assert fd_table() == fds, "descriptors were left open"
    if api is not None:
        # No guard lock may outlive the connections (on a parked descriptor).
        assert not api.sqlite_fds(db).guarded, "a guard lock was left behind"
    _integrity(db)


def _in_process(context, name, steps, scratch, sql_module, first=None):
    mod, api = (_native, hkn) if context == "native" else (sql_module, None)
    db = make_wal_db(os.path.join(scratch, f"{name}.db"), rows=5)
    gc.collect()
    gc.freeze()                 # collections then only walk what the test made
    try:
        _check_in_process(mod, api, name, steps, db, scratch, first)
    finally:
        gc.unfreeze()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(db + suffix)
            except FileNotFoundError:
                pass


@pytest.mark.parametrize("name", POINTS)
def test_fault_point(name, reach, scratch, sql_module, init_results, audit_results):
    if not LOADABLE and _needs_loadable(name):
        pytest.skip("reached only where sqlite3 can load extensions")
    context = reach.context.get(name)
    assert context is not None, f"{name} is reached by no workload"
    if context == "init":
        result = init_results["points"][name]
        assert result["problems"] == [], "\n".join(result["problems"])
        return
    if context == "shm":
        _check_shm(name, scratch)
        return
    if context == "audit":
        for times in (1, ALWAYS):
            result = audit_results[name, times]
            assert result["hits"] >= 1 and result["refused"] == "MemoryError", result
            assert result["events"] == ["open"], result     # then added, and only while set
        return
    _in_process(context, name, reach.steps[name], scratch, sql_module)


def _check_shm(name, scratch):
    # A failure there is never an error anyone sees: the wrappers are not
    # installed (shm_locks says why), or a -shm keeps POSIX locks, or a
    # mapping is not remapped in a forked child.  SQLite works as without
    # them either way.
    # The system-call table points are one call site for each of the five
    # wrapped calls: fail each in turn (a later one fails with earlier ones
    # switched already).
    countdowns = range(1, 6) if name.endswith("SystemCall") else (1,)
    for countdown, times in [(c, 1) for c in countdowns] + [(1, ALWAYS)]:
        result = _shm_scenario(name, times, scratch, countdown)
        assert result["hits"] >= countdown, f"{name} was not reached"
        assert result["checks"] == [[1, "ok"], [1, "ok"]], result
        assert not result["fds_left"], f"{name}: descriptors were left open"
        if name.startswith("shmlock.install."):
            assert result["shm_locks"].startswith("posix: "), result
            assert result["ofd_open"] == 0
        else:
            assert result["shm_locks"] == "ofd"
        if times == ALWAYS and name in ("shmlock.hook_open.strdup",
                                        "shmlock.hook_open.realloc"):
            assert result["ofd_open"] == 0      # every -shm stayed with POSIX locks
        if name == "shmlock.hook_mmap.realloc":
            assert result["ofd_open"] == 2      # translated, only not remapped at fork


@pytest.mark.parametrize("name, first", COMBINATIONS,
                         ids=[f"{name}+{'+'.join(first)}" for name, first in COMBINATIONS])
def test_fault_on_top_of_another(name, first, reach, scratch, sql_module):
    context = reach.context[first[0]]
    _in_process(context, name, reach.steps[first[0]], scratch, sql_module, first=first)


def test_every_fault_point_is_reached(reach):
    missed = sorted(name for name in set(POINTS) - reach.hit
                    if LOADABLE or not _needs_loadable(name))
    assert missed == [], f"fault points no workload reaches: {missed}"


# ----------------------------------------------------- against the sources

# The functions whose calls are points (csrc/fault_calls.tsv), and the calls
# through a pointer written as HKN_FAULT_POINT("name", ...).
def _wrapped_functions():
    rows = (line.split("#", 1)[0].split() for line in
            (CSRC / "fault_calls.tsv").read_text().splitlines())
    functions = {row[0]: row[0] for row in rows if row}
    # A function-like macro of ours whose body calls a listed function
    # (HKN_MAKE_ROOM: realloc) makes that call where it is used.
    # (HKN_ADD_FD uses HKN_MAKE_ROOM: the macros are resolved until none is added).
    macros = {}
    for header in CSRC.glob("*.h"):
        text = header.read_text().replace("\\\n", " ")
        macros.update(re.findall(r"^#define (HKN_\w+)\([^)]*\)(.*)$", text, re.M))
    added = True
    while added:
        added = False
        for name, body in macros.items():
            called = [functions[f] for f in re.findall(r"\b(\w+)\s*\(", body) if f in functions]
            if called and name not in functions:
                functions[name] = called[0]
                added = True
    return functions


_COMMENT_OR_STRING = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"', re.S)
_DEFINITION = re.compile(r"^(\w+)\(", re.M)       # a function's name at column 0


def _file_part(relative):
    """faults.c's rule: "linux/guard.c" -> "guard", "other/guard.c" ->
    "guard_other"."""
    parts = relative.split("/")
    return parts[-1][:-2] + ("_other" if parts[0] == "other" else "")


def _expected_points(relative, text, functions):
    """The point names faults.c gives the calls in `text` (one C file as the
    compiler sees it): file.function.call, ".2", ".3" for later calls of the
    same function in one function.  `(name)(...)` is a call the table does
    not wrap."""
    def blank(match):
        # keep HKN_FAULT_POINT's name, blank every other string and comment
        return re.sub(r"[^\n]", " ", match.group())
    names = re.findall(r'HKN_FAULT_POINT\(\s*"(\w+)"', text)
    code = _COMMENT_OR_STRING.sub(blank, text)
    file = _file_part(relative)
    stem = file[:-len("_other")] if file.endswith("_other") else file
    calls = [(m.start(), functions[m.group(1)])
             for m in re.finditer(r"(?<![\w.>])(\w+)\s*\(", code) if m.group(1) in functions]
    calls += [(m.start(), names.pop(0)) for m in re.finditer(r"\bHKN_FAULT_POINT\(", code)
              if not code[:m.start()].rstrip().endswith("#define")]
    definitions = [(m.start(), m.group(1)) for m in _DEFINITION.finditer(code)]
    seen, points = {}, []
    for position, call in sorted(calls):
        function = [name for start, name in definitions if start < position][-1]
        function = function[4:] if function.startswith("hkn_") else function
        if function.startswith(stem + "_"):
            function = function[len(stem) + 1:]
        name = f"{file}.{function}.{call}"
        seen[name] = seen.get(name, 0) + 1
        points.append(name if seen[name] == 1 else f"{name}.{seen[name]}")
    return points


def _compat_macros():
    """csrc/compat.h's HKN_PY_* names and the comparison each stands for."""
    path = CSRC / "compat.h"
    if not path.is_file():
        return {}
    return dict(re.findall(r"#define\s+(HKN_PY_\w+)\s+\((PY_VERSION_HEX[^)]*)\)",
                           path.read_text()))


def _condition(expression):
    """The preprocessor conditions csrc/ uses, for this interpreter and
    Linux; anything else counts as true."""
    expression = _compat_macros().get(expression.strip(), expression)
    match = re.fullmatch(r"PY_VERSION_HEX\s*(>=|<|>|<=)\s*(0x[0-9A-Fa-f]+)", expression.strip())
    if match:
        ops = {">=": int.__ge__, "<": int.__lt__, ">": int.__gt__, "<=": int.__le__}
        return ops[match.group(1)](sys.hexversion, int(match.group(2), 16))
    return True


def _compiled_text(path):
    """The lines of a C file the compiler sees here (others blanked)."""
    stack = []
    lines = []
    for line in path.read_text().splitlines():
        directive = line.strip()
        if directive.startswith("#if "):
            stack.append([_condition(directive[4:]), False])
            stack[-1][1] = stack[-1][0]
        elif directive.startswith(("#ifdef", "#ifndef")):
            stack.append([True, True])
        elif directive.startswith("#elif"):
            taken = stack[-1][1]
            stack[-1][0] = not taken and _condition(directive[6:])
            stack[-1][1] = taken or stack[-1][0]
        elif directive.startswith("#else"):
            stack[-1][0] = not stack[-1][1]
        elif directive.startswith("#endif"):
            stack.pop()
        active = all(level[0] for level in stack)
        lines.append(line if active else "")
    return "\n".join(lines)


@pytest.mark.skipif(not CSRC.is_dir(), reason="needs the source tree")
def test_fault_points_match_the_sources():
    # Every call of a wrapped function in the C files this build compiled,
    # under the name faults.c gives it, and nothing else.
    compiled = {"module.c", "connection.c", "checkpoint.c", "registry.c", "opener.c",
                "sqlite_api.c", "linux/guard.c", "linux/fdscan.c", "linux/shmlock.c"}
    functions = _wrapped_functions()
    expected = []
    for path in sorted(CSRC.rglob("*.c")):
        relative = path.relative_to(CSRC).as_posix()
        if relative in compiled:
            assert '#include "fault_calls.h"' in path.read_text(), relative
            expected += _expected_points(relative, _compiled_text(path), functions)
    assert sorted(expected) == sorted(POINTS)


def test_arming_an_unknown_point_names_it():
    with pytest.raises(ValueError, match="no.such.point"):
        _native._fault_arm("no.such.point")
    with pytest.raises(ValueError):
        _native._fault_arm(POINTS[0], countdown=0)


def test_a_failed_claim_on_a_guarded_database_leaves_no_lock(scratch):
    # The guard remembers four descriptors before its list grows: the fifth
    # open fails to be remembered and must take its lock back.  Left on the
    # descriptor SQLite parks, the lock would outlive the guard's release and
    # refuse SQLite's own last-close checkpoint-and-unlink.
    db = make_wal_db(os.path.join(scratch, "remember.db"), rows=1)
    conns = [hkn.connect(db) for _ in range(4)]
    _native._fault_arm("guard.remember.realloc")
    try:
        with pytest.raises(MemoryError):
            hkn.connect(db)
    finally:
        _native._fault_disarm()
    assert hkn.sqlite_fds(db).guarded
    for conn in conns:
        conn.close()
    assert not os.path.exists(db + "-wal") and not os.path.exists(db + "-shm")
    _integrity(db)
