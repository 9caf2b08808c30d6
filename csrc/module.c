/* module.c - hermes_kanban_native._native: multi-phase init, the module
 * state, the statistics, and the registry of live connections.
 *
 * All mutable state is in the module state.  It is guarded by the GIL: the
 * module does not declare Py_mod_gil, so a free-threaded interpreter keeps
 * the GIL enabled while it is imported.
 */
#include "hkn.h"

#include <string.h>
#include <unistd.h>
#include "fault_calls.h"     /* last: see faults.h */

static inline hkn_state *
hkn_module_state(PyObject *module)
{
    return (hkn_state *)PyModule_GetState(module);
}

/* ------------------------------------------------------------- functions */

PyDoc_STRVAR(hkn_stats_doc,
"stats($module, /)\n--\n\n"
"Counters of this process's WalSafeConnections, as a new dict.\n\n"
"opened, closed (by close()), finalized (closed by garbage collection or at\n"
"exit), live (open now), peak_live, checkpoints (recorded, close-time and\n"
"explicit), checkpoints_busy, checkpoints_skipped (close-time checkpoints not\n"
"needed: memory/temporary/read-only/non-WAL database, open write\n"
"transaction, or nothing written under the 'passive' policy),\n"
"checkpoint_errors, frames_checkpointed (sum of checkpointed_frames),\n"
"bound_collections (garbage collections run because max_live_per_database\n"
"was reached), guards_taken, guards_released, relocks (a guard lock taken\n"
"again on another descriptor of an already guarded database), guard_failures\n"
"(a guard could not be taken: another process held EXCLUSIVE, or SQLite's\n"
"descriptor could not be verified), guard_stepped_aside (times the guard\n"
"released its locks for this process's own write lock: EXCLUSIVE locking\n"
"mode, the unix-excl VFS, a journal-mode change), guard_shadowed (WAL\n"
"databases covered from SQLite's own read lock alone: attached databases,\n"
"plain connections' databases), guard_available,\n"
"shm_ofd_files (-shm descriptors SQLite opened in this process whose locks\n"
"are OFD locks, ever) and shm_ofd_open (those open now).");

static PyObject *
hkn_stats_dict(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    hkn_counters *s = &hkn_module_state(module)->stats;
    unsigned long long shm_opened;
    int shm_open_now;
    (void)hkn_shmlock_status(&shm_opened, &shm_open_now);
    unsigned long long stepped, shadowed;
    hkn_shmlock_db_stats(&stepped, &shadowed);
    return Py_BuildValue(
"{sKsKsKsnsnsKsKsKsKsKsKsKsKsKsKsKsKsOsKsi}",
"opened", s->opened, "closed", s->closed, "finalized", s->finalized,
"live", s->live, "peak_live", s->peak_live,
"checkpoints", s->checkpoints, "checkpoints_busy", s->checkpoints_busy,
"checkpoints_skipped", s->checkpoints_skipped,
"checkpoint_errors", s->checkpoint_errors,
"frames_checkpointed", s->frames_checkpointed,
"bound_collections", s->bound_collections,
"guards_taken", s->guards_taken, "guards_released", s->guards_released,
"relocks", s->relocks, "guard_failures", s->guard_failures,
"guard_stepped_aside", stepped, "guard_shadowed", shadowed,
"guard_available", hkn_guard_unavailable() == NULL ? Py_True : Py_False,
"shm_ofd_files", shm_opened, "shm_ofd_open", shm_open_now);
}

PyDoc_STRVAR(hkn_opened_doc,
"_opened($module, /)\n--\n\n"
"stats()[\"opened\"] alone: the pytest plugin reads it around every test.");

static PyObject *
hkn_opened(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(hkn_module_state(module)->stats.opened);
}

PyDoc_STRVAR(hkn_start_test_doc,
"_start_test($module, /)\n--\n\n"
"Where the pytest plugin starts measuring one test: set peak_live to the\n"
"current number of live connections and return stats()[\"opened\"].  One\n"
"call, because it runs before every test.");

static PyObject *
hkn_start_test(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    hkn_counters *s = &hkn_module_state(module)->stats;
    s->peak_live = s->live;
    return PyLong_FromUnsignedLongLong(s->opened);
}

PyDoc_STRVAR(hkn_sqlite_api_doc,
"sqlite_api($module, /)\n--\n\n"
"How this module reaches SQLite, as a new dict: mode ('native' or 'sql'),\n"
"route (how the native functions were bound: 'symbols', looked up in\n"
"_sqlite3's library; 'extension-api', the table SQLite hands a loadable\n"
"extension, where its symbols are hidden; or 'sql'), routes_not_taken (a\n"
"dict: each route tried or skipped before the one in use, and why),\n"
"library (path of the SQLite library in use, None in sql mode),\n"
"sqlite_version, reason (why sql mode is in use, else None), and self_check:\n"
"'passed' (native), 'not run' (sql mode by choice or because SQLite's\n"
"symbols are out of reach) or 'failed' (the layout or library check failed,\n"
"so sql mode is used), guard: 'available' or why the WAL-generation\n"
"guard is not ('unavailable: ' and why, when it failed and was never taken),\n"
"guard_failure: why the guard could not be taken last, or None, and\n"
"shm_locks: 'ofd' once a guarded connection has put SQLite's -shm locks in\n"
"this process on open-file-description locks, else 'posix: ' and why not.");

