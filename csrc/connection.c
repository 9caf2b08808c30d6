/* connection.c - WalSafeConnection, the sqlite3.Connection that checkpoints
 * natively when it closes or is garbage-collected, without ever waiting.
 *
 * The type itself: its layout after the base's fields, __init__, close(),
 * checkpoint(), the finalizer, attributes and the type spec.  What a
 * checkpoint does is checkpoint.c's; the registry and leak bound are
 * registry.c's; where it was opened is opener.c's.  Everything that is not
 * close-time behaviour is the base class's, untouched: we forward __init__,
 * delegate traverse/clear/dealloc, and call the base's own close().
 *
 * Facts this file rests on (docs/sqlite-internals.md):
 *  - 3.11+ close() with a stepped statement leaves a zombie handle that keeps
 *    the files open until the cursor is collected (CPython's
 *    sqlite3.Connection from C).
 *  - The base's finalizer (3.12+) closes with its own C code and 3.13 warns;
 *    a subclass needs its own finalizer (the same section).
 */
#include "hkn.h"

#include "structmember.h"       /* PyMemberDef, T_PYSSIZET on 3.10/3.11 */

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "fault_calls.h"     /* last: see faults.h */

/* Default of WalSafeConnection.max_live_per_database: far above what a
 * well-behaved process keeps open on one database, far below the 256-1024
 * descriptor limits that the leak exhausted. */
#define HKN_DEFAULT_MAX_LIVE 64

static void hkn_connection_dealloc(PyObject *self);

/* ---------------------------------------------------------------- layout */

/* The WalSafeConnection type an instance's type derives from.  Found by its
 * dealloc slot rather than through module state, because traverse, clear and
 * dealloc may run while interpreter teardown has already cleared the module. */
static PyTypeObject *
hkn_root_type(PyTypeObject *type)
{
    PyTypeObject *t = type;
    while (t != NULL && t->tp_dealloc != hkn_connection_dealloc) {
        t = t->tp_base;
    }
    while (t != NULL && t->tp_base != NULL && t->tp_base->tp_dealloc == hkn_connection_dealloc) {
        t = t->tp_base;
    }
    return t;
}

/* Where our part starts in every instance: HKN_CONN_OFFSET of
 * sqlite3.Connection's size.  That size is a property of the one _sqlite3
 * extension in the process, the same for every subclass, every interpreter
 * and every import of this module, so it is kept here rather than found
 * through the type on each of the dozen or so lookups a tick makes (about
 * 190 instructions per connect+close).  Written by hkn_connection_exec(),
 * before any instance exists, and always with the same value; still
 * readable while interpreter teardown clears the module. */
static Py_ssize_t hkn_conn_offset;

hkn_conn *
hkn_conn_get(PyObject *self)
{
    return (hkn_conn *)((char *)self + hkn_conn_offset);
}

static inline PyTypeObject *
hkn_base_type(PyObject *self)
{
    return hkn_root_type(Py_TYPE(self))->tp_base;
}

static hkn_state *
hkn_state_get(PyObject *self)
{
    hkn_state *state = PyType_GetModuleState(hkn_root_type(Py_TYPE(self)));
    if (state == NULL || state->base_type == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError,
                            "hermes_kanban_native was torn down (interpreter shutdown)");
        }
        return NULL;
    }
    return state;
}

/* ------------------------------------------------------------- settings */

static PyObject *
hkn_setting_name(hkn_state *state, hkn_setting_id which)
{
    switch (which) {
    case HKN_SETTING_POLICY:
        return state->str_checkpoint_on_close;
    case HKN_SETTING_THRESHOLD:
        return state->str_checkpoint_threshold;
    case HKN_SETTING_GUARD:
        return state->str_guard_wal;
    default:
        return state->str_max_live;
    }
}

/* Whether `self`'s attribute lookup is the ordinary one and finds nothing
 * on the instance: no __getattribute__/__getattr__ of a subclass, and an
 * empty instance dict (subclasses share our dict slot). */
static int
hkn_class_decides(PyObject *self)
{
    PyObject *dict = hkn_conn_get(self)->dict;
    return Py_TYPE(self)->tp_getattro == PyObject_GenericGetAttr
           && (dict == NULL || (PyDict_CheckExact(dict) && PyDict_GET_SIZE(dict) == 0));
}

/* Whether the version tag of `type` is current.  Up to 3.12 CPython also
 * clears Py_TPFLAGS_VALID_VERSION_TAG when a type changes (3.10 keeps the
 * stale tag meanwhile); from 3.13 the flag is never set, and a change
 * resets the tag to 0. */
static int
hkn_tag_valid(PyTypeObject *type)
{
#if PY_VERSION_HEX < 0x030D0000
    if (!PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        return 0;
    }
#endif
    return type->tp_version_tag != 0;
}

/* Whether the first class along `type`'s MRO that defines `name` holds
 * `value` itself (so that the value is the class's, not a descriptor's
 * result or an instance's). */
static int
hkn_class_holds(PyTypeObject *type, PyObject *name, PyObject *value)
{
    PyObject *mro = type->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro) || Py_TYPE(value)->tp_descr_get != NULL) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        if (dict == NULL) {
            return 0;           /* a static builtin type (3.12+): not ours */
        }
        PyObject *found = PyDict_GetItemWithError(dict, name);
        if (found != NULL) {
            return found == value;
        }
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    }
    return 0;
}

