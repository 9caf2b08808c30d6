"""Executes two fresh instances of the extension module, one per route
("symbols" and "extension-api"), with modes.exec_instance from the tests
directory argv[1], and lists the functions each bound: the slot
numbers of sqlite3_api_routines are right on this SQLite if every function
bound through the table is the one dlsym finds.

Prints one JSON list: the two instances' routes, then each one's
_bound_functions() (name -> address).  Exits 0."""
import json
import sys

sys.path.insert(0, sys.argv[1])                     # the tests directory
from modes import exec_instance                     # noqa: E402
import hermes_kanban_native._native as native       # noqa: E402

symbols = exec_instance(native.__file__)
extension = exec_instance(native.__file__, "extension-api")
print(json.dumps([symbols.sqlite_api()["route"], extension.sqlite_api()["route"],
                  symbols._bound_functions(), extension._bound_functions()]))