static PyObject *
hkn_sqlite_api_info(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    hkn_state *state = hkn_module_state(module);
    PyObject *version = PyObject_GetAttrString(state->sqlite3_module,
                                               "sqlite_version");
    if (version == NULL) {
        return NULL;
    }
    const char *check = state->api.native ? "passed"
                        : state->api_check_failed ? "failed" : "not run";
    const char *no_guard = hkn_guard_unavailable();
    if (no_guard == NULL && !state->api.native) {
        no_guard = "needs native access to SQLite";
    }
    unsigned long long shm_opened;
    int shm_open_now;
    const char *no_ofd = hkn_shmlock_status(&shm_opened, &shm_open_now);
    if (no_ofd != NULL && !state->api.native) {
        no_ofd = "needs native access to SQLite";
    }
    PyObject *info = NULL, *guard = NULL, *shm_locks = NULL, *routes = NULL;
    /* A guard that failed for a structural reason and was never taken is
     * unavailable in practice, whatever the platform offers.  (%V: the
     * object, or the text when the object is NULL.) */
    PyObject *failure = no_guard == NULL && state->stats.guards_taken == 0
                        ? state->guard_failure : NULL;
    guard = PyUnicode_FromFormat("%s%V", failure != NULL ? "unavailable: " : "", failure,
                                 no_guard != NULL ? no_guard : "available");
    if (guard == NULL) {
        goto done;
    }
    shm_locks = PyUnicode_FromFormat("%s%s", no_ofd ? "posix: " : "ofd",
                                     no_ofd ? no_ofd : "");
    if (shm_locks == NULL) {
        goto done;
    }
    routes = PyDict_Copy(state->api_routes_not_taken);
    if (routes == NULL) {
        goto done;
    }
    info = Py_BuildValue("{sssssOsOsOsOsssOsOsO}",
                         "mode", state->api.native ? "native" : "sql",
                         "route", state->api_route,
                         "routes_not_taken", routes,
                         "library", state->api_library,
                         "sqlite_version", version,
                         "reason", state->api_reason,
                         "self_check", check,
                         "guard", guard,
                         "guard_failure", state->guard_failure != NULL
                                          ? state->guard_failure : Py_None,
                         "shm_locks", shm_locks);
done:
    Py_XDECREF(routes);
    Py_XDECREF(shm_locks);
    Py_XDECREF(guard);
    Py_DECREF(version);
    return info;
}

PyDoc_STRVAR(hkn_bound_functions_doc,
"_bound_functions($module, /)\n--\n\n"
"The SQLite functions this module calls, as a dict: name -> address bound\n"
"(an int), or None where unbound (all of them in sql mode).  For tests that\n"
"compare the symbols and extension-api routes.");

static PyObject *
hkn_bound_functions(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return hkn_sqlite_api_bound(hkn_module_state(module));
}

PyDoc_STRVAR(hkn_live_doc,
"_live_connections($module, since=0, /)\n--\n\n"
"Open WalSafeConnections of this process (those opened after the\n"
"stats()[\"opened\"] value `since`) as a list of tuples\n"
"(path, thread_id, opened_at, opened_time, opened_via, serial): opened_via\n"
"is the captured stack as \"file:line in function\", innermost first;\n"
"serial is stats()[\"opened\"] right after the open.");

static PyObject *
hkn_live_connections(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    hkn_state *state = hkn_module_state(module);
    unsigned long long since = 0;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "_live_connections() takes at most 1 argument (%zd given)",
                     nargs);
        return NULL;
    }
    if (nargs == 1) {
        since = PyLong_AsUnsignedLongLong(args[0]);
        if (since == (unsigned long long)-1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_ssize_t count = 0;
    PyObject **items = hkn_registry_snapshot(state, &count);
    if (items == NULL) {
        return NULL;
    }
    PyObject *result = PyList_New(0);
    if (result == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *self = items[i];
        hkn_conn *conn = hkn_conn_get(self);
        /* Closed behind our back through sqlite3.Connection.close(), still
         * opening, or inherited over fork: not live here. */
        if (hkn_connection_handle(self) == NULL || conn->pid == 0
            || !hkn_same_process(state, conn) || conn->serial <= since) {
            continue;
        }
        PyObject *opener = hkn_opener_where(state, &conn->opener);
        PyObject *frames = opener == NULL ? NULL : hkn_opener_frames(&conn->opener);
        if (frames == NULL) {
            Py_XDECREF(opener);
            Py_CLEAR(result);
            goto done;
        }
        PyObject *row = Py_BuildValue("(OkOdOK)", conn->path ? conn->path : Py_None,
                                      conn->thread_ident, opener,
                                      conn->opened_time, frames, conn->serial);
        Py_DECREF(opener);
        Py_DECREF(frames);
        if (row == NULL
            || PyList_Append(result, row) < 0) {
            Py_XDECREF(row);
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(row);
    }
done:
    hkn_snapshot_free(items, count);
    return result;
}

PyDoc_STRVAR(hkn_close_all_doc,
"_close_all_at_exit($module, /)\n--\n\n"
"Checkpoint and close every WalSafeConnection still open (registered with\n"
"atexit: connections held by daemon threads are never garbage-collected).");

static PyObject *
hkn_close_all_at_exit(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    hkn_state *state = hkn_module_state(module);
    Py_ssize_t count = 0;
    PyObject **items = hkn_registry_snapshot(state, &count);
    if (items == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        hkn_close_at_exit(state, items[i]);
    }
    hkn_snapshot_free(items, count);
    Py_RETURN_NONE;
}

/* The (connection, enabled) arguments of set_persist_wal() and _guard():
 * 0 with *enabled set, or -1 with an exception naming `function`. */
static int
hkn_connection_and_flag(PyObject *const *args, Py_ssize_t nargs, const char *function,
                        PyTypeObject *type, int *enabled)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", function, nargs);
        return -1;
    }
    if (!PyObject_TypeCheck(args[0], type)) {
        PyErr_Format(PyExc_TypeError, "%s(): connection must be a %s, not %.100s",
                     function, type->tp_name, Py_TYPE(args[0])->tp_name);
        return -1;
    }
    *enabled = PyObject_IsTrue(args[1]);
    return *enabled < 0 ? -1 : 0;
}

