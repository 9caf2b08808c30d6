/* guard.c - the WAL-generation guard: SQLite's two protective read locks,
 * held again as open-file-description (OFD) locks on SQLite's own
 * descriptors.
 *
 * Why (docs/sqlite-internals.md, "The locks that protect a WAL
 * generation" and "Open-file-description locks"): SQLite protects the live -wal/-shm pair
 * with per-process POSIX read locks on the SHARED range of the database
 * (510 bytes at 0x40000002) and on the -shm "dead-man switch" byte (128).
 * Any open()+close() of those files elsewhere in the process silently drops
 * them; another process then takes EXCLUSIVE on its last close and unlinks
 * the live pair, or rebuilds a -shm we have mapped (SIGBUS).  OFD locks
 * belong to the open file description, so a stray close of another fd
 * cannot drop them, they still conflict with other processes' POSIX write
 * locks, and they vanish when SQLite closes its descriptor.
 *
 * Lifecycle: one record per database inode with a count of claims (guarded
 * open connections).  Each guarded connection locks its own database
 * descriptor when it opens (a parked or recycled descriptor keeps or gets
 * its own lock), and the -shm descriptor is locked as soon as SQLite has
 * one.  When the last claim goes, every lock is released *before* that
 * connection closes, because the guard also refuses this process's own
 * last-close EXCLUSIVE (checkpoint and unlink) and journal-mode changes.
 *
 * Finding SQLite's descriptors: the unix VFS's file object starts with
 * {pMethod, pVfs, pInode, int h, ..., zPath, pShm}; unixShm starts with
 * pShmNode, unixShmNode with {pInode, mutex, zFilename, int hShm}.  These
 * are SQLite internals, so every step is checked: zPath must be the very
 * pointer sqlite3_db_filename() returns, each pointer is read through
 * process_vm_readv (a bad address is an error, not a crash), and every
 * descriptor must fstat() to the inode stat() gives for its path.  When a
 * check fails the guard is simply not taken (counted in guard_failures).
 *
 * The first claim in the process also puts SQLite's own -shm locks on OFD
 * locks (shmlock.c).  A -shm opened from then on needs no dead-man-switch
 * lock of ours: SQLite's is already one, and releasing ours, the same lock
 * on the same description, would release SQLite's.
 */
#include "hkn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include "fault_calls.h"     /* last: see faults.h */

/* The unix VFS offsets are in sqlite_private.h. */

struct hkn_guard {
    struct hkn_guard *next;
    dev_t dev;
    ino_t ino;
    int claims;
    int nfds;
    int capacity;
    int *fds;                   /* database descriptors we locked */
    int shm_fd;                 /* -shm descriptor we locked (or found locked
                                 * by SQLite itself, shmlock.c), or -1 */
    dev_t shm_dev;
    ino_t shm_ino;
};

/* Reads `size` bytes at `address` of this process without faulting. */
static int
hkn_peek(const void *address, void *out, size_t size)
{
    struct iovec local = {out, size};
    struct iovec remote = {(void *)address, size};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)size
           ? 0 : -1;
}

static int
hkn_same_file(int fd, dev_t dev, ino_t ino)
{
    struct stat st;
    return fstat(fd, &st) == 0
           && st.st_dev == dev && st.st_ino == ino;
}

int
hkn_ofd_setlk(int fd, short type, off_t start, off_t len)
{
    struct flock lock;
    memset(&lock, 0, sizeof(lock));
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_start = start;
    lock.l_len = len;
    return fcntl(fd, F_OFD_SETLK, &lock);
}

/* SQLite's file object for the main database of `db`, through
 * SQLITE_FCNTL_FILE_POINTER.  `db` may be another thread's connection, and
 * that thread inside SQLite holding the connection's mutex, in a callback (a
 * user function, a trace callback) that waits for the GIL we hold: never
 * wait for the mutex (SQLITE_BUSY instead).  Without a mutex (SQLite built
 * or opened without serialized mode) only the caller's own connection may
 * be touched (`own`): another thread may be using that one inside SQLite. */
