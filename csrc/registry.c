/* registry.c - the live WalSafeConnections of this process, and the leak
 * bound on them.
 *
 * The registry is an intrusive circular list through each connection's
 * hkn_conn (no allocation per open); it is only touched with the GIL held
 * and never calls into Python while inconsistent.  The leak bound
 * (max_live_per_database) counts a database's live connections on open and,
 * over the bound, runs the garbage collector once so that abandoned
 * connections are finalized, warning with the openers of those that stay.
 *
 * The count on open is kept per database file (hkn_live_count) rather than
 * found by walking the registry, so that an open costs the same however
 * many connections are live (docs/performance.md, "Tried and kept").  The
 * kept count includes connections whose handle the base's close() closed
 * behind our back, so it is an upper bound: only when it reaches the bound
 * is the exact count walked for.
 */
#include "hkn.h"
#include "fault_calls.h"     /* last: see faults.h */

/* -------------------------------------------------------------- registry */

void
hkn_registry_add(hkn_state *state, hkn_conn *conn)
{
    hkn_conn *head = &state->registry;
    conn->prev = head->prev;
    conn->next = head;
    head->prev->next = conn;
    head->prev = conn;
    state->stats.live++;
    if (state->stats.live > state->stats.peak_live) {
        state->stats.peak_live = state->stats.live;
    }
}

void
hkn_registry_remove(hkn_state *state, hkn_conn *conn)
{
    if (conn->prev == NULL) {
        return;
    }
    hkn_live_count_leave(state, conn);
    conn->prev->next = conn->next;
    conn->next->prev = conn->prev;
    conn->prev = conn->next = NULL;
    state->stats.live--;
}

/* ------------------------------------------------ counts per database */

/* The registered connections to one database file, named as SQLite
 * resolved it.  Listed in hkn_state.live_counts, most recently entered
 * first: a process mostly opens the database it opened last, whose str is
 * then the very object of the previous open (hkn_path_str), so the lookup
 * ends at the first entry.  Freed when its last connection leaves, which is
 * also when the leak bound forgets the database (hkn_live_count_leave). */
struct hkn_live_count {
    hkn_live_count *next;
    PyObject *path;             /* str, strong */
    Py_ssize_t registered;
};

int
hkn_live_count_enter(hkn_state *state, hkn_conn *conn, PyObject *path)
{
    hkn_live_count **link = &state->live_counts, *entry;
    while ((entry = *link) != NULL) {
        if (entry->path == path) {
            break;
        }
        /* Both are str, so the comparison cannot fail; equal names of
         * different objects are one database, as in hkn_count_live. */
        if (PyUnicode_GET_LENGTH(entry->path) == PyUnicode_GET_LENGTH(path)
            && PyUnicode_Compare(entry->path, path) == 0) {
            break;
        }
        link = &entry->next;
    }
    if (entry == conn->live_count && entry != NULL) {
        return 0;               /* __init__ again, on the same database */
    }
    if (entry == NULL) {
        entry = malloc(sizeof(*entry));
        if (entry == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        entry->path = Py_NewRef(path);
        entry->registered = 0;
        entry->next = state->live_counts;
        state->live_counts = entry;
    }
    else if (entry != state->live_counts) {
        /* To the front; when it is there already (the usual case), the
         * list is not written at all. */
        *link = entry->next;
        entry->next = state->live_counts;
        state->live_counts = entry;
    }
    hkn_live_count_leave(state, conn);
    entry->registered++;
    conn->live_count = entry;
    return 0;
}

void
hkn_live_count_leave(hkn_state *state, hkn_conn *conn)
{
    hkn_live_count *entry = conn->live_count;
    if (entry == NULL) {
        return;
    }
    conn->live_count = NULL;
    if (--entry->registered > 0) {
        return;
    }
    for (hkn_live_count **link = &state->live_counts; *link != NULL; link = &(*link)->next) {
        if (*link == entry) {
            *link = entry->next;
            break;
        }
    }
    /* The leak bound remembers a database that stayed over its bound until
     * it is under it again; once no connection to it is registered there is
     * nothing to remember (a process that opens many databases would
     * otherwise keep every path).  Forgotten here, where the database is
     * left, so that every way of leaving it counts: a close, a collection,
     * and an __init__ onto another database after the base's close().  The
     * set holds only str, whose hash is cached and whose comparison runs no
     * Python code, so the discard cannot fail; this runs in finalizers, so
     * a pending exception is kept all the same. */
    if (PySet_GET_SIZE(state->bound_exceeded) > 0) {
        hkn_saved_error saved;
        hkn_error_save(&saved);
        (void)(PySet_Discard)(state->bound_exceeded, entry->path);
        PyErr_Clear();
        hkn_error_restore(&saved);
    }
    /* A str's deallocation runs no Python code. */
    Py_DECREF(entry->path);
    free(entry);
}

void
hkn_live_counts_free(hkn_state *state)
{
    while (state->live_counts != NULL) {
        hkn_live_count *entry = state->live_counts;
        state->live_counts = entry->next;
        Py_DECREF(entry->path);
        free(entry);
    }
}

/* Strong references to every registered connection, taken without
 * allocating Python objects while walking: an allocation can run the GC,
 * whose finalizers unregister connections under the walk. */
PyObject **
hkn_registry_snapshot(hkn_state *state, Py_ssize_t *count)
{
    Py_ssize_t n = 0;
    for (hkn_conn *c = state->registry.next; c != &state->registry; c = c->next) {
        n++;
    }
    PyObject **items = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(PyObject *));
    if (items == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_ssize_t i = 0;
    for (hkn_conn *c = state->registry.next; c != &state->registry && i < n; c = c->next) {
        items[i++] = Py_NewRef(c->owner);
    }
    *count = i;
    return items;
}

void
hkn_snapshot_free(PyObject **items, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(items[i]);
    }
    PyMem_Free(items);
}