/* Whether `cache` holds a value read for `type` under its current version
 * tag. */
static inline int
hkn_cache_current(const hkn_setting_cache *cache, PyTypeObject *type)
{
    return cache->tag != 0 && cache->type == type && type->tp_version_tag == cache->tag
           && hkn_tag_valid(type);
}

PyObject *
hkn_setting(hkn_state *state, PyObject *self, hkn_setting_id which)
{
    PyTypeObject *type = Py_TYPE(self);
    hkn_setting_cache *cache = &state->settings[which];
    if (hkn_cache_current(cache, type) && hkn_class_decides(self)) {
        return Py_NewRef(cache->value);
    }
    PyObject *name = hkn_setting_name(state, which);
    PyObject *value = PyObject_GetAttr(self, name);
    /* What is kept is the class's own value for this version of the type
     * (the lookup gave the type a tag if it had none), borrowed from the
     * class dict that holds it while the tag lasts.  Whether the instance
     * or the type's lookup overrides it is asked again at every hit. */
    if (value != NULL && hkn_tag_valid(type) && hkn_class_holds(type, name, value)) {
        cache->type = type;
        cache->tag = type->tp_version_tag;
        cache->value = value;
        cache->known = 0;
    }
    return value;
}

int
hkn_setting_known(hkn_state *state, PyObject *self, hkn_setting_id which, long *decoded)
{
    PyTypeObject *type = Py_TYPE(self);
    hkn_setting_cache *cache = &state->settings[which];
    if (cache->known && hkn_cache_current(cache, type) && hkn_class_decides(self)) {
        *decoded = cache->decoded;
        return 1;
    }
    return 0;
}

void
hkn_setting_learn(hkn_state *state, PyObject *self, hkn_setting_id which,
                  PyObject *value, long decoded)
{
    /* Decoding may have run Python code (a __bool__, str.lower), so the
     * entry is checked again; and only a value of an immutable builtin type
     * means the same at every read. */
    PyTypeObject *type = Py_TYPE(self);
    hkn_setting_cache *cache = &state->settings[which];
    if (cache->value == value && hkn_cache_current(cache, type)
        && (value == Py_None || PyBool_Check(value) || PyLong_CheckExact(value)
            || PyUnicode_CheckExact(value))) {
        cache->decoded = decoded;
        cache->known = 1;
    }
}

/* ------------------------------------------------------ small predicates */

/* Mirrors the base's check_same_thread test with what __init__ recorded, so
 * that close() can refuse before touching the handle.  On mismatch the base
 * itself is called to raise its own ProgrammingError. */
static inline int
hkn_thread_ok(hkn_conn *conn)
{
    return !conn->check_same_thread || conn->thread_ident == PyThread_get_thread_ident();
}

static PyObject *
hkn_thread_error(hkn_state *state, hkn_conn *conn)
{
    PyErr_Format(state->ProgrammingError,
                 "SQLite objects created in a thread can only be used in that "
                 "same thread. The object was created in thread id %lu and this "
                 "is thread id %lu.",
                 conn->thread_ident, PyThread_get_thread_ident());
    return NULL;
}

/* Ownership of the handle while native code uses it without the GIL, so
 * that a close() from another thread (check_same_thread=False) cannot free
 * it under us.  Only read and written with the GIL held (the module keeps
 * the GIL enabled even on free-threaded builds), so a plain field is enough
 * and nothing is allocated per connection.  A contender yields the GIL until
 * the owner is done (the owner may need the GIL to finish); contention only
 * happens when threads close and checkpoint one connection at once.
 * Returns 0 when this thread already owns it (our own base close() ran a
 * finalizer that came back here): the caller then does no native work. */
static int
hkn_lock(hkn_conn *conn)
{
    unsigned long me = PyThread_get_thread_ident();
    if (conn->busy_owner == me) {
        return 0;
    }
    while (conn->busy_owner != 0) {
        Py_BEGIN_ALLOW_THREADS
        struct timespec pause = {0, 50000};
        /* An interrupted sleep only shortens one turn of the loop. */
        (void)nanosleep(&pause, NULL);
        Py_END_ALLOW_THREADS
    }
    conn->busy_owner = me;
    return 1;
}

static void
hkn_unlock(hkn_conn *conn)
{
    conn->busy_owner = 0;
}

/* The connection is going away: leave the registry and drop its claim on
 * the guard.  Callers do this before the base closes the handle, because
 * the last claim's release must come before SQLite's last-close EXCLUSIVE
 * attempt.  A forked child's copy never touches the locks: its inherited
 * descriptors share the parent's open file descriptions, and with them the
 * parent's OFD locks. */
static void
hkn_drop_guard(hkn_state *state, hkn_conn *conn)
{
    if (conn->guard != NULL) {
        if (hkn_same_process(state, conn)) {
            hkn_guard_release(state, conn, 0);
        }
        conn->guard = NULL;
    }
}


static void
hkn_unregister(hkn_state *state, hkn_conn *conn)
{
    hkn_drop_guard(state, conn);
    (void)hkn_guard_opt_out(state, conn, NULL, 0);
    hkn_registry_remove(state, conn);
}

