/* hkn.h - what the files of the extension share: the module state, the
 * per-connection record, and the functions one file offers another.
 *
 * Every C name of the extension starts with hkn_ (HKN_ for macros); nothing
 * but PyInit__native is exported from the shared object (setup.py builds
 * with -fvisibility=hidden, and .ci/run checks it with nm).
 */
#ifndef HKN_H
#define HKN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "compat.h"
#include "faults.h"
#include "sqlite_api.h"
#include "sqlite_private.h"
#include "fdscan.h"

/* Our part of a WalSafeConnection.  It sits right after sqlite3.Connection's
 * own fields, whose size is only known at run time (it differs per CPython
 * version), so it is found at HKN_CONN_OFFSET(base size) rather than by a C struct
 * that embeds the base. */
typedef struct hkn_guard hkn_guard;
typedef struct hkn_live_count hkn_live_count;

/* Where a connection was opened (opener.c): up to HKN_OPENER_FRAMES frames
 * from the first frame outside this package outward, innermost first, as
 * code objects and instruction offsets in bytes; lines are worked out only
 * when a report asks. */
#define HKN_OPENER_FRAMES 5
typedef struct hkn_opener {
    PyObject *code[HKN_OPENER_FRAMES];
    int lasti[HKN_OPENER_FRAMES];
    int depth;
} hkn_opener;

typedef struct hkn_conn {
    struct hkn_conn *prev;          /* registry links; both NULL when not registered */
    struct hkn_conn *next;
    PyObject *owner;                /* the connection object itself (borrowed) */
    PyObject *dict;                 /* __dict__: checkpoint_on_close per instance */
    PyObject *weakreflist;
    PyObject *path;                 /* database file as SQLite resolved it; "" for memory/temp */
    hkn_live_count *live_count;     /* the count of registered connections to `path`
                                     * (registry.c); NULL for memory/temp */
    PyObject *last_checkpoint;      /* CheckpointResult or NULL */
    hkn_guard *guard;               /* this connection's claim on its inode's guard */
    unsigned long busy_owner;       /* thread using the handle without the GIL, or 0 */
    int checkpointing;              /* the owner runs a checkpoint, whose statements
                                     * may call back into Python (a trace callback) */
    unsigned long thread_ident;     /* thread that opened it (the base's thread check) */
    double opened_time;             /* time.time() at open */
    long long changes_base;         /* SQL mode: total_changes at open */
    pid_t pid;                      /* process that opened it; 0 before __init__ ran */
    hkn_opener opener;              /* the user code that opened it */
    unsigned long long serial;      /* stats.opened after this open: 1, 2, ... */
    unsigned long fork_generation;  /* state->fork_generation when opened */
    int check_same_thread;
    int opted_out;                  /* guard_wal=False: registered with shmlock.c */
    dev_t opt_out_dev;
    ino_t opt_out_ino;
} hkn_conn;

typedef struct hkn_counters {
    unsigned long long opened;
    unsigned long long closed;
    unsigned long long finalized;
    unsigned long long checkpoints;
    unsigned long long checkpoints_busy;
    unsigned long long checkpoints_skipped;
    unsigned long long checkpoint_errors;
    unsigned long long frames_checkpointed;
    unsigned long long bound_collections;
    unsigned long long guards_taken;
    unsigned long long guards_released;
    unsigned long long relocks;
    unsigned long long guard_failures;
    Py_ssize_t live;
    Py_ssize_t peak_live;
} hkn_counters;

/* The class attributes a connection reads as settings (hkn_setting). */
typedef enum {
    HKN_SETTING_POLICY,         /* checkpoint_on_close */
    HKN_SETTING_THRESHOLD,      /* checkpoint_threshold */
    HKN_SETTING_GUARD,          /* guard_wal */
    HKN_SETTING_MAX_LIVE,       /* max_live_per_database */
    HKN_SETTINGS
} hkn_setting_id;

/* A setting's value as the class holds it: valid while `type` keeps the
 * version tag `tag` (CPython gives a type a new tag whenever an attribute
 * of it or of a base changes, and never the same tag to two types).
 * `value` is borrowed from the class's namespace, which holds it at least
 * as long as the tag stays. */