/* ---------------------------------------------------------------- leak bound */

/* Open WalSafeConnections of this process on `path` (same resolved name),
 * `self` aside.  Cannot fail: every name compared is a str. */
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
    if (PyErr_Occurred()) {
        PyErr_Clear();          /* not expected: both names are str */
    }
    return count;
}

/* "file:line (xN), ..." for the live connections on `path`, `self` aside. */
static PyObject *
hkn_openers_of(hkn_state *state, PyObject *self, PyObject *path)
{
    PyObject *counter = PyDict_New();
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
        /* A handle closed through the base class (sqlite3.Connection.close)
         * leaves its connection registered: not open, so not named. */
        if (items[i] == self || c->path == NULL
            || hkn_connection_handle(items[i]) == NULL) {
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
        PyObject *seen = PyDict_GetItemWithError(counter, where);
        long total = seen == NULL ? 0
                     : PyLong_AsLong(seen);
        PyObject *value = NULL;
        if (!PyErr_Occurred()) {
            value = PyLong_FromLong(total + 1);
        }
        if (value == NULL
            || PyDict_SetItem(counter, where, value) < 0) {
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
    PyObject *parts = PyList_New(0);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (parts != NULL && PyDict_Next(counter, &pos, &key, &value)) {
        PyObject *part = PyUnicode_FromFormat("%U (x%S)", key, value);
        if (part == NULL
            || PyList_Append(parts, part) < 0) {
            Py_CLEAR(parts);
        }
        Py_XDECREF(part);
    }
    Py_DECREF(counter);
    if (parts == NULL) {
        return NULL;
    }
    PyObject *sep = PyUnicode_FromString(", ");
    PyObject *joined = sep == NULL ? NULL
                       : PyUnicode_Join(sep, parts);
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return joined;
}

/* max_live_per_database read the ordinary way into *limit: 0 for None (no
 * bound, as 0 is), or -1 with ValueError naming a value that is neither None
 * nor an int >= 0 (or the lookup's own exception). */
static int
hkn_max_live(hkn_state *state, PyObject *self, long *limit)
{
    PyObject *value = hkn_setting(state, self, HKN_SETTING_MAX_LIVE);
    if (value == NULL) {
        return -1;
    }
    *limit = -1;
    if (value == Py_None) {
        *limit = 0;
    }
    else if (PyLong_Check(value) && !PyBool_Check(value)) {
        *limit = PyLong_AsLong(value);
        /* Too large is a bad value; anything else (memory) is not the
         * value's fault and propagates. */
        if (*limit == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                Py_DECREF(value);
                return -1;
            }
            PyErr_Clear();
        }
    }
    if (*limit < 0) {
        PyErr_Format(PyExc_ValueError,
                     "max_live_per_database must be None or an int >= 0, not %R", value);
        Py_DECREF(value);
        return -1;
    }
    hkn_setting_learn(state, self, HKN_SETTING_MAX_LIVE, value, *limit);
    Py_DECREF(value);
    return 0;
}

/* The per-database bound on live connections (max_live_per_database).  On
 * CPython 3.11+ an unclosed connection lives until the cyclic collector
 * runs, which in a large busy process can be long: that is how the gateway
 * reached ~1,000 descriptors.  When opening one more would exceed the
 * bound, collect once so abandoned connections are finalized; if the bound
 * still holds, open anyway and warn once per episode.  The well-behaved path
 * reads the database's count and the setting as decoded before: no walk, no
 * attribute lookup. */
int
hkn_enforce_bound(hkn_state *state, PyObject *self, PyObject *path)
{
    /* The others registered on this database: at least as many as are
     * open (see the top of this file). */
    hkn_live_count *counted = hkn_conn_get(self)->live_count;
    Py_ssize_t live = counted != NULL ? counted->registered - 1
                      : hkn_count_live(state, self, path);
    if (live == 0) {
        return 0;
    }
    long limit;
    if (!hkn_setting_known(state, self, HKN_SETTING_MAX_LIVE, &limit)
        && hkn_max_live(state, self, &limit) < 0) {
        return -1;
    }
    if (limit == 0) {
        return 0;
    }
    /* Empty unless a bound was exceeded: no hashing of the path then. */
    int contains = PySet_GET_SIZE(state->bound_exceeded) == 0 ? 0
                   : PySet_Contains(state->bound_exceeded, path);
    if (contains < 0) {
        return -1;
    }
    if (live >= limit && counted != NULL) {
        live = hkn_count_live(state, self, path);      /* the open ones, exactly */
    }
    if (live < limit) {
        /* Under the bound again: the next excess collects and warns anew. */
        if (contains
            && PySet_Discard(state->bound_exceeded, path) < 0) {
            return -1;
        }
        return 0;
    }
    if (contains) {
        return 0;
    }
    /* gc.collect() rather than PyGC_Collect(): the latter does nothing while
     * automatic collection is disabled, which is exactly when this matters. */
    PyObject *gc = PyImport_ImportModule("gc");
    PyObject *collected = gc == NULL ? NULL
                          : PyObject_CallMethod(gc, "collect", NULL);
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
    if (PySet_Add(state->bound_exceeded, path) < 0) {
        return -1;
    }
    PyObject *openers = hkn_openers_of(state, self, path);
    if (openers == NULL) {
        return -1;
    }
    int rc = PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                              "%zd WalSafeConnections to %R are open "
                              "(max_live_per_database=%ld) even after a garbage "
                              "collection; opening one more. Opened at: %U",
                              live, path, limit, openers);
    Py_DECREF(openers);
    return rc;
}