static PyObject *
hkn_base_close(hkn_state *state, PyObject *self)
{
    return PyObject_CallOneArg(state->base_close, self);
}


PyDoc_STRVAR(hkn_close_doc,
"close($self, /)\n--\n\n"
"Checkpoint the WAL as checkpoint_on_close says, then close the connection.\n\n"
"The checkpoint runs natively with the busy handler turned off, so close()\n"
"never waits on another connection or process: a busy result is recorded\n"
"in last_checkpoint and stats() and the close goes on.  It is skipped for\n"
"in-memory, temporary, read-only and non-WAL databases, when a write\n"
"transaction is open (the close discards it, as sqlite3 does), and under\n"
"the default 'passive' policy when this connection wrote nothing or fewer\n"
"than checkpoint_threshold frames wait in the WAL.  A failed checkpoint is\n"
"reported with warnings.warn and never stops the close; an invalid\n"
"checkpoint_on_close or checkpoint_threshold raises ValueError after it.\n"
"Closing twice is a no-op; from a thread other than the opener's (with\n"
"check_same_thread), or from a callback (a trace callback) of this\n"
"connection's own checkpoint, it raises sqlite3.ProgrammingError and does\n"
"nothing.");

static PyObject *
hkn_connection_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    hkn_state *state = hkn_state_get(self);
    if (state == NULL) {
        return NULL;
    }
    hkn_conn *conn = hkn_conn_get(self);

    if (!hkn_thread_ok(conn) || hkn_connection_handle(self) == NULL
        || conn->pid == 0) {
        /* Wrong thread: the base raises its own error.  Closed or never
         * initialized by us: the base's own answer (a no-op, or its error). */
        if (hkn_thread_ok(conn) && hkn_connection_handle(self) == NULL) {
            hkn_unregister(state, conn);
        }
        return hkn_base_close(state, self);
    }
    if (!hkn_same_process(state, conn)) {
        /* Forked child: the parent's SQLite state is not ours to touch
         * (section 5); close as plain sqlite3 would. */
        hkn_unregister(state, conn);
        return hkn_base_close(state, self);
    }
    if (!hkn_lock(conn)) {
        if (conn->checkpointing) {
            /* From a callback of this connection's own checkpoint: closing
             * would free the handle under the statement it is running
             * (plain sqlite3 crashes on a close inside its own execute). */
            PyErr_SetString(state->ProgrammingError,
                            "close() called from inside this connection's checkpoint "
                            "(a callback of its statement)");
            return NULL;
        }
        return hkn_base_close(state, self);
    }
    if (hkn_connection_handle(self) == NULL) {
        /* Another thread closed it while this one waited for the lock:
         * closing twice is a no-op, and counted once. */
        hkn_unlock(conn);
        return hkn_base_close(state, self);
    }

    hkn_saved_error pending = {0};
    PyObject *invalid = NULL;
    int mode = hkn_policy(state, self, &invalid);
    if (mode == HKN_POLICY_INVALID && invalid == NULL) {
        hkn_error_save(&pending);       /* the attribute lookup itself failed */
    }
    if (mode >= 0 && hkn_connection_handle(self) != NULL) {
        conn->checkpointing = 1;
        if (hkn_close_checkpoint(state, conn, self, mode, 0) < 0) {
            hkn_error_save(&pending);
        }
        conn->checkpointing = 0;
    }
    hkn_drop_guard(state, conn);
    PyObject *res = hkn_base_close(state, self);
    /* Live until its handle is gone: SQLite parks the descriptor of a
     * connection closing while others are open, and the peak number of
     * live connections is what bounds parked descriptors.  A base close
     * that failed before closing leaves it open, live and closable again. */
    if (hkn_connection_handle(self) == NULL) {
        hkn_unregister(state, conn);
        state->stats.closed++;
    }
    hkn_unlock(conn);

    if (res == NULL) {
        hkn_error_drop(&pending);
        Py_XDECREF(invalid);
        return NULL;
    }
    if (hkn_error_saved(&pending)) {
        Py_DECREF(res);
        Py_XDECREF(invalid);
        hkn_error_restore(&pending);
        return NULL;
    }
    if (invalid != NULL) {
        Py_DECREF(res);
        hkn_mode_error(invalid, 1);
        Py_DECREF(invalid);
        return NULL;
    }
    return res;
}

/* ------------------------------------------------------ explicit checkpoint */

PyDoc_STRVAR(hkn_checkpoint_doc,
"checkpoint($self, /, mode='passive', *, wait=True)\n--\n\n"
"Checkpoint the WAL now and return a CheckpointResult.\n\n"
"Runs sqlite3_wal_checkpoint_v2 natively (invisible to set_trace_callback)\n"
"with the GIL released.  'full', 'restart' and 'truncate' wait for other\n"
"connections up to the busy timeout; with wait=False they try once and\n"
"report busy instead (restoring the timeout afterwards reads it with\n"
"PRAGMA busy_timeout, the one statement this method may run).  Errors\n"
"raise the sqlite3 module's exceptions: OperationalError ('database table\n"
"is locked') when this connection has a transaction open, ProgrammingError\n"
"when it is closed, used from another thread or called from a callback of\n"
"its own checkpoint; ValueError for an unknown\n"
"mode.  On a database not in WAL mode the result has log_frames == -1.");

