"""What a run means: the targets with PASS/MISS, the machine it ran on, and
the table printed for people."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sqlite3
import sys

from ... import sqlite_api
from .measure import BLOCKS


# ------------------------------------------------------------- targets

def _target(name, measured, passed, *, within_noise=False, note=None):
    return {"target": name, "measured": measured, "pass": bool(passed),
            "within_noise": within_noise, "note": note}


def _noise(row, threshold, key="ratio_blocks", invert=False):
    """Whether `threshold` lies inside the ratio's range over the blocks."""
    blocks = row.get(key)
    if not blocks:
        return False
    low, high = (1 / blocks[1], 1 / blocks[0]) if invert else blocks
    return low <= threshold <= high


# The contenders every per-policy target is checked for.
POLICIES = (("walsafe", "default policy"), ("walsafe_truncate", "truncate"))
# Ratio to plain sqlite3 each kind of tick may cost (time and instructions).
LIMITS = {"connect_close": 1.03, "read_tick": 1.02, "write_tick": 1.10}


def _ratio_target(name, row, limit):
    return _target(f"{name} <= {limit:.2f}x plain", f"{row['ratio']:.3f}x",
                   row["ratio"] <= limit, within_noise=_noise(row, limit))


def evaluate_targets(s: dict) -> list:
    targets = []
    for name, policy in POLICIES:
        for variant, rows in s["connect_overhead"]["variants"].items():
            targets.append(_ratio_target(f"connect+close ({variant}), {policy}", rows[name],
                                         LIMITS["connect_close"]))
        targets.append(_ratio_target(f"read tick, {policy}", s["read_tick"]["contenders"][name],
                                     LIMITS["read_tick"]))
        for variant, rows in s["gateway_threads"]["variants"].items():
            targets.append(_ratio_target(f"gateway read tick, {variant}, {policy}", rows[name],
                                         LIMITS["read_tick"]))
        targets.append(_ratio_target(f"write tick (autocommit), {policy}",
                                     s["write_tick"]["contenders"][name], LIMITS["write_tick"]))
        targets.append(_ratio_target(f"write tick (commit()), {policy}",
                                     s["write_commit"]["contenders"][name], LIMITS["write_tick"]))
        row = s["close_with_reader"]["contenders"][name]
        targets.append(_target(
            f"close() with a reader elsewhere, {policy} < 1 ms (median and p99)",
            f"median {row['median_us']:.0f} us, p99 {row['p99_us']:.0f} us",
            row["median_us"] < 1000 and row["p99_us"] < 1000))
        for operation, rows in s["instructions"]["operations"].items():
            row = rows[name]
            targets.append(_target(
                f"instructions per tick, {operation}, {policy} <= {LIMITS[operation]:.2f}x plain",
                f"{row['ratio']:.3f}x ({row['instructions']:,.0f})",
                row["ratio"] <= LIMITS[operation]))
    row = s["explicit_checkpoint"]["contenders"]["native"]
    targets.append(_target("checkpoint() >= 1.5x faster than the PRAGMA",
                           f"{1 / row['ratio']:.2f}x", 1 / row["ratio"] >= 1.5,
                           within_noise=_noise(row, 1.5, invert=True)))
    scan = s["fd_scan"]["contenders"]
    native_us = scan["native"]["median_us"]
    targets.append(_target("sqlite_fds() < 1 ms", f"{native_us / 1000:.3f} ms",
                           native_us < 1000,
                           within_noise=_noise(scan["native"], 1000, key="median_blocks_us")))
    for name, factor in (("python_fd_scan", 3), ("python_full", 3), ("lsof", 30)):
        if name in scan:
            ratio = scan[name]["ratio"]
            targets.append(_target(f"sqlite_fds() >= {factor}x faster than {scan[name]['label']}",
                                   f"{ratio:.1f}x", ratio >= factor,
                                   within_noise=_noise(scan[name], factor)))
    row = s["gc_connections"]["contenders"]["walsafe"]
    targets.append(_target(
        "zero fds left for WalSafeConnection after gc",
        f"{row['fds_left']} ({row['parked_db_fds_after_gc']} parked db, "
        f"{row['wal_fds_after_gc']} wal, {row['open_connections_after_gc']} open)",
        row["fds_left"] == 0,
        note="parked db fds are SQLite's: bounded by peak concurrency while another "
             "connection of the process holds the database" if row["fds_left"] else None))
    suites = s["plugin_overhead"]["suites"]
    if "kanban" in suites:
        row = suites["kanban"]
        targets.append(_target("pytest --sqlite-fd-check on a kanban suite <= 1.10x "
                               "wall clock", f"{row['ratio']:.3f}x ({_fmt_x(row['in_test_ratio'])} "
                               f"per test in pytest's durations, slope "
                               f"{row['per_test_ratio']:.3f}x)", row["ratio"] <= 1.10))
        row = suites["no_sqlite"]
        per_test = row["in_test_ratio"]
        overhead = ("no durations: pytest wrote none" if per_test is None
                    else f"{row['in_test_overhead_us']:.0f} us per test in pytest's durations")
        targets.append(_target("--sqlite-fd-check on tests that open no connection "
                               "< 1.02x per test",
                               f"{_fmt_x(per_test)} ({overhead}; slope "
                               f"{row['per_test_ratio']:.3f}x; whole run {row['ratio']:.3f}x, "
                               f"{row['startup_overhead_ms']:.0f} ms once)",
                               per_test is not None and per_test < 1.02))
        failures = sum(row["failures"] for row in suites.values())
        targets.append(_target("every generated test passes, with and without the option",
                               f"{failures} failed", failures == 0))
    return targets