typedef struct {
    PyTypeObject *type;         /* not a reference: only compared */
    unsigned int tag;           /* 0: empty */
    PyObject *value;
    int known;                  /* `decoded` is what `value` means to its reader */
    long decoded;
} hkn_setting_cache;

typedef struct hkn_state {
    PyTypeObject *base_type;        /* sqlite3.Connection */
    PyTypeObject *walsafe_type;     /* WalSafeConnection */
    PyObject *checkpoint_result;    /* the CheckpointResult named tuple class */
    PyObject *sqlite3_module;
    PyObject *Error;
    PyObject *InterfaceError;
    PyObject *DatabaseError;
    PyObject *DataError;
    PyObject *OperationalError;
    PyObject *IntegrityError;
    PyObject *InternalError;
    PyObject *ProgrammingError;
    PyObject *NotSupportedError;
    PyObject *package_dir;          /* frames of files below it are this package's own */
    PyObject *stdlib_prefixes;      /* tuple of str: the standard library's files */
    PyObject *install_prefixes;     /* tuple of str: sys.prefix and friends */
    PyObject *str_checkpoint_on_close;
    PyObject *str_checkpoint_threshold;
    PyObject *str_off;
    PyObject *str_max_live;         /* "max_live_per_database" */
    PyObject *bound_exceeded;       /* set: databases over the bound since the last
                                     * collection failed to bring them under it */
    PyObject *mode_names[4];        /* indexed by SQLITE_CHECKPOINT_* */
    PyObject *api_library;          /* path of the SQLite library in use, or None */
    PyObject *api_reason;           /* why SQL mode is in use, or None */
    PyObject *api_routes_not_taken; /* dict: route name -> why it was not taken */
    const char *api_route;          /* "symbols", "extension-api" or "sql" */
    int api_check_failed;           /* SQL mode, and a route's self-check failed */
    PyObject *opened_paths;         /* set of database paths opened, while tracked */
    PyObject *finalized_log;        /* list of connections finalized, while tracked */
    hkn_sqlite_api api;
    hkn_conn registry;              /* head of the circular list of live connections */
    hkn_live_count *live_counts;    /* per database file: its registered connections */
    hkn_guard *guards;              /* WAL-generation guards, one per database inode */
    PyObject *str_guard_wal;
    PyObject *str_check_same_thread;
    PyObject *base_close;           /* sqlite3.Connection.close, the descriptor */
    unsigned long fork_generation;  /* bumped in every forked child (os.register_at_fork) */
    void *guard_methods;            /* io-methods table of a verified unix VFS file */
    void *guard_inode_methods;      /* the io-methods table of a file whose inode record
                                     * (dev, ino) matched fstat() once, or NULL */
    pid_t pid;                      /* getpid(), kept current by the at-fork hook */
    PyObject *guard_failure;        /* why the guard could not be taken last, or NULL */
    hkn_setting_cache settings[HKN_SETTINGS];
    char *last_path_bytes;          /* the file name last decoded by __init__ (malloc) */
    PyObject *last_path;            /* ... and its str, shared by connections to it */
    int guard_warned;               /* that RuntimeWarning was issued (once) */
    hkn_counters stats;
} hkn_state;

extern struct PyModuleDef hkn_module_def;

/* Saving the pending exception around code that may raise (finalizers,
 * best-effort cleanup): PyErr_GetRaisedException is 3.12+. */