static PyObject *
hkn_connection_checkpoint(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mode", "wait", NULL};
    PyObject *mode_obj = NULL;
    int wait = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$p:checkpoint", kwlist, &mode_obj, &wait)) {
        return NULL;
    }
    hkn_state *state = hkn_state_get(self);
    if (state == NULL) {
        return NULL;
    }
    hkn_conn *conn = hkn_conn_get(self);
    int mode = mode_obj == NULL ? SQLITE_CHECKPOINT_PASSIVE : hkn_parse_mode(state, mode_obj, 0);
    if (mode == HKN_POLICY_ERROR) {
        return NULL;
    }
    if (mode < 0) {
        return hkn_mode_error(mode_obj, 0);
    }
    if (!hkn_thread_ok(conn)) {
        return hkn_thread_error(state, conn);
    }
    if (hkn_connection_handle(self) == NULL) {
        PyErr_SetString(state->ProgrammingError, "Cannot operate on a closed database.");
        return NULL;
    }
    if (conn->pid == 0) {
        PyErr_SetString(state->ProgrammingError,
                        "WalSafeConnection.__init__ was not called on this object");
        return NULL;
    }
    if (!hkn_same_process(state, conn)) {
        PyErr_Format(state->ProgrammingError,
                     "this connection was opened in process %ld; a forked child "
                     "must open its own", (long)conn->pid);
        return NULL;
    }
    if (!hkn_lock(conn)) {
        PyErr_SetString(state->ProgrammingError,
                        conn->checkpointing
                        ? "checkpoint() called from inside this connection's checkpoint "
                          "(a callback of its statement)"
                        : "checkpoint() called from inside this connection's close()");
        return NULL;
    }
    if (hkn_connection_handle(self) == NULL) {
        /* Closed by another thread while we waited for the lock. */
        hkn_unlock(conn);
        PyErr_SetString(state->ProgrammingError, "Cannot operate on a closed database.");
        return NULL;
    }

    hkn_outcome out;
    conn->checkpointing = 1;
    int failed = hkn_checkpoint_run(state, conn, self, mode,
                                    wait ? HKN_CKPT_WAIT : HKN_CKPT_NOWAIT, NULL, &out) < 0;
    conn->checkpointing = 0;
    hkn_unlock(conn);

    if (failed) {
        return NULL;
    }
    if (out.rc != SQLITE_OK && out.rc != SQLITE_BUSY) {
        state->stats.checkpoint_errors++;
        hkn_set_sqlite_error(state, out.rc, out.extended, out.message);
        return NULL;
    }
    if (hkn_record_checkpoint(state, conn, mode, &out) < 0) {
        return NULL;
    }
    return Py_NewRef(conn->last_checkpoint);
}

/* ----------------------------------------------------------------- slots */

/* Closes the handle of `self` without the base's close(), for when that
 * cannot run (another thread) or failed before closing, because from 3.12 on
 * the base's dealloc no longer closes at all (its finalizer does, which ours
 * replaces; the fault tests leak the descriptors on 3.12 and 3.13 without
 * this).  Natively when we can: sqlite3_close_v2 is safe from any thread,
 * and nobody else can use a connection being finalized or failing its
 * __init__.  Otherwise through the base's finalizer (SQL mode; 3.13's also
 * warns); on 3.10 and 3.11 the base's dealloc closes.  Cost of bypassing
 * the base: on 3.12+ the few bytes of its trace/progress/authorizer
 * callback records, if the user set any, are not freed. */
static void
hkn_close_handle(hkn_state *state, PyObject *self)
{
    if (state->api.native) {
        sqlite3 *db = hkn_connection_handle(self);
        hkn_connection_forget_handle(self);
        const hkn_sqlite_api *api = &state->api;
        Py_BEGIN_ALLOW_THREADS
        (void)sqlite3_close_v2(db);
        Py_END_ALLOW_THREADS
    }
    else if (hkn_base_type(self)->tp_finalize != NULL) {
        hkn_base_type(self)->tp_finalize(self);
    }
}

/* The str of a database file name, the very object of the previous open
 * when it named the same file: decoding and hashing the name anew on every
 * open cost more than the rest of __init__'s own bookkeeping, and the leak
 * bound then compares the names of a database's connections by identity.
 * Without memory for the copy the name is simply not remembered. */
static PyObject *
hkn_path_str(hkn_state *state, const char *file)
{
    if (state->last_path != NULL && strcmp(state->last_path_bytes, file) == 0) {
        return Py_NewRef(state->last_path);
    }
    PyObject *path = PyUnicode_DecodeFSDefault(file);
    char *copy = path == NULL ? NULL : strdup(file);
    if (copy != NULL) {
        free(state->last_path_bytes);
        state->last_path_bytes = copy;
        Py_XSETREF(state->last_path, Py_NewRef(path));
    }
    return path;
}

/* The base's tp_new is object.__new__, which on 3.10-3.12 gives every
 * instance of a type with a dict slot an empty dict at once, and every
 * attribute lookup on the connection then searches it (about 450
 * instructions per open and close, a tenth of our whole cost).  Instance
 * attributes are rare here, so the dict is made when the first one is set,
 * as 3.13 does.  Anything else object.__new__ would say (an abstract
 * subclass) it still says; a base with its own tp_new keeps it. */
