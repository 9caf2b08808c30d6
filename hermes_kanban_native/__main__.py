"""Command line: ``python -m hermes_kanban_native COMMAND``.

Each command lives in its own module of ``commands/`` with
``register(subparsers)``, which adds its parser and sets ``run``; this file
only assembles them.
"""
from __future__ import annotations

import argparse
import sys

from .commands import bench, demo, fds, info, soak


def _commands():
    return [demo, fds, info, bench, soak]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hermes_kanban_native",
        description="A native, non-blocking WAL checkpoint on close for sqlite3, "
                    "and tools that show what a process holds on a database.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _commands():
        command.register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