PyDoc_STRVAR(hkn_persist_wal_doc,
"set_persist_wal($module, connection, enabled, /)\n--\n\n"
"Set SQLITE_FCNTL_PERSIST_WAL on the main database of any open\n"
"sqlite3.Connection: when enabled, that connection does not unlink -wal and\n"
"-shm when it is the last to close.  Needs native mode.");

static PyObject *
hkn_set_persist_wal(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    hkn_state *state = hkn_module_state(module);
    const hkn_sqlite_api *api = &state->api;
    int enabled;
    if (hkn_connection_and_flag(args, nargs, "set_persist_wal", state->base_type, &enabled) < 0) {
        return NULL;
    }
    if (!state->api.native) {
        PyErr_Format(state->NotSupportedError,
                     "persist_wal needs native access to SQLite, which is unavailable: %S",
                     state->api_reason);
        return NULL;
    }
    sqlite3 *db = hkn_connection_handle(args[0]);
    if (db == NULL) {
        PyErr_SetString(state->ProgrammingError, "Cannot operate on a closed database.");
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    /* SQLITE_NOTFOUND is what a VFS without persistent WAL answers. */
    rc = sqlite3_file_control(db, HKN_MAIN_DB, SQLITE_FCNTL_PERSIST_WAL, &enabled);
    Py_END_ALLOW_THREADS
    if (rc != SQLITE_OK) {
        hkn_set_sqlite_error(state, rc, rc, sqlite3_errstr(rc));
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hkn_track_doc,
"_track($module, enable, /)\n--\n\n"
"Start (enable true) or stop recording, for the pytest plugin's trackers\n"
"(its _Recording shares the one recording among them), the database paths\n"
"WalSafeConnections open and the connections the garbage collector closes.\n"
"Returns what was recorded since the previous call as (set of paths, list of\n"
"(path, opened_at, opened_via, thread_id, serial)), or None when nothing was\n"
"being recorded.");

static PyObject *
hkn_track(PyObject *module, PyObject *enable)
{
    hkn_state *state = hkn_module_state(module);
    int on = PyObject_IsTrue(enable);
    if (on < 0) {
        return NULL;
    }
    PyObject *paths = NULL, *log = NULL;
    if (on && ((paths = PySet_New(NULL)) == NULL
               || (log = PyList_New(0)) == NULL)) {
        Py_XDECREF(paths);
        return NULL;
    }
    /* Switch first: even when the result cannot be built, _track(False)
     * must stop the recording (the records are then lost). */
    PyObject *old_paths = state->opened_paths, *old_log = state->finalized_log;
    state->opened_paths = paths;
    state->finalized_log = log;
    if (old_paths == NULL) {
        Py_XDECREF(old_log);
        Py_RETURN_NONE;
    }
    PyObject *result = PyTuple_Pack(2, old_paths, old_log);
    Py_DECREF(old_paths);
    Py_XDECREF(old_log);
    return result;
}

/* The audit hook of hermes_kanban_native.stray.  A C hook, because a process
 * raises dozens of audit events per test (attribute reads, id(), os calls)
 * and a hook added with sys.addaudithook costs each of them a str and a
 * call, where this one costs a length check.  Audit hooks belong to the
 * runtime, not to an interpreter or a module, and cannot be removed, so this
 * is the one piece of process-wide state here: the hook is added once, and
 * passes events on only to the handler stray.py sets while someone listens,
 * only in the main interpreter (the module supports no other). */
static PyObject *hkn_audit_handler;     /* strong reference, or NULL */
static PyTypeObject *hkn_audit_walsafe; /* strong reference while a handler is set */
static PyObject *hkn_audit_seen;        /* the handler's dict of settled databases, or NULL */
static PyObject *hkn_audit_note;        /* where a settled database is noted */
static PyObject *hkn_audit_names;       /* the handler's set of database base names, or NULL */
static int hkn_audit_installed;

/* Which of the events the handler wants; names are compared by length
 * first: most events differ there. */
enum { HKN_AUDIT_OTHER, HKN_AUDIT_OPEN, HKN_AUDIT_CONNECT, HKN_AUDIT_HANDLE };

static int
hkn_audit_kind(const char *event)
{
    size_t len = strlen(event);
    if (len == 4 && strcmp(event, "open") == 0) {
        return HKN_AUDIT_OPEN;
    }
    if (len == 15 && strcmp(event, "sqlite3.connect") == 0) {
        return HKN_AUDIT_CONNECT;
    }
    if (len == 22 && strcmp(event, "sqlite3.connect/handle") == 0) {
        return HKN_AUDIT_HANDLE;
    }
    return HKN_AUDIT_OTHER;
}

/* The first argument of an event (borrowed), or NULL: the file of 'open',
 * the database of 'sqlite3.connect', the connection of its handle event. */
static PyObject *
hkn_audit_first(PyObject *args)
{
    return PyTuple_Check(args) && PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : NULL;
}

/* Whether a 'sqlite3.connect' event's database (NULL: none) is one the
 * handler has settled (a key of its `seen` dict): then the handler would
 * only note the database for the handle event that follows in this thread,
 * which is done here, as note.pending = seen[database], without running
 * Python code.
 * A Python call per open costs microseconds between SQLite's calls, where
 * the interpreter's caches are cold; this costs a dictionary lookup.  Any
 * failure leaves the event to the handler. */
static int
hkn_audit_settled(PyObject *database)
{
    /* The database as given (3.11+) or encoded (3.10: bytes); only an exact
     * str or bytes, whose lookup runs no code of the user's. */
    if (database == NULL || (!PyUnicode_CheckExact(database) && !PyBytes_CheckExact(database))) {
        return 0;
    }
    PyObject *seen = Py_NewRef(hkn_audit_seen);
    PyObject *note = Py_NewRef(hkn_audit_note);
    PyObject *path = PyDict_GetItemWithError(seen, database);
    Py_XINCREF(path);
    int settled = path != NULL && PyObject_SetAttrString(note, "pending", path) == 0;
    Py_XDECREF(path);
    Py_DECREF(note);
    Py_DECREF(seen);
    if (!settled) {
        PyErr_Clear();
    }
    return settled;
}

/* Whether an 'open' event's file (NULL: none) may be a database's the
 * handler knows: the file is not an exact str (bytes, a path-like object:
 * the handler decides), or its base name, without a -wal, -shm or -journal
 * suffix, is in the handler's set of names.  Every file a process opens raises the event
 * (imports, logs, a test's own files), and the handler then looks up just
 * that name: here that costs no Python call.  A descriptor (os.fdopen())
 * names no file and is never wanted.  Any failure leaves the event to the
 * handler. */
static int
hkn_audit_open_wanted(PyObject *file)
{
    if (file != NULL && PyLong_CheckExact(file)) {
        return 0;
    }
    if (file == NULL || !PyUnicode_CheckExact(file)) {
        return 1;
    }
    Py_ssize_t end = PyUnicode_GET_LENGTH(file);
    /* '/' is os.sep on every platform the module builds on (POSIX). */
    Py_ssize_t slash = PyUnicode_FindChar(file, '/', 0, end, -1);
    if (slash == -2) {          /* only a legacy str not made ready (< 3.12) */
        PyErr_Clear();
        return 1;
    }
    Py_ssize_t start = slash + 1;
    /* The sidecar suffixes of stray.py's _KINDS. */
    static const char *const suffixes[] = {"-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        const char *suffix = suffixes[i];
        Py_ssize_t n = (Py_ssize_t)strlen(suffix), j = 0;
        if (end - start < n) {
            continue;
        }
        while (j < n && PyUnicode_ReadChar(file, end - n + j) == (Py_UCS4)suffix[j]) {
            j++;
        }
        if (j == n) {
            end -= n;
            break;
        }
    }
    PyObject *names = Py_NewRef(hkn_audit_names);
    PyObject *name = PyUnicode_Substring(file, start, end);
    int wanted = name == NULL ? -1 : PySet_Contains(names, name);
    Py_XDECREF(name);
    Py_DECREF(names);
    if (wanted < 0) {
        PyErr_Clear();
        return 1;
    }
    return wanted;
}

static int
hkn_audit_hook(const char *event, PyObject *args, void *Py_UNUSED(data))
{
    if (hkn_audit_handler == NULL) {
        return 0;
    }
    int kind = hkn_audit_kind(event);
    if (kind == HKN_AUDIT_OTHER || PyInterpreterState_Get() != PyInterpreterState_Main()) {
        return 0;
    }
    /* A WalSafeConnection's handle event says nothing its registry entry
     * does not (path, opener), and stray.py wants those of plain
     * connections only: not calling Python for ours halves the calls per
     * open while the pytest plugin listens. */
    PyObject *first = hkn_audit_first(args);
    if (kind == HKN_AUDIT_HANDLE && hkn_audit_walsafe != NULL && first != NULL
        && PyObject_TypeCheck(first, hkn_audit_walsafe)) {
        return 0;
    }
    if (kind == HKN_AUDIT_CONNECT && hkn_audit_seen != NULL && hkn_audit_settled(first)) {
        return 0;
    }
    if (kind == HKN_AUDIT_OPEN && hkn_audit_names != NULL && !hkn_audit_open_wanted(first)) {
        return 0;
    }
    /* Held across the call: the handler may replace itself. */
    PyObject *handler = Py_NewRef(hkn_audit_handler);
    PyObject *result = PyObject_CallFunction(handler, "sO", event, args);
    Py_DECREF(handler);
    if (result == NULL) {
        return -1;          /* the audited operation fails with this exception */
    }
    Py_DECREF(result);
    return 0;
}

PyDoc_STRVAR(hkn_audit_doc,
"_set_audit_handler($module, handler, /, seen=None, note=None, names=None)\n--\n\n"
"Add the audit hook (once per process) and make handler(event, args)\n"
"receive the 'open', 'sqlite3.connect' and 'sqlite3.connect/handle' events\n"
"of the main interpreter, the last only for connections that are not\n"
"WalSafeConnections; None stops passing them on (the hook stays: audit\n"
"hooks cannot be removed).  With *seen* (a dict) and *note* (an object\n"
"that takes attributes), a 'sqlite3.connect' event whose database (a str,\n"
"or bytes on 3.10) is a key of *seen* does not reach the handler:\n"
"note.pending = seen[database] instead.  With *names* (a set, read at each\n"
"event), an 'open' event of a descriptor, or of a str path whose base name\n"
"without a -wal, -shm or -journal suffix is not in *names*, does not reach\n"
"the handler.");

static PyObject *
hkn_set_audit_handler(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"", "seen", "note", "names", NULL};
    PyObject *handler, *seen = Py_None, *note = Py_None, *names = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOO:_set_audit_handler", keywords,
                                     &handler, &seen, &note, &names)) {
        return NULL;
    }
    if (handler != Py_None && !PyCallable_Check(handler)) {
        PyErr_Format(PyExc_TypeError, "handler must be callable or None, not %R", handler);
        return NULL;
    }
    if (seen != Py_None && !PyDict_CheckExact(seen)) {
        PyErr_Format(PyExc_TypeError, "seen must be a dict or None, not %R", seen);
        return NULL;
    }
    /* Exact types: their lookups run no code of the user's. */
    if (names != Py_None && !PyAnySet_CheckExact(names)) {
        PyErr_Format(PyExc_TypeError, "names must be a set or None, not %R", names);
        return NULL;
    }
    if ((seen == Py_None) != (note == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "seen and note go together: give both or neither");
        return NULL;
    }
    if (handler != Py_None && !hkn_audit_installed) {
        if (PySys_AddAuditHook(hkn_audit_hook, NULL) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError,
                                "another audit hook refused this one (sys.addaudithook)");
            }
            return NULL;
        }
        hkn_audit_installed = 1;
    }
    /* What the hook uses beside the handler is set before it and cleared
     * after it, so the hook never sees a handler without its type (releasing
     * an old handler may run code that raises events).  The dict and the
     * note are replaced together: the hook takes both or neither.  The names
     * stand alone. */
    if (handler == Py_None) {
        Py_CLEAR(hkn_audit_handler);
        Py_CLEAR(hkn_audit_seen);
        Py_CLEAR(hkn_audit_note);
        Py_CLEAR(hkn_audit_names);
        Py_CLEAR(hkn_audit_walsafe);
    }
    else {
        PyTypeObject *walsafe = hkn_module_state(module)->walsafe_type;
        Py_XSETREF(hkn_audit_walsafe, (PyTypeObject *)Py_NewRef(walsafe));
        PyObject *old_seen = hkn_audit_seen, *old_note = hkn_audit_note;
        hkn_audit_seen = seen == Py_None ? NULL : Py_NewRef(seen);
        hkn_audit_note = note == Py_None ? NULL : Py_NewRef(note);
        Py_XDECREF(old_seen);
        Py_XDECREF(old_note);
        Py_XSETREF(hkn_audit_names, names == Py_None ? NULL : Py_NewRef(names));
        Py_XSETREF(hkn_audit_handler, Py_NewRef(handler));
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hkn_guard_doc,
"_guard(connection, enabled, /)\n--\n\n"
"Take (enabled true: after hkn.connect() switched the database to WAL) or\n"
"drop this WalSafeConnection's claim on its database's WAL guard.");