static PyObject *
hkn_connection_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    newfunc base_new = hkn_root_type(type)->tp_base->tp_new;
    if (base_new != PyBaseObject_Type.tp_new) {
        return base_new(type, args, kwds);
    }
    if (PyType_HasFeature(type, Py_TPFLAGS_IS_ABSTRACT)) {
        /* Without arguments: object.__new__ refuses those first when the
         * type's tp_new is not its own, and the error is about abstractness. */
        PyObject *none = PyTuple_New(0);
        PyObject *refused = none == NULL ? NULL : base_new(type, none, NULL);
        Py_XDECREF(none);
        return refused;
    }
    return type->tp_alloc(type, 0);
}

static int
hkn_connection_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    PyTypeObject *base = hkn_base_type(self);
    hkn_state *state = hkn_state_get(self);
    if (state == NULL) {
        return -1;
    }
    hkn_conn *conn = hkn_conn_get(self);

    /* __init__ again on an open connection: sqlite3.Connection closes the
     * old handle and opens the new one.  Close it our way first (close-time
     * checkpoint, guard released, counted), so that the base finds it
     * closed; if that close fails, so does the re-initialisation. */
    if (conn->pid != 0 && hkn_connection_handle(self) != NULL) {
        PyObject *closed = hkn_connection_close(self, NULL);
        if (closed == NULL) {
            return -1;
        }
        Py_DECREF(closed);
    }

    /* Registered before the base opens the file: from then on it holds a
     * descriptor, so the peak of live connections (which bounds SQLite's
     * parked descriptors) must count it. */
    int first_open = conn->prev == NULL;
    if (first_open) {
        conn->owner = self;
        hkn_registry_add(state, conn);
    }

    /* Everything the caller passed goes to the base unchanged: factory= is
     * called with sqlite3.connect's own arguments, and each Python version
     * validates its own set (docs/sqlite-internals.md, CPython's
     * sqlite3.Connection from C). */
    if (HKN_FAULT_POINT("tp_init", HKN_FAULT_RAISE, -1, base->tp_init(self, args, kwds)) < 0) {
        if (hkn_connection_handle(self) == NULL) {
            hkn_unregister(state, conn);
            return -1;
        }
        goto fail;              /* it failed after opening (an audit hook refused it) */
    }

    PyObject *flag = NULL;
    if (PyTuple_GET_SIZE(args) > 4) {
        flag = PyTuple_GET_ITEM(args, 4);
    }
    else if (kwds != NULL) {
        flag = PyDict_GetItemWithError(kwds, state->str_check_same_thread);
        if (flag == NULL && PyErr_Occurred()) {
            goto fail;
        }
    }
    int check_same_thread = 1;
    if (flag != NULL
        && (check_same_thread = PyObject_IsTrue(flag)) < 0) {
        goto fail;
    }

    PyObject *path = NULL;
    const char *file = NULL;
    if (state->api.native) {
        const hkn_sqlite_api *api = &state->api;
        file = sqlite3_db_filename(hkn_connection_handle(self), HKN_MAIN_DB);
        path = hkn_path_str(state, file ? file : "");
    }
    else {
        PyObject *row = hkn_sql_first_row(state, self, "PRAGMA database_list");
        if (row != NULL) {
            path = PySequence_GetItem(row, 2);
            Py_DECREF(row);
        }
        PyObject *changes = path == NULL ? NULL
                            : PyObject_GetAttrString(self, "total_changes");
        if (changes != NULL) {
            conn->changes_base = PyLong_AsLongLong(changes);
            Py_DECREF(changes);
        }
        if (changes == NULL || (conn->changes_base == -1 && PyErr_Occurred())) {
            Py_CLEAR(path);
        }
    }
    if (path == NULL) {
        goto fail;
    }
    Py_XSETREF(conn->path, path);
    if (PyUnicode_Check(path) && PyUnicode_GET_LENGTH(path) > 0) {
        if (hkn_live_count_enter(state, conn, path) < 0) {
            goto fail;
        }
    }
    else {
        hkn_live_count_leave(state, conn);    /* __init__ again, now in memory */
    }

    conn->owner = self;
    conn->check_same_thread = check_same_thread;
    conn->thread_ident = PyThread_get_thread_ident();
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0) {
        /* Never seen on Linux; `now` would be garbage, the second is not. */
        now.tv_sec = time(NULL);
        now.tv_nsec = 0;
    }
    conn->opened_time = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    hkn_opener_capture(state, &conn->opener);
    if (state->opened_paths != NULL
        && PySet_Add(state->opened_paths, path) < 0) {
        goto fail;
    }
    conn->pid = state->pid;     /* a connection opened after fork(): the hook ran first */
    conn->fork_generation = state->fork_generation;
    if (first_open && PyUnicode_GetLength(path) > 0 && hkn_enforce_bound(state, self, path) < 0) {
        goto fail;
    }
    if (state->api.native && conn->guard == NULL && PyUnicode_GetLength(path) > 0) {
        long guard;
        if (!hkn_setting_known(state, self, HKN_SETTING_GUARD, &guard)) {
            PyObject *wanted = hkn_setting(state, self, HKN_SETTING_GUARD);
            guard = wanted == NULL ? -1
                    : PyObject_IsTrue(wanted);
            if (guard >= 0) {
                hkn_setting_learn(state, self, HKN_SETTING_GUARD, wanted, guard);
            }
            Py_XDECREF(wanted);
        }
        if (guard < 0
            || (guard ? hkn_guard_claim(state, conn, hkn_connection_handle(self), file)
                      : hkn_guard_opt_out(state, conn, hkn_connection_handle(self), 1)) < 0) {
            goto fail;
        }
    }
    conn->serial = ++state->stats.opened;
    return 0;

