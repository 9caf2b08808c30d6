"""Build of the hermes_kanban_native._native extension.

Environment switches (all off by default; users get the compiler's normal flags):

  HKN_WERROR=1    -Wall -Wextra -Werror (CI)
  HKN_DEBUG=1     -O0 -g3, assertions on
  HKN_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (CI's sanitizer stage)
  HKN_FDSCAN_STUB=1  build csrc/other/fdscan.c (the scanners of platforms
                  without /proc) even on Linux, so CI can check what those
                  users see
  HKN_FAULTS=1    fault injection: every call of ours that can fail becomes a named
                  point that _native._fault_arm() makes fail (csrc/faults.h;
                  tests/test_faults.py).  GCC or Clang on Linux.  Without it the
                  points compile to the plain calls.

The extension never links SQLite: it calls the library that CPython's
_sqlite3 already loaded (see csrc/sqlite_api.c for why).
"""
import os
import sys

from setuptools import Extension, setup

_HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true", "on")


def _sources():
    # csrc/linux/ needs Linux (OFD locks, /proc); csrc/other/ has the same
    # functions for every other system, doing nothing or saying why not.
    platform = "linux" if sys.platform.startswith("linux") else "other"
    sources = ["csrc/module.c", "csrc/connection.c", "csrc/checkpoint.c", "csrc/registry.c",
               "csrc/opener.c", "csrc/sqlite_api.c", f"csrc/{platform}/guard.c",
               f"csrc/{platform}/shmlock.c"]
    if platform == "linux" and not _flag("HKN_FDSCAN_STUB"):
        sources.append("csrc/linux/fdscan.c")
    else:
        sources.append("csrc/other/fdscan.c")
    if _flag("HKN_FAULTS"):
        sources.append("csrc/faults.c")
    return sources


def _flags():
    # Hidden visibility keeps every C symbol but PyInit__native out of the
    # dynamic symbol table (PyMODINIT_FUNC marks that one as default).
    compile_args = ["-fvisibility=hidden", "-std=c11"]
    link_args = []
    macros = []
    if _flag("HKN_WERROR"):
        compile_args += ["-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers"]
    if _flag("HKN_DEBUG") or _flag("HKN_SANITIZE"):
        compile_args += ["-O0", "-g3", "-UNDEBUG"]
    if _flag("HKN_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                    "-fno-sanitize-recover=undefined"]
        compile_args += sanitize
        link_args += sanitize
    if _flag("HKN_FAULTS"):
        # The points are collected in an ELF section (csrc/faults.h).
        if not sys.platform.startswith("linux"):
            sys.exit("HKN_FAULTS=1 needs Linux (an ELF linker and GCC or Clang)")
        macros.append(("HKN_FAULTS", "1"))
        # ld lists the section's __start_/__stop_ symbols in the dynamic
        # table even when hidden: a version script keeps PyInit__native alone.
        link_args.append("-Wl,--version-script=" + os.path.join(_HERE, "csrc", "exports.map"))
    return compile_args, link_args, macros


_compile_args, _link_args, _macros = _flags()

setup(
    ext_modules=[
        Extension(
            "hermes_kanban_native._native",
            sources=_sources(),
            depends=["csrc/hkn.h", "csrc/compat.h", "csrc/sqlite_api.h", "csrc/sqlite_private.h",
                     "csrc/fdscan.h", "csrc/faults.h", "csrc/exports.map"],
            include_dirs=["csrc"],
            define_macros=_macros,
            extra_compile_args=_compile_args,
            extra_link_args=_link_args,
            libraries=["dl"] if sys.platform.startswith("linux") else [],
        )
    ],
)
