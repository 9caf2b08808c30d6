/* sqlite_api.c - binding to the SQLite library CPython's _sqlite3 uses.
 *
 * Why never link -lsqlite3: a second copy of SQLite in the process has its
 * own inode/lock table; closing its file descriptors silently drops the
 * POSIX locks _sqlite3's copy holds, and another process then unlinks the
 * live -wal/-shm (docs/sqlite-internals.md, "Lock cancellation").  So the
 * functions of the copy _sqlite3 already uses are bound, by the first of
 * two routes that works:
 *
 *   "symbols"        looked up exactly as _sqlite3's own relocations are
 *                    bound: the global scope first, then _sqlite3's own
 *                    dependency tree (dlopen RTLD_NOLOAD of its file).  Works
 *                    wherever SQLite's symbols are visible: a shared
 *                    libsqlite3, or a static one with default visibility.
 *   "extension-api"  python-build-standalone (uv) links SQLite statically
 *                    into _sqlite3 with hidden symbols, so dlsym finds
 *                    nothing.  Its _sqlite3 is built with loadable
 *                    extensions, and SQLite hands every extension it loads a
 *                    table of its own public functions (sqlite3_api_routines).
 *                    So this shared object is loaded once, at import, as an
 *                    extension on a private :memory: connection, and its
 *                    entry point keeps that table.  Loading an object the
 *                    process has already loaded maps nothing new: the dynamic
 *                    loader returns the existing one.
 *
 * Either binding is proven by the same self-check before native mode is
 * enabled; when neither works (or HERMES_KANBAN_NATIVE_MODE=sql), the module
 * runs in "sql" mode: the checkpoint goes through the connection's own
 * Python API, and the guard is off.  HERMES_KANBAN_NATIVE_MODE=extension-api
 * skips the symbols route (tests prove the extension route with it).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1           /* dladdr; the same definition pyconfig.h makes */
#endif
#include "hkn.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fault_calls.h"     /* last: see faults.h */

/* Every function this package calls, by both routes.  `slot` is the
 * function's index in SQLite's struct sqlite3_api_routines, whose members
 * are all function pointers, appended in release order and never
 * reordered (sqlite3ext.h promises it, since extensions compiled against an
 * old header must keep working).  `since` is the first SQLite release whose
 * table has that slot: a slot past the end of an older library's table is
 * never read.  The slots are checked against dlsym() on every SQLite
 * version CI builds (tests/test_routes.py). */
typedef struct {
    const char *name;
    unsigned short slot;
    int since;                  /* sqlite3_libversion_number() */
    int optional;
    size_t offset;              /* of the member in hkn_sqlite_api */
} hkn_binding;