fail:
    /* The base opened the database: close it again, so that a failed
     * __init__ leaves no handle (and no descriptors) to the finalizer. */
    {
        hkn_saved_error saved;
        hkn_error_save(&saved);
        hkn_unregister(state, conn);
        conn->pid = 0;
        PyObject *res = hkn_base_close(state, self);
        Py_XDECREF(res);
        PyErr_Clear();
        if (hkn_connection_handle(self) != NULL) {
            hkn_close_handle(state, self);
        }
        hkn_error_restore(&saved);
    }
    return -1;
}

/* The pytest plugin's record of a connection the collector had to close,
 * kept while it tracks a test: (path, opened_at, opened_via, thread_id,
 * serial).  The log is held for the duration: the allocations here can run
 * other finalizers, and one of them could stop the tracking. */
static int
hkn_log_finalized(hkn_state *state, hkn_conn *conn)
{
    PyObject *log = Py_NewRef(state->finalized_log);
    PyObject *where = hkn_opener_where(state, &conn->opener);
    PyObject *frames = where == NULL ? NULL : hkn_opener_frames(&conn->opener);
    PyObject *row = frames == NULL ? NULL
                    : Py_BuildValue("(OOOkK)", conn->path ? conn->path : Py_None,
                                    where, frames, conn->thread_ident,
                                    conn->serial);
    Py_XDECREF(where);
    Py_XDECREF(frames);
    int rc = row == NULL ? -1
             : PyList_Append(log, row);
    Py_XDECREF(row);
    Py_DECREF(log);
    return rc;
}

/* Garbage collection and interpreter shutdown of a connection nobody
 * closed: the same checkpoint as close(), then exactly one ResourceWarning
 * naming the database and the user code that opened it.  The warning is
 * issued without a `source` object so that a warnings filter capturing it
 * cannot resurrect the connection (and its files). */
static void
hkn_connection_finalize(PyObject *self)
{
    hkn_conn *conn = hkn_conn_get(self);
    if (conn->prev == NULL && conn->guard == NULL && !conn->opted_out
        && hkn_connection_handle(self) == NULL) {
        return;                 /* closed and unregistered (every closed tick) */
    }
    hkn_saved_error saved;
    hkn_error_save(&saved);

    hkn_state *state = PyType_GetModuleState(hkn_root_type(Py_TYPE(self)));
    if (state == NULL || state->base_type == NULL) {
        PyErr_Clear();
        goto done;
    }
    if (hkn_connection_handle(self) == NULL || conn->pid == 0
        || !hkn_same_process(state, conn)) {
        /* Not ours to checkpoint: closed, opened by the base's __init__
         * without ours (a subclass that skipped it), or a forked child's
         * copy of the parent's connection (no native work).  An open one
         * is closed as plain sqlite3 closes it: from 3.12 the base's
         * finalizer does (ours replaces it), before that its dealloc. */
        hkn_unregister(state, conn);
        destructor base_finalize = hkn_base_type(self)->tp_finalize;
        if (hkn_connection_handle(self) != NULL && base_finalize != NULL) {
            base_finalize(self);
            PyErr_Clear();
        }
        goto done;
    }
    /* Nobody else can hold the lock of an object being finalized: every
     * method call keeps `self` alive. */
    int locked = hkn_lock(conn);
    PyObject *invalid = NULL;
    int mode = hkn_policy(state, self, &invalid);
    if (mode == HKN_POLICY_INVALID) {
        if (invalid == NULL) {
            PyErr_WriteUnraisable(self);
        }
        else {
            hkn_mode_error(invalid, 1);
            Py_DECREF(invalid);
            PyErr_WriteUnraisable(self);
        }
    }
    const char *what = "closed it";
    if (mode >= 0) {
        unsigned long long before = state->stats.checkpoints;
        if (state->api.native || hkn_thread_ok(conn)) {
            /* SQL mode's checkpoint is a statement: a trace callback that
             * closes the connection is refused, as in close(). */
            int was_checkpointing = conn->checkpointing;
            conn->checkpointing = 1;
            if (hkn_close_checkpoint(state, conn, self, mode, 0) < 0) {
                PyErr_WriteUnraisable(self);
            }
            conn->checkpointing = was_checkpointing;
        }
        what = state->stats.checkpoints > before ? "checkpointed and closed it"
                                                 : "closed it (no checkpoint needed)";
    }
    hkn_drop_guard(state, conn);
    state->stats.finalized++;

    if (!hkn_is_finalizing()) {
        PyObject *opener = hkn_opener_describe(state, &conn->opener);
        if (opener == NULL
            || PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                                "unclosed database %R opened at %U: "
                                "WalSafeConnection %s on garbage collection",
                                conn->path, opener, what) < 0) {
            PyErr_WriteUnraisable(self);
        }
        Py_XDECREF(opener);
        if (state->finalized_log != NULL && hkn_log_finalized(state, conn) < 0) {
            PyErr_WriteUnraisable(self);
        }
    }
    /* Close now.  The base's close() refuses another thread (the collector
     * runs wherever it is triggered); from another thread, or when the base's
     * close() failed before closing, the handle is closed without it. */
    if (hkn_thread_ok(conn)) {
        PyObject *res = hkn_base_close(state, self);
        if (res == NULL) {
            PyErr_WriteUnraisable(self);
        }
        Py_XDECREF(res);
    }
    if (hkn_connection_handle(self) != NULL) {
        hkn_close_handle(state, self);
    }
    hkn_unregister(state, conn);
    if (locked) {
        hkn_unlock(conn);
    }
