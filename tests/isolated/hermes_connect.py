"""Not a script: hermes' kanban connect(), configuring each connection as
hermes does.  Imported by the scripts here that play a hermes process and by
the Holder child of test_hazards.py (both run from this directory, first on
their sys.path)."""
import hermes_kanban_native as hkn


def kanban(path, **kwargs):
    conn = hkn.connect(path, isolation_level=None, timeout=120, **kwargs)
    conn.execute("PRAGMA busy_timeout = 120000")
    for pragma in ("synchronous = FULL", "wal_autocheckpoint = 100",
                   "journal_size_limit = 8388608", "foreign_keys = ON",
                   "secure_delete = ON", "cell_size_check = ON"):
        conn.execute("PRAGMA " + pragma)
    return conn
