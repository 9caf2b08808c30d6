/* compat.h - what differs between the CPython versions we build for
 * (3.10 and newer), each difference named for what it is, so that code
 * says `#if HKN_PY_HAS_SQLITE_ERROR_CODES` instead of a bare version
 * number.  docs/sqlite-internals.md ("CPython's sqlite3.Connection from C")
 * has the sqlite3 module's side of it.
 *
 * tests/test_faults.py reads the HKN_PY_* definitions below to know which
 * fault points this interpreter compiles: keep each one a single
 * `(PY_VERSION_HEX >= 0x...)` comparison.
 */
#ifndef HKN_COMPAT_H
#define HKN_COMPAT_H

#include <Python.h>

/* 3.11: sqlite3 exceptions carry sqlite_errorcode / sqlite_errorname;
 * Connection.setlimit() exists; close() only drops the statement cache, so
 * statements a cursor is stepping keep the handle (a "zombie") alive. */
#define HKN_PY_HAS_SQLITE_ERROR_CODES  (PY_VERSION_HEX >= 0x030B0000)
#define HKN_PY_HAS_SETLIMIT            (PY_VERSION_HEX >= 0x030B0000)
#define HKN_PY_CLOSE_LEAVES_STATEMENTS (PY_VERSION_HEX >= 0x030B0000)
/* 3.11: PyFrame_GetLasti(); 3.10 reads f_lasti (in code units). */
#define HKN_PY_HAS_FRAME_GETLASTI      (PY_VERSION_HEX >= 0x030B0000)
/* 3.12: load_extension(path, entrypoint=...); Py_mod_multiple_interpreters;
 * PyErr_GetRaisedException(). */
#define HKN_PY_HAS_LOAD_ENTRYPOINT     (PY_VERSION_HEX >= 0x030C0000)
#define HKN_PY_HAS_INTERPRETERS_SLOT   (PY_VERSION_HEX >= 0x030C0000)
#define HKN_PY_HAS_RAISED_EXCEPTION    (PY_VERSION_HEX >= 0x030C0000)
/* 3.13: Py_IsFinalizing() is public (it was _Py_IsFinalizing()). */
#define HKN_PY_HAS_IS_FINALIZING       (PY_VERSION_HEX >= 0x030D0000)

static inline int
hkn_is_finalizing(void)
{
#if HKN_PY_HAS_IS_FINALIZING
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

#endif
