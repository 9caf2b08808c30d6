/* sqlite_api.c - binding to the SQLite library CPython's _sqlite3 uses.
 *
 * Why not link -lsqlite3: a second copy of SQLite in the process has its own
 * inode/lock table; closing its file descriptors silently drops the POSIX
 * locks _sqlite3's copy holds, and another process then unlinks the live
 * -wal/-shm (sqlite-facts sections 2 and 6).  So every function is looked up
 * exactly as _sqlite3's own relocations are bound: the global scope first,
 * then _sqlite3's own dependency tree (dlopen RTLD_NOLOAD of its file).
 *
 * If that fails (python-build-standalone links SQLite statically with hidden
 * symbols) or the self-check below fails, the module runs in "sql" mode: the
 * checkpoint goes through the connection's own Python API instead.
 * HERMES_KANBAN_NATIVE_MODE=sql forces that mode (the test suite runs both).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1           /* dladdr; the same definition pyconfig.h makes */
#endif
#include "hkn.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int
hkn_sql_mode(hkn_state *state, const char *why)
{
    memset(&state->api, 0, sizeof(state->api));
    Py_XSETREF(state->api_reason,
               HKN_FAULT_PY("sqlite_api.sql_mode.reason", NULL, PyUnicode_FromString(why)));
    return state->api_reason ? 0 : -1;
}

static void *
hkn_lookup(void *handle, const char *name)
{
    /* Same order as the dynamic linker uses for _sqlite3 (loaded RTLD_LOCAL,
     * never RTLD_DEEPBIND): a definition in the global scope wins. */
    void *sym = HKN_FAULT_SYS("sqlite_api.lookup.dlsym_global", 0, NULL, dlsym(RTLD_DEFAULT, name));
    if (sym == NULL) {
        sym = HKN_FAULT_SYS("sqlite_api.lookup.dlsym_library", 0, NULL, dlsym(handle, name));
    }
    return sym;
}

#define HKN_RESOLVE(field, name)                                        \
    do {                                                                \
        *(void **)(&api->field) = hkn_lookup(handle, name);             \
        if (api->field == NULL) {                                       \
            missing = name;                                             \
            goto unresolved;                                            \
        }                                                               \
    } while (0)