#define HKN_BIND(member, slot, since, optional) \
    {"sqlite3_" #member, slot, since, optional, offsetof(hkn_sqlite_api, member)}

/* In table order.  CPython 3.10+ needs SQLite 3.7.15 or newer; the slots
 * from close_v2 (179) on came with 3.7.16. */
#define HKN_EXTENSION_MIN_VERSION 3007016
static const hkn_binding hkn_bindings[] = {
    HKN_BIND(busy_handler, 13, 0, 0),
    HKN_BIND(busy_timeout, 14, 0, 0),
    HKN_BIND(column_int, 28, 0, 0),
    HKN_BIND(errmsg, 53, 0, 0),
    HKN_BIND(finalize, 57, 0, 0),
    HKN_BIND(get_autocommit, 60, 0, 0),
    HKN_BIND(libversion, 66, 0, 0),
    HKN_BIND(libversion_number, 67, 0, 0),
    HKN_BIND(reset, 77, 0, 0),
    HKN_BIND(step, 94, 0, 0),
    HKN_BIND(total_changes, 97, 0, 0),
    HKN_BIND(prepare_v2, 116, 0, 0),
    HKN_BIND(file_control, 127, 0, 0),
    HKN_BIND(mutex_enter, 131, 0, 0),
    HKN_BIND(mutex_leave, 133, 0, 0),
    HKN_BIND(mutex_try, 134, 0, 0),
    /* Optional: absent only from builds without the OS layer. */
    HKN_BIND(vfs_find, 141, 0, 1),
    HKN_BIND(limit, 151, 0, 0),
    HKN_BIND(next_stmt, 152, 0, 0),
    HKN_BIND(db_mutex, 164, 0, 0),
    HKN_BIND(db_status, 165, 0, 0),
    HKN_BIND(extended_errcode, 166, 0, 0),
    HKN_BIND(close_v2, 179, HKN_EXTENSION_MIN_VERSION, 0),
    HKN_BIND(db_filename, 180, HKN_EXTENSION_MIN_VERSION, 0),
    HKN_BIND(db_readonly, 181, HKN_EXTENSION_MIN_VERSION, 0),
    HKN_BIND(errstr, 183, HKN_EXTENSION_MIN_VERSION, 0),
    HKN_BIND(stmt_busy, 184, HKN_EXTENSION_MIN_VERSION, 0),
    HKN_BIND(wal_checkpoint_v2, 191, HKN_EXTENSION_MIN_VERSION, 0),
    /* Optional: SQLite 3.34+.  Without it an open transaction is detected
     * with get_autocommit, which cannot tell a read from a write. */
    HKN_BIND(txn_state, 252, 3034000, 1),
};
#define HKN_NBINDINGS ((int)(sizeof(hkn_bindings) / sizeof(hkn_bindings[0])))
#define HKN_SLOT_LIBVERSION_NUMBER 67

static void **
hkn_member(hkn_sqlite_api *api, const hkn_binding *binding)
{
    return (void **)((char *)api + binding->offset);
}

/* Sets *why to a new str made from `format` (printf-style, as
 * PyUnicode_FromFormat); 0, or -1 when even that fails. */
static int
hkn_why(PyObject **why, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    Py_XSETREF(*why, PyUnicode_FromFormatV(format, args));
    va_end(args);
    return *why != NULL ? 0 : -1;
}

/* ------------------------------------------------------- the symbols route */

static void *
hkn_lookup(void *handle, const char *name)
{
    /* Same order as the dynamic linker uses for _sqlite3 (loaded RTLD_LOCAL,
     * never RTLD_DEEPBIND): a definition in the global scope wins. */
    void *sym = dlsym(RTLD_DEFAULT, name);
    if (sym == NULL) {
        sym = dlsym(handle, name);
    }
    return sym;
}

/* Fills `api` through dlsym; NULL, or the name of a required function
 * that could not be found. */
static const char *
hkn_bind_symbols(hkn_sqlite_api *api, void *handle)
{
    for (int i = 0; i < HKN_NBINDINGS; i++) {
        void *function = hkn_lookup(handle, hkn_bindings[i].name);
        if (function == NULL && !hkn_bindings[i].optional) {
            return hkn_bindings[i].name;
        }
        *hkn_member(api, &hkn_bindings[i]) = function;
    }
    return NULL;
}

/* Opens _sqlite3's shared object again (or the interpreter, when _sqlite3
 * is built in) and binds through it.  1 bound, 0 not (why in *why), -1 on
 * a Python error. */
static int
hkn_route_symbols(hkn_state *state, PyObject **why)
{
    PyObject *sqlite3_ext = PyImport_ImportModule("_sqlite3");
    if (sqlite3_ext == NULL) {
        return -1;
    }
    PyObject *file = PyObject_GetAttrString(sqlite3_ext, "__file__");
    Py_DECREF(sqlite3_ext);
    PyObject *encoded = NULL;
    if (file == NULL) {
        /* No __file__: built into the interpreter, whose symbols, if
         * exported, are global.  Any other error is an error. */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
    }
    else {
        int converted = PyUnicode_FSConverter(file, &encoded);
        Py_DECREF(file);
        if (!converted) {
            return -1;
        }
    }
    /* NULL stands for the interpreter itself, which is loaded by definition. */
    const char *path = encoded != NULL ? PyBytes_AS_STRING(encoded) : NULL;
    void *handle = dlopen(path, path != NULL ? RTLD_NOW | RTLD_NOLOAD : RTLD_NOW);
    Py_XDECREF(encoded);
    if (handle == NULL) {
        return hkn_why(why, "_sqlite3's shared object could not be reopened with dlopen");
    }
    const char *missing = hkn_bind_symbols(&state->api, handle);
    if (missing != NULL) {
        dlclose(handle);
        return hkn_why(why, "%s is not visible from _sqlite3's shared object (SQLite is "
                       "linked into it with hidden symbols)", missing);
    }
    state->api.dl_handle = handle;
    return 1;
}

/* ------------------------------------------------- the extension-API route */

#define HKN_ENTRY_POINT "sqlite3_native_init"

/* What the entry point saw, in the thread that called load_extension()
 * (SQLite calls the entry point from inside that call, synchronously, and
 * CPython releases the GIL around it: thread-local, so that two module
 * instances loading at once in two threads never read each other's). */
static _Thread_local sqlite3 *hkn_loaded_db;
static _Thread_local void *const *hkn_loaded_routines;

/* SQLite's entry point for this shared object loaded as an extension, the
 * one symbol besides PyInit__native it exports.  Its name is the one
 * SQLite derives from the file name ("_native.cpython-...so": the letters
 * before the first dot, lower-cased, between "sqlite3_" and "_init"), so
 * that CPython 3.10 and 3.11, whose load_extension() takes no entry point,
 * find it too.  It only remembers the table; it registers nothing. */
__attribute__((visibility("default"))) int
sqlite3_native_init(sqlite3 *db, char **error, const void *routines);

__attribute__((visibility("default"))) int
sqlite3_native_init(sqlite3 *db, char **error, const void *routines)
{
    (void)error;
    hkn_loaded_db = db;
    hkn_loaded_routines = routines;
    return SQLITE_OK;
}

/* Fills `api` from SQLite's table; NULL, or why not. */
static const char *
hkn_bind_routines(hkn_sqlite_api *api, void *const *routines)
{
    int (*version_number)(void) = (int (*)(void))routines[HKN_SLOT_LIBVERSION_NUMBER];
    int version = version_number != NULL ? version_number() : 0;
    if (version < HKN_EXTENSION_MIN_VERSION) {
        return "the library's extension-API table is older than SQLite 3.7.16";
    }
    for (int i = 0; i < HKN_NBINDINGS; i++) {
        const hkn_binding *binding = &hkn_bindings[i];
        void *function = version >= binding->since ? routines[binding->slot] : NULL;
        if (function == NULL && !binding->optional) {
            return "the library's extension-API table lacks a function this package calls";
        }
        *hkn_member(api, binding) = function;
    }
    return NULL;
}

/* Calls conn.<name>(arg), with entrypoint=HKN_ENTRY_POINT when asked.
 * 1 when it worked; 0 when it raised an ordinary exception, which becomes
 * *why ("<what> refused: Type: message": an audit hook's refusal, or
 * SQLite's error); -1 for MemoryError and BaseExceptions (KeyboardInterrupt,
 * SystemExit), which propagate. */
static int
hkn_call_refusable(PyObject *conn, const char *name, PyObject *arg, int with_entrypoint,
                   const char *what, PyObject **why)
{
    PyObject *method = NULL, *args = NULL, *kwargs = NULL, *result = NULL;
    method = PyObject_GetAttrString(conn, name);
    if (method == NULL) {
        goto done;
    }
    args = PyTuple_Pack(1, arg);
    if (args == NULL) {
        goto done;
    }
#if HKN_PY_HAS_LOAD_ENTRYPOINT
    if (with_entrypoint) {
        kwargs = Py_BuildValue("{ss}", "entrypoint", HKN_ENTRY_POINT);
        if (kwargs == NULL) {
            goto done;
        }
    }
#else
    (void)with_entrypoint;      /* load_extension() takes no entry point */
#endif
    result = PyObject_Call(method, args, kwargs);
done:
    Py_XDECREF(method);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    if (result != NULL) {
        Py_DECREF(result);
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_MemoryError) || !PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc = hkn_error_take();
    int rc = hkn_why(why, "%s refused: %s: %S", what, Py_TYPE(exc)->tp_name, exc);
    Py_DECREF(exc);
    return rc;
}

/* Loads this shared object as an SQLite extension on a private :memory:
 * connection, keeps the table SQLite hands it, and binds through that.
 * The connection is closed (and loading disabled again) whatever happens.
 * 1 bound, 0 not (why in *why), -1 on a Python error. */
static int
hkn_route_extension(hkn_state *state, PyObject **why)
{
    PyObject *enable = PyObject_GetAttrString((PyObject *)state->base_type,
                                              "enable_load_extension");
    if (enable == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
        return hkn_why(why, "this sqlite3 module is built without loadable extensions "
                       "(no Connection.enable_load_extension)");
    }
    Py_DECREF(enable);
    Dl_info self;
    if (dladdr((void *)&hkn_route_extension, &self) == 0
        || self.dli_fname == NULL) {
        return hkn_why(why, "the path of this shared object is unknown (dladdr failed)");
    }
    PyObject *path = PyUnicode_DecodeFSDefault(self.dli_fname);
    if (path == NULL) {
        return -1;
    }
    PyObject *conn = PyObject_CallFunction((PyObject *)state->base_type, "s",
                                           ":memory:");
    if (conn == NULL) {
        Py_DECREF(path);
        return -1;
    }
    int rc = hkn_call_refusable(conn, "enable_load_extension", Py_True, 0,
                                "enable_load_extension(True)", why);
    if (rc == 1) {
        hkn_loaded_db = NULL;
        hkn_loaded_routines = NULL;
        /* 3.12+ takes the entry point by name; before, SQLite derives the
         * same name from the file name. */
        rc = hkn_call_refusable(conn, "load_extension", path, HKN_PY_HAS_LOAD_ENTRYPOINT,
                                "load_extension()", why);
        /* Off again at once, even though the connection is closed next. */
        hkn_saved_error saved;
        hkn_error_save(&saved);
        int off = hkn_call_refusable(conn, "enable_load_extension", Py_False, 0,
                                     "enable_load_extension(False)", why);
        if (off < 0 || hkn_error_saved(&saved)) {
            /* The first error wins; a failure to disable alone is one. */
            if (hkn_error_saved(&saved)) {
                PyErr_Clear();
                hkn_error_restore(&saved);
            }
            rc = -1;
        }
        else if (off == 0) {
            rc = 0;
        }
    }
    sqlite3 *db = hkn_connection_handle(conn);
    /* Close whatever happened; an error from before wins over the close's. */
    {
        hkn_saved_error saved;
        hkn_error_save(&saved);
        PyObject *closed = PyObject_CallMethod(conn, "close", NULL);
        if (closed == NULL && !hkn_error_saved(&saved)) {
            rc = -1;
        }
        Py_XDECREF(closed);
        if (hkn_error_saved(&saved)) {
            PyErr_Clear();
            hkn_error_restore(&saved);
        }
    }
    Py_DECREF(conn);            /* the base's dealloc or finalizer closes it, if not */
    Py_DECREF(path);
    void *const *routines = hkn_loaded_routines;
    sqlite3 *loaded_by = hkn_loaded_db;
    hkn_loaded_db = NULL;
    hkn_loaded_routines = NULL;
    if (rc != 1) {
        return rc;
    }
    /* The table must come from the library that runs Python's connection. */
    if (routines == NULL || db == NULL || loaded_by != db) {
        return hkn_why(why, "SQLite loaded the extension but did not call its entry point "
                       "for the private connection");
    }
    const char *unbound = hkn_bind_routines(&state->api, routines);
    if (unbound != NULL) {
        return hkn_why(why, "%s", unbound);
    }
    return 1;
}

/* -------------------------------------------------------- the proof */

/* Proves on a throwaway :memory: connection that (1) the handle sits where
 * hkn_connection_handle() reads it and (2) the bound functions operate on
 * that very handle: a value set through the Python API is read back through
 * the bound library.  Returns 1 when proven, 0 when not (why in *why),
 * -1 on a Python error. */
static int
hkn_self_check(hkn_state *state, const char **why)
{
    hkn_sqlite_api *api = &state->api;
    int ok = 0;
    PyObject *res = NULL;

    if (state->base_type->tp_basicsize < (Py_ssize_t)(sizeof(PyObject) + sizeof(void *))) {
        *why = "sqlite3.Connection is smaller than the handle layout assumes";
        return 0;
    }
    PyObject *conn = PyObject_CallFunction((PyObject *)state->base_type, "s",
                                           ":memory:");
    if (conn == NULL) {
        return -1;
    }
    sqlite3 *db = hkn_connection_handle(conn);
    if (db == NULL || ((uintptr_t)db % sizeof(void *)) != 0) {
        *why = "no sqlite3 handle where the layout assumption expects it";
        goto done;
    }
#if HKN_PY_HAS_SETLIMIT
    int before = sqlite3_limit(db, SQLITE_LIMIT_VARIABLE_NUMBER, -1);
    int probe = before > 1 ? before - 1 : 1;
    res = PyObject_CallMethod(conn, "setlimit", "ii", SQLITE_LIMIT_VARIABLE_NUMBER, probe);
    if (res == NULL) {
        goto done;
    }
    if (sqlite3_limit(db, SQLITE_LIMIT_VARIABLE_NUMBER, -1) != probe) {
        *why = "a limit set through sqlite3.Connection.setlimit() did not read back "
               "through the bound library";
        goto done;
    }
#else
    /* 3.10 has no setlimit(): count row changes made through the Python API. */
    res = PyObject_CallMethod(conn, "executescript", "s",
                              "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);");
    if (res == NULL) {
        goto done;
    }
    Py_CLEAR(res);
    res = PyObject_GetAttrString(conn, "total_changes");
    if (res == NULL) {
        goto done;
    }
    long changes = PyLong_AsLong(res);
    if (changes == -1 && PyErr_Occurred()) {
        goto done;
    }
    if (changes != 3 || sqlite3_total_changes(db) != 3) {
        *why = "row changes made through sqlite3.Connection did not read back "
               "through the bound library";
        goto done;
    }
#endif
    ok = 1;
done:
    Py_XDECREF(res);
    /* One close for every outcome; that it empties the handle is part of the
     * proof.  An error from before wins over one from the close. */
    {
        hkn_saved_error saved;
        hkn_error_save(&saved);
        PyObject *closed = PyObject_CallMethod(conn, "close", NULL);
        int close_failed = closed == NULL;
        Py_XDECREF(closed);
        if (hkn_error_saved(&saved)) {
            PyErr_Clear();
            hkn_error_restore(&saved);
        }
        if (!close_failed && ok && hkn_connection_handle(conn) != NULL) {
            *why = "the handle did not become NULL on close()";
            ok = 0;
        }
    }
    /* Not closed after all: the base's dealloc (3.10, 3.11) or finalizer
     * (3.12+) closes it. */
    Py_DECREF(conn);
    return PyErr_Occurred() ? -1 : ok;
}

/* The checks every route's binding must pass: the library reports the
 * version sqlite3 reports, and the self-check.  Records the library's
 * path.  1 proven, 0 not (why in *why), -1 on a Python error. */
static int
hkn_prove(hkn_state *state, PyObject **why)
{
    hkn_sqlite_api *api = &state->api;
    PyObject *expected = PyObject_GetAttrString(state->sqlite3_module,
                                                "sqlite_version");
    if (expected == NULL) {
        return -1;
    }
    const char *expected_text = PyUnicode_AsUTF8(expected);
    if (expected_text == NULL) {
        Py_DECREF(expected);
        return -1;
    }
    int same_version = strcmp(expected_text, sqlite3_libversion()) == 0;
    Py_DECREF(expected);
    if (!same_version) {
        return hkn_why(why, "the bound SQLite library reports another version than "
                       "sqlite3.sqlite_version");
    }

    /* Only informative (sqlite_api()["library"]): without it, None. */
    Dl_info info;
    if (dladdr(*(void **)(&api->wal_checkpoint_v2), &info) != 0
        && info.dli_fname != NULL) {
        PyObject *library = PyUnicode_DecodeFSDefault(info.dli_fname);
        if (library == NULL) {
            return -1;
        }
        Py_XSETREF(state->api_library, library);
    }

    const char *failed = NULL;
    int proven = hkn_self_check(state, &failed);
    if (proven < 0) {
        return -1;
    }
    if (!proven) {
        state->api_check_failed = 1;
        return hkn_why(why, "self-check failed: %s", failed);
    }
    return 1;
}

/* Forgets a binding that was not taken. */
static void
hkn_unbind(hkn_state *state)
{
    hkn_sqlite_api_free(state);
    Py_XSETREF(state->api_library, Py_NewRef(Py_None));
}

typedef int (*hkn_route_fn)(hkn_state *, PyObject **);

/* Records why route `name` was not taken: 0, or -1 on a Python error. */
static int
hkn_record_route(hkn_state *state, const char *name, const char *why)
{
    PyObject *text = PyUnicode_FromString(why);
    if (text == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(state->api_routes_not_taken, name, text);
    Py_DECREF(text);
    return rc;
}

/* Tries one route: 1 taken, 0 not (why recorded), -1 on a Python error. */
static int
hkn_try_route(hkn_state *state, const char *name, hkn_route_fn route)
{
    PyObject *why = NULL;
    int rc = route(state, &why);
    if (rc == 1) {
        rc = hkn_prove(state, &why);
    }
    if (rc == 1) {
        state->api.native = 1;
        state->api_route = name;
        return 1;
    }
    hkn_unbind(state);
    if (rc == 0) {
        rc = PyDict_SetItemString(state->api_routes_not_taken, name, why);
    }
    Py_XDECREF(why);
    return rc < 0 ? -1 : 0;
}

int
hkn_sqlite_api_init(hkn_state *state)
{
    memset(&state->api, 0, sizeof(state->api));
    state->api_route = "sql";
    state->api_check_failed = 0;
    Py_XSETREF(state->api_library, Py_NewRef(Py_None));
    Py_XSETREF(state->api_reason, Py_NewRef(Py_None));
    Py_XSETREF(state->api_routes_not_taken,
               PyDict_New());
    if (state->api_routes_not_taken == NULL) {
        return -1;
    }

    static const struct {
        const char *name;
        hkn_route_fn route;
    } routes[] = {
        {"symbols", hkn_route_symbols},
        {"extension-api", hkn_route_extension},
    };
    const char *forced = getenv("HERMES_KANBAN_NATIVE_MODE");
    int force_sql = forced != NULL && strcmp(forced, "sql") == 0;
    int force_extension = forced != NULL && strcmp(forced, "extension-api") == 0;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        const char *skip = force_sql ? "skipped: HERMES_KANBAN_NATIVE_MODE=sql"
                           : force_extension && routes[i].route == hkn_route_symbols
                           ? "skipped: HERMES_KANBAN_NATIVE_MODE=extension-api" : NULL;
        int rc = skip != NULL ? hkn_record_route(state, routes[i].name, skip)
                 : hkn_try_route(state, routes[i].name, routes[i].route);
        if (rc < 0) {
            return -1;
        }
        if (rc == 1) {
            return 0;
        }
    }
    /* SQL mode: the reason names every route's. */
    PyObject *reason = NULL;
    if (force_sql) {
        reason = PyUnicode_FromString("forced by HERMES_KANBAN_NATIVE_MODE=sql");
    }
    else {
        PyObject *symbols = PyDict_GetItemString(state->api_routes_not_taken, "symbols");
        PyObject *extension = PyDict_GetItemString(state->api_routes_not_taken,
                                                   "extension-api");
        reason = PyUnicode_FromFormat("no native route to SQLite: symbols: %S; "
                                      "extension-api: %S",
                                      symbols ? symbols : Py_None,
                                      extension ? extension : Py_None);
    }
    if (reason == NULL) {
        return -1;
    }
    Py_XSETREF(state->api_reason, reason);
    return 0;
}

PyObject *
hkn_sqlite_api_bound(hkn_state *state)
{
    PyObject *bound = PyDict_New();
    for (int i = 0; bound != NULL && i < HKN_NBINDINGS; i++) {
        void *function = *hkn_member(&state->api, &hkn_bindings[i]);
        PyObject *address = function == NULL ? Py_NewRef(Py_None)
                            : PyLong_FromVoidPtr(function);
        if (address == NULL
            || PyDict_SetItemString(bound, hkn_bindings[i].name, address) < 0) {
            Py_CLEAR(bound);
        }
        Py_XDECREF(address);
    }
    return bound;
}

void
hkn_sqlite_api_free(hkn_state *state)
{
    if (state->api.dl_handle != NULL) {
        dlclose(state->api.dl_handle);
    }
    memset(&state->api, 0, sizeof(state->api));
}

/* The same mapping from result code to exception class that CPython's
 * _sqlite3 uses, so callers' `except sqlite3.OperationalError` keeps working. */
static PyObject *
hkn_exception_for(hkn_state *state, int rc)
{
    switch (rc & 0xff) {
    case SQLITE_INTERNAL:
    case SQLITE_NOTFOUND:
        return state->InternalError;
    case SQLITE_NOMEM:
        return PyExc_MemoryError;
    case SQLITE_ERROR:
    case SQLITE_PERM:
    case SQLITE_ABORT:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_READONLY:
    case SQLITE_INTERRUPT:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
    case SQLITE_EMPTY:
    case SQLITE_SCHEMA:
        return state->OperationalError;
    case SQLITE_CORRUPT:
        return state->DatabaseError;
    case SQLITE_TOOBIG:
        return state->DataError;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
        return state->IntegrityError;
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
        return state->InterfaceError;
    default:
        return state->DatabaseError;
    }
}

#if HKN_PY_HAS_SQLITE_ERROR_CODES
/* Names of the primary result codes, as sqlite_errorname shows them.  The
 * checkpoint reports primary codes; an extended code is named by its primary. */
static const char *
hkn_result_name(int rc)
{
    static const char *const names[] = {
        "SQLITE_OK", "SQLITE_ERROR", "SQLITE_INTERNAL", "SQLITE_PERM", "SQLITE_ABORT",
        "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM", "SQLITE_READONLY",
        "SQLITE_INTERRUPT", "SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_NOTFOUND",
        "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL", "SQLITE_EMPTY",
        "SQLITE_SCHEMA", "SQLITE_TOOBIG", "SQLITE_CONSTRAINT", "SQLITE_MISMATCH",
        "SQLITE_MISUSE", "SQLITE_NOLFS", "SQLITE_AUTH", "SQLITE_FORMAT",
        "SQLITE_RANGE", "SQLITE_NOTADB",
    };
    int primary = rc & 0xff;
    if (primary >= 0 && primary < (int)(sizeof(names) / sizeof(names[0]))) {
        return names[primary];
    }
    return "SQLITE_UNKNOWN";
}
#endif

void
hkn_set_sqlite_error(hkn_state *state, int rc, int extended, const char *message)
{
    PyObject *cls = hkn_exception_for(state, rc);
    if (cls == PyExc_MemoryError) {
        PyErr_NoMemory();
        return;
    }
    PyObject *msg = PyUnicode_FromString(message);
    if (msg == NULL) {
        return;
    }
    PyObject *exc = PyObject_CallOneArg(cls, msg);
    Py_DECREF(msg);
    if (exc == NULL) {
        return;
    }
#if HKN_PY_HAS_SQLITE_ERROR_CODES
    /* sqlite3 exceptions carry these since 3.11. */
    PyObject *code = NULL, *name = NULL;
    if ((code = PyLong_FromLong(extended)) == NULL
        || (name = PyUnicode_FromString(hkn_result_name(rc))) == NULL
        || PyObject_SetAttrString(exc, "sqlite_errorcode", code) < 0
        || PyObject_SetAttrString(exc, "sqlite_errorname", name) < 0) {
        Py_XDECREF(code);
        Py_XDECREF(name);
        Py_DECREF(exc);
        return;
    }
    Py_DECREF(code);
    Py_DECREF(name);
#else
    (void)extended;
#endif
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
}

int
hkn_db_mutex_try(const hkn_sqlite_api *api, sqlite3 *db, sqlite3_mutex **held)
{
    *held = sqlite3_db_mutex(db);
    return *held == NULL || sqlite3_mutex_try(*held) == SQLITE_OK;
}

void
hkn_db_mutex_leave(const hkn_sqlite_api *api, sqlite3_mutex *held)
{
    if (held != NULL) {
        sqlite3_mutex_leave(held);
    }
}