done:
    hkn_error_restore(&saved);
}

void
hkn_close_at_exit(hkn_state *state, PyObject *self)
{
    hkn_conn *conn = hkn_conn_get(self);
    if (hkn_connection_handle(self) == NULL || !hkn_same_process(state, conn)
        || conn->pid == 0) {
        hkn_unregister(state, conn);
        return;
    }
    if (hkn_thread_ok(conn)) {
        /* The same path as garbage collection, warning included; through
         * PyObject_CallFinalizer so that it is marked as run once. */
        PyObject_CallFinalizer(self);
        return;
    }
    /* Owned by another thread that may still be running (a daemon thread):
     * checkpoint natively, but leave closing to the process exit, since the
     * base refuses a close from here and the owner may be mid-statement. */
    hkn_saved_error saved;
    hkn_error_save(&saved);
    if (state->api.native && hkn_lock(conn)) {
        /* The owner may have closed it while this thread waited for the
         * lock (hkn_close_checkpoint checks again after the settings). */
        PyObject *invalid = NULL;
        int mode = hkn_connection_handle(self) == NULL ? HKN_POLICY_OFF
                   : hkn_policy(state, self, &invalid);
        Py_XDECREF(invalid);
        PyErr_Clear();
        if (mode >= 0) {
            int was_checkpointing = conn->checkpointing;
            conn->checkpointing = 1;
            if (hkn_close_checkpoint(state, conn, self, mode, 1) < 0) {
                PyErr_WriteUnraisable(self);
            }
            conn->checkpointing = was_checkpointing;
        }
        hkn_unlock(conn);
    }
    /* Not closed (the process exit closes it): neither closed nor
     * finalized in stats(), only no longer live. */
    hkn_unregister(state, conn);
    hkn_error_restore(&saved);
}

static int
hkn_connection_traverse(PyObject *self, visitproc visit, void *arg)
{
    hkn_conn *conn = hkn_conn_get(self);
    Py_VISIT(conn->dict);
    Py_VISIT(conn->last_checkpoint);
    int rc = hkn_opener_traverse(&conn->opener, visit, arg);
    if (rc != 0) {
        return rc;
    }
    /* The base visits Py_TYPE(self), as a heap type's instances must. */
    return hkn_base_type(self)->tp_traverse(self, visit, arg);
}

static int
hkn_connection_clear(PyObject *self)
{
    hkn_conn *conn = hkn_conn_get(self);
    Py_CLEAR(conn->dict);
    Py_CLEAR(conn->last_checkpoint);
    return hkn_base_type(self)->tp_clear(self);
}

static void
hkn_connection_dealloc(PyObject *self)
{
    /* 3.10/3.11's base dealloc never calls a finalizer, so ours is run from
     * here; the GC's "finalized" flag keeps it to one call when the base
     * (3.12+) or a Python subclass calls it too. */
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;                 /* resurrected */
    }
    PyTypeObject *base = hkn_base_type(self);
    hkn_conn *conn = hkn_conn_get(self);
    /* Weakref callbacks run Python code that may collect garbage or list
     * the live connections: by then the object must be neither tracked
     * (the collector would free it a second time) nor registered (a
     * snapshot would take a reference to it).  A Python subclass's __del__
     * that does not call ours leaves it registered until here. */
    PyObject_GC_UnTrack(self);
    if (conn->prev != NULL || conn->guard != NULL) {
        hkn_state *state = PyType_GetModuleState(hkn_root_type(Py_TYPE(self)));
        if (state != NULL) {
            hkn_unregister(state, conn);
        }
        PyErr_Clear();
    }
    if (conn->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    Py_CLEAR(conn->path);
    hkn_opener_clear(&conn->opener);
    /* Tracked again, as CPython's subtype_dealloc does before it calls a GC
     * base's dealloc: 3.12+'s base begins with
     * PyObject_CallFinalizerFromDealloc, which (a no-op by now) asserts in a
     * debug build that the object is tracked.  No Python code runs between
     * here and the base's untrack. */
    PyObject_GC_Track(self);
    /* Untracks, clears (through our tp_clear), closes, frees, and drops the
     * reference to the type. */
    base->tp_dealloc(self);
}

static PyObject *
hkn_get_last_checkpoint(PyObject *self, void *Py_UNUSED(closure))
{
    hkn_conn *conn = hkn_conn_get(self);
    return Py_NewRef(conn->last_checkpoint ? conn->last_checkpoint : Py_None);
}

