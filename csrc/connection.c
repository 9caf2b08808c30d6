/* connection.c - WalSafeConnection, the sqlite3.Connection that checkpoints
 * natively when it closes or is garbage-collected, without ever waiting.
 *
 * The close-time policy lives here and nowhere else.  Everything that is not
 * close-time behaviour is the base class's, untouched: we forward __init__,
 * delegate traverse/clear/dealloc, and call the base's own close().
 *
 * Facts this file rests on (docs/sqlite-internals.md):
 *  - PASSIVE never calls the busy handler; FULL/RESTART/TRUNCATE wait up to
 *    the busy timeout, so close() turns the handler off first (Checkpoints).
 *  - A checkpoint on a connection with an open transaction or a stepped
 *    statement returns SQLITE_LOCKED (Checkpoints).
 *  - 3.11+ close() with a stepped statement leaves a zombie handle that keeps
 *    the files open until the cursor is collected (CPython's
 *    sqlite3.Connection from C).
 *  - The base's finalizer (3.12+) closes with its own C code and 3.13 warns;
 *    a subclass needs its own finalizer (the same section).
 */
#include "hkn.h"

#include "structmember.h"       /* PyMemberDef, T_PYSSIZET on 3.10/3.11 */
#if PY_VERSION_HEX < 0x030B0000
#endif

#include <string.h>
#include <time.h>
#include <unistd.h>

/* Default of WalSafeConnection.max_live_per_database: far above what a
 * well-behaved process keeps open on one database, far below the 256-1024
 * descriptor limits that the leak exhausted. */
#define HKN_DEFAULT_MAX_LIVE 64

/* Close-time policy values besides the SQLITE_CHECKPOINT_* modes. */
#define HKN_POLICY_OFF      (-1)
#define HKN_POLICY_INVALID  (-2)
#define HKN_POLICY_ERROR    (-3)    /* parsing itself failed: exception set */

/* Why a close-time checkpoint did not run (counted in checkpoints_skipped). */
typedef enum {
    HKN_RAN = 0,
    HKN_SKIP_NOT_FILE,      /* :memory:, "" (temporary) */
    HKN_SKIP_READONLY,
    HKN_SKIP_TRANSACTION,   /* a transaction is open: the base discards it */
    HKN_SKIP_UNCHANGED,     /* passive policy and this connection wrote nothing */
    HKN_SKIP_NOT_WAL,
} hkn_skip;

typedef struct {
    int rc;
    int extended;
    int log_frames;
    int checkpointed_frames;
    int busy_statements;
    hkn_skip skipped;
    char message[256];
} hkn_outcome;

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

