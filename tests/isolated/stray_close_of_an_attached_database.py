"""A holder with the database argv[2] attached (as aux) to argv[1], opened
with the factory argv[3] ("plain": sqlite3.Connection, "walsafe":
WalSafeConnection), makes a stray open()/close() of each of the files
argv[4:] (aux, and from SQLite 3.51 its -shm: tests' conftest
unlinking_stray_closes) while other processes write and read it.

Speaks one JSON line per step on stdout and waits for a line on stdin
between steps: {"guarded": <aux guarded after the stray close>}; then, after
committing a row, {}; then, after DETACH, {"after_detach": <aux still
guarded>}.  Exits 0."""
import json
import os
import sqlite3
import sys

import hermes_kanban_native as hkn

main, aux, kind = sys.argv[1], sys.argv[2], sys.argv[3]
factory = {"plain": sqlite3.Connection, "walsafe": hkn.WalSafeConnection}[kind]
conn = sqlite3.connect(main, factory=factory, isolation_level=None)
conn.execute("ATTACH DATABASE ? AS aux", (aux,))
conn.execute("INSERT INTO aux.t VALUES (1)")
guarded = hkn.sqlite_fds(aux).guarded
for stray in sys.argv[4:]:                       # the stray closes
    os.close(os.open(stray, os.O_RDONLY))
print(json.dumps({"guarded": guarded}), flush=True)
sys.stdin.readline()                            # others write and read meanwhile
conn.execute("INSERT INTO aux.t VALUES (3)")
print("{}", flush=True)
sys.stdin.readline()                            # another commits meanwhile
conn.execute("DETACH DATABASE aux")
after_detach = hkn.sqlite_fds(aux).guarded
conn.close()
print(json.dumps({"after_detach": after_detach}), flush=True)
