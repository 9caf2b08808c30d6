"""The bench command: it runs, and its JSON has every scenario, contender
and the machine.  Timings are not asserted (the benchmark prints ratios;
this checks behaviour)."""
from __future__ import annotations

import json
import numbers
import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCENARIOS = {
    "read_tick": {"plain", "python_truncate", "walsafe", "walsafe_truncate"},
    "write_tick": {"plain", "python_truncate", "walsafe", "walsafe_truncate"},
    "close_with_reader": {"plain", "python_truncate", "walsafe", "walsafe_truncate"},
    "explicit_checkpoint": {"pragma", "native"},
    "fd_scan": {"native", "python_fd_scan", "python_full"},     # lsof when installed
}
CONNECT_VARIANTS = {":memory:", "file"}
THREAD_VARIANTS = {"1 thread", "16 threads", "64 threads"}
GC_CONTENDERS = {"plain", "python_truncate", "walsafe", "walsafe_truncate", "closing_walsafe"}
MACHINE_KEYS = {"date", "cpu_count", "cpu_model", "python", "sqlite_version",
                "sqlite_api_mode", "filesystem"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bench")      # not the repo: the installed package
    output = cwd / "bench.json"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "hermes_kanban_native", "bench",
         "--quick", "--json", "--output", str(output), "--dir", str(cwd)],
        cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    result = json.loads(done.stdout)
    result["_output_file"] = output
    return result


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def test_every_timed_scenario_has_every_contender_with_numeric_medians(report):
    scenarios = report["scenarios"]
    for key, contenders in SCENARIOS.items():
        rows = scenarios[key]["contenders"]
        assert contenders <= set(rows), key
        for name, row in rows.items():
            assert _is_number(row["median_us"]) and row["median_us"] > 0, (key, name)
            assert _is_number(row["ratio"]), (key, name)
            assert row["n"] >= 1, (key, name)
    variants = scenarios["connect_overhead"]["variants"]
    assert set(variants) == CONNECT_VARIANTS
    for rows in variants.values():
        assert set(SCENARIOS["read_tick"]) == set(rows)
        assert all(_is_number(row["median_us"]) for row in rows.values())


def test_gateway_threads_and_commit_ticks_are_measured(report):
    variants = report["scenarios"]["gateway_threads"]["variants"]
    assert set(variants) == THREAD_VARIANTS
    for rows in variants.values():
        assert set(rows) == {"plain", "python_empty", "python_init", "walsafe",
                             "walsafe_truncate"}
        assert all(_is_number(row["median_us"]) and row["median_us"] > 0 for row in rows.values())
    rows = report["scenarios"]["write_commit"]["contenders"]
    assert set(rows) == SCENARIOS["write_tick"]


def test_every_tick_target_is_checked_for_both_policies(report):
    targets = [t["target"] for t in report["targets"]]
    for policy in ("default policy", "truncate"):
        for kind in ("connect+close (file)", "connect+close (:memory:)", "read tick",
                     "gateway read tick, 64 threads", "write tick (autocommit)",
                     "write tick (commit())"):
            assert any(t.startswith(f"{kind}, {policy} <=") for t in targets), (kind, policy)


def test_quick_runs_leave_out_instruction_counts(report):
    scenario = report["scenarios"]["instructions"]
    assert scenario["skipped"] and scenario["operations"] == {}


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="valgrind cannot run a process with AddressSanitizer preloaded")
def test_instruction_counts_per_tick(tmp_path):
    from hermes_kanban_native.commands.bench import load
    from hermes_kanban_native.commands.bench.measure import Plan

    plan = Plan(quick=True, instructions=True)
    plan.instruction_ticks = 20
    # One operation, two contenders: four runs under callgrind, not eighteen.
    result = load.scenario_instructions(str(tmp_path), plan, lambda message: None,
                                        operations=("read_tick",),
                                        contenders=("plain", "walsafe"))
    rows = result["operations"]["read_tick"]
    assert set(rows) == {"plain", "walsafe"}
    # Counts, not a comparison: a read tick is a few hundred thousand
    # instructions, and over 20 ticks warm-up and collection move either
    # side by several percent (the benchmark's full runs use 300).
    assert all(_is_number(row["instructions"]) and row["instructions"] > 10_000
               for row in rows.values())
    assert rows["plain"]["ratio"] == 1.0
    assert rows["walsafe"]["ratio"] == rows["walsafe"]["instructions"] / rows["plain"]["instructions"]


def test_interleaving_lets_no_contender_always_follow_another():
    # A sample runs faster after one that ran the same code (warm caches):
    # a fixed order would favour whichever contender follows its look-alike.
    from hermes_kanban_native.commands.bench.measure import _interleave

    names = ["plain", "python", "ours", "ours_truncate"]
    runs = []
    samplers = {name: (lambda name=name: runs.append(name) or 1.0) for name in names}
    raw = _interleave(samplers, rounds=400, warmup=10)
    assert {name: len(values) for name, values in raw.items()} == dict.fromkeys(names, 400)
    for r in range(410):
        assert sorted(runs[4 * r:4 * r + 4]) == sorted(names)     # each once a round
    follows = {(a, b): 0 for a in names for b in names}
    for before, after in zip(runs, runs[1:]):
        follows[before, after] += 1
    for name in names:
        before = {other: follows[other, name] for other in names if other != name}
        # 410 rounds: about 410 * 3/4 / 3 = 102 each; a fixed rotation gives 0 for some.
        assert min(before.values()) >= 70, (name, before)
    # Seeded: two runs measure in the same order.
    again = []
    _interleave({name: (lambda name=name: again.append(name) or 1.0) for name in names},
                rounds=400, warmup=10)
    assert again == runs


