"""How hermes configures and lays out its kanban database: the connection
classes to choose from, the PRAGMAs every connection runs, the schema and the
boards, and the archive database beside it."""
from __future__ import annotations

import os
import sqlite3
import time

from ..reference import TruncatingConnection

FACTORIES = ("sqlite3", "python-subclass", "walsafe")
JOURNAL_SIZE_LIMIT = 8388608
WAL_AUTOCHECKPOINT = 100
HERMES_PRAGMAS = (
    "synchronous = FULL",
    f"wal_autocheckpoint = {WAL_AUTOCHECKPOINT}",
    f"journal_size_limit = {JOURNAL_SIZE_LIMIT}",
    "foreign_keys = ON",
    "secure_delete = ON",
    "cell_size_check = ON",
)
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, board TEXT NOT NULL, "
    "status TEXT NOT NULL, claimed_by TEXT, updated REAL)",
    "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, "
    "task INTEGER REFERENCES tasks(id), kind TEXT, at REAL)",
    "CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, writer INTEGER, seq INTEGER, "
    "payload BLOB, at REAL)",
)
BOARDS = ("default", "ops")
TASKS_PER_BOARD = 50


def factory_class(name: str):
    if name == "sqlite3":
        return sqlite3.Connection
    if name == "python-subclass":
        return TruncatingConnection
    if name == "walsafe":
        from ... import WalSafeConnection
        return WalSafeConnection
    raise ValueError(f"unknown factory {name!r}")


def configure(conn):
    """The PRAGMAs hermes' kanban connect() runs on every connection."""
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 120000")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    for pragma in HERMES_PRAGMAS:
        conn.execute("PRAGMA " + pragma)
    return conn


def open_configured(database, factory):
    conn = sqlite3.connect(database, factory=factory, isolation_level=None, timeout=120)
    try:
        return configure(conn)
    except BaseException:
        conn.close()
        raise


def create_schema(database, factory):
    conn = open_configured(database, factory)
    try:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0:
            conn.executemany(
                "INSERT INTO tasks (board, status, updated) VALUES (?, 'ready', ?)",
                [(board, time.time()) for board in BOARDS for _ in range(TASKS_PER_BOARD)])
        conn.commit()
    finally:
        conn.close()


ARCHIVE_SCHEMA = ("CREATE TABLE IF NOT EXISTS archived (id TEXT PRIMARY KEY, at REAL)",)


def archive_path(database):
    """The second database every process also uses, the gateway through
    ATTACH: kanban.db -> kanban-archive.db."""
    root, ext = os.path.splitext(database)
    return root + "-archive" + (ext or ".db")


def create_archive(database, factory):
    conn = open_configured(archive_path(database), factory)
    try:
        for statement in ARCHIVE_SCHEMA:
            conn.execute(statement)
    finally:
        conn.close()