#if HKN_PY_HAS_RAISED_EXCEPTION
typedef struct { PyObject *exc; } hkn_saved_error;
static inline void hkn_error_save(hkn_saved_error *s) { s->exc = PyErr_GetRaisedException(); }
static inline void hkn_error_restore(hkn_saved_error *s) { PyErr_SetRaisedException(s->exc); s->exc = NULL; }
static inline int hkn_error_saved(hkn_saved_error *s) { return s->exc != NULL; }
static inline void hkn_error_drop(hkn_saved_error *s) { Py_CLEAR(s->exc); }
/* The pending exception, normalized, as a new reference (one must be set). */
static inline PyObject *hkn_error_take(void) { return PyErr_GetRaisedException(); }
#else
typedef struct { PyObject *type, *value, *tb; } hkn_saved_error;
static inline void hkn_error_save(hkn_saved_error *s) { PyErr_Fetch(&s->type, &s->value, &s->tb); }
static inline void hkn_error_restore(hkn_saved_error *s)
{
    PyErr_Restore(s->type, s->value, s->tb);
    s->type = s->value = s->tb = NULL;
}
static inline int hkn_error_saved(hkn_saved_error *s) { return s->type != NULL; }
static inline void hkn_error_drop(hkn_saved_error *s)
{
    Py_CLEAR(s->type);
    Py_CLEAR(s->value);
    Py_CLEAR(s->tb);
}
static inline PyObject *hkn_error_take(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}
#endif

/* Where hkn_conn starts in an instance whose sqlite3.Connection part has
 * `base_size` bytes: rounded up to hkn_conn's own alignment (it holds a
 * double and a long long, which may need more than a pointer's). */
#define HKN_CONN_ALIGN ((Py_ssize_t)_Alignof(hkn_conn))
#define HKN_CONN_OFFSET(base_size) \
    ((((Py_ssize_t)(base_size)) + HKN_CONN_ALIGN - 1) & ~(HKN_CONN_ALIGN - 1))

/* connection.c: a setting of `self` (a new reference, or NULL with the
 * lookup's exception), as PyObject_GetAttr gives it.  Without the lookup
 * when the instance has no attributes of its own, its type looks attributes
 * up the ordinary way, and the class's value (not a descriptor) was read
 * before under the type's current version tag. */
PyObject *hkn_setting(hkn_state *state, PyObject *self, hkn_setting_id which);
/* What the setting's reader decoded from the class's value the last time,
 * under the same conditions as hkn_setting's cache: 1 with it in *decoded,
 * touching no object (no reference count is written, so no cache line
 * other threads' ticks write too); 0 when the value has to be read with
 * hkn_setting and decoded again. */
int hkn_setting_known(hkn_state *state, PyObject *self, hkn_setting_id which, long *decoded);
/* Remembers that `value`, just returned by hkn_setting for `self`, decodes
 * to `decoded`: only when it is the class's cached value and of a type
 * whose meaning cannot change (None, bool, int, str exactly). */
void hkn_setting_learn(hkn_state *state, PyObject *self, hkn_setting_id which,
                       PyObject *value, long decoded);

/* registry.c: the live WalSafeConnections of this process.  All
 * run with the GIL held and never call into Python while the list is
 * inconsistent. */
void hkn_registry_add(hkn_state *state, hkn_conn *conn);
/* Unlinks `conn` (nothing if it is not registered) and leaves its
 * database's count. */
void hkn_registry_remove(hkn_state *state, hkn_conn *conn);
/* Strong references to every registered connection (their count in
 * *count), taken without allocating Python objects during the walk; free
 * with hkn_snapshot_free().  NULL with MemoryError set on failure. */
PyObject **hkn_registry_snapshot(hkn_state *state, Py_ssize_t *count);
void hkn_snapshot_free(PyObject **items, Py_ssize_t count);
/* Counts the registered `conn` as a connection to `path` (a non-empty str),
 * leaving the database it counted for before, if any; -1 with MemoryError
 * set.  Registry removal leaves the count; hkn_live_counts_free() frees what
 * is left when the module goes. */
int hkn_live_count_enter(hkn_state *state, hkn_conn *conn, PyObject *path);
/* Leaves the count `conn` is in, if any.  When `conn` was the database's
 * last, its record is freed and the leak bound forgets the database.  Never
 * fails, and keeps any pending exception. */
void hkn_live_count_leave(hkn_state *state, hkn_conn *conn);
void hkn_live_counts_free(hkn_state *state);
/* On the first open of `self`: the leak bound for its database (see
 * registry.c); -1 with an exception set. */
int hkn_enforce_bound(hkn_state *state, PyObject *self, PyObject *path);

/* Whether this connection was opened in this process: a forked child has
 * a higher fork generation than its inherited connections (cheaper than a
 * getpid() system call on every close). */
