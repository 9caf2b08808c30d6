/* shmlock.c - SQLite's wal-index (-shm) locks taken as open-file-description
 * locks, so that a stray close of the -shm elsewhere in the process cannot
 * drop them.
 *
 * Why (docs/sqlite-internals.md, "Lock cancellation" and "The system-call
 * table"): besides the dead-man-switch byte that
 * guard.c holds again, a writer holds the WAL write lock and every reader a
 * read-mark lock on the -shm while its transaction runs.  They are classic
 * POSIX locks, so any open()+close() of the -shm path in the process drops
 * them all: another process then takes the write lock while ours still
 * writes (two writers appending at the same WAL frame: a lost commit), or
 * a checkpointer overwrites pages a reader still needs.  A second lock the
 * guard could take beside SQLite's cannot help here: these locks come and
 * go with each transaction, inside SQLite.
 *
 * How: the unix VFS makes every system call through a table that
 * sqlite3_vfs.xSetSystemCall can change (SQLite documents it as a testing
 * interface that may change; we use it on purpose, since it is the only way
 * to change SQLite's own -shm locking without replacing the VFS).  We wrap "open" and "close" to learn which
 * descriptors are -shm files SQLite opened, and "fcntl" to turn SQLite's
 * F_SETLK/F_SETLKW/F_GETLK on those descriptors into F_OFD_SETLK/
 * F_OFD_SETLKW/F_OFD_GETLK.  Inside one process SQLite keeps a single -shm
 * descriptor per database and counts its connections' locks itself, so
 * per-description locks behave exactly as per-process ones did; towards
 * other processes OFD and POSIX locks conflict as before.
 *
 * Only descriptors opened after the wrappers are in place are translated: a
 * -shm SQLite already has open keeps POSIX locks until SQLite closes it
 * (mixing the two kinds on one descriptor could leave a write lock behind).
 * Locks below PENDING_BYTE are the only ones translated (the database
 * file's own locks are all at PENDING_BYTE and above, and stay POSIX: SQLite
 * spreads them over several descriptors per inode).
 *
 * fork(): a child inherits our descriptors and mappings, and with them the
 * open file descriptions that own the parent's locks (a shared mapping
 * holds its description as a descriptor does).  Were the child to keep
 * them, a parent that died holding the WAL write lock would leave it held
 * for as long as the child lives.  So "mmap" and "munmap" are wrapped too,
 * to know SQLite's wal-index regions, and the at-fork child handler gives
 * each inherited -shm a description of its own: it reopens the file, maps
 * every region again from it at the same address (same file, same pages:
 * the memory does not change), and dup3()s it over the inherited number.
 * The child then forgets the table (SQLite there uses POSIX locks) without
 * freeing it: only async-signal-safe calls are allowed in a child of a
 * multi-threaded parent, so those few bytes stay with the child.
 *
 * The state is process-wide, like the system-call table it serves: one
 * install per process whatever the number of module instances.  The hooks
 * run without the GIL, from any thread SQLite runs in, so the table has its
 * own mutex.
 *
 * The C library calls the hooks make on SQLite's behalf, and those of the
 * at-fork child handler, are written `(fstat)(fd, &st)`: the parentheses
 * keep them from being fault points (csrc/faults.h), because their failures
 * are SQLite's to see, or, in the child, nothing may run but
 * async-signal-safe code.
 */
#include "hkn.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fault_calls.h"     /* last: see faults.h */


typedef int (*hkn_open_fn)(const char *, int, int);
typedef int (*hkn_close_fn)(int);
typedef int (*hkn_fcntl_fn)(int, int, ...);
typedef void *(*hkn_mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*hkn_munmap_fn)(void *, size_t);

typedef struct {
    void *address;
    size_t length;
    int prot;
    off_t offset;
} hkn_shm_region;

typedef struct {
    int fd;
    int flags;                  /* as opened, for the at-fork reopen */
    char *path;
    hkn_shm_region *regions;    /* SQLite's mappings of this descriptor */
    int nregions, cregions;
} hkn_shm_entry;

static pthread_mutex_t hkn_shm_mutex = PTHREAD_MUTEX_INITIALIZER;
static hkn_shm_entry *hkn_shm_table;     /* under hkn_shm_mutex */
static int hkn_shm_count, hkn_shm_capacity;
static unsigned long long hkn_shm_opened;  /* -shm descriptors translated, ever */

/* SQLite's own entries, which the hooks pass calls on to.  Written once by
 * the install (with the GIL held) before the hooks are published through
 * xSetSystemCall, read by the hooks in whatever thread SQLite runs: release
 * stores and acquire loads order the two. */