static int
hkn_file_pointer(hkn_state *state, sqlite3 *db, int own, void **file)
{
    const hkn_sqlite_api *api = &state->api;
    sqlite3_mutex *mutex;
    int taken = hkn_db_mutex_try(api, db, &mutex);
    if (mutex == NULL && !own) {
        return SQLITE_MISUSE;
    }
    if (!taken) {
        return SQLITE_BUSY;
    }
    *file = NULL;
    int rc = sqlite3_file_control(db, HKN_MAIN_DB, SQLITE_FCNTL_FILE_POINTER, file);
    hkn_db_mutex_leave(api, mutex);
    return rc == SQLITE_OK && *file == NULL ? SQLITE_NOTFOUND : rc;
}

/* SQLite's descriptor for the main database of `db`, checked; -1 if not
 * found, with *why saying why when the cause is structural (not the unix
 * VFS we know, its objects unreadable) and NULL when it passes (the
 * connection busy in another thread).  Once one file object has passed the
 * checks, others with the same io-methods table are the same C type, and
 * their fields are read directly (the common, per-open path).  `name` is
 * the main database's sqlite3_db_filename() when the caller has it, else NULL. */
static int
hkn_db_fd(hkn_state *state, sqlite3 *db, const char *name, const char **zpath,
          void **file_out, const char **why)
{
    const hkn_sqlite_api *api = &state->api;
    void *file = NULL;
    *why = NULL;
    int rc = hkn_file_pointer(state, db, 1, &file);
    if (rc == SQLITE_BUSY) {
        return -1;
    }
    if (rc != SQLITE_OK) {
        *why = "SQLite gave no file object for the database (SQLITE_FCNTL_FILE_POINTER)";
        return -1;
    }
    if (name == NULL) {
        name = sqlite3_db_filename(db, HKN_MAIN_DB);
    }
    if (name == NULL) {
        *why = "sqlite3_db_filename() gave no name for the database";
        return -1;
    }
    void *methods = *(void **)file;         /* sqlite3_file's public first field */
    const char *seen = NULL;
    int fd = -1;
    if (methods != NULL && methods == state->guard_methods) {
        memcpy(&seen, (char *)file + HKN_FILE_ZPATH_OFFSET, sizeof(seen));
        memcpy(&fd, (char *)file + HKN_FILE_H_OFFSET, sizeof(fd));
    }
    else if (hkn_peek((char *)file + HKN_FILE_ZPATH_OFFSET, &seen, sizeof(seen)) < 0
             || hkn_peek((char *)file + HKN_FILE_H_OFFSET, &fd, sizeof(fd)) < 0) {
        *why = errno == EPERM || errno == ENOSYS
               ? "reading SQLite's file object with process_vm_readv was refused "
                 "(a seccomp sandbox?)"
               : "SQLite's file object could not be read with process_vm_readv";
        return -1;
    }
    if (seen != name || fd < 0) {
        *why = "the database's file object is not laid out as the unix VFS's "
               "(another VFS, or a SQLite this package does not know)";
        return -1;
    }
    state->guard_methods = methods;
    *zpath = name;
    *file_out = file;
    return fd;
}

/* The inode of SQLite's database descriptor `fd`, whose file object is
 * `file` (accepted by hkn_db_fd): SQLite's own record of it once a file
 * object with the same io-methods table has had its record match an
 * fstat() (sqlite_private.h, unixInodeInfo), else fstat().  0, or -1 when
 * fstat() fails. */