static inline int
hkn_same_process(hkn_state *state, hkn_conn *conn)
{
    return conn->fork_generation == state->fork_generation;
}

/* guard.c: the WAL-generation guard (OFD locks); see the file's comment. */
/* `name`: what sqlite3_db_filename(db, "main") returned, when the caller
 * has it already; NULL to ask. */
int hkn_guard_claim(hkn_state *state, hkn_conn *conn, sqlite3 *db, const char *name);
void hkn_guard_refresh(hkn_state *state, hkn_conn *conn, sqlite3 *db);
/* Frames in the WAL not yet copied into the database, read from the
 * wal-index header through SQLite's own -shm descriptor; -1 when unknown
 * (no guard, no -shm known, or a header being written).  No GIL needed. */
long hkn_guard_pending_frames(const hkn_conn *conn);
/* `opt_out`: the connection asked to be unguarded (_guard(conn, False)), so
 * the fcntl wrapper must not keep the locks either. */
void hkn_guard_release(hkn_state *state, hkn_conn *conn, int opt_out);
/* Registers (enable) or drops a guard_wal=False connection's database with
 * the fcntl wrapper, which then leaves its read lock unshadowed. */
int hkn_guard_opt_out(hkn_state *state, hkn_conn *conn, sqlite3 *db, int enable);
void hkn_guard_free_all(hkn_state *state);
/* In a forked child: the guard's locks stay with the parent. */
void hkn_guard_after_fork(hkn_state *state);
const char *hkn_guard_unavailable(void);   /* NULL when available */
#ifdef __linux__
#include <fcntl.h>
/* The open-file-description lock commands are the kernel's (Linux 3.15+),
 * whatever the C library's headers say: glibc before 2.20 (manylinux2014's
 * build image) lacks the names, not the feature.  A kernel without them
 * refuses with EINVAL, which the guard and shmlock.c's probe handle. */
#ifndef F_OFD_GETLK
#define F_OFD_GETLK  36
#define F_OFD_SETLK  37
#define F_OFD_SETLKW 38
#endif
/* F_OFD_SETLK of `type` (F_RDLCK, F_UNLCK) on [start, start + len) of `fd`:
 * 0, or -1 with errno.  Safe without the GIL. */
int hkn_ofd_setlk(int fd, short type, off_t start, off_t len);
/* Gives descriptor `fd` a new open file description of the same file (an
 * open of /proc/self/fd/N dup3()ed over it), with the same access mode and
 * close-on-exec flag and none of the old description's locks: what a
 * forked child needs so as not to hold its parent's OFD locks.  Only
 * async-signal-safe calls (shmlock.c's at-fork handler uses it); on any
 * failure the old description stays. */
void hkn_reopen_fresh(int fd);
#endif

/* shmlock.c: SQLite's -shm locks as OFD locks (process-wide); see the
 * file's comment.  install() is called by every guarded open with SQLite's
 * database descriptor, and acts once: 1 when the wrappers are in place. */
int hkn_shmlock_install(hkn_state *state, int db_fd);
/* Whether SQLite's locks on this -shm descriptor are OFD locks. */
int hkn_shmlock_owns(int fd);
/* The fcntl wrapper shadows SQLite's read lock on every WAL database of the
 * process with an OFD lock, and steps aside for this process's own write
 * locks (shmlock.c).  guard.c's claims lock through it: claim_fd() locks
 * `fd` unless the wrapper's lists show that its open file description holds
 * the lock already (a parked descriptor SQLite hands to a new connection),
 * and lists it as claimed; 1 when held, 0 when not (another process holds
 * EXCLUSIVE: its last-close checkpoint, a journal-mode change; or out of
 * memory: unlisted, the lock is not taken).  guard.c forgets an inode at
 * its last claim: forget() returns 1 when the wrapper keeps the locks
 * (SQLite still holds its read lock), and then guard.c must not unlock
 * them; with `opt_out` it never keeps them.  When it does not keep them
 * it sets *unlocked if it released them itself (its lists are exact, or
 * SQLite's write lock had them aside already); otherwise guard.c unlocks
 * each descriptor still on the inode.  opt_out() counts (+1/-1)
 * connections opened with guard_wal=False, whose databases the wrapper
 * leaves alone.  Linux only, like their one caller. */
