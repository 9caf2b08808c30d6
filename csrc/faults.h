/* faults.h - named fault points around every call of ours that can fail.
 *
 * Each SQLite call, allocation, system call and Python C-API call in csrc/
 * that can fail is written as one of the macros below, with a name unique in
 * the extension ("file.function.call").  In a normal build every macro is
 * the bare call: the name vanishes and the code is the same as without it.
 *
 * Built with HKN_FAULTS defined (setup.py: HKN_FAULTS=1; GCC or Clang on
 * ELF, i.e. Linux), each site is a static record that counts its hits and,
 * when armed through _native._fault_arm(), makes the call fail the way it
 * really fails, without making it:
 *   HKN_FAULT_PY      a Python C-API call: MemoryError set, result `failed`
 *                     (NULL, -1 or 0, whatever that call returns on error);
 *   HKN_FAULT_ALLOC   malloc/calloc/realloc/PyMem_Malloc: NULL, errno ENOMEM;
 *   HKN_FAULT_SYS     a system call: errno `err`, result `failed`;
 *   HKN_FAULT_SQLITE  a SQLite call: result `rc` (an error code, or what that
 *                     function returns on error);
 *   HKN_FAULT_RELEASE a release whose result we ignore (close, reset,
 *                     finalize): the call is made, then reports `failed`,
 *                     because such calls free their resource even when they
 *                     report an error.
 * The records sit in the ELF section "hkn_fault_points", so the list of
 * points is exactly what the compiler saw, per Python version and platform.
 *
 * Calls that cannot fail are not points: PyModule_GetState and
 * PyType_GetModuleState on our own module and type; frame and code
 * accessors; PyUnicode_Compare/Tailmatch/GetLength on str objects;
 * PySet_Discard of a str from our own set; PyUnicode_AsUTF8 of our ASCII
 * mode names; PyBool_FromLong; the PyErr_*
 * state functions; the base type's traverse/clear/dealloc/finalize slots;
 * sqlite3_libversion, errmsg, errstr, extended_errcode, get_autocommit,
 * next_stmt, stmt_busy, column_int, limit, db_mutex, mutex_enter/leave,
 * busy_handler and busy_timeout (both fail only on misuse of a bad handle);
 * sqlite3_close_v2 (on a valid handle it defers instead of failing);
 * getpid, dirfd of an open DIR, dlclose of our own handle, free, getenv;
 * pthread_mutex_lock/unlock of a default mutex.  In shmlock.c: the system
 * calls its wrappers pass on (they are SQLite's own, and their failures
 * reach SQLite unchanged), and the calls of its at-fork child handler
 * (only async-signal-safe code may run there, not a point's mutex; a
 * failure keeps the inherited description, as without the handler); the
 * same for guard.c's after-fork reopening of database descriptors.
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
    const char *name;
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
#define HKN_FAULT_(point_name, how)                                             \
    __extension__({                                                             \
        static hkn_fault_point hkn_fault_site_ = {.name = point_name};          \
        static hkn_fault_point *hkn_fault_ref_                                  \
            __attribute__((used, section("hkn_fault_points"))) = &hkn_fault_site_; \
        (void)hkn_fault_ref_;                                                   \
        hkn_fault_fire(&hkn_fault_site_, (how));                                \
    })

#define HKN_FAULT_PY(name, failed, call) \
    (HKN_FAULT_(name, HKN_FAULT_RAISE) ? (failed) : (call))
#define HKN_FAULT_ALLOC(name, call) \
    (HKN_FAULT_(name, ENOMEM) ? NULL : (call))
#define HKN_FAULT_SYS(name, err, failed, call) \
    (HKN_FAULT_(name, err) ? (failed) : (call))
#define HKN_FAULT_SQLITE(name, rc, call) \
    (HKN_FAULT_(name, HKN_FAULT_QUIET) ? (rc) : (call))
#define HKN_FAULT_RELEASE(name, failed, call) \
    (HKN_FAULT_(name, HKN_FAULT_QUIET) ? ((void)(call), (failed)) : (call))

#else   /* the normal build: each macro is its call */

#define HKN_FAULT_PY(name, failed, call) (call)
#define HKN_FAULT_ALLOC(name, call) (call)
#define HKN_FAULT_SYS(name, err, failed, call) (call)
#define HKN_FAULT_SQLITE(name, rc, call) (call)
#define HKN_FAULT_RELEASE(name, failed, call) (call)

#endif

#endif