static PyObject *
hkn_guard_switch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    hkn_state *state = hkn_module_state(module);
    int enabled;
    if (hkn_connection_and_flag(args, nargs, "_guard", state->walsafe_type, &enabled) < 0) {
        return NULL;
    }
    sqlite3 *db = hkn_connection_handle(args[0]);
    hkn_conn *conn = hkn_conn_get(args[0]);
    /* In-memory and temporary databases have no WAL generation to guard. */
    if (db == NULL || conn->pid == 0 || !hkn_same_process(state, conn) || !state->api.native
        || conn->path == NULL || PyUnicode_GET_LENGTH(conn->path) == 0) {
        Py_RETURN_NONE;
    }
    if (enabled) {
        (void)hkn_guard_opt_out(state, conn, db, 0);
        if (conn->guard == NULL) {
            if (hkn_guard_claim(state, conn, db, NULL) < 0) {
                return NULL;
            }
        }
        else {
            hkn_guard_refresh(state, conn, db);
        }
    }
    else {
        hkn_guard_release(state, conn, 1);
        if (hkn_guard_opt_out(state, conn, db, 1) < 0) {
            return NULL;
        }
    }
    return PyBool_FromLong(conn->guard != NULL);
}

PyDoc_STRVAR(hkn_after_fork_doc,
"_after_fork_in_child($module, /)\n--\n\n"
"Registered with os.register_at_fork: marks every inherited connection as\n"
"the parent's, and leaves the guard's locks to the parent.");