static _Atomic(hkn_open_fn) hkn_real_open;
static _Atomic(hkn_close_fn) hkn_real_close;
static _Atomic(hkn_fcntl_fn) hkn_real_fcntl;
static _Atomic(hkn_mmap_fn) hkn_real_mmap;
static _Atomic(hkn_munmap_fn) hkn_real_munmap;
#define HKN_REAL(name) atomic_load_explicit(&hkn_real_##name, memory_order_acquire)

/* The VFS whose table holds the hooks, to see whether they are still there.
 * Published by the install once every hook is in place; read by the hooks
 * in any thread. */
static _Atomic(hkn_sqlite3_vfs *) hkn_shm_vfs;

static int hkn_hook_close(int fd);

/* Set once, with the GIL held, by the first guarded open.  hkn_shm_reason
 * says why the wrappers are not in place (NULL once they are). */
static int hkn_shm_installed, hkn_shm_tried;
static const char *hkn_shm_reason = "no guarded connection has opened yet";

static int
hkn_shm_index(int fd)
{
    for (int i = 0; i < hkn_shm_count; i++) {
        if (hkn_shm_table[i].fd == fd) {
            return i;
        }
    }
    return -1;
}

/* Which descriptor numbers are in the table, for the fcntl wrapper: SQLite
 * takes and drops -shm locks a dozen times per transaction, and asking the
 * table each time under the mutex cost more than the rest of the wrapper.
 * Written under the mutex with the table, read without it; numbers past
 * the array are looked up in the table. */
#define HKN_SHM_FAST_FDS 4096
static atomic_uchar hkn_shm_fast[HKN_SHM_FAST_FDS];

static void
hkn_shm_mark(int fd, int ours)
{
    if (fd >= 0 && fd < HKN_SHM_FAST_FDS) {
        atomic_store_explicit(&hkn_shm_fast[fd], (unsigned char)ours, memory_order_release);
    }
}

/* Whether `fd` is a -shm descriptor the wrappers translate. */
static int
hkn_shm_is_ours(int fd)
{
    if (fd >= 0 && fd < HKN_SHM_FAST_FDS) {
        return atomic_load_explicit(&hkn_shm_fast[fd], memory_order_acquire);
    }
    pthread_mutex_lock(&hkn_shm_mutex);
    int ours = hkn_shm_index(fd) >= 0;
    pthread_mutex_unlock(&hkn_shm_mutex);
    return ours;
}

static int
hkn_is_shm_path(const char *path)
{
    size_t length = path ? strlen(path) : 0;
    return length > 4 && strcmp(path + length - 4, "-shm") == 0;
}

/* ------------------------------------ the database's read lock, as OFD too
 *
 * SQLite's read lock on a WAL database's SHARED range (held while any of the
 * process's connections is open) is the one a stray close cancels, after
 * which another process's last close unlinks the live -wal and -shm.  The
 * fcntl wrapper sees SQLite take it (the first connection of the process
 * to read an inode) and release it (the last one closing), so it shadows it
 * with an OFD read lock on the same descriptor for exactly that time: every
 * WAL database SQLite uses in this process is covered from its first read,
 * attached databases included, except the main databases of connections
 * opened with guard_wal=False (hkn_shmlock_opt_out).  guard.c's claims
 * (hkn_shmlock_claim_fd) cover a guarded connection's database from its
 * open, before any read, and in "posix" mode, where there is no wrapper.
 *
 * OFD and POSIX locks conflict even inside one process, so when SQLite here
 * asks for a write lock on the SHARED range (its last-close checkpoint,
 * PRAGMA locking_mode=EXCLUSIVE, the unix-excl VFS, a journal-mode change),
 * these locks are released first ("stepping aside") and taken again when
 * SQLite is back to a read lock, or its request failed, unless the database
 * has left WAL mode.  While SQLite holds the write lock nobody else can take
 * it anyway.
 *
 * All of it works under hkn_shm_mutex, never held across SQLite's own
 * (possibly blocking) call.
 */

typedef struct {
    dev_t dev;
    ino_t ino;
    int *fds;                   /* descriptors that hold our OFD read lock */
    int nfds, cfds;
    int claimed;                /* guard.c has claims on the inode */
    int shared;                 /* SQLite here holds its read lock on it */
    int aside;                  /* our locks are released for SQLite's write lock */
} hkn_db_entry;

typedef struct {
    dev_t dev;
    ino_t ino;
    int count;                  /* open guard_wal=False connections */
} hkn_db_opt_out;

