"""The other processes of the model: writers, readers, verifiers and the job
runner that forks its workers.

Each child is ``python -m hermes_kanban_native.commands.soak ROLE ...``
(``__main__.py``); it runs until the wall-clock deadline or until the stop
file appears, and writes any failure to its error file before exiting 1.
"""
from __future__ import annotations

import argparse
import os
import random
import time
import traceback
import warnings

from .checks import health_findings
from .model import FACTORIES, TASKS_PER_BOARD, archive_path, factory_class, open_configured


def _log_committed(log, row_id):
    """Only after commit() returned: this id is promised durable."""
    os.write(log, (row_id + "\n").encode())
    os.fsync(log)


def _stopping(deadline, stop_path):
    return time.time() >= deadline or os.path.exists(stop_path)


def _archive_write(database, factory, row_id, log):
    """One row committed straight into the archive database, then logged."""
    conn = open_configured(archive_path(database), factory)
    try:
        conn.execute("INSERT INTO archived (id, at) VALUES (?, ?)", (row_id, time.time()))
    finally:
        conn.close()
    _log_committed(log, row_id)


def _writer(database, factory, index, run_id, log_path, deadline, stop_path, rng):
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    archive_log = os.open(os.path.join(os.path.dirname(log_path), f"archive-writer-{index}.log"),
                          os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seq = 0
    try:
        while not _stopping(deadline, stop_path):
            conn = open_configured(database, factory)
            try:
                for _ in range(rng.randint(1, 20)):
                    seq += 1
                    row_id = f"{run_id}-w{index}-{seq}"
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute("INSERT INTO writes (id, writer, seq, payload, at) "
                                     "VALUES (?, ?, ?, randomblob(?), ?)",
                                     (row_id, index, seq, rng.randint(50, 600), time.time()))
                        conn.execute("UPDATE tasks SET updated = ? WHERE id = ?",
                                     (time.time(), rng.randint(1, TASKS_PER_BOARD * 2)))
                    except BaseException:
                        conn.rollback()
                        raise
                    conn.commit()
                    _log_committed(log, row_id)
                    if seq % 4 == 0:
                        _archive_write(database, factory, row_id, archive_log)
                    time.sleep(rng.uniform(0, 0.01))
                    if _stopping(deadline, stop_path):
                        break
            finally:
                conn.close()
    finally:
        os.close(log)
        os.close(archive_log)


def _check_own_health(database, log_dir, who):
    """A forked worker's check of itself, made while its own connection is
    open.  The soak's checks from outside (``check_other_processes``) leave
    forked workers alone: before their own open and after their close they
    hold only the descriptors and mapping of the forker's connection,
    inherited at fork, lockless in every build (POSIX locks are not
    inherited, and the guard deliberately gives a child none for its
    parent's connections), which the forker's own locks protect and which
    SQLite forbids the child to use.  What the guard promises is the child's
    own connection, and that is only open here.  A finding is written for
    the soak to report as a violation of its kind."""
    from ... import sqlite_fds
    findings = health_findings(sqlite_fds(database), who)
    if findings:
        with open(os.path.join(log_dir, f"finding-{os.getpid()}.txt"), "a") as out:
            out.write("".join(f"{kind}\t{text}\n" for kind, text in findings))


def _forker(database, factory, index, run_id, log_path, deadline, stop_path, rng):
    """A process that forks its workers, as a job runner does: it holds a
    connection of its own across every fork, and each forked worker opens
    its own, commits a row, logs it and exits without any cleanup.  A child
    must never hold the parent's locks, nor lose a commit."""
    held = open_configured(database, factory)
    held.execute("SELECT count(*) FROM tasks").fetchone()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seq = 0
    try:
        while not _stopping(deadline, stop_path):
            seq += 1
            row_id = f"{run_id}-f{index}-{seq}"
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    conn = open_configured(database, factory)
                    try:
                        conn.execute("INSERT INTO writes (id, writer, seq, payload, at) "
                                     "VALUES (?, ?, ?, randomblob(100), ?)",
                                     (row_id, -1 - index, seq, time.time()))
                        _check_own_health(database, os.path.dirname(log_path),
                                          f"worker forked by forker {index}")
                    finally:
                        conn.close()
                    _log_committed(log, row_id)
                except BaseException as exc:  # noqa: BLE001 - reported to the soak
                    code = 1
                    report = os.path.join(os.path.dirname(log_path), f"error-{os.getpid()}.txt")
                    with open(report, "a") as out:
                        out.write(f"worker forked by forker {index} (pid {os.getpid()}): "
                                  f"{exc!r}\n" + traceback.format_exc())
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                raise AssertionError(f"forked worker {pid} ended with status {status}")
            held.execute("SELECT count(*) FROM writes").fetchone()
            time.sleep(rng.uniform(0.02, 0.1))
    finally:
        os.close(log)
        held.close()


def _reader(database, factory, deadline, stop_path, rng):
    while not _stopping(deadline, stop_path):
        conn = open_configured(database, factory)
        try:
            for _ in range(rng.randint(1, 5)):
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM writes").fetchone()
                time.sleep(rng.uniform(0.05, 0.3))          # a read held open
                conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
                conn.commit()
                time.sleep(rng.uniform(0.02, 0.2))
                if _stopping(deadline, stop_path):
                    break
        finally:
            conn.close()


def _verifier(database, factory, log_dir, rng):
    """Open, read, close: and check one logged id per writer log."""
    conn = open_configured(database, factory)
    try:
        conn.execute("SELECT count(*) FROM writes").fetchone()
        for name in sorted(os.listdir(log_dir)):
            if not name.startswith("writer-"):
                continue
            with open(os.path.join(log_dir, name), "rb") as log:
                lines = log.read().split(b"\n")[:-1]
            if lines:
                row_id = rng.choice(lines).decode()
                found = conn.execute("SELECT 1 FROM writes WHERE id = ?", (row_id,)).fetchone()
                if found is None:
                    raise AssertionError(f"verifier: committed id {row_id} is missing")
    finally:
        conn.close()
    archive = open_configured(archive_path(database), factory)
    try:
        archive.execute("SELECT count(*) FROM archived").fetchone()
    finally:
        archive.close()


def _child_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="hermes_kanban_native.commands.soak (child)")
    parser.add_argument("role", choices=("writer", "reader", "verifier", "forker"))
    parser.add_argument("--database", required=True)
    parser.add_argument("--factory", choices=FACTORIES, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--run-id", default="")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--deadline", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    factory = factory_class(args.factory)
    rng = random.Random(args.seed)
    stop_path = os.path.join(args.log_dir, "stop")
    warnings.simplefilter("ignore", ResourceWarning)
    try:
        if args.role == "writer":
            _writer(args.database, factory, args.index, args.run_id,
                    os.path.join(args.log_dir, f"writer-{args.index}.log"),
                    args.deadline, stop_path, rng)
        elif args.role == "forker":
            _forker(args.database, factory, args.index, args.run_id,
                    os.path.join(args.log_dir, f"writer-fork-{args.index}.log"),
                    args.deadline, stop_path, rng)
        elif args.role == "reader":
            _reader(args.database, factory, args.deadline, stop_path, rng)
        else:
            _verifier(args.database, factory, args.log_dir, rng)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        text = f"{args.role} {args.index} (pid {os.getpid()}): {exc!r}\n"
        with open(os.path.join(args.log_dir, f"error-{os.getpid()}.txt"), "a") as out:
            out.write(text + traceback.format_exc())
        return 1
    return 0