static PyObject *
hkn_after_fork_in_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    hkn_state *state = hkn_module_state(module);
    state->fork_generation++;
    state->pid = getpid();
    hkn_guard_after_fork(state);
    Py_RETURN_NONE;
}

#ifdef HKN_FAULTS
PyDoc_STRVAR(hkn_fault_reset_once_doc,
"_fault_reset_once($module, /)\n--\n\n"
"Fault-injection builds only: forget that the once-per-module warnings were\n"
"issued, that SQLite's inode record was checked, the class settings read\n"
"and the last file name decoded, so that each fault test can reach the\n"
"points on their path.");

static PyObject *
hkn_fault_reset_once(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    hkn_module_state(module)->guard_warned = 0;
    hkn_module_state(module)->guard_inode_methods = NULL;
    memset(hkn_module_state(module)->settings, 0, sizeof(hkn_module_state(module)->settings));
    Py_CLEAR(hkn_module_state(module)->last_path);
    Py_RETURN_NONE;
}
#endif

static PyMethodDef hkn_module_methods[] = {
    {"stats", hkn_stats_dict, METH_NOARGS, hkn_stats_doc},
    {"sqlite_api", hkn_sqlite_api_info, METH_NOARGS, hkn_sqlite_api_doc},
    {"_bound_functions", hkn_bound_functions, METH_NOARGS, hkn_bound_functions_doc},
    {"_live_connections", (PyCFunction)(void (*)(void))hkn_live_connections, METH_FASTCALL,
     hkn_live_doc},
    {"_start_test", hkn_start_test, METH_NOARGS, hkn_start_test_doc},
    {"_opened", hkn_opened, METH_NOARGS, hkn_opened_doc},
    {"_close_all_at_exit", hkn_close_all_at_exit, METH_NOARGS, hkn_close_all_doc},
    {"_track", hkn_track, METH_O, hkn_track_doc},
    {"_set_audit_handler", (PyCFunction)(void (*)(void))hkn_set_audit_handler,
     METH_VARARGS | METH_KEYWORDS, hkn_audit_doc},
    {"_opener_here", hkn_opener_here, METH_NOARGS,
     PyDoc_STR("_opener_here($module, /)\n--\n\n"
               "(opened_at, opened_via) for the calling code, as a WalSafeConnection\n"
               "opened here would report them.")},
    {"_after_fork_in_child", hkn_after_fork_in_child, METH_NOARGS, hkn_after_fork_doc},
    {"_guard", (PyCFunction)(void (*)(void))hkn_guard_switch, METH_FASTCALL, hkn_guard_doc},
    {"set_persist_wal", (PyCFunction)(void (*)(void))hkn_set_persist_wal, METH_FASTCALL,
     hkn_persist_wal_doc},
    /* the raw scanners: csrc/linux/fdscan.c, or csrc/other/fdscan.c */
    {"_scan_fds", (PyCFunction)(void (*)(void))hkn_scan_fds, METH_VARARGS | METH_KEYWORDS,
     hkn_scan_fds_doc},
    {"_scan_maps", (PyCFunction)(void (*)(void))hkn_scan_maps, METH_VARARGS | METH_KEYWORDS,
     hkn_scan_maps_doc},
    {"_scan_locks", hkn_scan_locks, METH_NOARGS, hkn_scan_locks_doc},
    {"_scan_fd_locks", hkn_scan_fd_locks, METH_VARARGS, hkn_scan_fd_locks_doc},
#ifdef HKN_FAULTS
    {"_fault_reset_once", hkn_fault_reset_once, METH_NOARGS, hkn_fault_reset_once_doc},
#endif
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------ init */

/* Each helper below is one fault point hit from several places of the exec
 * slot, and returns at the first failure, so that no Python call runs with
 * an exception already set. */
static int
hkn_take(PyObject *from, const char *name, PyObject **slot)
{
    *slot = PyObject_GetAttrString(from, name);
    return *slot == NULL ? -1 : 0;
}

static int
hkn_intern(const char *text, PyObject **slot)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

static PyObject *
hkn_import(const char *name)
{
    return PyImport_ImportModule(name);
}

static int
hkn_make_checkpoint_result(PyObject *module, hkn_state *state)
{
    PyObject *collections = hkn_import("collections");
    if (collections == NULL) {
        return -1;
    }
    PyObject *cls = PyObject_CallMethod(collections, "namedtuple", "ss",
                                        "CheckpointResult",
                                        "mode busy log_frames checkpointed_frames");
    Py_DECREF(collections);
    if (cls == NULL) {
        return -1;
    }
    state->checkpoint_result = cls;
    PyObject *owner = PyUnicode_FromString("hermes_kanban_native");
    if (owner == NULL
        || PyObject_SetAttrString(cls, "__module__", owner) < 0) {
        Py_XDECREF(owner);
        return -1;
    }
    Py_DECREF(owner);
    PyObject *doc = PyUnicode_FromString(
"CheckpointResult(mode, busy, log_frames, checkpointed_frames)\n\n"
"What one WAL checkpoint did.  mode: 'passive', 'full', 'restart' or\n"
"'truncate'.  busy: True when SQLite returned SQLITE_BUSY (another\n"
"connection kept it from finishing; close() never waits for it).\n"
"log_frames: frames in the WAL, checkpointed_frames: frames copied back\n"
"into the database; both -1 when the database is not in WAL mode.");
    if (doc == NULL
        || PyObject_SetAttrString(cls, "__doc__", doc) < 0) {
        Py_XDECREF(doc);
        return -1;
    }
    Py_DECREF(doc);
    return PyModule_AddObjectRef(module, "CheckpointResult", cls);
}

/* Appends `dir` as a prefix ending in `sep` to `list`; anything but a
 * non-empty str (a sys attribute someone replaced) is left out. */
static int
hkn_add_prefix(PyObject *list, PyObject *dir, PyObject *sep)
{
    if (dir == NULL || !PyUnicode_Check(dir) || PyUnicode_GET_LENGTH(dir) == 0) {
        return 0;
    }
    PyObject *prefix = PyUnicode_Tailmatch(dir, sep, 0, PY_SSIZE_T_MAX, 1) == 1
                       ? Py_NewRef(dir)
                       : PyUnicode_Concat(dir, sep);
    int rc = prefix == NULL ? -1
             : PyList_Append(list, prefix);
    Py_XDECREF(prefix);
    return rc;
}

static int
hkn_prefix_tuple(PyObject *list, PyObject **slot)
{
    *slot = PyList_AsTuple(list);
    return *slot == NULL ? -1 : 0;
}

/* The directories opener.c judges frames by: this package's own (skipped
 * when capturing), the standard library's (plus frozen modules, whose
 * co_filename is "<frozen name>") and the installation's, sys.prefix and
 * friends (pytest, pluggy and other installed code live below them). */
static int
hkn_find_dirs(PyObject *module, hkn_state *state)
{
    PyObject *file = PyModule_GetFilenameObject(module);
    if (file == NULL) {
        return -1;
    }
    PyObject *os = hkn_import("os");
    PyObject *os_path = NULL, *dir = NULL, *sep = NULL, *os_file = NULL;
    PyObject *stdlib = NULL, *installed = NULL, *frozen = NULL;
    int status = -1;
    if (os == NULL
        || hkn_take(os, "path", &os_path) < 0
        || hkn_take(os_path, "sep", &sep) < 0
        || (dir = PyObject_CallMethod(os_path, "dirname", "O", file)) == NULL
        || (state->package_dir = PyUnicode_Concat(dir, sep)) == NULL) {
        goto done;
    }
    Py_CLEAR(dir);
    /* os.__file__ is missing only in unusual embeddings; frames are then
     * judged by the installation prefixes alone. */
    os_file = PyObject_GetAttrString(os, "__file__");
    PyErr_Clear();
    if (os_file != NULL
        && (dir = PyObject_CallMethod(os_path, "dirname", "O", os_file)) == NULL) {
        goto done;
    }
    if ((stdlib = PyList_New(0)) == NULL
        || (installed = PyList_New(0)) == NULL
        || hkn_intern("<frozen ", &frozen) < 0
        || PyList_Append(stdlib, frozen) < 0
        || hkn_add_prefix(stdlib, dir, sep) < 0) {
        goto done;
    }
    static const char *const names[4] = {"prefix", "base_prefix", "exec_prefix",
                                         "base_exec_prefix"};
    for (int i = 0; i < 4; i++) {
        if (hkn_add_prefix(installed, PySys_GetObject(names[i]), sep) < 0) {
            goto done;
        }
    }
    if (hkn_prefix_tuple(stdlib, &state->stdlib_prefixes) == 0
        && hkn_prefix_tuple(installed, &state->install_prefixes) == 0) {
        status = 0;
    }
done:
    Py_DECREF(file);
    Py_XDECREF(os);
    Py_XDECREF(os_path);
    Py_XDECREF(dir);
    Py_XDECREF(sep);
    Py_XDECREF(os_file);
    Py_XDECREF(stdlib);
    Py_XDECREF(installed);
    Py_XDECREF(frozen);
    return status;
}

/* atexit (connections held by daemon threads are never collected) and
 * os.register_at_fork (forked children leave inherited connections alone; a
 * counter bumped after fork is cheaper to compare than getpid() on each
 * close).  Last in the exec slot, so that nothing else can fail after a hook
 * holds the module; os.register_at_fork has no way back, so it goes second
 * and a failure of it takes the atexit hook back. */
static int
hkn_register_hooks(PyObject *module)
{
    PyObject *atexit = hkn_import("atexit");
    if (atexit == NULL) {
        return -1;
    }
    PyObject *closer = NULL;
    if (hkn_take(module, "_close_all_at_exit", &closer) < 0) {
        Py_DECREF(atexit);
        return -1;
    }
    PyObject *res = PyObject_CallMethod(atexit, "register", "O", closer);
    if (res == NULL) {
        Py_DECREF(closer);
        Py_DECREF(atexit);
        return -1;
    }
    Py_DECREF(res);

    int status = -1;
    PyObject *os = hkn_import("os");
    PyObject *after_fork = NULL, *register_at_fork = NULL, *kwargs = NULL;
    if (os != NULL
        && hkn_take(module, "_after_fork_in_child", &after_fork) == 0
        && hkn_take(os, "register_at_fork", &register_at_fork) == 0
        && (kwargs = Py_BuildValue("{sO}", "after_in_child", after_fork)) != NULL) {
        res = PyObject_VectorcallDict(register_at_fork, NULL, 0, kwargs);
        if (res != NULL) {
            Py_DECREF(res);
            status = 0;
        }
    }
    Py_XDECREF(os);
    Py_XDECREF(after_fork);
    Py_XDECREF(register_at_fork);
    Py_XDECREF(kwargs);
    if (status < 0) {
        hkn_saved_error saved;
        hkn_error_save(&saved);
        PyObject *undone = PyObject_CallMethod(atexit, "unregister", "O", closer);
        Py_XDECREF(undone);
        PyErr_Clear();          /* best effort: the module then lives on in atexit */
        hkn_error_restore(&saved);
    }
    Py_DECREF(closer);
    Py_DECREF(atexit);
    return status;
}

static int
hkn_module_exec(PyObject *module)
{
#if !HKN_PY_HAS_INTERPRETERS_SLOT
    /* What Py_mod_multiple_interpreters says from 3.12: the fcntl wrappers,
     * the audit hook and SQLite's lock state are the process's, and a
     * subinterpreter's copy would run its handlers in the main one. */
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError,
                        "hermes_kanban_native does not support subinterpreters: "
                        "import it in the main interpreter only");
        return -1;
    }