static hkn_db_entry *hkn_db_table;      /* all under hkn_shm_mutex */
static int hkn_db_count, hkn_db_capacity;
static hkn_db_opt_out *hkn_opt_outs;
static int hkn_opt_out_count, hkn_opt_out_capacity;
static unsigned long long hkn_db_stepped, hkn_db_shadowed;

static hkn_db_entry *
hkn_db_find(dev_t dev, ino_t ino)
{
    for (int i = 0; i < hkn_db_count; i++) {
        if (hkn_db_table[i].dev == dev && hkn_db_table[i].ino == ino) {
            return &hkn_db_table[i];
        }
    }
    return NULL;
}

/* The entry for (dev, ino), created when missing; NULL out of memory. */
static hkn_db_entry *
hkn_db_get(dev_t dev, ino_t ino)
{
    hkn_db_entry *entry = hkn_db_find(dev, ino);
    if (entry != NULL) {
        return entry;
    }
    if (HKN_MAKE_ROOM(hkn_db_table, hkn_db_count, hkn_db_capacity, 4) < 0) {
        return NULL;
    }
    entry = &hkn_db_table[hkn_db_count++];
    *entry = (hkn_db_entry){dev, ino, NULL, 0, 0, 0, 0, 0};
    return entry;
}

static int
hkn_db_add_fd(hkn_db_entry *entry, int fd)
{
    return HKN_ADD_FD(entry->fds, entry->nfds, entry->cfds, fd);
}

/* Whether the descriptor lists can be trusted without an fstat(): a
 * descriptor enters a list after an fstat() proved its inode, and leaves it
 * when SQLite closes it through the close wrapper, so while that wrapper is
 * SQLite's close every listed number still names its inode.  Anyone may put
 * SQLite's own close back (xSetSystemCall); from then on each descriptor is
 * checked again.  Two string compares in SQLite's table, no system call. */
static int
hkn_db_lists_exact(void)
{
    hkn_sqlite3_vfs *vfs = atomic_load_explicit(&hkn_shm_vfs, memory_order_acquire);
    return vfs != NULL
           && vfs->xGetSystemCall(vfs, "close") == (hkn_syscall_ptr)hkn_hook_close;
}

/* Sets (F_RDLCK) or releases (F_UNLCK) our lock on every descriptor of
 * `entry` that still names its inode. */
static void
hkn_db_set(hkn_db_entry *entry, short type)
{
    int exact = hkn_db_lists_exact();
    for (int i = 0; i < entry->nfds; i++) {
        struct stat st;
        if (!exact
            && ((fstat)(entry->fds[i], &st) != 0 || st.st_dev != entry->dev
                || st.st_ino != entry->ino)) {
            continue;
        }
        (void)hkn_ofd_setlk(entry->fds[i], type, HKN_SHARED_FIRST, HKN_SHARED_SIZE);
    }
}

/* Releases every lock of `entry` (unless they are aside already: SQLite
 * holds or held its write lock) and removes it. */
static void
hkn_db_drop(hkn_db_entry *entry)
{
    if (!entry->aside) {
        hkn_db_set(entry, F_UNLCK);
    }
    free(entry->fds);
    *entry = hkn_db_table[--hkn_db_count];
}

/* The entry that lists `fd`, when the lists are exact; NULL otherwise. */
static hkn_db_entry *
hkn_db_listing(int fd)
{
    if (hkn_db_count == 0 || !hkn_db_lists_exact()) {
        return NULL;
    }
    for (int i = 0; i < hkn_db_count; i++) {
        hkn_db_entry *entry = &hkn_db_table[i];
        for (int j = 0; j < entry->nfds; j++) {
            if (entry->fds[j] == fd) {
                return entry;
            }
        }
    }
    return NULL;
}

static int
hkn_db_opted_out(dev_t dev, ino_t ino)
{
    for (int i = 0; i < hkn_opt_out_count; i++) {
        if (hkn_opt_outs[i].dev == dev && hkn_opt_outs[i].ino == ino) {
            return 1;
        }
    }
    return 0;
}

/* Whether the database behind `fd` is in WAL mode (header bytes 18 and 19,
 * the read and write format versions, are 2). */
static int
hkn_db_is_wal(int fd)
{
    unsigned char header[20];
    return (pread)(fd, header, sizeof(header), 0) == (ssize_t)sizeof(header)
           && header[18] == 2 && header[19] == 2;
}

static int
hkn_overlaps_shared(const struct flock *lock)
{
    return lock->l_start < HKN_SHARED_FIRST + HKN_SHARED_SIZE
           && (lock->l_len == 0 || lock->l_start + lock->l_len > HKN_SHARED_FIRST);
}