/* Proves on a throwaway :memory: connection that (1) the handle sits where
 * hkn_connection_handle() reads it and (2) the resolved functions operate on
 * that very handle: a value set through the Python API is read back through
 * the resolved library.  Returns 1 when proven, 0 when not (why in *why),
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
    PyObject *conn = HKN_FAULT_PY("sqlite_api.self_check.open", NULL,
                                  PyObject_CallFunction((PyObject *)state->base_type, "s",
                                                        ":memory:"));
    if (conn == NULL) {
        return -1;
    }
    sqlite3 *db = hkn_connection_handle(conn);
    if (db == NULL || ((uintptr_t)db % sizeof(void *)) != 0) {
        *why = "no sqlite3 handle where the layout assumption expects it";
        goto done;
    }
#if PY_VERSION_HEX >= 0x030B0000
    int before = api->limit(db, SQLITE_LIMIT_VARIABLE_NUMBER, -1);
    int probe = before > 1 ? before - 1 : 1;
    res = HKN_FAULT_PY("sqlite_api.self_check.setlimit", NULL,
                       PyObject_CallMethod(conn, "setlimit", "ii", SQLITE_LIMIT_VARIABLE_NUMBER,
                                           probe));
    if (res == NULL) {
        goto done;
    }
    if (api->limit(db, SQLITE_LIMIT_VARIABLE_NUMBER, -1) != probe) {
        *why = "a limit set through sqlite3.Connection.setlimit() did not read back "
               "through the resolved library";
        goto done;
    }
#else
    /* 3.10 has no setlimit(): count row changes made through the Python API. */
    res = HKN_FAULT_PY("sqlite_api.self_check.executescript", NULL,
                       PyObject_CallMethod(conn, "executescript", "s",
                                           "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);"));
    if (res == NULL) {
        goto done;
    }
    Py_CLEAR(res);
    int (*total_changes)(sqlite3 *) = NULL;
    *(void **)(&total_changes) = hkn_lookup(api->dl_handle, "sqlite3_total_changes");
    res = HKN_FAULT_PY("sqlite_api.self_check.total_changes", NULL,
                       PyObject_GetAttrString(conn, "total_changes"));
    if (res == NULL) {
        goto done;
    }
    long changes = HKN_FAULT_PY("sqlite_api.self_check.total_changes_value", -1,
                                PyLong_AsLong(res));
    if (changes == -1 && PyErr_Occurred()) {
        goto done;
    }
    if (total_changes == NULL || changes != 3 || total_changes(db) != 3) {
        *why = "row changes made through sqlite3.Connection did not read back "
               "through the resolved library";
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
        PyObject *closed = HKN_FAULT_PY("sqlite_api.self_check.close", NULL,
                                        PyObject_CallMethod(conn, "close", NULL));
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

int
hkn_sqlite_api_init(hkn_state *state)
{
    hkn_sqlite_api *api = &state->api;
    const char *missing = NULL;
    const char *why = NULL;

    memset(api, 0, sizeof(*api));
    Py_XSETREF(state->api_library, Py_NewRef(Py_None));
    Py_XSETREF(state->api_reason, Py_NewRef(Py_None));

    const char *forced = getenv("HERMES_KANBAN_NATIVE_MODE");
    if (forced != NULL && strcmp(forced, "sql") == 0) {
        return hkn_sql_mode(state, "forced by HERMES_KANBAN_NATIVE_MODE=sql");
    }

    PyObject *sqlite3_ext = HKN_FAULT_PY("sqlite_api.init.import", NULL,
                                         PyImport_ImportModule("_sqlite3"));
    if (sqlite3_ext == NULL) {
        return -1;
    }
    PyObject *file = HKN_FAULT_PY("sqlite_api.init.file", NULL,
                                  PyObject_GetAttrString(sqlite3_ext, "__file__"));
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
        int converted = HKN_FAULT_PY("sqlite_api.init.encode_file", 0,
                                     PyUnicode_FSConverter(file, &encoded));
        Py_DECREF(file);
        if (!converted) {
            return -1;
        }
    }
    void *handle = HKN_FAULT_SYS("sqlite_api.init.dlopen", 0, NULL,
                                 encoded != NULL
                                 ? dlopen(PyBytes_AS_STRING(encoded), RTLD_NOW | RTLD_NOLOAD)
                                 : dlopen(NULL, RTLD_NOW));
    Py_XDECREF(encoded);
    if (handle == NULL) {
        return hkn_sql_mode(state, "_sqlite3's shared object could not be reopened with dlopen");
    }
    api->dl_handle = handle;

    HKN_RESOLVE(libversion, "sqlite3_libversion");
    HKN_RESOLVE(wal_checkpoint_v2, "sqlite3_wal_checkpoint_v2");
    HKN_RESOLVE(busy_handler, "sqlite3_busy_handler");
    HKN_RESOLVE(busy_timeout, "sqlite3_busy_timeout");
    HKN_RESOLVE(db_filename, "sqlite3_db_filename");
    HKN_RESOLVE(db_readonly, "sqlite3_db_readonly");
    HKN_RESOLVE(db_status, "sqlite3_db_status");
    HKN_RESOLVE(get_autocommit, "sqlite3_get_autocommit");
    HKN_RESOLVE(next_stmt, "sqlite3_next_stmt");
    HKN_RESOLVE(stmt_busy, "sqlite3_stmt_busy");
    HKN_RESOLVE(reset, "sqlite3_reset");
    HKN_RESOLVE(errmsg, "sqlite3_errmsg");
    HKN_RESOLVE(errstr, "sqlite3_errstr");
    HKN_RESOLVE(extended_errcode, "sqlite3_extended_errcode");
    HKN_RESOLVE(file_control, "sqlite3_file_control");
    HKN_RESOLVE(limit, "sqlite3_limit");
    HKN_RESOLVE(prepare_v2, "sqlite3_prepare_v2");
    HKN_RESOLVE(step, "sqlite3_step");
    HKN_RESOLVE(column_int, "sqlite3_column_int");
    HKN_RESOLVE(finalize, "sqlite3_finalize");
    HKN_RESOLVE(db_mutex, "sqlite3_db_mutex");
    HKN_RESOLVE(mutex_enter, "sqlite3_mutex_enter");
    HKN_RESOLVE(mutex_leave, "sqlite3_mutex_leave");
    HKN_RESOLVE(mutex_try, "sqlite3_mutex_try");
    HKN_RESOLVE(close_v2, "sqlite3_close_v2");
    /* Optional: SQLite 3.34+.  Without it an open transaction is detected
     * with get_autocommit, which cannot tell a read from a write. */
    *(void **)(&api->txn_state) = hkn_lookup(handle, "sqlite3_txn_state");
    *(void **)(&api->vfs_find) = hkn_lookup(handle, "sqlite3_vfs_find");

    /* The library must be the one whose version sqlite3 reports. */
    PyObject *expected = HKN_FAULT_PY("sqlite_api.init.version", NULL,
                                      PyObject_GetAttrString(state->sqlite3_module,
                                                             "sqlite_version"));
    if (expected == NULL) {
        goto error;
    }
    const char *expected_text = HKN_FAULT_PY("sqlite_api.init.version_text", NULL,
                                             PyUnicode_AsUTF8(expected));
    if (expected_text == NULL) {
        Py_DECREF(expected);
        goto error;
    }
    int same_version = strcmp(expected_text, api->libversion()) == 0;
    Py_DECREF(expected);
    if (!same_version) {
        why = "the resolved SQLite library reports another version than sqlite3.sqlite_version";
        goto check_failed;
    }

    /* Only informative (sqlite_api()["library"]): without it, None. */
    Dl_info info;
    if (HKN_FAULT_SYS("sqlite_api.init.dladdr", 0, 0,
                      dladdr(*(void **)(&api->wal_checkpoint_v2), &info)) != 0
        && info.dli_fname != NULL) {
        PyObject *library = HKN_FAULT_PY("sqlite_api.init.library", NULL,
                                         PyUnicode_DecodeFSDefault(info.dli_fname));
        if (library == NULL) {
            goto error;
        }
        Py_XSETREF(state->api_library, library);
    }

    int proven = hkn_self_check(state, &why);
    if (proven < 0) {
        goto error;
    }
    if (!proven) {
        goto check_failed;
    }
    api->native = 1;
    return 0;

check_failed:
    dlclose(handle);
    Py_XSETREF(state->api_library, Py_NewRef(Py_None));
    state->api_check_failed = 1;
    return hkn_sql_mode(state, why);

unresolved:
    dlclose(handle);
    memset(api, 0, sizeof(*api));
    {
        PyObject *why_obj = HKN_FAULT_PY(
            "sqlite_api.init.unresolved", NULL,
            PyUnicode_FromFormat("%s is not reachable from _sqlite3's shared object "
                                 "(SQLite linked statically with hidden symbols?)", missing));
        if (why_obj == NULL) {
            return -1;
        }
        Py_XSETREF(state->api_reason, why_obj);
    }
    return 0;

error:
    dlclose(handle);
    memset(api, 0, sizeof(*api));
    return -1;
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

#if PY_VERSION_HEX >= 0x030B0000
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
    PyObject *msg = HKN_FAULT_PY("sqlite_api.set_error.message", NULL,
                                 PyUnicode_FromString(message));
    if (msg == NULL) {
        return;
    }
    PyObject *exc = HKN_FAULT_PY("sqlite_api.set_error.exception", NULL,
                                 PyObject_CallOneArg(cls, msg));
    Py_DECREF(msg);
    if (exc == NULL) {
        return;
    }
#if PY_VERSION_HEX >= 0x030B0000
    /* sqlite3 exceptions carry these since 3.11. */
    PyObject *code = NULL, *name = NULL;
    if ((code = HKN_FAULT_PY("sqlite_api.set_error.code", NULL, PyLong_FromLong(extended))) == NULL
        || (name = HKN_FAULT_PY("sqlite_api.set_error.name", NULL,
                                PyUnicode_FromString(hkn_result_name(rc)))) == NULL
        || HKN_FAULT_PY("sqlite_api.set_error.set_code", -1,
                        PyObject_SetAttrString(exc, "sqlite_errorcode", code)) < 0
        || HKN_FAULT_PY("sqlite_api.set_error.set_name", -1,
                        PyObject_SetAttrString(exc, "sqlite_errorname", name)) < 0) {
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