#endif
    hkn_state *state = hkn_module_state(module);
    state->registry.prev = state->registry.next = &state->registry;
    state->pid = getpid();

    state->sqlite3_module = hkn_import("sqlite3");
    if (state->sqlite3_module == NULL) {
        return -1;
    }
    PyObject *base = NULL;
    if (hkn_take(state->sqlite3_module, "Connection", &base) < 0) {
        return -1;
    }
    if (!PyType_Check(base) || !(((PyTypeObject *)base)->tp_flags & Py_TPFLAGS_BASETYPE)
        || !(((PyTypeObject *)base)->tp_flags & Py_TPFLAGS_HAVE_GC)) {
        Py_DECREF(base);
        PyErr_SetString(PyExc_ImportError,
                        "sqlite3.Connection is not a subclassable GC type on this Python");
        return -1;
    }
    state->base_type = (PyTypeObject *)base;

    PyObject *m = state->sqlite3_module;
    if (hkn_take(m, "Error", &state->Error) < 0
        || hkn_take(m, "InterfaceError", &state->InterfaceError) < 0
        || hkn_take(m, "DatabaseError", &state->DatabaseError) < 0
        || hkn_take(m, "DataError", &state->DataError) < 0
        || hkn_take(m, "OperationalError", &state->OperationalError) < 0
        || hkn_take(m, "IntegrityError", &state->IntegrityError) < 0
        || hkn_take(m, "InternalError", &state->InternalError) < 0
        || hkn_take(m, "ProgrammingError", &state->ProgrammingError) < 0
        || hkn_take(m, "NotSupportedError", &state->NotSupportedError) < 0) {
        return -1;
    }

    static const char *const modes[4] = {"passive", "full", "restart", "truncate"};
    for (int i = 0; i < 4; i++) {
        if (hkn_intern(modes[i], &state->mode_names[i]) < 0) {
            return -1;
        }
    }
    if (hkn_intern("off", &state->str_off) < 0
        || hkn_intern("checkpoint_on_close", &state->str_checkpoint_on_close) < 0
        || hkn_intern("checkpoint_threshold", &state->str_checkpoint_threshold) < 0
        || hkn_intern("max_live_per_database", &state->str_max_live) < 0
        || hkn_intern("guard_wal", &state->str_guard_wal) < 0
        || hkn_intern("check_same_thread", &state->str_check_same_thread) < 0
        || hkn_take((PyObject *)state->base_type, "close", &state->base_close) < 0) {
        return -1;
    }
    state->bound_exceeded = PySet_New(NULL);
    if (state->bound_exceeded == NULL) {
        return -1;
    }
    if (hkn_find_dirs(module, state) < 0) {
        return -1;
    }

    if (hkn_sqlite_api_init(state) < 0) {
        return -1;
    }
    if (hkn_make_checkpoint_result(module, state) < 0) {
        return -1;
    }
    if (hkn_connection_exec(module, state) < 0) {
        return -1;
    }
    if (PyModule_AddFunctions(module, hkn_module_methods) < 0) {
        return -1;
    }
