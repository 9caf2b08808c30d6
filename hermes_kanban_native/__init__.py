"""hermes_kanban_native (skeleton)."""
from . import _native  # noqa: F401
from .fds import (  # noqa: F401
    FdInfo,
    Holders,
    LockInfo,
    MapInfo,
    SqliteFds,
    holders,
    mapped_files,
    open_fds,
    sqlite_fds,
)