static int
hkn_db_identity(hkn_state *state, void *file, int fd, dev_t *dev, ino_t *ino)
{
    void *methods = *(void **)file;
    void *inode = NULL;
    memcpy(&inode, (char *)file + HKN_FILE_PINODE_OFFSET, sizeof(inode));
    dev_t seen_dev;
    uint64_t seen_ino;
    if (methods != NULL && methods == state->guard_inode_methods && inode != NULL) {
        memcpy(&seen_dev, inode, sizeof(seen_dev));
        memcpy(&seen_ino, (char *)inode + sizeof(dev_t), sizeof(seen_ino));
        *dev = seen_dev;
        *ino = (ino_t)seen_ino;
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        return -1;
    }
    *dev = st.st_dev;
    *ino = st.st_ino;
    if (inode != NULL
        && hkn_peek(inode, &seen_dev, sizeof(seen_dev)) == 0
        && hkn_peek((char *)inode + sizeof(dev_t), &seen_ino, sizeof(seen_ino)) == 0
        && seen_dev == st.st_dev && seen_ino == (uint64_t)st.st_ino) {
        state->guard_inode_methods = methods;
    }
    return 0;
}

/* SQLite's -shm descriptor for `db`, whose node must name `path` + "-shm";
 * -1 when the connection has no shared memory open (yet: a connection's
 * opens at its first read), or is busy elsewhere (it is looked at again at
 * the next claim, checkpoint or close that wrote). */
static int
hkn_shm_fd(hkn_state *state, sqlite3 *db, int own, const char *path)
{
    void *file = NULL, *shm = NULL, *node = NULL;
    char *zname = NULL;
    int fd = -1;
    if (hkn_file_pointer(state, db, own, &file) != SQLITE_OK) {
        return -1;
    }
    /* The file object's layout is proven once hkn_db_fd() accepted its
     * io-methods table; the shared-memory objects behind it are not. */
    if (*(void **)file == state->guard_methods) {
        memcpy(&shm, (char *)file + HKN_FILE_PSHM_OFFSET, sizeof(shm));
    }
    else if (hkn_peek((char *)file + HKN_FILE_PSHM_OFFSET, &shm, sizeof(shm)) < 0) {
        return -1;
    }
    if (shm == NULL
        || hkn_peek(shm, &node, sizeof(node)) < 0
        || node == NULL
        || hkn_peek((char *)node + HKN_NODE_ZNAME_OFFSET, &zname, sizeof(zname)) < 0
        || zname == NULL
        || hkn_peek((char *)node + HKN_NODE_HSHM_OFFSET, &fd, sizeof(fd)) < 0
        || fd < 0) {
        return -1;
    }
    size_t length = strlen(path);
    char *copy = malloc(length + sizeof("-shm"));
    if (copy == NULL) {
        return -1;
    }
    int same = hkn_peek(zname, copy, length + sizeof("-shm")) == 0
               && memcmp(copy, path, length) == 0
               && memcmp(copy + length, "-shm", sizeof("-shm")) == 0;
    free(copy);
    return same ? fd : -1;
}

static hkn_guard *
hkn_guard_find(hkn_state *state, dev_t dev, ino_t ino)
{
    for (hkn_guard *g = state->guards; g != NULL; g = g->next) {
        if (g->dev == dev && g->ino == ino) {
            return g;
        }
    }
    return NULL;
}

static int
hkn_guard_remember(hkn_guard *guard, int fd)
{
    return HKN_ADD_FD(guard->fds, guard->nfds, guard->capacity, fd);
}

/* Locks the -shm descriptor if SQLite has one and it is not locked yet. */
static void
hkn_guard_shm(hkn_state *state, hkn_guard *guard, sqlite3 *db, int own, const char *path)
{
    if (guard->shm_fd >= 0 && hkn_same_file(guard->shm_fd, guard->shm_dev, guard->shm_ino)) {
        return;
    }
    int fd = hkn_shm_fd(state, db, own, path);
    char shm_path[4096];
    size_t length = strlen(path);
    if (fd < 0 || length + sizeof("-shm") > sizeof(shm_path)) {
        return;
    }
    memcpy(shm_path, path, length);
    memcpy(shm_path + length, "-shm", sizeof("-shm"));
    struct stat st;
    if (stat(shm_path, &st) != 0
        || !hkn_same_file(fd, st.st_dev, st.st_ino)) {
        return;
    }
    /* With SQLite's -shm locks already OFD locks on this descriptor, its
     * own dead-man-switch lock is safe; ours would be the same lock, and
     * releasing it would release SQLite's. */
    if (hkn_shmlock_owns(fd) || hkn_ofd_setlk(fd, F_RDLCK, HKN_DMS_OFFSET, 1) == 0) {
        if (guard->shm_fd >= 0) {
            state->stats.relocks++;
        }
        guard->shm_fd = fd;
        guard->shm_dev = st.st_dev;
        guard->shm_ino = st.st_ino;
    }
}