def test_latency_scenarios_report_p99(report):
    for key in ("read_tick", "write_tick", "close_with_reader"):
        for row in report["scenarios"][key]["contenders"].values():
            assert _is_number(row["p99_us"]) and row["p99_us"] >= row["median_us"]


def test_write_tick_reports_the_wal_it_leaves(report):
    rows = report["scenarios"]["write_tick"]["contenders"]
    for row in rows.values():
        assert isinstance(row["wal_bytes_after"], int)
    # TRUNCATE leaves an empty WAL; plain sqlite3 leaves the frames.
    assert rows["walsafe_truncate"]["wal_bytes_after"] == 0
    assert rows["plain"]["wal_bytes_after"] > 0


def test_python_subclass_under_a_reader_is_capped_and_says_so(report):
    row = report["scenarios"]["close_with_reader"]["contenders"]["python_truncate"]
    assert 1 <= row["n"] <= 3
    assert "timeout=" in row["note"]


def test_python_fd_scan_agrees_with_sqlite_fds(report):
    scan = report["scenarios"]["fd_scan"]
    assert scan["python_agrees_with_native"] is True
    assert scan["fds_open"] >= 1000


def test_gc_scenario_walsafe_leaves_no_connection_or_wal_fd(report):
    rows = report["scenarios"]["gc_connections"]["contenders"]
    assert set(rows) == GC_CONTENDERS
    walsafe = rows["walsafe"]
    # Before the collection the unclosed connections hold their files on
    # 3.11+ (a reference cycle keeps them until the cyclic GC), but never
    # more than max_live_per_database: reaching it runs the collector.  On
    # 3.10 refcounting frees each one as soon as the next replaces it ...
    import hermes_kanban_native as hkn
    bound = hkn.WalSafeConnection.max_live_per_database
    if sys.version_info >= (3, 11):
        assert 0 < walsafe["wal_fds_before_gc"] <= bound
        assert rows["plain"]["wal_fds_before_gc"] == 100
    else:
        assert walsafe["wal_fds_before_gc"] <= 1
    assert walsafe["fds_left"] <= bound + 1        # + the long-lived connection
    # ... after it, WalSafeConnection's finalizer has closed every one; what
    # remains on the database are the fds SQLite parks (bounded by the peak
    # of 100 concurrently open connections), reported separately.
    assert walsafe["open_connections_after_gc"] == 0
    assert walsafe["wal_fds_after_gc"] == 0
    assert walsafe["fds_left"] == walsafe["parked_db_fds_after_gc"]
    # Closing at the end of the with block keeps the peak at one.
    assert rows["closing_walsafe"]["wal_fds_before_gc"] == 0
    assert rows["closing_walsafe"]["fds_left"] <= 1


def test_plugin_scenario_runs_both_suites_and_every_test_passes(report):
    scenario = report["scenarios"]["plugin_overhead"]
    suites = scenario["suites"]
    assert set(suites) == {"kanban", "no_sqlite"}
    for row in suites.values():
        assert row["tests"] >= 50 and row["runs"] >= 1
        assert row["passed_without"] == row["passed_with"] == row["tests"]
        assert row["failures"] == 0
        assert all(_is_number(row[key]) and row[key] > 0
                   for key in ("without_s", "with_s", "ratio", "in_test_without_us",
                               "in_test_with_us", "in_test_ratio"))
    names = [t["target"] for t in report["targets"] if "generated test" in t["target"]
             or "sqlite-fd-check" in t["target"]]
    assert len(names) == 3


def test_plugin_scenario_without_durations_reports_null_and_fails(tmp_path, monkeypatch):
    # A pytest that dies before writing its durations leaves the per-test
    # numbers unknown: null in the JSON (never NaN, which is not JSON), the
    # runs counted as failures, and the per-test target a MISS.
    from types import SimpleNamespace

    from hermes_kanban_native.commands.bench import plugin, report
    monkeypatch.setattr(plugin, "CONFTEST", "raise RuntimeError('a broken conftest')\n")
    plan = SimpleNamespace(plugin_files=2, plugin_per_file=2, plugin_rounds=1)
    result = plugin.scenario(str(tmp_path), plan, lambda line: None)
    json.dumps(result, allow_nan=False)
    for row in result["suites"].values():
        assert row["failures"] > 0
        assert row["in_test_ratio"] is None and row["in_test_overhead_us"] is None
    assert report._fmt_x(result["suites"]["no_sqlite"]["in_test_ratio"]) == "n/a"


def test_machine_block(report):
    machine = report["machine"]
    assert MACHINE_KEYS <= set(machine)
    assert machine["cpu_count"] >= 1
    assert machine["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert machine["sqlite_api_mode"] in ("native", "sql")


def test_targets_have_a_verdict(report):
    targets = report["targets"]
    assert len(targets) >= 10
    assert all(isinstance(t["pass"], bool) and t["measured"] for t in targets)


def test_output_file_holds_the_same_json(report):
    assert json.loads(report["_output_file"].read_text()) == {
        key: value for key, value in report.items() if key != "_output_file"}


def test_table_names_every_scenario_and_target(report):
    from hermes_kanban_native.commands import bench

    table = bench.render({key: value for key, value in report.items() if key != "_output_file"})
    for scenario in report["scenarios"].values():
        assert scenario["title"] in table
    for target in report["targets"]:
        assert target["target"] in table
    verdicts = re.findall(r"\b(?:PASS|MISS)\b", table.split("\ntargets\n", 1)[1])
    assert len(verdicts) == len(report["targets"])
