/* faults.h - the machinery of the fault points (HKN_FAULTS builds only).
 *
 * A fault point is one call site, in csrc/, of a function that can fail: a
 * Python C-API call, an allocation, a system call or a SQLite call.  The
 * call sites are written as plain C.  In a build with HKN_FAULTS defined
 * (setup.py: HKN_FAULTS=1; GCC or Clang on ELF, i.e. Linux), setup.py writes
 * hkn_fault_calls.h from the table csrc/fault_calls.tsv: for each function
 * listed there, a macro of the same name that wraps its call in one of the
 * HKN_FAULT_* macros below.  fault_calls.h, the last include of each C file
 * with points, includes it.  In a normal build nothing is defined and the
 * code is the same as if this file did not exist.
 *
 * Each expansion of a wrapped call is a static record that counts its hits
 * and, when armed through _native._fault_arm(), makes the call fail the way
 * it really fails, without making it (the kinds of the table):
 *   py       a Python C-API call: MemoryError set, result `failed` (NULL,
 *            -1 or 0, whatever that call returns on error);
 *   alloc    malloc/calloc/realloc/strdup/PyMem_Malloc: NULL, errno ENOMEM;
 *   sys      a system call: errno `err`, result `failed`;
 *   sqlite   a SQLite call: result `failed` (an error code, or what that
 *            function returns on error);
 *   release  a release whose result we ignore (close, reset, finalize): the
 *            call is made, then reports `failed`, because such calls free
 *            their resource even when they report an error.
 * A point is named file.function.call, e.g.
 * "checkpoint.native_close_checkpoint.sqlite3_wal_checkpoint_v2": the C file
 * without ".c" (files under csrc/other/ end in "_other"), the enclosing
 * function without its "hkn_" prefix or the file's name after it
 * (hkn_guard_refresh in guard.c: "refresh"), the called function; the second and
 * later calls of the same function in one function add ".2", ".3" in source
 * order.  The records sit in the ELF section "hkn_fault_points", so the list
 * of points is exactly what the compiler saw, per Python version and platform.
 *
 * A call through a pointer has no name to override: the three such points
 * (the base type's tp_init, the VFS's xGetSystemCall and xSetSystemCall) are
 * written as HKN_FAULT_POINT at their call site.
 *
 * Calls of a listed function that must not be points are written with the
 * function name in parentheses, `(close)(fd)`, which no function-like macro
 * expands; each such site says why.  Calls that cannot fail are not in the
 * table: PyModule_GetState and PyType_GetModuleState on our own module and
 * type; frame and code accessors; PyUnicode_Compare/Tailmatch/GetLength/
 * FindChar/ReadChar on str objects (in range); PyBool_FromLong; the PyErr_*
 * state functions; the base type's traverse/clear/dealloc/finalize slots;
 * sqlite3_libversion, errmsg, errstr, extended_errcode, get_autocommit,
 * next_stmt, stmt_busy, column_int, limit, db_mutex, mutex_enter/leave,
 * busy_handler and busy_timeout (both fail only on misuse of a bad handle);
 * sqlite3_close_v2 (on a valid handle it defers instead of failing); getpid,
 * dirfd of an open DIR, dlclose of our own handle, free, getenv;
 * pthread_mutex_lock/unlock of a default mutex.  faults.c, the machinery
 * itself, has no points.
 */
#ifndef HKN_FAULTS_H
#define HKN_FAULTS_H

#ifdef HKN_FAULTS

#include <Python.h>
#include <errno.h>
#include <stdatomic.h>

/* What a firing point does besides making its call fail. */
#define HKN_FAULT_RAISE  (-1)       /* sets MemoryError (the GIL is held) */
#define HKN_FAULT_QUIET  0          /* nothing: the result says it all */

typedef struct hkn_fault_point {
    const char *file;               /* __FILE__, __func__ and the called */
    const char *function;           /* function: the name is made of these */
    const char *call;
    int line;
    char name[96];                  /* filled in once, by faults.c */
    atomic_ulong hits;
    long countdown;                 /* these two are guarded by faults.c's mutex */
    long remaining;
} hkn_fault_point;

/* Counts a hit of `point`; 1 when this hit must fail, after setting errno to
 * `how` (> 0) or raising MemoryError (HKN_FAULT_RAISE).  Safe without the
 * GIL except with HKN_FAULT_RAISE. */
int hkn_fault_fire(hkn_fault_point *point, int how);

/* Adds _fault_points, _fault_arm, _fault_disarm and _fault_hits to the
 * module. */
int hkn_faults_exec(PyObject *module);

/* One static record per call site, with a pointer to it in the section
 * (pointers, not the records, so that the section is a plain array whatever
 * the records' alignment).  A statement expression is the only way to give
 * an expression its own static: a GNU extension, only in this build. */
#define HKN_FAULT_(call_name, how)                                              \
    __extension__({                                                             \
        static hkn_fault_point hkn_fault_site_ = {                              \
            .file = __FILE__, .function = __func__, .call = call_name,          \
            .line = __LINE__};                                                  \
        static hkn_fault_point *hkn_fault_ref_                                  \
            __attribute__((used, section("hkn_fault_points"))) = &hkn_fault_site_; \
        (void)hkn_fault_ref_;                                                   \
        hkn_fault_fire(&hkn_fault_site_, (how));                                \
    })

/* The wrappers hkn_fault_calls.h puts around each kind of call. */
#define HKN_FAULT_PY(name, failed, call) \
    (HKN_FAULT_(name, HKN_FAULT_RAISE) ? (failed) : (call))
#define HKN_FAULT_ALLOC(name, call) \
    (HKN_FAULT_(name, ENOMEM) ? NULL : (call))
#define HKN_FAULT_SYS(name, err, failed, call) \
    (HKN_FAULT_(name, err) ? (failed) : (call))
#define HKN_FAULT_SQLITE(name, failed, call) \
    (HKN_FAULT_(name, HKN_FAULT_QUIET) ? (failed) : (call))
#define HKN_FAULT_RELEASE(name, failed, call) \
    (HKN_FAULT_(name, HKN_FAULT_QUIET) ? ((void)(call), (failed)) : (call))

/* A call through a pointer, named at the site by what it calls. */
#define HKN_FAULT_POINT(call_name, how, failed, call) \
    (HKN_FAULT_(call_name, how) ? (failed) : (call))

#else   /* the normal build: a call through a pointer is just the call */

#define HKN_FAULT_POINT(call_name, how, failed, call) (call)

#endif

#endif