hkn_conn *
hkn_conn_get(PyObject *self)
{
    PyTypeObject *root = hkn_root_type(Py_TYPE(self));
    return (hkn_conn *)((char *)self + HKN_CONN_OFFSET(root->tp_base->tp_basicsize));
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

static int
hkn_match_mode(hkn_state *state, PyObject *value, int allow_off)
{
    for (int mode = 0; mode < 4; mode++) {
        if (PyUnicode_Compare(value, state->mode_names[mode]) == 0) {
            return mode;
        }
    }
    if (allow_off && PyUnicode_Compare(value, state->str_off) == 0) {
        return HKN_POLICY_OFF;
    }
    PyErr_Clear();
    return HKN_POLICY_INVALID;
}

/* Parses a mode name: SQLITE_CHECKPOINT_*, HKN_POLICY_OFF when `allow_off`
 * and the value is "off", HKN_POLICY_INVALID otherwise.  Case-insensitive,
 * as SQLite's own PRAGMA is.  HKN_POLICY_ERROR with the exception set when
 * lower() itself fails: a MemoryError there says nothing about the value. */
static int
hkn_parse_mode(hkn_state *state, PyObject *value, int allow_off)
{
    if (value == NULL || !PyUnicode_Check(value)) {
        return HKN_POLICY_INVALID;
    }
    int mode = hkn_match_mode(state, value, allow_off);
    if (mode != HKN_POLICY_INVALID) {
        return mode;
    }
    /* Only the rare mixed-case spelling pays for lower(). */
    PyObject *lower = HKN_FAULT_PY("connection.parse_mode.lower", NULL,
                                   PyObject_CallMethod(value, "lower", NULL));
    if (lower == NULL) {
        return HKN_POLICY_ERROR;
    }
    mode = PyUnicode_Check(lower) ? hkn_match_mode(state, lower, allow_off) : HKN_POLICY_INVALID;
    Py_DECREF(lower);
    return mode;
}

static PyObject *
hkn_mode_error(PyObject *value, int allow_off)
{
    PyErr_Format(PyExc_ValueError,
                 "%s must be one of %s'passive', 'full', 'restart', 'truncate', not %R",
                 allow_off ? "checkpoint_on_close" : "mode",
                 allow_off ? "'off', " : "", value);
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
        (void)HKN_FAULT_SYS("connection.lock.nanosleep", EINTR, -1, nanosleep(&pause, NULL));
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

/* --------------------------------------------------------- bookkeeping */

static PyObject *
hkn_make_result(hkn_state *state, int mode, int busy, int log_frames, int checkpointed)
{
    return HKN_FAULT_PY("connection.make_result.call", NULL,
                        PyObject_CallFunction(state->checkpoint_result, "OOii",
                                              state->mode_names[mode],
                                              busy ? Py_True : Py_False,
                                              log_frames, checkpointed));
}

/* Records a checkpoint that ran: last_checkpoint and the counters. */
static int
hkn_record(hkn_state *state, hkn_conn *conn, int mode, const hkn_outcome *out)
{
    int busy = out->rc == SQLITE_BUSY;
    PyObject *result = hkn_make_result(state, mode, busy, out->log_frames,
                                       out->checkpointed_frames);
    if (result == NULL) {
        return -1;
    }
    Py_XSETREF(conn->last_checkpoint, result);
    state->stats.checkpoints++;
    if (busy) {
        state->stats.checkpoints_busy++;
    }
    if (out->checkpointed_frames > 0) {
        state->stats.frames_checkpointed += (unsigned long long)out->checkpointed_frames;
    }
    return 0;
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

static Py_ssize_t hkn_count_live(hkn_state *state, PyObject *self, PyObject *path);

static void
hkn_unregister(hkn_state *state, hkn_conn *conn)
{
    hkn_drop_guard(state, conn);
    (void)hkn_guard_opt_out(state, conn, NULL, 0);
    if (conn->prev == NULL) {
        return;
    }
    hkn_registry_remove(state, conn);
    /* The leak bound remembers a database that stayed over its bound until
     * it is under it again; once no connection to it is left, there is
     * nothing to remember (a process that opens many databases would
     * otherwise keep every path).  Discarding a str cannot fail. */
    if (conn->path != NULL && PySet_GET_SIZE(state->bound_exceeded) > 0) {
        hkn_saved_error saved;
        hkn_error_save(&saved);
        if (hkn_count_live(state, conn->owner, conn->path) == 0) {
            (void)PySet_Discard(state->bound_exceeded, conn->path);
        }
        PyErr_Clear();
        hkn_error_restore(&saved);
    }
}

/* ------------------------------------------------------ native checkpoint */

/* The message and extended code of a failed checkpoint.  errmsg() describes
 * the handle's latest error, which is the checkpoint's own only when the
 * codes agree; otherwise the result code's generic text is the honest one. */
static void
hkn_describe_error(const hkn_sqlite_api *api, sqlite3 *db, hkn_outcome *out)
{
    int extended = api->extended_errcode(db);
    const char *msg = (extended & 0xff) == (out->rc & 0xff) ? api->errmsg(db) : NULL;
    out->extended = msg != NULL ? extended : out->rc;
    snprintf(out->message, sizeof(out->message), "%s", msg ? msg : api->errstr(out->rc));
}

/* Runs under the connection lock, without the GIL, holding SQLite's own
 * connection mutex so that no other thread steps a statement between the
 * reset and the checkpoint.  Touches no Python object. */
static void
hkn_native_close_checkpoint(const hkn_sqlite_api *api, sqlite3 *db, int mode, hkn_outcome *out)
{
    sqlite3_mutex *mutex = api->db_mutex(db);
    api->mutex_enter(mutex);

    for (sqlite3_stmt *stmt = api->next_stmt(db, NULL); stmt != NULL;
         stmt = api->next_stmt(db, stmt)) {
        if (api->stmt_busy(stmt)) {
            out->busy_statements++;
        }
    }

    const char *file = HKN_FAULT_SQLITE("connection.close_checkpoint.db_filename", NULL,
                                        api->db_filename(db, "main"));
    int txn = api->txn_state == NULL ? -1
              : HKN_FAULT_SQLITE("connection.close_checkpoint.txn_state", -1,
                                 api->txn_state(db, "main"));
    /* Without txn_state (before 3.34, or if it fails) get_autocommit tells
     * that some transaction is open, which may only be a read. */
    int write_txn = txn >= 0 ? txn == SQLITE_TXN_WRITE : !api->get_autocommit(db);
    int wrote = 0, high = 0;
    if (HKN_FAULT_SQLITE("connection.close_checkpoint.db_status", SQLITE_MISUSE,
                         api->db_status(db, SQLITE_DBSTATUS_CACHE_WRITE, &wrote, &high, 0))
        != SQLITE_OK) {
        wrote = 1;              /* unknown: checkpoint rather than skip */
    }

    if (file == NULL || file[0] == '\0') {
        out->skipped = HKN_SKIP_NOT_FILE;
    }
    else if (HKN_FAULT_SQLITE("connection.close_checkpoint.db_readonly", -1,
                              api->db_readonly(db, "main")) == 1) {
        out->skipped = HKN_SKIP_READONLY;
    }
    else if (write_txn) {
        out->skipped = HKN_SKIP_TRANSACTION;
    }
    else if (mode == SQLITE_CHECKPOINT_PASSIVE && wrote == 0) {
        /* A connection that wrote nothing added no frames; copying other
         * connections' frames is their autocheckpoint's job. */
        out->skipped = HKN_SKIP_UNCHANGED;
    }
    else {
        /* Stepped statements hold a read transaction that would make the
         * checkpoint fail with SQLITE_LOCKED; the base close is about to
         * abandon them anyway. */
        if (out->busy_statements > 0) {
            for (sqlite3_stmt *stmt = api->next_stmt(db, NULL); stmt != NULL;
                 stmt = api->next_stmt(db, stmt)) {
                if (api->stmt_busy(stmt)) {
                    /* reset() returns the statement's last error; it resets
                     * regardless. */
                    (void)HKN_FAULT_RELEASE("connection.close_checkpoint.reset", SQLITE_IOERR,
                                            api->reset(stmt));
                }
            }
        }
        /* The connection is closing: nothing is left to restore the
         * handler for, so close() can never wait on another process. */
        api->busy_handler(db, NULL, NULL);
        out->rc = HKN_FAULT_SQLITE("connection.close_checkpoint.wal_checkpoint", SQLITE_IOERR,
                                   api->wal_checkpoint_v2(db, NULL, mode, &out->log_frames,
                                                          &out->checkpointed_frames));
        if (out->rc == SQLITE_OK && out->log_frames < 0) {
            out->skipped = HKN_SKIP_NOT_WAL;
        }
        else if ((out->rc & 0xff) == SQLITE_LOCKED) {
            /* A read transaction still open (BEGIN, then only reads): the
             * base close ends it; skipped, as in SQL mode. */
            out->skipped = HKN_SKIP_TRANSACTION;
            out->rc = SQLITE_OK;
        }
        else if (out->rc != SQLITE_OK && out->rc != SQLITE_BUSY) {
            hkn_describe_error(api, db, out);
        }
    }
    api->mutex_leave(mutex);
}

/* ---------------------------------------------------------- SQL fallback */

/* Runs `sql` through a cursor of the base class (never a subclass's
 * cursor() or execute() override, and without the user's row_factory) and
 * returns the first row as a tuple, or None. */
static PyObject *
hkn_sql_first_row(hkn_state *state, PyObject *self, const char *sql)
{
    PyObject *row = NULL;
    PyObject *make_cursor = HKN_FAULT_PY("connection.sql_first_row.cursor_method", NULL,
                                         PyObject_GetAttrString((PyObject *)state->base_type,
                                                                "cursor"));
    if (make_cursor == NULL) {
        return NULL;
    }
    PyObject *cursor = HKN_FAULT_PY("connection.sql_first_row.cursor", NULL,
                                    PyObject_CallOneArg(make_cursor, self));
    Py_DECREF(make_cursor);
    if (cursor == NULL) {
        return NULL;
    }
    if (HKN_FAULT_PY("connection.sql_first_row.row_factory", -1,
                     PyObject_SetAttrString(cursor, "row_factory", Py_None)) == 0) {
        PyObject *executed = HKN_FAULT_PY("connection.sql_first_row.execute", NULL,
                                          PyObject_CallMethod(cursor, "execute", "s", sql));
        if (executed != NULL) {
            Py_DECREF(executed);
            row = HKN_FAULT_PY("connection.sql_first_row.fetchone", NULL,
                               PyObject_CallMethod(cursor, "fetchone", NULL));
        }
    }
    hkn_saved_error saved;
    hkn_error_save(&saved);
    PyObject *closed = HKN_FAULT_PY("connection.sql_first_row.close_cursor", NULL,
                                    PyObject_CallMethod(cursor, "close", NULL));
    Py_DECREF(cursor);
    Py_XDECREF(closed);
    PyErr_Clear();
    hkn_error_restore(&saved);
    return row;
}

/* The text of exception `exc` into `buf` ("unknown error" when it cannot
 * be had).  Called with no exception pending; never raises. */
static void
hkn_exception_text(PyObject *exc, char *buf, size_t size)
{
    PyObject *text = HKN_FAULT_PY("connection.exception_text.str", NULL, PyObject_Str(exc));
    const char *s = text == NULL ? NULL
                    : HKN_FAULT_PY("connection.exception_text.utf8", NULL,
                                   PyUnicode_AsUTF8(text));
    snprintf(buf, size, "%s", s ? s : "unknown error");
    Py_XDECREF(text);
    PyErr_Clear();
}

/* The sqlite3 result code of a sqlite3 exception: sqlite_errorcode on
 * 3.11+, otherwise (or if reading it fails) guessed from its message.
 * Never raises. */
static int
hkn_sql_error_code(PyObject *exc, const char *message)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *code = HKN_FAULT_PY("connection.sql_error_code.attribute", NULL,
                                  PyObject_GetAttrString(exc, "sqlite_errorcode"));
    if (code != NULL) {
        long value = HKN_FAULT_PY("connection.sql_error_code.value", -1, PyLong_AsLong(code));
        Py_DECREF(code);
        if (!(value == -1 && PyErr_Occurred())) {
            return (int)value;
        }
    }
    PyErr_Clear();
#else
    (void)exc;
#endif
    if (strstr(message, "locked") != NULL) {
        return SQLITE_LOCKED;
    }
    if (strstr(message, "readonly") != NULL) {
        return SQLITE_READONLY;
    }
    return SQLITE_ERROR;
}

/* The checkpoint through the connection's own Python API, for when the
 * library's symbols are out of reach.  Same policy as the native path, with
 * what SQL can see: total_changes for "wrote nothing" (it does not count
 * DDL); an open transaction or a stepping cursor shows as SQLITE_LOCKED and
 * a read-only open as SQLITE_READONLY, both counted as skipped at close.
 * Returns -1 only for a Python error unrelated to SQLite (the exception is
 * set). */
static int
hkn_sql_checkpoint(hkn_state *state, hkn_conn *conn, PyObject *self, int mode,
                   int nowait, int closing, hkn_outcome *out)
{
    PyObject *row = NULL;
    if (closing) {
        if (conn->path == NULL || PyUnicode_GetLength(conn->path) == 0) {
            out->skipped = HKN_SKIP_NOT_FILE;
            return 0;
        }
        if (mode == SQLITE_CHECKPOINT_PASSIVE) {
            PyObject *changes = HKN_FAULT_PY("connection.sql_checkpoint.total_changes", NULL,
                                             PyObject_GetAttrString(self, "total_changes"));
            if (changes == NULL) {
                return -1;
            }
            long long now = HKN_FAULT_PY("connection.sql_checkpoint.total_changes_value", -1,
                                         PyLong_AsLongLong(changes));
            Py_DECREF(changes);
            if (now == -1 && PyErr_Occurred()) {
                return -1;
            }
            if (now == conn->changes_base) {
                out->skipped = HKN_SKIP_UNCHANGED;
                return 0;
            }
        }
    }
    long saved_timeout = -1;
    if (nowait && mode != SQLITE_CHECKPOINT_PASSIVE) {
        if (!closing) {
            row = hkn_sql_first_row(state, self, "PRAGMA busy_timeout");
            if (row == NULL) {
                goto sqlite_error;
            }
            PyObject *value = HKN_FAULT_PY("connection.sql_checkpoint.timeout_item", NULL,
                                           PyTuple_GetItem(row, 0));
            saved_timeout = value == NULL ? -1
                            : HKN_FAULT_PY("connection.sql_checkpoint.timeout_value", -1,
                                           PyLong_AsLong(value));
            Py_CLEAR(row);
            if (saved_timeout == -1 && PyErr_Occurred()) {
                return -1;
            }
        }
        row = hkn_sql_first_row(state, self, "PRAGMA busy_timeout = 0");
        if (row == NULL) {
            goto sqlite_error;
        }
        Py_CLEAR(row);
    }
    static const char *const pragmas[4] = {
        "PRAGMA wal_checkpoint(PASSIVE)", "PRAGMA wal_checkpoint(FULL)",
        "PRAGMA wal_checkpoint(RESTART)", "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    row = hkn_sql_first_row(state, self, pragmas[mode]);
    if (saved_timeout >= 0) {
        hkn_saved_error saved;
        hkn_error_save(&saved);
        char restore[64];
        snprintf(restore, sizeof(restore), "PRAGMA busy_timeout = %ld", saved_timeout);
        PyObject *r = hkn_sql_first_row(state, self, restore);
        Py_XDECREF(r);
        if (r == NULL && !hkn_error_saved(&saved)) {
            Py_XDECREF(row);
            return -1;
        }
        PyErr_Clear();
        hkn_error_restore(&saved);
    }
    if (row == NULL) {
        goto sqlite_error;
    }
    int busy = 0;
    if (!HKN_FAULT_PY("connection.sql_checkpoint.parse_row", 0,
                      PyArg_ParseTuple(row, "iii", &busy, &out->log_frames,
                                       &out->checkpointed_frames))) {
        Py_DECREF(row);
        return -1;
    }
    Py_DECREF(row);
    out->rc = busy ? SQLITE_BUSY : SQLITE_OK;
    if (closing && out->log_frames < 0) {
        out->skipped = HKN_SKIP_NOT_WAL;
    }
    return 0;

sqlite_error:
    if (!PyErr_ExceptionMatches(state->Error)) {
        return -1;
    }
    {
        hkn_saved_error saved;
        hkn_error_save(&saved);
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc = saved.exc;
#else
        PyErr_NormalizeException(&saved.type, &saved.value, &saved.tb);
        PyObject *exc = saved.value;
#endif
        hkn_exception_text(exc, out->message, sizeof(out->message));
        out->rc = hkn_sql_error_code(exc, out->message);
        out->extended = out->rc;
        hkn_error_drop(&saved);
    }
    if (closing && ((out->rc & 0xff) == SQLITE_LOCKED || (out->rc & 0xff) == SQLITE_READONLY)) {
        /* SQL cannot see stepping cursors or read-only opens beforehand. */
        out->skipped = (out->rc & 0xff) == SQLITE_READONLY ? HKN_SKIP_READONLY
                                                             : HKN_SKIP_TRANSACTION;
        out->rc = SQLITE_OK;
    }
    return 0;
}

/* ------------------------------------------------------ close-time policy */

/* Runs the close-time checkpoint of `self` in the given mode and records
 * it.  Every failure is reported as a warning, never raised, except that a
 * warning turned into an error by the warning filters propagates (-1). */
static int
hkn_close_checkpoint(hkn_state *state, hkn_conn *conn, PyObject *self, int mode)
{
    if (conn->path == NULL || PyUnicode_GET_LENGTH(conn->path) == 0) {
        /* In-memory or temporary: no WAL, and no reason to leave the GIL. */
        state->stats.checkpoints_skipped++;
        return 0;
    }
    hkn_outcome out;
    memset(&out, 0, sizeof(out));
    out.log_frames = out.checkpointed_frames = -1;

    if (state->api.native) {
        sqlite3 *db = hkn_connection_handle(self);
        const hkn_sqlite_api *api = &state->api;
        Py_BEGIN_ALLOW_THREADS
        hkn_native_close_checkpoint(api, db, mode, &out);
        Py_END_ALLOW_THREADS
    }
    else if (hkn_sql_checkpoint(state, conn, self, mode, 1, 1, &out) < 0) {
        /* Not SQLite's doing (memory, a broken subclass attribute): report
         * it like a checkpoint error; the close must still happen. */
        hkn_saved_error saved;
        hkn_error_save(&saved);
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc = saved.exc;
#else
        PyErr_NormalizeException(&saved.type, &saved.value, &saved.tb);
        PyObject *exc = saved.value;
#endif
        hkn_exception_text(exc, out.message, sizeof(out.message));
        hkn_error_drop(&saved);
        out.rc = SQLITE_ERROR;
    }

    int status = 0;
    if (out.skipped != HKN_RAN) {
        state->stats.checkpoints_skipped++;
    }
    else if (out.rc == SQLITE_OK || out.rc == SQLITE_BUSY) {
        if (hkn_record(state, conn, mode, &out) < 0) {
            status = -1;
        }
    }
    else {
        state->stats.checkpoint_errors++;
        if (HKN_FAULT_PY("connection.close_checkpoint.warn_failed", -1,
                         PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                                          "%s checkpoint on close of %R failed (%s): %s",
                                          PyUnicode_AsUTF8(state->mode_names[mode]),
                                          conn->path ? conn->path : Py_None,
                                          out.rc == SQLITE_ERROR ? "error" : "sqlite",
                                          out.message)) < 0) {
            status = -1;
        }
    }
#if PY_VERSION_HEX >= 0x030B0000
    /* 3.10's close() finalizes every statement; 3.11+ only drops its cache,
     * so statements a cursor is still stepping keep the handle (and its
     * files) alive until that cursor is collected. */
    if (out.busy_statements > 0 && status == 0 && conn->path != NULL
        && PyUnicode_GetLength(conn->path) > 0) {
        if (HKN_FAULT_PY("connection.close_checkpoint.warn_stepping", -1,
                         PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                                          "close() of %R with %d statement(s) still stepping: "
                                          "SQLite keeps the database open until the cursor(s) "
                                          "using them are released",
                                          conn->path, out.busy_statements)) < 0) {
            status = -1;
        }
    }
#endif
    return status;
}

/* Reads checkpoint_on_close the ordinary way (instance, class, subclass,
 * property).  Returns a mode, HKN_POLICY_OFF or HKN_POLICY_INVALID; on
 * INVALID, *value holds the offending object (new reference) or NULL with
 * an exception set. */
static int
hkn_policy(hkn_state *state, PyObject *self, PyObject **value)
{
    *value = HKN_FAULT_PY("connection.policy.getattr", NULL,
                          PyObject_GetAttr(self, state->str_checkpoint_on_close));
    if (*value == NULL) {
        return HKN_POLICY_INVALID;
    }
    int mode = hkn_parse_mode(state, *value, 1);
    if (mode != HKN_POLICY_INVALID) {
        Py_CLEAR(*value);
    }
    return mode == HKN_POLICY_ERROR ? HKN_POLICY_INVALID : mode;
}

static PyObject *
hkn_base_close(hkn_state *state, PyObject *self)
{
    return HKN_FAULT_PY("connection.base_close.call", NULL,
                        PyObject_CallOneArg(state->base_close, self));
}


PyDoc_STRVAR(hkn_close_doc,
"close($self, /)\n--\n\n"
"Checkpoint the WAL as checkpoint_on_close says, then close the connection.\n\n"
"The checkpoint runs natively with the busy handler turned off, so close()\n"
"never waits on another connection or process: a busy result is recorded\n"
"in last_checkpoint and stats() and the close goes on.  It is skipped for\n"
"in-memory, temporary, read-only and non-WAL databases, when a write\n"
"transaction is open (the close discards it, as sqlite3 does), and under\n"
"the default 'passive' policy when this connection wrote nothing.  A failed\n"
"checkpoint is reported with warnings.warn and never stops the close.\n"
"Closing twice is a no-op; from a thread other than the opener's (with\n"
"check_same_thread) it raises sqlite3.ProgrammingError and does nothing.");

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
        return hkn_base_close(state, self);
    }

    hkn_saved_error pending = {0};
    PyObject *invalid = NULL;
    int mode = hkn_policy(state, self, &invalid);
    if (mode == HKN_POLICY_INVALID && invalid == NULL) {
        hkn_error_save(&pending);       /* the attribute lookup itself failed */
    }
    if (mode >= 0 && hkn_connection_handle(self) != NULL) {
        if (hkn_close_checkpoint(state, conn, self, mode) < 0) {
            hkn_error_save(&pending);
        }
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
"when it is closed or used from another thread; ValueError for an unknown\n"
"mode.  On a database not in WAL mode the result has log_frames == -1.");