int hkn_shmlock_claim_fd(dev_t dev, ino_t ino, int fd);
int hkn_shmlock_guard_forget(dev_t dev, ino_t ino, int opt_out, int *unlocked);
int hkn_shmlock_opt_out(dev_t dev, ino_t ino, int delta);
/* stats(): guard_stepped_aside, guard_shadowed (databases covered from
 * SQLite's read lock alone: attached ones, plain connections'). */
void hkn_shmlock_db_stats(unsigned long long *stepped, unsigned long long *shadowed);
/* NULL when in place, else why not; counts of -shm descriptors translated
 * (ever) and open now. */
const char *hkn_shmlock_status(unsigned long long *opened, int *open_now);

/* checkpoint.c: the checkpoint engine and the close-time policy. */
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
    HKN_SKIP_BELOW_THRESHOLD, /* passive policy and fewer frames wait than the
                               * checkpoint_threshold */
    HKN_SKIP_NOT_WAL,
    HKN_SKIP_CLOSED,        /* the handle was closed meanwhile (a setting's property
                             * or callback closed it through the base class) */
    HKN_SKIP_IN_USE,        /* kept open for its thread, which is in the middle of
                             * statements (the exit-time closer) */
} hkn_skip;

typedef struct {
    int rc;
    int extended;
    int log_frames;
    int checkpointed_frames;
    int busy_statements;
    hkn_skip skipped;
    char message[256];          /* last: see hkn_outcome_start */
} hkn_outcome;

_Static_assert(offsetof(hkn_outcome, message) + sizeof(((hkn_outcome *)0)->message)
               == sizeof(hkn_outcome), "hkn_outcome.message must be the last field");

/* A blank outcome: every field before `message` zero (HKN_RAN is 0), no
 * frame counts, an empty message.  The message buffer is written only with
 * an error, so zeroing all of it on every close would be wasted. */
static inline void
hkn_outcome_start(hkn_outcome *out)
{
    memset(out, 0, offsetof(hkn_outcome, message));
    out->log_frames = out->checkpointed_frames = -1;
    out->message[0] = '\0';
}

/* How a checkpoint runs: at close (never waits, skips what needs no
 * checkpoint), or on request, waiting up to the busy timeout or not. */
typedef enum { HKN_CKPT_CLOSE, HKN_CKPT_WAIT, HKN_CKPT_NOWAIT } hkn_ckpt_how;

/* Fills *out; -1 with a Python exception only for failures that are not
 * SQLite's (SQL mode: memory, a broken subclass attribute). */
/* What a close knows before its checkpoint: checkpoint_threshold (0 when
 * not read: not the passive policy), and whether the connection stays open
 * for its thread afterwards (the exit-time closer checkpoints a connection
 * another thread still uses and leaves the close to the process exit: its
 * statements and busy handler are that thread's, and stay as they are). */
typedef struct {
    long threshold;
    int keep_open;
} hkn_close_plan;

/* `plan` is used with HKN_CKPT_CLOSE only. */
int hkn_checkpoint_run(hkn_state *state, hkn_conn *conn, PyObject *self, int mode,
                       hkn_ckpt_how how, const hkn_close_plan *plan, hkn_outcome *out);
/* Default of WalSafeConnection.checkpoint_threshold (docs/sqlite-internals.md
 * and README's "What close() does" give the numbers behind it). */
#define HKN_DEFAULT_THRESHOLD 256
/* The close-time checkpoint in `mode`, recorded; failures are warnings (-1
 * only when a warnings filter made one an error).  `keep_open`: see
 * hkn_close_plan. */
int hkn_close_checkpoint(hkn_state *state, hkn_conn *conn, PyObject *self, int mode,
                         int keep_open);
/* last_checkpoint and the counters, for a checkpoint that ran. */
int hkn_record_checkpoint(hkn_state *state, hkn_conn *conn, int mode, const hkn_outcome *out);
/* checkpoint_on_close read the ordinary way: a mode, HKN_POLICY_OFF or
 * HKN_POLICY_INVALID (*value: the offending object, or NULL with an
 * exception set). */
