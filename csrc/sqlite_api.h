/* sqlite_api.h - the part of SQLite's public C API this extension calls.
 *
 * We never include sqlite3.h and never link libsqlite3: users' machines often
 * lack the development headers, and a second copy of the library in the
 * process keeps its own table of POSIX locks, whose closes cancel _sqlite3's
 * locks (docs/sqlite-internals.md, Lock cancellation).  The signatures and
 * constants below are SQLite's stable public ABI; the functions are bound at
 * import to the library _sqlite3 itself uses (sqlite_api.c).
 */
#ifndef HKN_SQLITE_API_H
#define HKN_SQLITE_API_H

#include <Python.h>

typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
typedef struct sqlite3_mutex sqlite3_mutex;

#define SQLITE_OK           0
#define SQLITE_ERROR        1
#define SQLITE_INTERNAL     2
#define SQLITE_PERM         3
#define SQLITE_ABORT        4
#define SQLITE_BUSY         5
#define SQLITE_LOCKED       6
#define SQLITE_NOMEM        7
#define SQLITE_READONLY     8
#define SQLITE_INTERRUPT    9
#define SQLITE_IOERR       10
#define SQLITE_CORRUPT     11
#define SQLITE_NOTFOUND    12
#define SQLITE_FULL        13
#define SQLITE_CANTOPEN    14
#define SQLITE_PROTOCOL    15
#define SQLITE_EMPTY       16
#define SQLITE_SCHEMA      17
#define SQLITE_TOOBIG      18
#define SQLITE_CONSTRAINT  19
#define SQLITE_MISMATCH    20
#define SQLITE_MISUSE      21
#define SQLITE_NOLFS       22
#define SQLITE_AUTH        23
#define SQLITE_FORMAT      24
#define SQLITE_RANGE       25
#define SQLITE_NOTADB      26
#define SQLITE_ROW        100
#define SQLITE_DONE       101

#define SQLITE_CHECKPOINT_PASSIVE   0
#define SQLITE_CHECKPOINT_FULL      1
#define SQLITE_CHECKPOINT_RESTART   2
#define SQLITE_CHECKPOINT_TRUNCATE  3

#define SQLITE_FCNTL_FILE_POINTER    7
#define SQLITE_FCNTL_PERSIST_WAL    10
#define SQLITE_DBSTATUS_CACHE_WRITE  9
#define SQLITE_LIMIT_VARIABLE_NUMBER 9

#define SQLITE_TXN_NONE   0
#define SQLITE_TXN_READ   1
#define SQLITE_TXN_WRITE  2

typedef int (*hkn_busy_fn)(void *, int);

/* sqlite3_vfs as sqlite3.h declares it (iVersion 3, SQLite 3.7.6+), for its
 * system-call table (shmlock.c).  The members we never call are generic. */
typedef void (*hkn_syscall_ptr)(void);
typedef struct hkn_sqlite3_vfs hkn_sqlite3_vfs;
struct hkn_sqlite3_vfs {
    int iVersion;
    int szOsFile;
    int mxPathname;
    hkn_sqlite3_vfs *pNext;
    const char *zName;
    void *pAppData;
    hkn_syscall_ptr xOpen, xDelete, xAccess, xFullPathname, xDlOpen, xDlError, xDlSym,
                    xDlClose, xRandomness, xSleep, xCurrentTime, xGetLastError;
    hkn_syscall_ptr xCurrentTimeInt64;                  /* iVersion 2 */
    int (*xSetSystemCall)(hkn_sqlite3_vfs *, const char *, hkn_syscall_ptr);
    hkn_syscall_ptr (*xGetSystemCall)(hkn_sqlite3_vfs *, const char *);
    const char *(*xNextSystemCall)(hkn_sqlite3_vfs *, const char *);
};

/* The resolved functions.  Every member is non-NULL when `native` is set,
 * except txn_state (SQLite 3.34+), which has a fallback, and vfs_find
 * (absent only from builds without the OS layer: no -shm locks to shim).
 * Each member is named after its SQLite function without the "sqlite3_"
 * prefix, which is also its name in sqlite3_api_routines (sqlite_api.c
 * binds both routes from one table that relies on this). */
typedef struct {
    int native;
    void *dl_handle;                /* the symbols route's dlopen handle, or NULL */
    const char *(*libversion)(void);
    int (*libversion_number)(void);
    int (*total_changes)(sqlite3 *);
    int (*wal_checkpoint_v2)(sqlite3 *, const char *, int, int *, int *);
    int (*busy_handler)(sqlite3 *, hkn_busy_fn, void *);
    int (*busy_timeout)(sqlite3 *, int);
    const char *(*db_filename)(sqlite3 *, const char *);
    int (*db_readonly)(sqlite3 *, const char *);
    int (*db_status)(sqlite3 *, int, int *, int *, int);
    int (*txn_state)(sqlite3 *, const char *);
    int (*get_autocommit)(sqlite3 *);
    sqlite3_stmt *(*next_stmt)(sqlite3 *, sqlite3_stmt *);
    int (*stmt_busy)(sqlite3_stmt *);
    int (*reset)(sqlite3_stmt *);
    const char *(*errmsg)(sqlite3 *);
    const char *(*errstr)(int);
    int (*extended_errcode)(sqlite3 *);
    int (*file_control)(sqlite3 *, const char *, int, void *);
    int (*limit)(sqlite3 *, int, int);
    int (*prepare_v2)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
    int (*step)(sqlite3_stmt *);
    int (*column_int)(sqlite3_stmt *, int);
    int (*finalize)(sqlite3_stmt *);
    sqlite3_mutex *(*db_mutex)(sqlite3 *);
    void (*mutex_enter)(sqlite3_mutex *);
    void (*mutex_leave)(sqlite3_mutex *);
    int (*mutex_try)(sqlite3_mutex *);
    int (*close_v2)(sqlite3 *);
    hkn_sqlite3_vfs *(*vfs_find)(const char *);
} hkn_sqlite_api;