/* SQLite's F_SETLK/F_SETLKW touching the SHARED range of a database.
 * The descriptor's inode comes from the lists when they name it (every
 * connection after the first, and every lock after a connection's first),
 * otherwise from one fstat(). */
static int
hkn_db_lock(int fd, int op, struct flock *lock)
{
    dev_t dev = 0;
    ino_t ino = 0;
    pthread_mutex_lock(&hkn_shm_mutex);
    hkn_db_entry *entry = hkn_db_listing(fd);
    int listed = entry != NULL;
    if (listed) {
        dev = entry->dev;
        ino = entry->ino;
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    if (!listed) {
        struct stat st;
        if ((fstat)(fd, &st) != 0) {
            return HKN_REAL(fcntl)(fd, op, lock);
        }
        dev = st.st_dev;
        ino = st.st_ino;
    }
    pthread_mutex_lock(&hkn_shm_mutex);
    entry = hkn_db_find(dev, ino);
    if (entry != NULL && !entry->aside && lock->l_type == F_WRLCK) {
        hkn_db_set(entry, F_UNLCK);
        entry->aside = 1;
        hkn_db_stepped++;
    }
    pthread_mutex_unlock(&hkn_shm_mutex);

    int rc = HKN_REAL(fcntl)(fd, op, lock);
    if (rc != 0 && lock->l_type != F_WRLCK) {
        return rc;              /* nothing changed for SQLite */
    }
    int saved = errno;
    pthread_mutex_lock(&hkn_shm_mutex);
    entry = hkn_db_find(dev, ino);
    if (lock->l_type == F_UNLCK) {
        /* SQLite's last read lock on the inode is gone: so is ours, unless
         * guard.c still claims it for a connection that has not read yet
         * (it releases its own at its last claim). */
        if (entry != NULL) {
            entry->shared = 0;
            if (!entry->claimed) {
                hkn_db_drop(entry);
            }
            else if (entry->aside) {
                entry->aside = 0;
                if (hkn_db_is_wal(fd)) {
                    hkn_db_set(entry, F_RDLCK);
                }
            }
        }
    }
    else if (entry != NULL && !entry->aside && listed && lock->l_type == F_RDLCK) {
        /* This descriptor already holds our lock (a guarded connection's
         * first read: the claim locked it), and nothing has written since:
         * still WAL, still locked. */
        entry->shared = 1;
    }
    else if (lock->l_type == F_RDLCK || (rc != 0 && entry != NULL)) {
        /* A read lock granted (the first in this process, or back from a
         * write lock), or a write lock refused (still the read lock). */
        int wal = hkn_db_is_wal(fd);
        if (entry == NULL && wal && !hkn_db_opted_out(dev, ino)
            && (entry = hkn_db_get(dev, ino)) != NULL) {
            hkn_db_shadowed++;
        }
        if (entry != NULL) {
            entry->shared = 1;
            entry->aside = 0;
            if (!wal) {
                /* Left WAL mode: a rollback-mode reader must not block
                 * writers for longer than SQLite's own lock does. */
                if (!entry->claimed) {
                    hkn_db_drop(entry);
                }
            }
            else {
                /* Out of memory, this descriptor goes unshadowed. */
                (void)hkn_db_add_fd(entry, fd);
                hkn_db_set(entry, F_RDLCK);
            }
        }
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    errno = saved;
    return rc;
}

int
hkn_shmlock_claim_fd(dev_t dev, ino_t ino, int fd)
{
    int rc = 1;
    pthread_mutex_lock(&hkn_shm_mutex);
    hkn_db_entry *entry = hkn_db_listing(fd);
    if (entry != NULL && entry->dev == dev && entry->ino == ino && !entry->aside) {
        /* Listed, so its open file description holds our lock already (a
         * parked descriptor SQLite hands to a new connection): no system
         * call at all. */
        entry->claimed = 1;
        goto done;
    }
    /* Never blocks (F_OFD_SETLK), so it may be asked under the mutex, as
     * hkn_db_set does. */
    if (hkn_ofd_setlk(fd, F_RDLCK, HKN_SHARED_FIRST, HKN_SHARED_SIZE) != 0) {
        rc = 0;
        goto done;
    }
    entry = hkn_db_get(dev, ino);
    if (entry == NULL || hkn_db_add_fd(entry, fd) < 0) {
        /* Out of memory.  Unlisted, the lock would not step aside for this
         * process's own write lock, nor go at the last release: none, and
         * this connection goes unguarded, as the wrapper's own failures
         * leave SQLite's locks as they were.  An entry made here for
         * nothing goes too. */
        (void)hkn_ofd_setlk(fd, F_UNLCK, HKN_SHARED_FIRST, HKN_SHARED_SIZE);
        if (entry != NULL && entry->nfds == 0 && !entry->claimed && !entry->shared) {
            *entry = hkn_db_table[--hkn_db_count];
        }
        rc = 0;
        goto done;
    }
    entry->claimed = 1;
done:
    pthread_mutex_unlock(&hkn_shm_mutex);
    return rc;
}

int
hkn_shmlock_guard_forget(dev_t dev, ino_t ino, int opt_out, int *unlocked)
{
    int kept = 0;
    *unlocked = 0;
    pthread_mutex_lock(&hkn_shm_mutex);
    hkn_db_entry *entry = hkn_db_find(dev, ino);
    if (entry != NULL) {
        entry->claimed = 0;
        if (entry->shared && !opt_out) {
            /* SQLite still holds its read lock: ours stay until it lets go
             * (its last close steps aside for the checkpoint-and-unlink). */
            kept = 1;
        }
        else {
            /* With exact lists every listed descriptor is released here,
             * without an fstat() each; otherwise the caller checks its own. */
            if (entry->aside) {
                *unlocked = 1;
            }
            else if (hkn_db_lists_exact()) {
                hkn_db_set(entry, F_UNLCK);
                *unlocked = 1;
            }
            free(entry->fds);
            *entry = hkn_db_table[--hkn_db_count];
        }
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    return kept;
}

int
hkn_shmlock_opt_out(dev_t dev, ino_t ino, int delta)
{
    int rc = 0;
    pthread_mutex_lock(&hkn_shm_mutex);
    int i = 0;
    while (i < hkn_opt_out_count
           && !(hkn_opt_outs[i].dev == dev && hkn_opt_outs[i].ino == ino)) {
        i++;
    }
    if (i == hkn_opt_out_count && delta > 0) {
        if (HKN_MAKE_ROOM(hkn_opt_outs, hkn_opt_out_count, hkn_opt_out_capacity, 4) < 0) {
            rc = -1;
            goto done;
        }
        hkn_opt_outs[hkn_opt_out_count++] = (hkn_db_opt_out){dev, ino, 0};
    }
    if (i < hkn_opt_out_count) {
        hkn_opt_outs[i].count += delta;
        if (hkn_opt_outs[i].count <= 0) {
            hkn_opt_outs[i] = hkn_opt_outs[--hkn_opt_out_count];
        }
    }
done:
    pthread_mutex_unlock(&hkn_shm_mutex);
    return rc;
}

/* A descriptor SQLite closes takes its OFD lock with it: forget it. */
static void
hkn_db_closed(int fd)
{
    for (int i = 0; i < hkn_db_count; i++) {
        hkn_db_entry *entry = &hkn_db_table[i];
        for (int j = 0; j < entry->nfds; j++) {
            if (entry->fds[j] == fd) {
                entry->fds[j] = entry->fds[--entry->nfds];
                break;
            }
        }
    }
}

void
hkn_shmlock_db_stats(unsigned long long *stepped, unsigned long long *shadowed)
{
    pthread_mutex_lock(&hkn_shm_mutex);
    *stepped = hkn_db_stepped;
    *shadowed = hkn_db_shadowed;
    pthread_mutex_unlock(&hkn_shm_mutex);
}

static int
hkn_hook_open(const char *path, int flags, int mode)
{
    int fd = HKN_REAL(open)(path, flags, mode);
    if (fd < 0 || !hkn_is_shm_path(path)) {
        return fd;
    }
    /* Any failure here leaves the descriptor untranslated: SQLite then
     * uses POSIX locks on it, as it would without us. */
    char *copy = strdup(path);
    if (copy == NULL) {
        return fd;
    }
    pthread_mutex_lock(&hkn_shm_mutex);
    int index = hkn_shm_index(fd);
    if (index >= 0) {
        /* A number we never saw closed (closed behind SQLite's back). */
        hkn_shm_entry *entry = &hkn_shm_table[index];
        free(entry->path);
        free(entry->regions);
        *entry = (hkn_shm_entry){fd, flags, copy, NULL, 0, 0};
        copy = NULL;
    }
    else {
        if (HKN_MAKE_ROOM(hkn_shm_table, hkn_shm_count, hkn_shm_capacity, 8) == 0) {
            hkn_shm_table[hkn_shm_count++] = (hkn_shm_entry){fd, flags, copy, NULL, 0, 0};
            hkn_shm_opened++;
            hkn_shm_mark(fd, 1);
            copy = NULL;
        }
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    free(copy);
    return fd;
}

static int
hkn_hook_close(int fd)
{
    /* Forget the number before it can be reused by another thread's open. */
    hkn_shm_entry gone = {-1, 0, NULL, NULL, 0, 0};
    pthread_mutex_lock(&hkn_shm_mutex);
    int index = hkn_shm_index(fd);
    if (index >= 0) {
        gone = hkn_shm_table[index];
        hkn_shm_table[index] = hkn_shm_table[--hkn_shm_count];
        hkn_shm_mark(fd, 0);
    }
    else if (hkn_db_count > 0) {
        hkn_db_closed(fd);
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    free(gone.path);
    free(gone.regions);
    return HKN_REAL(close)(fd);
}

static void *
hkn_hook_mmap(void *address, size_t length, int prot, int flags, int fd, off_t offset)
{
    void *mapped = HKN_REAL(mmap)(address, length, prot, flags, fd, offset);
    if (mapped == MAP_FAILED || fd < 0 || !(flags & MAP_SHARED)) {
        return mapped;
    }
    pthread_mutex_lock(&hkn_shm_mutex);
    int index = hkn_shm_index(fd);
    if (index >= 0) {
        /* Untracked (out of memory), a region only keeps the parent's
         * description alive in a forked child, as without this. */
        hkn_shm_entry *entry = &hkn_shm_table[index];
        if (HKN_MAKE_ROOM(entry->regions, entry->nregions, entry->cregions, 4) == 0) {
            entry->regions[entry->nregions++] = (hkn_shm_region){mapped, length, prot, offset};
        }
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    return mapped;
}

static int
hkn_hook_munmap(void *address, size_t length)
{
    pthread_mutex_lock(&hkn_shm_mutex);
    for (int i = 0; i < hkn_shm_count; i++) {
        hkn_shm_entry *entry = &hkn_shm_table[i];
        for (int j = 0; j < entry->nregions; j++) {
            if (entry->regions[j].address == address) {
                entry->regions[j] = entry->regions[--entry->nregions];
                break;
            }
        }
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    return HKN_REAL(munmap)(address, length);
}

static int
hkn_hook_fcntl(int fd, int op, ...)
{
    /* Like the C library's own fcntl, take the one optional argument as a
     * pointer-sized value and pass it on unchanged. */
    va_list ap;
    va_start(ap, op);
    void *arg = va_arg(ap, void *);
    va_end(ap);

    int ofd_op = op == F_SETLK ? F_OFD_SETLK
                 : op == F_SETLKW ? F_OFD_SETLKW
                 : op == F_GETLK ? F_OFD_GETLK : 0;
    struct flock *lock = arg;
    if (ofd_op == 0 || lock == NULL || lock->l_whence != SEEK_SET) {
        return HKN_REAL(fcntl)(fd, op, arg);
    }
    if (op != F_GETLK && hkn_overlaps_shared(lock)) {
        return hkn_db_lock(fd, op, lock);
    }
    if (lock->l_start >= HKN_PENDING_BYTE) {
        return HKN_REAL(fcntl)(fd, op, arg);
    }
    if (!hkn_shm_is_ours(fd)) {
        return HKN_REAL(fcntl)(fd, op, arg);
    }
    /* OFD requests must have l_pid 0; SQLite leaves it uninitialised. */
    struct flock copy;
    memset(&copy, 0, sizeof(copy));
    copy.l_type = lock->l_type;
    copy.l_whence = lock->l_whence;
    copy.l_start = lock->l_start;
    copy.l_len = lock->l_len;
    int rc = HKN_REAL(fcntl)(fd, ofd_op, &copy);
    if (rc == 0 && op == F_GETLK) {
        lock->l_type = copy.l_type;
        lock->l_whence = copy.l_whence;
        lock->l_start = copy.l_start;
        lock->l_len = copy.l_len;
        lock->l_pid = copy.l_pid;
    }
    return rc;
}

static void
hkn_shm_prepare_fork(void)
{
    pthread_mutex_lock(&hkn_shm_mutex);
}

static void
hkn_shm_parent_fork(void)
{
    pthread_mutex_unlock(&hkn_shm_mutex);
}

void
hkn_reopen_fresh(int fd)
{
    char path[32] = "/proc/self/fd/";
    char digits[12];
    int n = 0;
    for (unsigned int v = (unsigned int)fd; n == 0 || v > 0; v /= 10) {
        digits[n++] = (char)('0' + v % 10);
    }
    size_t at = strlen(path);
    while (n > 0) {
        path[at++] = digits[--n];
    }
    path[at] = '\0';
    int flags = (fcntl)(fd, F_GETFL);
    int fd_flags = (fcntl)(fd, F_GETFD);
    struct stat was, now;
    if (flags < 0 || fd_flags < 0 || (fstat)(fd, &was) != 0) {
        return;
    }
    int fresh = (open)(path, (flags & O_ACCMODE) | O_CLOEXEC | O_NOCTTY);
    if (fresh < 0) {
        return;
    }
    if ((fstat)(fresh, &now) == 0 && now.st_dev == was.st_dev && now.st_ino == was.st_ino) {
        (void)dup3(fresh, fd, (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0);
    }
    (close)(fresh);
}

static void
hkn_shm_child_fork(void)
{
    /* Only this thread exists now, and only async-signal-safe calls may be
     * made.  If the file cannot be reopened as the same inode, the
     * inherited description stays (as it would without this). */
    for (int i = 0; i < hkn_shm_count; i++) {
        hkn_shm_entry *entry = &hkn_shm_table[i];
        hkn_shm_mark(entry->fd, 0);     /* the child forgets the table below */
        int fresh = (open)(entry->path, (entry->flags & (O_ACCMODE | O_NOFOLLOW)) | O_CLOEXEC);
        if (fresh < 0) {
            continue;
        }
        struct stat was, now;
        if ((fstat)(entry->fd, &was) == 0 && (fstat)(fresh, &now) == 0
            && was.st_dev == now.st_dev && was.st_ino == now.st_ino) {
            for (int j = 0; j < entry->nregions; j++) {
                hkn_shm_region *r = &entry->regions[j];
                (void)mmap(r->address, r->length, r->prot, MAP_SHARED | MAP_FIXED, fresh,
                           r->offset);
            }
            (void)dup3(fresh, entry->fd, O_CLOEXEC);
        }
        (close)(fresh);
    }
    hkn_shm_count = 0;
    hkn_shm_table = NULL;       /* the child's copy is left, not freed: see above */
    hkn_shm_capacity = 0;
    /* The database descriptors this process holds OFD locks on: the same
     * (/proc/self/fd/N opens the file anew), then the table is forgotten. */
    for (int i = 0; i < hkn_db_count; i++) {
        hkn_db_entry *entry = &hkn_db_table[i];
        for (int j = 0; j < entry->nfds; j++) {
            hkn_reopen_fresh(entry->fds[j]);
        }
    }
    hkn_db_count = 0;
    hkn_db_table = NULL;
    hkn_db_capacity = 0;
    hkn_opt_out_count = 0;
    hkn_opt_outs = NULL;
    hkn_opt_out_capacity = 0;
    pthread_mutex_unlock(&hkn_shm_mutex);
}

int
hkn_shmlock_install(hkn_state *state, int db_fd)
{
    if (hkn_shm_tried) {
        return hkn_shm_installed;   /* refused before: the reason stays */
    }
    hkn_shm_tried = 1;
    const char *choice = getenv("HERMES_KANBAN_NATIVE_SHM_LOCKS");
    if (choice != NULL && strcmp(choice, "posix") == 0) {
        hkn_shm_reason = "turned off by HERMES_KANBAN_NATIVE_SHM_LOCKS=posix";
        return 0;
    }
    /* Kernels before 3.15 reject OFD commands: SQLite's every lock would
     * then fail.  Asking about a lock (no change) proves support. */
    struct flock probe;
    memset(&probe, 0, sizeof(probe));
    probe.l_type = F_RDLCK;
    probe.l_whence = SEEK_SET;
    probe.l_start = 0;
    probe.l_len = 1;
    if (fcntl(db_fd, F_OFD_GETLK, &probe) != 0) {
        hkn_shm_reason = "the kernel refuses open-file-description locks";
        return 0;
    }
    const hkn_sqlite_api *api = &state->api;
    hkn_sqlite3_vfs *vfs = api->vfs_find ? sqlite3_vfs_find("unix") : NULL;
    if (vfs == NULL || vfs->iVersion < 3 || vfs->xGetSystemCall == NULL
        || vfs->xSetSystemCall == NULL) {
        hkn_shm_reason = "SQLite's unix VFS offers no system-call table";
        return 0;
    }
    /* The wrapped calls, in the order they are switched: "open" last, for
     * until it is ours no descriptor is in the table, so a thread inside
     * SQLite during the switch sees plain behaviour from whichever pointer
     * it reads. */
    enum { FCNTL, MMAP, MUNMAP, CLOSE, OPEN, WRAPPED };
    static const char *const names[WRAPPED] = {"fcntl", "mmap", "munmap", "close", "open"};
    const hkn_syscall_ptr hooks[WRAPPED] = {
        (hkn_syscall_ptr)hkn_hook_fcntl, (hkn_syscall_ptr)hkn_hook_mmap,
        (hkn_syscall_ptr)hkn_hook_munmap, (hkn_syscall_ptr)hkn_hook_close,
        (hkn_syscall_ptr)hkn_hook_open,
    };
    hkn_syscall_ptr real[WRAPPED];
    for (int i = 0; i < WRAPPED; i++) {
        real[i] = HKN_FAULT_POINT("xGetSystemCall", HKN_FAULT_QUIET, NULL,
                                  vfs->xGetSystemCall(vfs, names[i]));
        if (real[i] == NULL) {
            hkn_shm_reason = "SQLite's unix VFS lacks open, close, fcntl, mmap or munmap "
                             "in its system-call table";
            return 0;
        }
    }
    if (pthread_atfork(hkn_shm_prepare_fork, hkn_shm_parent_fork, hkn_shm_child_fork) != 0) {
        hkn_shm_reason = "pthread_atfork failed";
        return 0;
    }
    atomic_store_explicit(&hkn_real_open, (hkn_open_fn)real[OPEN], memory_order_release);
    atomic_store_explicit(&hkn_real_close, (hkn_close_fn)real[CLOSE], memory_order_release);
    atomic_store_explicit(&hkn_real_fcntl, (hkn_fcntl_fn)real[FCNTL], memory_order_release);
    atomic_store_explicit(&hkn_real_mmap, (hkn_mmap_fn)real[MMAP], memory_order_release);
    atomic_store_explicit(&hkn_real_munmap, (hkn_munmap_fn)real[MUNMAP], memory_order_release);
    for (int i = 0; i < WRAPPED; i++) {
        if (HKN_FAULT_POINT("xSetSystemCall", HKN_FAULT_QUIET, SQLITE_NOTFOUND,
                            vfs->xSetSystemCall(vfs, names[i], hooks[i])) == SQLITE_OK) {
            continue;
        }
        /* Put back the ones switched already: a half-installed set would
         * still shadow SHARED locks (the fcntl wrapper does that without
         * the table) while the module says the wrappers are not in. */
        for (int j = 0; j < i; j++) {
            (void)vfs->xSetSystemCall(vfs, names[j], real[j]);
        }
        hkn_shm_reason = "SQLite refused to replace a system call";
        return 0;
    }
    atomic_store_explicit(&hkn_shm_vfs, vfs, memory_order_release);
    hkn_shm_installed = 1;
    hkn_shm_reason = NULL;
    return 1;
}

/* Whether every wrapped entry of SQLite's table is still ours: anyone may
 * call xSetSystemCall (SQLite's own tests restore the defaults with
 * xSetSystemCall(vfs, NULL, NULL)), which silently removes the wrappers. */
static int
hkn_shm_still_wrapped(void)
{
    static const char *const names[] = {"open", "close", "fcntl", "mmap", "munmap"};
    const hkn_syscall_ptr hooks[] = {
        (hkn_syscall_ptr)hkn_hook_open, (hkn_syscall_ptr)hkn_hook_close,
        (hkn_syscall_ptr)hkn_hook_fcntl, (hkn_syscall_ptr)hkn_hook_mmap,
        (hkn_syscall_ptr)hkn_hook_munmap,
    };
    hkn_sqlite3_vfs *vfs = atomic_load_explicit(&hkn_shm_vfs, memory_order_acquire);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (vfs->xGetSystemCall(vfs, names[i]) != hooks[i]) {
            return 0;
        }
    }
    return 1;
}

int
hkn_shmlock_owns(int fd)
{
    return hkn_shm_installed && hkn_shm_is_ours(fd);
}

const char *
hkn_shmlock_status(unsigned long long *opened, int *open_now)
{
    pthread_mutex_lock(&hkn_shm_mutex);
    *opened = hkn_shm_opened;
    *open_now = hkn_shm_count;
    pthread_mutex_unlock(&hkn_shm_mutex);
    if (hkn_shm_installed && !hkn_shm_still_wrapped()) {
        return "the system-call wrappers were removed after they were installed (another "
               "xSetSystemCall); -shm descriptors opened since then use POSIX locks";
    }
    return hkn_shm_reason;
}
