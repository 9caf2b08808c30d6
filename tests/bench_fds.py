"""Benchmark: sqlite_fds() on a process holding ~1,000 open descriptors.

Compares the native scan with the same scan in plain Python (os.listdir +
os.readlink + os.stat per fd, open().read() of maps and locks, the same
classification) and with ``lsof -p``.  Not collected by pytest; run:

    python tests/bench_fds.py [NFDS]

The plain-Python scanner here is a deliberate reference for this benchmark
only; the package has one implementation (csrc/fdscan_linux.c).
"""
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from hermes_kanban_native import fds, sqlite_fds


def py_scan_fds(pid):
    base = f"/proc/{pid}/fd"
    rows = []
    for name in os.listdir(base):
        path = f"{base}/{name}"
        try:
            link = os.readlink(path)
            st = os.stat(path)
        except FileNotFoundError:
            continue
        rows.append((int(name), link, st.st_dev, st.st_ino, st.st_nlink, st.st_mode,
                     st.st_size))
    return rows


def py_scan_maps(pid):
    rows = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.rstrip("\n").split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            rows.append((start, end, parts[1], int(parts[2], 16), os.makedev(major, minor),
                         int(parts[4]), parts[5] if len(parts) > 5 else ""))
    return rows


def py_scan_locks():
    rows = []
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()[1:]
            blocked = parts[0] == "->"
            if blocked:
                parts = parts[1:]
            kind, mode, access, pid, ident, start, end = parts[:7]
            major, minor, ino = ident.split(":")
            rows.append((kind, mode, access, int(pid), os.makedev(int(major, 16), int(minor, 16)),
                         int(ino), int(start), None if end == "EOF" else int(end), blocked))
    return rows


def py_sqlite_fds(database, pid):
    target = fds._Target(database)
    return fds._classify(target, pid, py_scan_fds(pid), py_scan_maps(pid), py_scan_locks())


def best(fn, repeat=200):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0], times[len(times) // 2]


def main():
    want = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tmp = tempfile.mkdtemp()
    db = os.path.join(tmp, "bench.db")
    conns = [sqlite3.connect(db) for _ in range(5)]
    conns[0].execute("PRAGMA journal_mode=WAL")
    for c in conns:
        c.execute("SELECT count(*) FROM sqlite_master").fetchall()
    held = []
    while len(os.listdir("/proc/self/fd")) < want:
        held.append(os.open(os.path.join(tmp, f"f{len(held)}"), os.O_RDWR | os.O_CREAT))
    pid = os.getpid()
    nfds = len(os.listdir("/proc/self/fd"))
    native = sqlite_fds(db)
    reference = py_sqlite_fds(db, pid)
    assert (native.db, native.wal, native.shm, native.locks) == (
        reference.db, reference.wal, reference.shm, reference.locks)

    n_best, n_med = best(lambda: sqlite_fds(db))
    p_best, p_med = best(lambda: py_sqlite_fds(db, pid))
    s_best, s_med = best(lambda: fds._native._scan_fds(pid))
    r_best, r_med = best(lambda: py_scan_fds(pid))
    print(f"process holds {nfds} fds; sqlite_fds finds db={len(native.db)} "
          f"wal={len(native.wal)} shm={len(native.shm)}")
    print(f"sqlite_fds (native)      best {n_best * 1e3:7.3f} ms  median {n_med * 1e3:7.3f} ms")
    print(f"sqlite_fds (plain Python) best {p_best * 1e3:7.3f} ms  median {p_med * 1e3:7.3f} ms"
          f"  -> native {p_med / n_med:.1f}x faster")
    print(f"raw fd scan: native {s_med * 1e3:.3f} ms, Python {r_med * 1e3:.3f} ms "
          f"({r_med / s_med:.1f}x)")
    lsof = shutil.which("lsof")
    if lsof:
        l_best, l_med = best(lambda: subprocess.run([lsof, "-n", "-P", "-p", str(pid)],
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL), repeat=10)
        print(f"lsof -n -P -p             best {l_best * 1e3:7.3f} ms  median {l_med * 1e3:7.3f} ms"
              f"  -> native {l_med / n_med:.0f}x faster")
    # The same database held by another process with as many descriptors:
    # stat() must go through /proc/<pid>/fd/N there.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sqlite3, sys\n"
         f"c = sqlite3.connect({db!r}); c.execute('SELECT 1 FROM sqlite_master').fetchall()\n"
         f"held = [os.open({tmp!r} + f'/g{{i}}', os.O_RDWR | os.O_CREAT) for i in range({nfds - 8})]\n"
         "print(len(os.listdir('/proc/self/fd')), flush=True)\n"
         "sys.stdin.read()\n"
         "c.close()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child_fds = int(child.stdout.readline())
    o_best, o_med = best(lambda: sqlite_fds(db, pid=child.pid))
    q_best, q_med = best(lambda: py_sqlite_fds(db, child.pid))
    print(f"other process ({child_fds} fds): native median {o_med * 1e3:.3f} ms, "
          f"plain Python {q_med * 1e3:.3f} ms ({q_med / o_med:.1f}x)", end="")
    if lsof:
        k_best, k_med = best(lambda: subprocess.run([lsof, "-n", "-P", "-p", str(child.pid)],
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL), repeat=10)
        print(f", lsof {k_med * 1e3:.1f} ms ({k_med / o_med:.0f}x)")
    else:
        print()
    child.communicate("")
    for c in conns:
        c.close()
    for fd in held:
        os.close(fd)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