/* Call sites use SQLite's own names.  As in SQLite's sqlite3ext.h, each
 * name stands for the member of the route's table; the caller has it in
 * scope as `api` (a `const hkn_sqlite_api *`).  A fault build redefines the
 * fallible ones (csrc/faults.h), which is why a test for an optional
 * function reads the member itself: `api->txn_state == NULL`. */
#define sqlite3_libversion           api->libversion
#define sqlite3_libversion_number    api->libversion_number
#define sqlite3_total_changes        api->total_changes
#define sqlite3_wal_checkpoint_v2    api->wal_checkpoint_v2
#define sqlite3_busy_handler         api->busy_handler
#define sqlite3_busy_timeout         api->busy_timeout
#define sqlite3_db_filename          api->db_filename
#define sqlite3_db_readonly          api->db_readonly
#define sqlite3_db_status            api->db_status
#define sqlite3_txn_state            api->txn_state
#define sqlite3_get_autocommit       api->get_autocommit
#define sqlite3_next_stmt            api->next_stmt
#define sqlite3_stmt_busy            api->stmt_busy
#define sqlite3_reset                api->reset
#define sqlite3_errmsg               api->errmsg
#define sqlite3_errstr               api->errstr
#define sqlite3_extended_errcode     api->extended_errcode
#define sqlite3_file_control         api->file_control
#define sqlite3_limit                api->limit
#define sqlite3_prepare_v2           api->prepare_v2
#define sqlite3_step                 api->step
#define sqlite3_column_int           api->column_int
#define sqlite3_finalize             api->finalize
#define sqlite3_db_mutex             api->db_mutex
#define sqlite3_mutex_enter          api->mutex_enter
#define sqlite3_mutex_leave          api->mutex_leave
#define sqlite3_mutex_try            api->mutex_try
#define sqlite3_close_v2             api->close_v2
#define sqlite3_vfs_find             api->vfs_find

struct hkn_state;

/* Binds the functions by the first route that works ("symbols", then
 * "extension-api") and proves the binding with the self-check.  Always
 * succeeds unless Python itself fails (returns -1 with an exception): when
 * no route works, api->native == 0, state->api_route is "sql", and
 * state->api_reason and state->api_routes_not_taken say why. */
int hkn_sqlite_api_init(struct hkn_state *state);
void hkn_sqlite_api_free(struct hkn_state *state);
/* {SQLite function name: its bound address, or None}: how tests compare
 * the two routes' bindings. */
PyObject *hkn_sqlite_api_bound(struct hkn_state *state);

/* The one layout assumption of the package: the `sqlite3 *` handle is the
 * first field after PyObject_HEAD in CPython's pysqlite_Connection (3.10 to
 * 3.15: docs/sqlite-internals.md, CPython's sqlite3.Connection from C).  NULL once the connection is closed.  Only
 * valid for instances of sqlite3.Connection; the import-time self-check
 * proves it on this interpreter before native mode is enabled. */
static inline sqlite3 *
hkn_connection_handle(PyObject *connection)
{
    return *(sqlite3 **)((char *)connection + sizeof(PyObject));
}

/* The same assumption, writing: only for closing a garbage-collected
 * connection from a thread the base's close() refuses (see
 * hkn_connection_finalize), so the base sees it closed afterwards. */
static inline void
hkn_connection_forget_handle(PyObject *connection)
{
    *(sqlite3 **)((char *)connection + sizeof(PyObject)) = NULL;
}

/* The only way this package takes a connection's mutex with the GIL held
 * (docs/sqlite-internals.md, "The connection mutex and the GIL"): taken
 * only if free.  Its holder may be another thread inside SQLite on the same
 * connection, in a callback waiting for the GIL, or waiting for a lock that
 * a third thread releases only once it has the GIL; waiting would deadlock.
 * 1 when taken, or when the connection has no mutex (SQLite built or opened
 * without serialized mode: *held is then NULL); 0 when another thread holds
 * it.  A call that must wait leaves the GIL first and uses mutex_enter. */
int hkn_db_mutex_try(const hkn_sqlite_api *api, sqlite3 *db, sqlite3_mutex **held);
/* Gives back what hkn_db_mutex_try took (nothing when *held was NULL). */
void hkn_db_mutex_leave(const hkn_sqlite_api *api, sqlite3_mutex *held);

/* Raises the sqlite3 module's exception class for `rc` with `message`, and
 * on 3.11+ sets sqlite_errorcode/sqlite_errorname as sqlite3 itself does. */
void hkn_set_sqlite_error(struct hkn_state *state, int rc, int extended, const char *message);

#endif