#ifdef HKN_FAULTS
    if (hkn_faults_exec(module) < 0) {
        return -1;
    }
#endif
    return hkn_register_hooks(module);
}

/* Every object the module state owns, in one list: traverse visits and
 * clear clears exactly these, so the two cannot drift apart. */
#define HKN_STATE_OBJECTS(X)                                                   \
    X(base_type) X(walsafe_type) X(checkpoint_result) X(sqlite3_module)         \
    X(Error) X(InterfaceError) X(DatabaseError) X(DataError) X(OperationalError) \
    X(IntegrityError) X(InternalError) X(ProgrammingError) X(NotSupportedError)  \
    X(package_dir) X(stdlib_prefixes) X(install_prefixes)                       \
    X(str_checkpoint_on_close) X(str_checkpoint_threshold) X(str_off)           \
    X(str_max_live) X(str_guard_wal)                                            \
    X(str_check_same_thread) X(base_close) X(bound_exceeded)                    \
    X(mode_names[0]) X(mode_names[1]) X(mode_names[2]) X(mode_names[3])         \
    X(api_library) X(api_reason) X(api_routes_not_taken) X(opened_paths)         \
    X(finalized_log) X(guard_failure) X(last_path)

static int
hkn_module_traverse(PyObject *module, visitproc visit, void *arg)
{
    hkn_state *state = hkn_module_state(module);
#define HKN_VISIT_MEMBER(member) Py_VISIT(state->member);
    HKN_STATE_OBJECTS(HKN_VISIT_MEMBER)
#undef HKN_VISIT_MEMBER
    return 0;
}

