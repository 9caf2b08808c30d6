"""hermes_kanban_native (skeleton)."""
from . import _native  # noqa: F401
