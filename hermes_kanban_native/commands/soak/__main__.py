"""The child entry point: ``python -m hermes_kanban_native.commands.soak ROLE ...``
runs one of the other processes of the model (``children.py``)."""
from __future__ import annotations

import signal
import sys

from .children import _child_main

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_child_main(sys.argv[1:]))