static PyMethodDef hkn_connection_methods[] = {
    {"close", hkn_connection_close, METH_NOARGS, hkn_close_doc},
    {"checkpoint", (PyCFunction)(void (*)(void))hkn_connection_checkpoint,
     METH_VARARGS | METH_KEYWORDS, hkn_checkpoint_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef hkn_connection_getset[] = {
    {"last_checkpoint", hkn_get_last_checkpoint, NULL,
     "CheckpointResult of the latest checkpoint of this connection (close-time\n"
     "included), or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(hkn_connection_doc,
"A sqlite3.Connection that checkpoints the WAL natively when it is closed or\n"
"garbage-collected, without ever waiting on other connections.\n\n"
"Use it as sqlite3.connect(path, factory=WalSafeConnection, ...).  Apart from\n"
"close-time behaviour it is sqlite3.Connection.  The class attribute\n"
"checkpoint_on_close ('passive' by default; 'off', 'passive', 'full',\n"
"'restart' or 'truncate') may be overridden on a subclass or an instance.\n"
"Under 'passive', a close checkpoints only once checkpoint_threshold frames\n"
"(default 256; 0: after every write) wait in the WAL, where the guard can\n"
"read the count; the other modes checkpoint at every close.\n\n"
"max_live_per_database (default 64; None or 0 turns it off) bounds leaks:\n"
"when opening one more connection to a database would exceed it, the\n"
"garbage collector runs once so that abandoned connections are finalized;\n"
"if the bound still holds, the connection opens anyway with one\n"
"ResourceWarning naming where the live ones were opened.\n\n"
"guard_wal (default True) holds SQLite's protective WAL locks again as\n"
"open-file-description locks while the connection is open (Linux), so a\n"
"stray open()/close() of the database elsewhere in the process cannot get\n"
"the live -wal/-shm unlinked by another process.  Set it on a subclass, or\n"
"on the instance before the base __init__ runs.");

/* type.name = value, for the class attributes' defaults. */
static int
hkn_set_int(PyObject *type, PyObject *name, long value)
{
    PyObject *number = PyLong_FromLong(value);
    if (number == NULL) {
        return -1;
    }
    int status = PyObject_SetAttr(type, name, number);
    Py_DECREF(number);
    return status;
}

int
hkn_connection_exec(PyObject *module, hkn_state *state)
{
    Py_ssize_t offset = HKN_CONN_OFFSET(state->base_type->tp_basicsize);
    hkn_conn_offset = offset;
    PyMemberDef members[] = {
        {"__dictoffset__", T_PYSSIZET, offset + (Py_ssize_t)offsetof(hkn_conn, dict), READONLY, NULL},
        {"__weaklistoffset__", T_PYSSIZET, offset + (Py_ssize_t)offsetof(hkn_conn, weakreflist),
         READONLY, NULL},
        {NULL, 0, 0, 0, NULL},
    };
    PyType_Slot slots[] = {
        {Py_tp_doc, (void *)hkn_connection_doc},
        {Py_tp_new, (void *)hkn_connection_new},
        {Py_tp_init, (void *)hkn_connection_init},
        {Py_tp_finalize, (void *)hkn_connection_finalize},
        {Py_tp_dealloc, (void *)hkn_connection_dealloc},
        {Py_tp_traverse, (void *)hkn_connection_traverse},
        {Py_tp_clear, (void *)hkn_connection_clear},
        {Py_tp_methods, hkn_connection_methods},
        {Py_tp_getset, hkn_connection_getset},
        {Py_tp_members, members},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "hermes_kanban_native.WalSafeConnection",
        .basicsize = (int)(offset + (Py_ssize_t)sizeof(hkn_conn)),
        .itemsize = 0,
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    PyObject *bases = PyTuple_Pack(1, (PyObject *)state->base_type);
    if (bases == NULL) {
        return -1;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, &spec, bases);
    Py_DECREF(bases);
    if (type == NULL) {
        return -1;
    }
    state->walsafe_type = (PyTypeObject *)type;
    /* The spec's dotted name gave the type its __module__; its tp_name is
     * now the bare class name, as a class statement's would be.  CPython
     * formats tp_name into every AttributeError about an instance, and the
     * base's __init__ raises and swallows three or four of them per open
     * (functools.update_wrapper around the connection): at about 7
     * instructions a character, the dotted name cost ~410 per open. */
    PyObject *bare = PyUnicode_FromString("WalSafeConnection");
    int named = bare == NULL ? -1 : PyObject_SetAttrString(type, "__name__", bare);
    Py_XDECREF(bare);
    if (named < 0) {
        return -1;
    }
    if (PyObject_SetAttrString(type, "checkpoint_on_close",
                               state->mode_names[SQLITE_CHECKPOINT_PASSIVE]) < 0) {
        return -1;
    }
    if (hkn_set_int(type, state->str_checkpoint_threshold, HKN_DEFAULT_THRESHOLD) < 0
        || hkn_set_int(type, state->str_max_live, HKN_DEFAULT_MAX_LIVE) < 0) {
        return -1;
    }
    if (PyObject_SetAttr(type, state->str_guard_wal,
                         hkn_guard_unavailable() == NULL ? Py_True
                                                         : Py_False) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "WalSafeConnection", type);
}
