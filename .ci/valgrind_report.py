"""Fails (exit 1) if a valgrind memcheck log has an error or a definite leak
whose stack passes through hermes_kanban_native's shared object.

CPython and SQLite have their own known reports (an uninstrumented
interpreter, its arenas and caches at exit); only ours count, wherever in
the stack our frame is (a SQLite call we made on a freed handle is ours).
"""
import re
import sys

# A frame of ours: with debug info valgrind names the function and its
# source line ("hkn_native_explicit_checkpoint (checkpoint.c:617)"), and the
# shared object only without it ("(in .../_native.cpython-311-...so)").  Every
# C function of the package is named hkn_* (PyInit__native aside).
OURS = re.compile(r"_native\.cpython|\bhkn_\w+ \(|\bPyInit__native\b")
BAD = re.compile(r"Invalid (read|write|free)|uninitialised|Mismatched free|"
                 r"definitely lost|Source and destination overlap")


def records(lines):
    block = []
    for line in lines:
        text = re.sub(r"^==\d+== ?", "", line.rstrip("\n"))
        if not text.strip():
            if block:
                yield block
            block = []
        else:
            block.append(text)
    if block:
        yield block


def main(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        found = [block for block in records(handle) if BAD.search(block[0])
                 and any(OURS.search(line) for line in block)]
    for block in found:
        print("\n".join(block), end="\n\n")
    print(f"valgrind: {len(found)} report(s) from hermes_kanban_native")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