# --------------------------------------------------------------- machine

def _cpu_model():
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _filesystem(path):
    """(type, mount point) of the mount holding `path`, from /proc/mounts."""
    real = os.path.realpath(path)
    best = (None, "")
    with contextlib.suppress(OSError):
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[1]):
                    best = (fields[2], mount)
    return best


def machine(tmp) -> dict:
    api = sqlite_api()
    fstype, mount = _filesystem(tmp)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "sqlite_version": sqlite3.sqlite_version,
        "sqlite_api_mode": api["mode"],
        "sqlite_library": api["library"],
        "temp_dir": tmp,
        "filesystem": fstype,
        "mount_point": mount,
    }


# ----------------------------------------------------------------- output

def _fmt_x(ratio):
    """A ratio as 1.234x; n/a where it could not be measured (None)."""
    return "n/a" if ratio is None else f"{ratio:.3f}x"


def _fmt_num(value):
    return "n/a" if value is None else f"{value:.0f}"


def _fmt_us(value):
    if value is None:
        return "-"
    if value >= 100_000:
        return f"{value / 1e6:.2f} s"
    if value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.1f} us"


def _fmt_ratio(row):
    text = f"{row['ratio']:.3f}x" if row["ratio"] < 10 else f"{row['ratio']:.1f}x"
    blocks = row.get("ratio_blocks")
    if blocks:
        text += f" ({blocks[0]:.2f}-{blocks[1]:.2f})"
    return text


def _table(rows, headers):
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    lines = ["  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths)))
             for r in [headers] + rows]
    return lines


def _timing_lines(rows, extra=()):
    headers = ["contender", "n", "median", "p99", "ratio (blocks)"] + [e[0] for e in extra]
    body = []
    for row in rows.values():
        body.append([row["label"], row["n"], _fmt_us(row["median_us"]), _fmt_us(row["p99_us"]),
                     _fmt_ratio(row)] + [fmt(row) for _, fmt in extra])
    lines = _table(body, headers)
    for row in rows.values():
        if row.get("note"):
            lines.append(f"  note: {row['label']}: {row['note']}")
    return lines