/* Whether a first guard for this inode makes sense: the database is in WAL
 * mode (in rollback mode the lock would refuse every writer's EXCLUSIVE)
 * and the path still names the inode.  The header is read through SQLite's
 * own descriptor: opening the file would itself cancel our locks. */
static int
hkn_guard_worth_taking(int fd, const char *path, dev_t dev, ino_t ino)
{
    unsigned char header[20];
    ssize_t got = pread(fd, header, sizeof(header), 0);
    if (got == (ssize_t)sizeof(header)) {
        if (header[18] != 2 || header[19] != 2) {
            return 0;
        }
    }
    else {
        /* A new database switched to WAL keeps its first pages in the WAL
         * until a checkpoint: empty file, live -wal. */
        char wal_path[4096];
        struct stat wal;
        if (got != 0 || snprintf(wal_path, sizeof(wal_path), "%s-wal", path) >= (int)sizeof(wal_path)
            || stat(wal_path, &wal) != 0) {
            return 0;
        }
    }
    struct stat at_path;
    return stat(path, &at_path) == 0
           && at_path.st_dev == dev
           && at_path.st_ino == ino;
}

/* The -shm is opened by a connection's first read, not at open: look for
 * any live connection of this guard that has it. */
static void
hkn_guard_shm_any(hkn_state *state, hkn_guard *guard, sqlite3 *db, const char *path)
{
    for (hkn_conn *c = state->registry.next; c != &state->registry; c = c->next) {
        if (guard->shm_fd >= 0 && hkn_same_file(guard->shm_fd, guard->shm_dev, guard->shm_ino)) {
            return;
        }
        sqlite3 *other = c->guard == guard ? hkn_connection_handle(c->owner) : NULL;
        if (other != NULL && other != db) {     /* `db` was just looked at */
            hkn_guard_shm(state, guard, other, 0, path);
        }
    }
}

/* The guard could not be taken for `conn` for a reason that will not pass
 * by itself: remember the reason (sqlite_api()["guard"] shows it) and, since
 * guard_wal still reads True, warn once per module.  0, or -1 when the
 * warning was turned into an exception. */
static int
hkn_guard_cannot(hkn_state *state, hkn_conn *conn, const char *why)
{
    PyObject *reason = PyUnicode_FromString(why);
    if (reason == NULL) {
        return -1;
    }
    Py_XSETREF(state->guard_failure, reason);
    if (state->guard_warned) {
        return 0;
    }
    state->guard_warned = 1;
    return PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                            "hermes_kanban_native: the WAL-generation guard cannot "
                            "be taken (first for %U): %s; guard_wal stays True but "
                            "such databases are not guarded",
                            conn->path, why);
}