/* Reads the busy timeout into *timeout with a native PRAGMA (there is no C
 * getter).  With the GIL held: a trace callback may run.  SQLITE_OK, or the
 * error of the statement. */
static int
hkn_read_busy_timeout(const hkn_sqlite_api *api, sqlite3 *db, int *timeout)
{
    sqlite3_stmt *stmt = NULL;
    int rc = HKN_FAULT_SQLITE("connection.read_busy_timeout.prepare", SQLITE_NOMEM,
                              api->prepare_v2(db, "PRAGMA busy_timeout", -1, &stmt, NULL));
    if (rc == SQLITE_OK) {
        rc = HKN_FAULT_SQLITE("connection.read_busy_timeout.step", SQLITE_IOERR,
                              api->step(stmt));
        if (rc == SQLITE_ROW) {
            *timeout = api->column_int(stmt, 0);
            rc = SQLITE_OK;
        }
        else if (rc == SQLITE_DONE) {
            rc = SQLITE_ERROR;  /* the PRAGMA always has a row */
        }
    }
    if (stmt != NULL) {
        /* finalize() repeats the step's error, which rc already holds. */
        (void)HKN_FAULT_RELEASE("connection.read_busy_timeout.finalize", SQLITE_IOERR,
                                api->finalize(stmt));
    }
    return rc;
}

