"""The ``bench`` command: WalSafeConnection against plain sqlite3 and the
Python checkpoint-before-close subclass, on the gateway's access pattern.

    python -m hermes_kanban_native bench [--quick] [--json] [--output FILE] [--dir DIR]

Every scenario runs on a WAL database in a fresh temporary directory while a
long-lived connection to it stays open in this process, as in hermes'
gateway; short connections are opened as hermes does (``isolation_level=None,
timeout=120``).  Contenders run interleaved, in a fresh random order each
round (seeded: runs repeat) so that none always follows the same other one,
after a warm-up, each sample is timed with ``time.perf_counter_ns`` with the
cyclic GC disabled, and each result is the median (and p99 where latency
matters) with its ratio to plain ``sqlite3.Connection``.  Ratios also carry
the range of the same ratio over five consecutive blocks of rounds: a target
whose threshold lies inside that range is within noise, and says so.

The Python subclass is re-implemented here exactly as hermes had it; it is a
reference for this benchmark only.  So is the plain-Python /proc scan of
scenario 6.  Standard library only; ``lsof`` is used when installed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from . import load
from .measure import Plan
from .report import evaluate_targets, machine, render
from .scenarios import SCENARIOS as _BASE

# In the order printed: the gateway's threads after the read tick, the
# commit() write tick after the autocommit one, instruction counts last.
SCENARIOS = (_BASE[:1] + (("gateway_threads", load.scenario_gateway_threads),)
             + _BASE[1:2] + (("write_commit", load.scenario_write_commit),)
             + _BASE[2:] + (("instructions", load.scenario_instructions),))

__all__ = ["Plan", "SCENARIOS", "evaluate_targets", "machine", "register", "render", "run"]

SCHEMA_VERSION = 1


# ---------------------------------------------------------------- command

def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` parser; the namespace's ``run`` is :func:`run`."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark WalSafeConnection against sqlite3 and the Python subclass",
        description="Benchmark WalSafeConnection against plain sqlite3.Connection and "
                    "the Python subclass that checkpoints (TRUNCATE) before close, on "
                    "the gateway's access pattern.  Prints medians, p99 and ratios, "
                    "and a PASS/MISS line per target.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations (under 30 s instead of under 3 min)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results instead of the table")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the JSON results to FILE")
    parser.add_argument("--instructions", action=argparse.BooleanOptionalAction, default=None,
                        help="count instructions per tick under callgrind (needs valgrind; "
                             "about 1.5 minutes; default: in full runs, not with --quick)")
    parser.add_argument("--dir", metavar="DIR",
                        help="make the temporary databases under DIR (its filesystem "
                             "matters for writes; default: the system temp dir)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    """Run the benchmark for parsed *args*; returns the exit status."""
    plan = Plan(args.quick, args.instructions)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="hkn-bench-", dir=args.dir) as tmp:
        info = machine(tmp)
        for index, (key, scenario) in enumerate(SCENARIOS, 1):
            log(f"[{index}/{len(SCENARIOS)}] {key} ...")
            t0 = time.perf_counter()
            results[key] = scenario(tmp, plan, log)
            results[key]["duration_s"] = round(time.perf_counter() - t0, 2)
    report = {
        "schema": SCHEMA_VERSION,
        "quick": plan.quick,
        "machine": info,
        "scenarios": results,
        "targets": evaluate_targets(results),
        "duration_s": round(time.perf_counter() - started, 2),
    }
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text if args.json else render(report))
    return 0
