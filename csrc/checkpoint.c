/* checkpoint.c - the checkpoint engine and the close-time policy.
 *
 * One entry point, hkn_checkpoint_run(), for both callers (close() and the
 * garbage collector at close time, checkpoint() on request) and both ways
 * of reaching SQLite: natively, with the GIL released, when the extension
 * holds SQLite's functions; through SQL on the connection itself otherwise
 * (sqlite_api.c decides, once, at import).  Side by side below.
 *
 * Facts this file rests on (docs/sqlite-internals.md):
 *  - PASSIVE never calls the busy handler; FULL/RESTART/TRUNCATE wait up to
 *    the busy timeout, so a close-time checkpoint turns the handler off
 *    first (Checkpoints).
 *  - A checkpoint on a connection with an open transaction or a stepped
 *    statement returns SQLITE_LOCKED (Checkpoints).
 */
#include "hkn.h"

#include <string.h>
#include "fault_calls.h"     /* last: see faults.h */

/* ------------------------------------------------------------------ modes */

static int
hkn_match_mode(hkn_state *state, PyObject *value, int allow_off)
{
    for (int mode = 0; mode < 4; mode++) {
        if (value == state->mode_names[mode]) {
            return mode;        /* the class default is this very object */
        }
    }
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
int
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
    PyObject *lower = PyObject_CallMethod(value, "lower", NULL);
    if (lower == NULL) {
        return HKN_POLICY_ERROR;
    }
    mode = PyUnicode_Check(lower) ? hkn_match_mode(state, lower, allow_off) : HKN_POLICY_INVALID;
    Py_DECREF(lower);
    return mode;
}

PyObject *
hkn_mode_error(PyObject *value, int allow_off)
{
    PyErr_Format(PyExc_ValueError,
                 "%s must be one of %s'passive', 'full', 'restart', 'truncate', not %R",
                 allow_off ? "checkpoint_on_close" : "mode",
                 allow_off ? "'off', " : "", value);
    return NULL;
}

/* ------------------------------------------------------------ bookkeeping */

static PyObject *
hkn_make_result(hkn_state *state, int mode, int busy, int log_frames, int checkpointed)
{
    return PyObject_CallFunction(state->checkpoint_result, "OOii",
                                 state->mode_names[mode],
                                 busy ? Py_True : Py_False,
                                 log_frames, checkpointed);
}

/* Records a checkpoint that ran: last_checkpoint and the counters. */
int
hkn_record_checkpoint(hkn_state *state, hkn_conn *conn, int mode, const hkn_outcome *out)
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

/* The message and extended code of a failed checkpoint.  errmsg() describes
 * the handle's latest error, which is the checkpoint's own only when the
 * codes agree; otherwise the result code's generic text is the honest one. */
static void
hkn_describe_error(const hkn_sqlite_api *api, sqlite3 *db, hkn_outcome *out)
{
    int extended = sqlite3_extended_errcode(db);
    const char *msg = (extended & 0xff) == (out->rc & 0xff) ? sqlite3_errmsg(db) : NULL;
    out->extended = msg != NULL ? extended : out->rc;
    snprintf(out->message, sizeof(out->message), "%s", msg ? msg : sqlite3_errstr(out->rc));
}

/* Runs under the connection lock, without the GIL, holding SQLite's own
 * connection mutex so that no other thread steps a statement between the
 * reset and the checkpoint.  Touches no Python object. */
static void
hkn_count_busy_statements(const hkn_sqlite_api *api, sqlite3 *db, hkn_outcome *out)
{
    for (sqlite3_stmt *stmt = sqlite3_next_stmt(db, NULL); stmt != NULL;
         stmt = sqlite3_next_stmt(db, stmt)) {
        if (sqlite3_stmt_busy(stmt)) {
            out->busy_statements++;
        }
    }
}

static int hkn_read_busy_timeout(const hkn_sqlite_api *api, sqlite3 *db, int *timeout);