static PyObject *
hkn_connection_checkpoint(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mode", "wait", NULL};
    PyObject *mode_obj = NULL;
    int wait = 1;
    if (!HKN_FAULT_PY("connection.checkpoint.parse_args", 0,
                      PyArg_ParseTupleAndKeywords(args, kwds, "|O$p:checkpoint", kwlist,
                                                  &mode_obj, &wait))) {
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
                        "checkpoint() called from inside this connection's close()");
        return NULL;
    }
    if (hkn_connection_handle(self) == NULL) {
        /* Closed by another thread while we waited for the lock. */
        hkn_unlock(conn);
        PyErr_SetString(state->ProgrammingError, "Cannot operate on a closed database.");
        return NULL;
    }

    hkn_outcome out;
    memset(&out, 0, sizeof(out));
    out.log_frames = out.checkpointed_frames = -1;
    int failed = 0;
    if (state->api.native) {
        const hkn_sqlite_api *api = &state->api;
        sqlite3 *db = hkn_connection_handle(self);
        int restore = -1;
        if (!wait && mode != SQLITE_CHECKPOINT_PASSIVE) {
            /* Without the old timeout nothing could put the busy handler
             * back afterwards: fail instead of leaving the connection
             * without it. */
            out.rc = hkn_read_busy_timeout(api, db, &restore);
            if (out.rc == SQLITE_OK) {
                api->busy_handler(db, NULL, NULL);
            }
            else {
                hkn_describe_error(api, db, &out);
            }
        }
        if (out.rc == SQLITE_OK) {
            Py_BEGIN_ALLOW_THREADS
            sqlite3_mutex *mutex = api->db_mutex(db);
            api->mutex_enter(mutex);
            out.rc = HKN_FAULT_SQLITE("connection.checkpoint.wal_checkpoint", SQLITE_IOERR,
                                      api->wal_checkpoint_v2(db, NULL, mode, &out.log_frames,
                                                             &out.checkpointed_frames));
            if (out.rc != SQLITE_OK && out.rc != SQLITE_BUSY) {
                hkn_describe_error(api, db, &out);
            }
            api->mutex_leave(mutex);
            Py_END_ALLOW_THREADS
            if (restore >= 0) {
                api->busy_timeout(db, restore);
            }
        }
        hkn_guard_refresh(state, conn, db);
    }
    else if (hkn_sql_checkpoint(state, conn, self, mode, !wait, 0, &out) < 0) {
        failed = 1;
    }
    hkn_unlock(conn);

    if (failed) {
        return NULL;
    }
    if (out.rc != SQLITE_OK && out.rc != SQLITE_BUSY) {
        state->stats.checkpoint_errors++;
        hkn_set_sqlite_error(state, out.rc, out.extended, out.message);
        return NULL;
    }
    if (hkn_record(state, conn, mode, &out) < 0) {
        return NULL;
    }
    return Py_NewRef(conn->last_checkpoint);
}