def render(report: dict) -> str:
    m = report["machine"]
    out = [f"hermes_kanban_native bench{' --quick' if report['quick'] else ''}  "
           f"{m['date']}",
           f"{m['cpu_count']} x {m['cpu_model']}; Python {m['python']}; SQLite "
           f"{m['sqlite_version']} ({m['sqlite_api_mode']} mode); temp dir on "
           f"{m['filesystem']} ({m['mount_point']})",
           "ratio = median / baseline median; (blocks) = the same ratio's range over "
           f"{BLOCKS} blocks of rounds", ""]
    for index, (key, s) in enumerate(report["scenarios"].items(), 1):
        out.append(f"{index}. {s['title']}  [{s['unit']}]")
        if key == "write_tick":
            out += _timing_lines(s["contenders"], (
                ("ticks/s", lambda r: f"{r['ticks_per_s']:.0f}"),
                ("vs Python", lambda r: f"{r['speedup_vs_python']:.2f}x"),
                ("WAL bytes", lambda r: str(r["wal_bytes_after"])),
            ))
            out.append(f"  WAL bytes: {s['wal_note']}")
        elif key == "close_with_reader":
            out += _timing_lines(s["contenders"], (
                ("busy", lambda r: str(r.get("checkpoints_busy", "-"))),))
        elif key in ("connect_overhead", "gateway_threads"):
            for variant, rows in s["variants"].items():
                out.append(f"  {variant}:")
                out += _timing_lines(rows)
        elif key == "instructions":
            if s.get("skipped"):
                out.append(f"  skipped: {s['skipped']}")
            for operation, rows in s["operations"].items():
                out.append(f"  {operation}:")
                out += _table([[r["label"], f"{r['instructions']:,.0f}", f"{r['ratio']:.3f}x"]
                               for r in rows.values()], ["contender", "instructions", "ratio"])
        elif key == "gc_connections":
            headers = ["contender", "db before", "wal before", "db after", "wal after",
                       "parked", "fds left"]
            body = [[r["label"], r["db_fds_before_gc"], r["wal_fds_before_gc"],
                     r["db_fds_after_gc"], r["wal_fds_after_gc"],
                     r["parked_db_fds_after_gc"], r["fds_left"]]
                    for r in s["contenders"].values()]
            out += _table(body, headers)
        elif key == "plugin_overhead":
            if s.get("skipped"):
                out.append(f"  skipped: {s['skipped']}")
            headers = ["suite", "tests", "runs", "without", "with option", "ratio",
                       "per test", "ratio", "slope per test", "ratio", "once",
                       "passed (without/with)"]
            body = [[kind, r["tests"], r["runs"], f"{r['without_s']:.2f} s",
                     f"{r['with_s']:.2f} s", f"{r['ratio']:.3f}x",
                     f"{_fmt_num(r['in_test_without_us'])} -> "
                     f"{_fmt_num(r['in_test_with_us'])} us",
                     _fmt_x(r["in_test_ratio"]),
                     f"{r['per_test_without_us']:.0f} -> {r['per_test_with_us']:.0f} us",
                     f"{r['per_test_ratio']:.3f}x", f"{r['startup_overhead_ms']:.0f} ms",
                     f"{r['passed_without']}/{r['passed_with']}"]
                    for kind, r in s["suites"].items()]
            if body:
                out += _table(body, headers)
                where = "tmpfs (/dev/shm)" if s.get("on_tmpfs") else "the bench's directory"
                out.append(f"  tests' tmp_path on {where}; per test = pytest's durations of "
                           f"each test's setup, call and teardown; slope = between suites "
                           f"of 1 and {s['files']} files (with what pytest does between "
                           f"tests, and the noise of whole runs); once = what a run pays "
                           f"once (importing the package)")
        else:
            out += _timing_lines(s["contenders"])
            if key == "fd_scan":
                out.append(f"  Python reference agrees with sqlite_fds(): "
                           f"{s['python_agrees_with_native']}")
                if s["lsof_note"]:
                    out.append(f"  {s['lsof_note']}")
        out.append("")
    out.append("targets")
    body = []
    for t in report["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        if t["within_noise"]:
            verdict += " (within noise)"
        body.append([t["target"], t["measured"], verdict])
    out += _table(body, ["target", "measured", "result"])
    for t in report["targets"]:
        if t["note"]:
            out.append(f"  note: {t['target']}: {t['note']}")
    out.append("")
    out.append(f"total {report['duration_s']:.1f} s")
    return "\n".join(out)