int
hkn_guard_claim(hkn_state *state, hkn_conn *conn, sqlite3 *db, const char *name)
{
    if (conn->guard != NULL) {
        return 0;
    }
    const char *path = NULL, *why = NULL;
    void *file = NULL;
    int fd = hkn_db_fd(state, db, name, &path, &file, &why);
    dev_t dev = 0;
    ino_t ino = 0;
    if (fd >= 0 && hkn_db_identity(state, file, fd, &dev, &ino) < 0) {
        why = "fstat() of SQLite's database descriptor failed";
        fd = -1;
    }
    if (fd < 0) {
        state->stats.guard_failures++;
        return why != NULL ? hkn_guard_cannot(state, conn, why) : 0;
    }
    /* Before SQLite opens this database's -shm (at the first read), so that
     * its wal-index locks are OFD locks from the start. */
    (void)hkn_shmlock_install(state, fd);
    hkn_guard *guard = hkn_guard_find(state, dev, ino);
    int fresh = guard == NULL;
    if (fresh && hkn_guard_worth_taking(fd, path, dev, ino) <= 0) {
        return 0;
    }
    if (fresh) {
        guard = calloc(1, sizeof(*guard));
        if (guard == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        guard->dev = dev;
        guard->ino = ino;
        guard->shm_fd = -1;
    }
    int known = hkn_has_fd(guard->fds, guard->nfds, fd);
    if (hkn_guard_remember(guard, fd) < 0) {
        if (fresh) {
            free(guard);
        }
        PyErr_NoMemory();
        return -1;
    }
    /* Locked, and listed for the fcntl wrapper, so that this process's own
     * write lock can make the guard step aside (shmlock.c).  The same open
     * file description may hold the lock already (a parked descriptor
     * reused by SQLite): then no system call at all. */
    if (!hkn_shmlock_claim_fd(dev, ino, fd)) {
        /* Another process holds EXCLUSIVE (its last-close checkpoint, or a
         * journal-mode change): no generation to protect right now.  (Or
         * the wrapper's list is out of memory.) */
        if (!known) {
            guard->nfds--;          /* remembered last, just above */
        }
        if (fresh) {
            free(guard->fds);
            free(guard);
        }
        state->stats.guard_failures++;
        return 0;
    }
    if (fresh) {
        guard->next = state->guards;
        state->guards = guard;
        state->stats.guards_taken++;
    }
    else {
        state->stats.relocks++;
    }
    guard->claims++;
    conn->guard = guard;
    if (guard->shm_fd < 0) {
        hkn_guard_shm(state, guard, db, 1, path);
        hkn_guard_shm_any(state, guard, db, path);
    }
    return 0;
}

long
hkn_guard_pending_frames(const hkn_conn *conn)
{
    const hkn_guard *guard = conn->guard;
    if (guard == NULL || guard->shm_fd < 0) {
        return -1;
    }
    /* The descriptor is SQLite's and stays open as long as its shared
     * memory node, which outlives this still-open connection: reading it
     * (never opening the file) cancels no lock. */
    unsigned char head[HKN_WALINDEX_NBACKFILL + 4];
    if (pread(guard->shm_fd, head, sizeof(head), 0) != (ssize_t)sizeof(head)
        || memcmp(head, head + HKN_WALINDEX_HDR_SIZE, HKN_WALINDEX_HDR_SIZE) != 0) {
        return -1;
    }
    uint32_t version, max_frame, backfilled;
    memcpy(&version, head, sizeof(version));
    memcpy(&max_frame, head + HKN_WALINDEX_MXFRAME, sizeof(max_frame));
    memcpy(&backfilled, head + HKN_WALINDEX_NBACKFILL, sizeof(backfilled));
    if (version != HKN_WALINDEX_VERSION || head[HKN_WALINDEX_ISINIT] != 1
        || backfilled > max_frame) {
        return -1;
    }
    return (long)(max_frame - backfilled);
}

void
hkn_guard_refresh(hkn_state *state, hkn_conn *conn, sqlite3 *db)
{
    hkn_guard *guard = conn->guard;
    if (guard == NULL || guard->shm_fd >= 0) {
        /* Once locked, the -shm descriptor lives as long as SQLite's shared
         * memory node, which outlives every connection using it: checked
         * again only at the next claim of a fresh guard. */
        return;
    }
    const hkn_sqlite_api *api = &state->api;
    const char *path = sqlite3_db_filename(db, HKN_MAIN_DB);
    if (path != NULL) {
        hkn_guard_shm(state, guard, db, 1, path);
        hkn_guard_shm_any(state, guard, db, path);
    }
}

void
hkn_guard_release(hkn_state *state, hkn_conn *conn, int opt_out)
{
    hkn_guard *guard = conn->guard;
    if (guard == NULL) {
        return;
    }
    conn->guard = NULL;
    if (--guard->claims > 0) {
        return;
    }
    /* The last claim: unlock every descriptor still on this inode (a
     * recycled number now naming another file is left alone), after the
     * fcntl wrapper has forgotten them, so it cannot lock them again.
     * Unless the wrapper keeps them: SQLite still holds its read lock (other
     * connections), and the locks then go when it lets go. */
    int unlocked = 0;
    int kept = hkn_shmlock_guard_forget(guard->dev, guard->ino, opt_out, &unlocked);
    for (int i = 0; i < guard->nfds && !kept && !unlocked; i++) {
        if (hkn_same_file(guard->fds[i], guard->dev, guard->ino)) {
            (void)hkn_ofd_setlk(guard->fds[i], F_UNLCK, HKN_SHARED_FIRST, HKN_SHARED_SIZE);
        }
    }
    /* Asked now, not when it was locked: SQLite may have closed that -shm
     * and opened it again under the same number, inode and OFD locks. */
    if (guard->shm_fd >= 0 && !hkn_shmlock_owns(guard->shm_fd)
        && hkn_same_file(guard->shm_fd, guard->shm_dev, guard->shm_ino)) {
        (void)hkn_ofd_setlk(guard->shm_fd, F_UNLCK, HKN_DMS_OFFSET, 1);
    }
    hkn_guard **link = &state->guards;
    while (*link != guard) {
        link = &(*link)->next;
    }
    *link = guard->next;
    free(guard->fds);
    free(guard);
    state->stats.guards_released++;
}

int
hkn_guard_opt_out(hkn_state *state, hkn_conn *conn, sqlite3 *db, int enable)
{
    if (!enable) {
        if (conn->opted_out) {
            (void)hkn_shmlock_opt_out(conn->opt_out_dev, conn->opt_out_ino, -1);
            conn->opted_out = 0;
        }
        return 0;
    }
    if (conn->opted_out) {
        return 0;
    }
    const hkn_sqlite_api *api = &state->api;
    const char *name = sqlite3_db_filename(db, HKN_MAIN_DB);
    struct stat st;
    if (name == NULL || name[0] == '\0'
        || stat(name, &st) != 0) {
        return 0;               /* nothing on disk that could be shadowed */
    }
    if (hkn_shmlock_opt_out(st.st_dev, st.st_ino, 1) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    conn->opt_out_dev = st.st_dev;
    conn->opt_out_ino = st.st_ino;
    conn->opted_out = 1;
    return 0;
}

void
hkn_guard_after_fork(hkn_state *state)
{
    /* A forked child shares its parent's open file descriptions, and with
     * them the guard's OFD locks: a child that never uses SQLite would keep
     * the parent's guard alive after the parent died, refusing every other
     * process's EXCLUSIVE (plain sqlite3 leaves no lock in a child).  So
     * every guarded database descriptor gets a description of its own, and
     * the records are forgotten: the inherited connections are the
     * parent's, and this process's own connections start afresh.  (The
     * -shm descriptors are shmlock.c's at-fork handler's business.) */
    for (hkn_guard *g = state->guards; g != NULL; g = g->next) {
        for (int i = 0; i < g->nfds; i++) {
            /* A number since recycled for another file is not ours. */
            if (hkn_same_file(g->fds[i], g->dev, g->ino)) {
                hkn_reopen_fresh(g->fds[i]);
            }
        }
    }
    hkn_guard_free_all(state);
    for (hkn_conn *c = state->registry.next; c != &state->registry; c = c->next) {
        c->guard = NULL;
    }
}

void
hkn_guard_free_all(hkn_state *state)
{
    while (state->guards != NULL) {
        hkn_guard *next = state->guards->next;
        free(state->guards->fds);
        free(state->guards);
        state->guards = next;
    }
}

const char *
hkn_guard_unavailable(void)
{
    return NULL;    /* a kernel that refuses OFD locks fails each claim instead */
}