/* ------------------------------------------------------ leak bound */

/* Open WalSafeConnections of this process on `path` (same resolved name),
 * `self` aside. */
static Py_ssize_t
hkn_count_live(hkn_state *state, PyObject *self, PyObject *path)
{
    Py_ssize_t count = 0;
    for (hkn_conn *c = state->registry.next; c != &state->registry; c = c->next) {
        if (c->owner == self) {
            continue;
        }
        if (c->path == path
            || (c->path != NULL && PyUnicode_Compare(c->path, path) == 0)) {
            if (hkn_connection_handle(c->owner) != NULL) {
                count++;
            }
        }
    }
    PyErr_Clear();
    return count;
}

/* "file:line (xN), ..." for the live connections on `path`, `self` aside. */
static PyObject *
hkn_openers_of(hkn_state *state, PyObject *self, PyObject *path)
{
    PyObject *counter = HKN_FAULT_PY("connection.openers.dict", NULL, PyDict_New());
    if (counter == NULL) {
        return NULL;
    }
    /* Formatting allocates, and allocation can run the GC, whose finalizers
     * unlink registry entries: take the snapshot first, format after. */
    Py_ssize_t count = 0;
    PyObject **items = hkn_registry_snapshot(state, &count);
    if (items == NULL) {
        Py_DECREF(counter);
        return NULL;
    }
    int failed = 0;
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        hkn_conn *c = hkn_conn_get(items[i]);
        if (items[i] == self || c->path == NULL) {
            continue;
        }
        int same = PyUnicode_Compare(c->path, path);
        if (same != 0) {
            PyErr_Clear();
            continue;
        }
        PyObject *where = hkn_opener_where(state, &c->opener);
        if (where == NULL) {
            failed = 1;
            break;
        }
        PyObject *seen = HKN_FAULT_PY("connection.openers.get", NULL,
                                      PyDict_GetItemWithError(counter, where));
        long total = seen == NULL ? 0
                     : HKN_FAULT_PY("connection.openers.count_value", -1, PyLong_AsLong(seen));
        PyObject *value = NULL;
        if (!PyErr_Occurred()) {
            value = HKN_FAULT_PY("connection.openers.count", NULL, PyLong_FromLong(total + 1));
        }
        if (value == NULL
            || HKN_FAULT_PY("connection.openers.set", -1,
                            PyDict_SetItem(counter, where, value)) < 0) {
            failed = 1;
        }
        Py_XDECREF(value);
        Py_DECREF(where);
    }
    hkn_snapshot_free(items, count);
    if (failed) {
        Py_DECREF(counter);
        return NULL;
    }
    PyObject *parts = HKN_FAULT_PY("connection.openers.list", NULL, PyList_New(0));
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (parts != NULL && PyDict_Next(counter, &pos, &key, &value)) {
        PyObject *part = HKN_FAULT_PY("connection.openers.part", NULL,
                                      PyUnicode_FromFormat("%U (x%S)", key, value));
        if (part == NULL
            || HKN_FAULT_PY("connection.openers.append", -1, PyList_Append(parts, part)) < 0) {
            Py_CLEAR(parts);
        }
        Py_XDECREF(part);
    }
    Py_DECREF(counter);
    if (parts == NULL) {
        return NULL;
    }
    PyObject *sep = HKN_FAULT_PY("connection.openers.separator", NULL, PyUnicode_FromString(", "));
    PyObject *joined = sep == NULL ? NULL
                       : HKN_FAULT_PY("connection.openers.join", NULL, PyUnicode_Join(sep, parts));
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return joined;
}