static void
hkn_native_close_checkpoint(const hkn_sqlite_api *api, const hkn_conn *conn, sqlite3 *db,
                            int mode, const hkn_close_plan *plan, hkn_outcome *out)
{
    sqlite3_mutex *mutex = sqlite3_db_mutex(db);
    sqlite3_mutex_enter(mutex);
    hkn_count_busy_statements(api, db, out);

    const char *file = sqlite3_db_filename(db, HKN_MAIN_DB);
    int txn = api->txn_state == NULL ? -1
              : sqlite3_txn_state(db, "main");
    /* Without txn_state (before 3.34, or if it fails) get_autocommit tells
     * that some transaction is open, which may only be a read. */
    int write_txn = txn >= 0 ? txn == SQLITE_TXN_WRITE : !sqlite3_get_autocommit(db);
    long threshold = plan->threshold, pending = -1;

    if (file == NULL || file[0] == '\0') {
        out->skipped = HKN_SKIP_NOT_FILE;
    }
    else if (sqlite3_db_readonly(db, "main") == 1) {
        out->skipped = HKN_SKIP_READONLY;
    }
    else if (write_txn) {
        out->skipped = HKN_SKIP_TRANSACTION;
    }
    else if (plan->keep_open && out->busy_statements > 0) {
        /* Its thread goes on stepping them: resetting them would restart
         * its query, and the read transaction they hold would make the
         * checkpoint fail with SQLITE_LOCKED anyway. */
        out->skipped = HKN_SKIP_IN_USE;
    }
    else if (mode == SQLITE_CHECKPOINT_PASSIVE && threshold > 0
             && (pending = hkn_guard_pending_frames(conn)) >= 0 && pending < threshold) {
        /* What bounds the WAL is a checkpoint once enough frames wait, not
         * one after every write: most closes would pay ~3 fsyncs to copy a
         * page or two (docs/sqlite-internals.md, "The close-time policy"). */
        out->log_frames = (int)pending;
        out->skipped = HKN_SKIP_BELOW_THRESHOLD;
    }
    else {
        int restore = -1;
        if (!plan->keep_open) {
            /* Stepped statements hold a read transaction that would make
             * the checkpoint fail with SQLITE_LOCKED; the base close is
             * about to abandon them anyway. */
            if (out->busy_statements > 0) {
                for (sqlite3_stmt *stmt = sqlite3_next_stmt(db, NULL); stmt != NULL;
                     stmt = sqlite3_next_stmt(db, stmt)) {
                    if (sqlite3_stmt_busy(stmt)) {
                        /* reset() returns the statement's last error; it
                         * resets regardless. */
                        (void)sqlite3_reset(stmt);
                    }
                }
            }
            /* The connection is closing: nothing is left to restore the
             * handler for, so close() can never wait on another process. */
            sqlite3_busy_handler(db, NULL, NULL);
        }
        else if (mode != SQLITE_CHECKPOINT_PASSIVE) {
            /* Its thread keeps the connection, and its busy timeout: off
             * for this call (a passive checkpoint never calls it), then
             * put back, as checkpoint(wait=False) does. */
            out->rc = hkn_read_busy_timeout(api, db, &restore);
            if (out->rc == SQLITE_OK) {
                sqlite3_busy_handler(db, NULL, NULL);
            }
        }
        if (out->rc == SQLITE_OK) {
            out->rc = sqlite3_wal_checkpoint_v2(db, NULL, mode, &out->log_frames,
                                                &out->checkpointed_frames);
        }
        if (restore >= 0) {
            sqlite3_busy_timeout(db, restore);
        }
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
    sqlite3_mutex_leave(mutex);
}

/* ---------------------------------------------------------- SQL fallback */

/* Runs `sql` through a cursor of the base class (never a subclass's
 * cursor() or execute() override, and without the user's row_factory) and
 * returns the first row as a tuple, or None. */
PyObject *
hkn_sql_first_row(hkn_state *state, PyObject *self, const char *sql)
{
    PyObject *row = NULL;
    PyObject *make_cursor = PyObject_GetAttrString((PyObject *)state->base_type,
                                                   "cursor");
    if (make_cursor == NULL) {
        return NULL;
    }
    PyObject *cursor = PyObject_CallOneArg(make_cursor, self);
    Py_DECREF(make_cursor);
    if (cursor == NULL) {
        return NULL;
    }
    if (PyObject_SetAttrString(cursor, "row_factory", Py_None) == 0) {
        PyObject *executed = PyObject_CallMethod(cursor, "execute", "s", sql);
        if (executed != NULL) {
            Py_DECREF(executed);
            row = PyObject_CallMethod(cursor, "fetchone", NULL);
        }
    }
    hkn_saved_error saved;
    hkn_error_save(&saved);
    PyObject *closed = PyObject_CallMethod(cursor, "close", NULL);
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
    PyObject *text = PyObject_Str(exc);
    const char *s = text == NULL ? NULL
                    : PyUnicode_AsUTF8(text);
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
#if HKN_PY_HAS_SQLITE_ERROR_CODES
    PyObject *code = PyObject_GetAttrString(exc, "sqlite_errorcode");
    if (code != NULL) {
        long value = PyLong_AsLong(code);
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
            PyObject *changes = PyObject_GetAttrString(self, "total_changes");
            if (changes == NULL) {
                return -1;
            }
            long long now = PyLong_AsLongLong(changes);
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
            PyObject *value = PyTuple_GetItem(row, 0);
            saved_timeout = value == NULL ? -1
                            : PyLong_AsLong(value);
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
    if (!PyArg_ParseTuple(row, "iii", &busy, &out->log_frames, &out->checkpointed_frames)) {
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
        PyObject *exc = hkn_error_take();
        hkn_exception_text(exc, out->message, sizeof(out->message));
        out->rc = hkn_sql_error_code(exc, out->message);
        out->extended = out->rc;
        Py_XDECREF(exc);
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

static int hkn_close_report(hkn_state *state, hkn_conn *conn, int mode,
                            const hkn_outcome *out);

/* checkpoint_threshold read the ordinary way (instance, class, subclass):
 * an int >= 0 (not a bool) into *threshold, or -1 with ValueError naming
 * the value (or the lookup's own exception). */
static int
hkn_threshold(hkn_state *state, PyObject *self, long *threshold)
{
    if (hkn_setting_known(state, self, HKN_SETTING_THRESHOLD, threshold)) {
        return 0;
    }
    PyObject *value = hkn_setting(state, self, HKN_SETTING_THRESHOLD);
    if (value == NULL) {
        return -1;
    }
    *threshold = PyLong_Check(value) && !PyBool_Check(value) ? PyLong_AsLong(value) : -1;
    if (*threshold < 0 && PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError)) {
        Py_DECREF(value);       /* not about the value (memory): as it is */
        return -1;
    }
    if (*threshold < 0) {
        PyErr_Clear();          /* a too-large int is as wrong as any other */
        PyErr_Format(PyExc_ValueError,
                     "checkpoint_threshold must be an int >= 0 (frames), not %R", value);
    }
    else {
        hkn_setting_learn(state, self, HKN_SETTING_THRESHOLD, value, *threshold);
    }
    Py_DECREF(value);
    return *threshold < 0 ? -1 : 0;
}

/* A passive close of a connection that wrote nothing: nothing to copy and
 * nothing that could wait, so it is decided with the GIL held, under one
 * try of the connection's mutex (the read tick's whole cost here).  1 when
 * decided, *out filled.  0 when the connection wrote since it opened, or
 * when that cannot be told (the connection busy in another thread: its
 * close then waits for it without the GIL, and checkpoints as if it
 * wrote).  The other policies checkpoint whatever the connection did, so
 * they never ask. */
static int
hkn_reader_close(hkn_state *state, PyObject *self, hkn_outcome *out)
{
    const hkn_sqlite_api *api = &state->api;
    sqlite3 *db = hkn_connection_handle(self);
    sqlite3_mutex *mutex;
    if (db == NULL || !hkn_db_mutex_try(api, db, &mutex)) {
        return 0;
    }
    int written = 0, high = 0;
    int decided = sqlite3_db_status(db, SQLITE_DBSTATUS_CACHE_WRITE, &written, &high, 0)
                  == SQLITE_OK && written == 0;
    if (decided) {
        hkn_outcome_start(out);
        hkn_count_busy_statements(api, db, out);
        out->skipped = HKN_SKIP_UNCHANGED;
    }
    hkn_db_mutex_leave(api, mutex);
    return decided;
}

/* Runs the close-time checkpoint of `self` in the given mode and records
 * it.  Every failure is reported as a warning, never raised, except that a
 * warning turned into an error by the warning filters propagates (-1), and
 * an invalid checkpoint_threshold: the checkpoint then runs as if it were
 * 0 (a bad setting never leaves the WAL unbounded) and the ValueError
 * propagates, whatever the connection did. */
int
hkn_close_checkpoint(hkn_state *state, hkn_conn *conn, PyObject *self, int mode,
                     int keep_open)
{
    if (conn->path == NULL || PyUnicode_GET_LENGTH(conn->path) == 0) {
        /* In-memory or temporary: no WAL, and no reason to leave the GIL. */
        state->stats.checkpoints_skipped++;
        return 0;
    }
    hkn_close_plan plan = {0};
    plan.keep_open = keep_open;
    hkn_outcome out;
    hkn_saved_error bad_threshold = {0};
    /* Read whether or not the connection wrote, so that a bad value is
     * reported at every close; once read, it is known without a lookup. */
    if (mode == SQLITE_CHECKPOINT_PASSIVE
        && hkn_threshold(state, self, &plan.threshold) < 0) {
        plan.threshold = 0;
        hkn_error_save(&bad_threshold);
    }
    /* The settings were the last Python code before the native work (they
     * may be properties): one that closed the connection through the base
     * class left nothing to checkpoint, and no handle to pass to SQLite. */
    if (hkn_connection_handle(self) == NULL) {
        hkn_outcome_start(&out);
        out.skipped = HKN_SKIP_CLOSED;
    }
    else if (state->api.native && mode == SQLITE_CHECKPOINT_PASSIVE
             && hkn_reader_close(state, self, &out)) {
        /* Decided here, so the native checkpoint below never sees a
         * passive close of a connection that wrote nothing. */
    }
    else {
        if (plan.threshold > 0 && state->api.native && conn->guard != NULL) {
            /* The frame count is read through the -shm descriptor the
             * guard knows; a connection's -shm opens at its first read,
             * after the guard was claimed, so a connection that wrote looks
             * for it now. */
            hkn_guard_refresh(state, conn, hkn_connection_handle(self));
        }
        if (hkn_checkpoint_run(state, conn, self, mode, HKN_CKPT_CLOSE, &plan, &out) < 0) {
            /* Not SQLite's doing (memory, a broken subclass attribute):
             * report it like a checkpoint error; the close must still
             * happen. */
            PyObject *exc = hkn_error_take();
            hkn_exception_text(exc, out.message, sizeof(out.message));
            Py_XDECREF(exc);
            out.rc = SQLITE_ERROR;
        }
    }
    if (keep_open) {
        out.busy_statements = 0;    /* its thread's, not left behind by a close */
    }
    int status = hkn_close_report(state, conn, mode, &out);
    if (hkn_error_saved(&bad_threshold)) {
        if (status < 0) {
            hkn_error_drop(&bad_threshold);     /* the report's own error wins */
        }
        else {
            hkn_error_restore(&bad_threshold);
            status = -1;
        }
    }
    return status;
}

/* A close-time checkpoint's outcome: counted and recorded when it ran,
 * warned about when it failed. */
static int
hkn_close_report(hkn_state *state, hkn_conn *conn, int mode, const hkn_outcome *out)
{
    int status = 0;
    if (out->skipped != HKN_RAN) {
        state->stats.checkpoints_skipped++;
    }
    else if (out->rc == SQLITE_OK || out->rc == SQLITE_BUSY) {
        if (hkn_record_checkpoint(state, conn, mode, out) < 0) {
            status = -1;
        }
    }
    else {
        state->stats.checkpoint_errors++;
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                             "%s checkpoint on close of %R failed (%s): %s",
                             (PyUnicode_AsUTF8)(state->mode_names[mode]),
                             conn->path ? conn->path : Py_None,
                             out->rc == SQLITE_ERROR ? "error" : "sqlite",
                             out->message) < 0) {
            status = -1;
        }
    }
#if HKN_PY_CLOSE_LEAVES_STATEMENTS
    /* 3.10's close() finalizes every statement; 3.11+ only drops its cache,
     * so statements a cursor is still stepping keep the handle (and its
     * files) alive until that cursor is collected. */
    if (out->busy_statements > 0 && status == 0 && conn->path != NULL
        && PyUnicode_GetLength(conn->path) > 0) {
        if (PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                             "close() of %R with %d statement(s) still stepping: "
                             "SQLite keeps the database open until the cursor(s) "
                             "using them are released",
                             conn->path, out->busy_statements) < 0) {
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
int
hkn_policy(hkn_state *state, PyObject *self, PyObject **value)
{
    long known;
    if (hkn_setting_known(state, self, HKN_SETTING_POLICY, &known)) {
        *value = NULL;
        return (int)known;
    }
    *value = hkn_setting(state, self, HKN_SETTING_POLICY);
    if (*value == NULL) {
        return HKN_POLICY_INVALID;
    }
    int mode = hkn_parse_mode(state, *value, 1);
    if (mode != HKN_POLICY_INVALID && mode != HKN_POLICY_ERROR) {
        hkn_setting_learn(state, self, HKN_SETTING_POLICY, *value, mode);
    }
    if (mode != HKN_POLICY_INVALID) {
        Py_CLEAR(*value);
    }
    return mode == HKN_POLICY_ERROR ? HKN_POLICY_INVALID : mode;
}

/* ------------------------------------------------------ explicit checkpoint */

/* Reads the busy timeout into *timeout with a native PRAGMA (there is no C
 * getter).  Without the GIL, under the connection's mutex: a trace callback
 * may run, and takes the GIL itself, as for any statement sqlite3 runs.
 * SQLITE_OK, or the error of the statement. */
static int
hkn_read_busy_timeout(const hkn_sqlite_api *api, sqlite3 *db, int *timeout)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA busy_timeout", -1, &stmt, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(stmt);
        if (rc == SQLITE_ROW) {
            *timeout = sqlite3_column_int(stmt, 0);
            rc = SQLITE_OK;
        }
        else if (rc == SQLITE_DONE) {
            rc = SQLITE_ERROR;  /* the PRAGMA always has a row */
        }
    }
    if (stmt != NULL) {
        /* finalize() repeats the step's error, which rc already holds. */
        (void)sqlite3_finalize(stmt);
    }
    return rc;
}

/* checkpoint(mode, wait=...): the busy handler stays on when waiting; with
 * wait=False it is off for this call and put back afterwards.  All of it
 * without the GIL, under the connection's mutex, so no other thread uses
 * the connection without its handler meanwhile. */
static void
hkn_native_explicit_checkpoint(hkn_state *state, hkn_conn *conn, PyObject *self, int mode,
                               int wait, hkn_outcome *out)
{
    const hkn_sqlite_api *api = &state->api;
    sqlite3 *db = hkn_connection_handle(self);
    Py_BEGIN_ALLOW_THREADS
    sqlite3_mutex *mutex = sqlite3_db_mutex(db);
    sqlite3_mutex_enter(mutex);
    int restore = -1;
    if (!wait && mode != SQLITE_CHECKPOINT_PASSIVE) {
        /* Without the old timeout nothing could put the busy handler
         * back afterwards: fail instead of leaving the connection
         * without it. */
        out->rc = hkn_read_busy_timeout(api, db, &restore);
        if (out->rc == SQLITE_OK) {
            sqlite3_busy_handler(db, NULL, NULL);
        }
        else {
            hkn_describe_error(api, db, out);
        }
    }
    if (out->rc == SQLITE_OK) {
        out->rc = sqlite3_wal_checkpoint_v2(db, NULL, mode, &out->log_frames,
                                            &out->checkpointed_frames);
        if (out->rc != SQLITE_OK && out->rc != SQLITE_BUSY) {
            hkn_describe_error(api, db, out);
        }
        if (restore >= 0) {
            sqlite3_busy_timeout(db, restore);
        }
    }
    sqlite3_mutex_leave(mutex);
    Py_END_ALLOW_THREADS
    hkn_guard_refresh(state, conn, db);
}

/* ------------------------------------------------------------ entry point */

int
hkn_checkpoint_run(hkn_state *state, hkn_conn *conn, PyObject *self, int mode,
                   hkn_ckpt_how how, const hkn_close_plan *plan, hkn_outcome *out)
{
    hkn_outcome_start(out);
    if (!state->api.native) {
        return hkn_sql_checkpoint(state, conn, self, mode, how != HKN_CKPT_WAIT,
                                  how == HKN_CKPT_CLOSE, out);
    }
    if (how == HKN_CKPT_CLOSE) {
        sqlite3 *db = hkn_connection_handle(self);
        const hkn_sqlite_api *api = &state->api;
        Py_BEGIN_ALLOW_THREADS
        hkn_native_close_checkpoint(api, conn, db, mode, plan, out);
        Py_END_ALLOW_THREADS
        return 0;
    }
    hkn_native_explicit_checkpoint(state, conn, self, mode, how == HKN_CKPT_WAIT, out);
    return 0;
}
