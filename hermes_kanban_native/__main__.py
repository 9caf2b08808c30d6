"""Command line front end (minimal: wires only ``fds``)."""
import argparse
import sys

from . import fds_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hermes-kanban-native")
    commands = parser.add_subparsers(dest="command", required=True)
    fds_command.register(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