/* The per-database bound on live connections (max_live_per_database).  On
 * CPython 3.11+ an unclosed connection lives until the cyclic collector
 * runs, which in a large busy process can be long: that is how the gateway
 * reached ~1,000 descriptors.  When opening one more would exceed the
 * bound, collect once so abandoned connections are finalized; if the bound
 * still holds, open anyway and warn once per episode.  The well-behaved path
 * costs one walk of the (short) registry and one attribute read. */
static int
hkn_enforce_bound(hkn_state *state, PyObject *self, PyObject *path)
{
    Py_ssize_t live = hkn_count_live(state, self, path);
    if (live == 0) {
        return 0;
    }
    PyObject *limit_obj = HKN_FAULT_PY("connection.bound.getattr", NULL,
                                       PyObject_GetAttr(self, state->str_max_live));
    if (limit_obj == NULL) {
        return -1;
    }
    if (limit_obj == Py_None) {
        Py_DECREF(limit_obj);
        return 0;
    }
    Py_ssize_t limit = -1;
    if (PyLong_Check(limit_obj) && !PyBool_Check(limit_obj)) {
        limit = HKN_FAULT_PY("connection.bound.limit_value", -1, PyLong_AsSsize_t(limit_obj));
        /* Too large is a bad value; anything else (memory) is not the
         * value's fault and propagates. */
        if (limit == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                Py_DECREF(limit_obj);
                return -1;
            }
            PyErr_Clear();
        }
    }
    if (limit < 0) {
        PyErr_Format(PyExc_ValueError,
                     "max_live_per_database must be None or an int >= 0, not %R", limit_obj);
        Py_DECREF(limit_obj);
        return -1;
    }
    Py_DECREF(limit_obj);
    if (limit == 0) {
        return 0;
    }
    int contains = HKN_FAULT_PY("connection.bound.contains", -1,
                                PySet_Contains(state->bound_exceeded, path));
    if (contains < 0) {
        return -1;
    }
    if (live < limit) {
        /* Under the bound again: the next excess collects and warns anew. */
        if (contains
            && HKN_FAULT_PY("connection.bound.discard", -1,
                            PySet_Discard(state->bound_exceeded, path)) < 0) {
            return -1;
        }
        return 0;
    }
    if (contains) {
        return 0;
    }
    /* gc.collect() rather than PyGC_Collect(): the latter does nothing while
     * automatic collection is disabled, which is exactly when this matters. */
    PyObject *gc = HKN_FAULT_PY("connection.bound.import_gc", NULL, PyImport_ImportModule("gc"));
    PyObject *collected = gc == NULL ? NULL
                          : HKN_FAULT_PY("connection.bound.collect", NULL,
                                         PyObject_CallMethod(gc, "collect", NULL));
    Py_XDECREF(gc);
    if (collected == NULL) {
        return -1;
    }
    Py_DECREF(collected);
    state->stats.bound_collections++;
    live = hkn_count_live(state, self, path);
    if (live < limit) {
        return 0;
    }
    if (HKN_FAULT_PY("connection.bound.add", -1, PySet_Add(state->bound_exceeded, path)) < 0) {
        return -1;
    }
    PyObject *openers = hkn_openers_of(state, self, path);
    if (openers == NULL) {
        return -1;
    }
    int rc = HKN_FAULT_PY("connection.bound.warn", -1,
                          PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                                           "%zd WalSafeConnections to %R are open "
                                           "(max_live_per_database=%zd) even after a garbage "
                                           "collection; opening one more. Opened at: %U",
                                           live, path, limit, openers));
    Py_DECREF(openers);
    return rc;
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
        (void)api->close_v2(db);
        Py_END_ALLOW_THREADS
    }
    else if (hkn_base_type(self)->tp_finalize != NULL) {
        hkn_base_type(self)->tp_finalize(self);
    }
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
    if (HKN_FAULT_PY("connection.init.base_init", -1, base->tp_init(self, args, kwds)) < 0) {
        if (hkn_connection_handle(self) == NULL) {
            hkn_unregister(state, conn);
        }
        return -1;
    }

    PyObject *flag = NULL;
    if (PyTuple_GET_SIZE(args) > 4) {
        flag = PyTuple_GET_ITEM(args, 4);
    }
    else if (kwds != NULL) {
        flag = HKN_FAULT_PY("connection.init.check_same_thread_arg", NULL,
                            PyDict_GetItemWithError(kwds, state->str_check_same_thread));
        if (flag == NULL && PyErr_Occurred()) {
            goto fail;
        }
    }
    int check_same_thread = 1;
    if (flag != NULL
        && (check_same_thread = HKN_FAULT_PY("connection.init.check_same_thread", -1,
                                             PyObject_IsTrue(flag))) < 0) {
        goto fail;
    }

    PyObject *path = NULL;
    if (state->api.native) {
        const char *file = HKN_FAULT_SQLITE("connection.init.db_filename", NULL,
                                            state->api.db_filename(hkn_connection_handle(self),
                                                                   "main"));
        path = HKN_FAULT_PY("connection.init.path", NULL,
                            PyUnicode_DecodeFSDefault(file ? file : ""));
    }
    else {
        PyObject *row = hkn_sql_first_row(state, self, "PRAGMA database_list");
        if (row != NULL) {
            path = HKN_FAULT_PY("connection.init.sql_path", NULL, PySequence_GetItem(row, 2));
            Py_DECREF(row);
        }
        PyObject *changes = path == NULL ? NULL
                            : HKN_FAULT_PY("connection.init.sql_total_changes", NULL,
                                           PyObject_GetAttrString(self, "total_changes"));
        if (changes != NULL) {
            conn->changes_base = HKN_FAULT_PY("connection.init.sql_total_changes_value", -1,
                                              PyLong_AsLongLong(changes));
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

    conn->owner = self;
    conn->check_same_thread = check_same_thread;
    conn->thread_ident = PyThread_get_thread_ident();
    struct timespec now;
    if (HKN_FAULT_SYS("connection.init.clock", EINVAL, -1,
                      clock_gettime(CLOCK_REALTIME, &now)) != 0) {
        /* Never seen on Linux; `now` would be garbage, the second is not. */
        now.tv_sec = time(NULL);
        now.tv_nsec = 0;
    }
    conn->opened_time = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    hkn_opener_capture(state, &conn->opener);
    if (state->opened_paths != NULL
        && HKN_FAULT_PY("connection.init.track_path", -1,
                        PySet_Add(state->opened_paths, path)) < 0) {
        goto fail;
    }
    conn->pid = getpid();
    conn->fork_generation = state->fork_generation;
    if (first_open && PyUnicode_GetLength(path) > 0 && hkn_enforce_bound(state, self, path) < 0) {
        goto fail;
    }
    if (state->api.native && conn->guard == NULL && PyUnicode_GetLength(path) > 0) {
        PyObject *wanted = HKN_FAULT_PY("connection.init.guard_wal", NULL,
                                        PyObject_GetAttr(self, state->str_guard_wal));
        int guard = wanted == NULL ? -1
                    : HKN_FAULT_PY("connection.init.guard_wal_value", -1,
                                   PyObject_IsTrue(wanted));
        Py_XDECREF(wanted);
        if (guard < 0
            || (guard ? hkn_guard_claim(state, conn, hkn_connection_handle(self))
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
                    : HKN_FAULT_PY("connection.finalize.log_row", NULL,
                                   Py_BuildValue("(OOOkK)", conn->path ? conn->path : Py_None,
                                                 where, frames, conn->thread_ident,
                                                 conn->serial));
    Py_XDECREF(where);
    Py_XDECREF(frames);
    int rc = row == NULL ? -1
             : HKN_FAULT_PY("connection.finalize.log_append", -1, PyList_Append(log, row));
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
    hkn_saved_error saved;
    hkn_error_save(&saved);

    hkn_state *state = PyType_GetModuleState(hkn_root_type(Py_TYPE(self)));
    hkn_conn *conn = hkn_conn_get(self);
    if (state == NULL || state->base_type == NULL) {
        PyErr_Clear();
        goto done;
    }
    if (hkn_connection_handle(self) == NULL || conn->pid == 0) {
        hkn_unregister(state, conn);
        goto done;
    }
    if (!hkn_same_process(state, conn)) {
        /* A forked child's copy of the parent's connection: no native work. */
        hkn_unregister(state, conn);
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
            if (hkn_close_checkpoint(state, conn, self, mode) < 0) {
                PyErr_WriteUnraisable(self);
            }
        }
        what = state->stats.checkpoints > before ? "checkpointed and closed it"
                                                 : "closed it (no checkpoint needed)";
    }
    hkn_drop_guard(state, conn);
    state->stats.finalized++;

    int finalizing;
#if PY_VERSION_HEX >= 0x030D0000
    finalizing = Py_IsFinalizing();
#else
    finalizing = _Py_IsFinalizing();
#endif
    if (!finalizing) {
        PyObject *opener = hkn_opener_describe(state, &conn->opener);
        if (opener == NULL
            || HKN_FAULT_PY("connection.finalize.warn", -1,
                            PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                                             "unclosed database %R opened at %U: "
                                             "WalSafeConnection %s on garbage collection",
                                             conn->path, opener, what)) < 0) {
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
        PyObject *invalid = NULL;
        int mode = hkn_policy(state, self, &invalid);
        Py_XDECREF(invalid);
        PyErr_Clear();
        if (mode >= 0 && hkn_close_checkpoint(state, conn, self, mode) < 0) {
            PyErr_WriteUnraisable(self);
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
    if (conn->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    if (conn->prev != NULL || conn->guard != NULL) {
        hkn_state *state = PyType_GetModuleState(hkn_root_type(Py_TYPE(self)));
        if (state != NULL) {
            hkn_unregister(state, conn);
        }
        PyErr_Clear();
    }
    Py_CLEAR(conn->path);
    hkn_opener_clear(&conn->opener);
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
"'restart' or 'truncate') may be overridden on a subclass or an instance.\n\n"
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

int
hkn_connection_exec(PyObject *module, hkn_state *state)
{
    Py_ssize_t offset = HKN_CONN_OFFSET(state->base_type->tp_basicsize);
    PyMemberDef members[] = {
        {"__dictoffset__", T_PYSSIZET, offset + (Py_ssize_t)offsetof(hkn_conn, dict), READONLY, NULL},
        {"__weaklistoffset__", T_PYSSIZET, offset + (Py_ssize_t)offsetof(hkn_conn, weakreflist),
         READONLY, NULL},
        {NULL, 0, 0, 0, NULL},
    };
    PyType_Slot slots[] = {
        {Py_tp_doc, (void *)hkn_connection_doc},
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
    PyObject *bases = HKN_FAULT_PY("connection.exec.bases", NULL,
                                   PyTuple_Pack(1, (PyObject *)state->base_type));
    if (bases == NULL) {
        return -1;
    }
    PyObject *type = HKN_FAULT_PY("connection.exec.type", NULL,
                                  PyType_FromModuleAndSpec(module, &spec, bases));
    Py_DECREF(bases);
    if (type == NULL) {
        return -1;
    }
    state->walsafe_type = (PyTypeObject *)type;
    if (HKN_FAULT_PY("connection.exec.set_policy", -1,
                     PyObject_SetAttrString(type, "checkpoint_on_close",
                                            state->mode_names[SQLITE_CHECKPOINT_PASSIVE])) < 0) {
        return -1;
    }
    PyObject *bound = HKN_FAULT_PY("connection.exec.bound", NULL,
                                   PyLong_FromLong(HKN_DEFAULT_MAX_LIVE));
    if (bound == NULL
        || HKN_FAULT_PY("connection.exec.set_bound", -1,
                        PyObject_SetAttr(type, state->str_max_live, bound)) < 0) {
        Py_XDECREF(bound);
        return -1;
    }
    Py_DECREF(bound);
    if (HKN_FAULT_PY("connection.exec.set_guard", -1,
                     PyObject_SetAttr(type, state->str_guard_wal,
                                      hkn_guard_unavailable() == NULL ? Py_True
                                                                      : Py_False)) < 0) {
        return -1;
    }
    return HKN_FAULT_PY("connection.exec.add_type", -1,
                        PyModule_AddObjectRef(module, "WalSafeConnection", type));
}