int hkn_policy(hkn_state *state, PyObject *self, PyObject **value);
/* A mode name (any case; "off" only with allow_off): a mode,
 * HKN_POLICY_OFF, HKN_POLICY_INVALID, or HKN_POLICY_ERROR with an
 * exception set.  hkn_mode_error() raises the ValueError for `value`. */
int hkn_parse_mode(hkn_state *state, PyObject *value, int allow_off);
PyObject *hkn_mode_error(PyObject *value, int allow_off);
/* SQL mode: the first row of `sql` run through the base class's own cursor
 * (no subclass override, no row_factory), or None; NULL with an exception. */
PyObject *hkn_sql_first_row(hkn_state *state, PyObject *self, const char *sql);

/* opener.c: capture is cheap and never fails (an incomplete stack is
 * kept); the rest return new references, or NULL with an exception. */
void hkn_opener_capture(hkn_state *state, hkn_opener *op);
void hkn_opener_clear(hkn_opener *op);
int hkn_opener_traverse(hkn_opener *op, visitproc visit, void *arg);
/* "file:line" of the frame a report names, or "<unknown>". */
PyObject *hkn_opener_where(hkn_state *state, const hkn_opener *op);
/* That, followed by " (via ...)" with the frames between it and the call of
 * sqlite3.connect, for warnings and reports. */
PyObject *hkn_opener_describe(hkn_state *state, const hkn_opener *op);
/* A tuple of "file:line in function", innermost first. */
PyObject *hkn_opener_frames(const hkn_opener *op);
/* _native._opener_here(): (where, frames) for the caller's stack, by the
 * same rules; the stray-open hook uses it for plain sqlite3 connections. */
PyObject *hkn_opener_here(PyObject *module, PyObject *unused);

/* connection.c */
int hkn_connection_exec(PyObject *module, hkn_state *state);
/* Our part of a WalSafeConnection instance (of any subclass). */
hkn_conn *hkn_conn_get(PyObject *self);
/* Closes (or, when only its owner thread may, checkpoints) a connection left
 * open at interpreter exit.  Never raises; reports through warnings. */
void hkn_close_at_exit(hkn_state *state, PyObject *self);

/* Makes room for one more element in `items`, a realloc'd array with
 * `count` of its `capacity` elements used (both int lvalues), doubling from
 * `first`: 0, or -1 out of memory with the array as it was.  A macro, so
 * that each array's realloc stays a fault point of the function that grows
 * it (csrc/faults.h). */
#define HKN_NEXT_CAPACITY(capacity, first) ((capacity) > 0 ? (capacity) * 2 : (first))
#define HKN_MAKE_ROOM(items, count, capacity, first)                                  \
    ((count) < (capacity) ? 0                                                         \
     : hkn_took_room(&(items),                                                        \
                     realloc((items), sizeof(*(items))                                \
                                      * (size_t)HKN_NEXT_CAPACITY(capacity, first)),  \
                     &(capacity), HKN_NEXT_CAPACITY(capacity, first)))

/* Adds `fd` to the int array `fds` (`count` used of `capacity`) unless it
 * is there already: 0, or -1 out of memory.  A macro for HKN_MAKE_ROOM's
 * reason. */
#define HKN_ADD_FD(fds, count, capacity, fd)                                          \
    (hkn_has_fd((fds), (count), (fd)) ? 0                                             \
     : HKN_MAKE_ROOM(fds, count, capacity, 4) < 0 ? -1 : ((fds)[(count)++] = (fd), 0))

static inline int
hkn_has_fd(const int *fds, int count, int fd)
{
    for (int i = 0; i < count; i++) {
        if (fds[i] == fd) {
            return 1;
        }
    }
    return 0;
}

/* HKN_MAKE_ROOM's second half: adopts `grown` (the new block, or NULL) into
 * the array pointer at `where`. */
static inline int
hkn_took_room(void *where, void *grown, int *capacity, int new_capacity)
{
    if (grown == NULL) {
        return -1;
    }
    memcpy(where, &grown, sizeof(grown));
    *capacity = new_capacity;
    return 0;
}

#endif