static int
hkn_module_clear(PyObject *module)
{
    hkn_state *state = hkn_module_state(module);
#define HKN_CLEAR_MEMBER(member) Py_CLEAR(state->member);
    HKN_STATE_OBJECTS(HKN_CLEAR_MEMBER)
#undef HKN_CLEAR_MEMBER
    return 0;
}

static void
hkn_module_free(void *module)
{
    hkn_module_clear((PyObject *)module);
    free(hkn_module_state((PyObject *)module)->last_path_bytes);
    hkn_module_state((PyObject *)module)->last_path_bytes = NULL;
    hkn_guard_free_all(hkn_module_state((PyObject *)module));
    hkn_live_counts_free(hkn_module_state((PyObject *)module));
    hkn_sqlite_api_free(hkn_module_state((PyObject *)module));
}

static PyModuleDef_Slot hkn_module_slots[] = {
    {Py_mod_exec, hkn_module_exec},
#if HKN_PY_HAS_INTERPRETERS_SLOT
    /* One instance per process: the registry and the statistics describe
     * the process's connections, and SQLite's lock state is per process. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

struct PyModuleDef hkn_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hermes_kanban_native._native",
    .m_doc = "Native core of hermes_kanban_native: the WalSafeConnection type, its\n"
             "statistics and registry, and the /proc scanners.",
    .m_size = sizeof(hkn_state),
    .m_methods = NULL,
    .m_slots = hkn_module_slots,
    .m_traverse = hkn_module_traverse,
    .m_clear = hkn_module_clear,
    .m_free = hkn_module_free,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&hkn_module_def);
}
