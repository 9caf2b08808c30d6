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
 */
#include "hkn.h"

#ifdef __linux__

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HKN_PENDING_BYTE 0x40000000

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

static hkn_open_fn hkn_real_open;
static hkn_close_fn hkn_real_close;
static hkn_fcntl_fn hkn_real_fcntl;
static hkn_mmap_fn hkn_real_mmap;
static hkn_munmap_fn hkn_real_munmap;

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

static int
hkn_is_shm_path(const char *path)
{
    size_t length = path ? strlen(path) : 0;
    return length > 4 && strcmp(path + length - 4, "-shm") == 0;
}

static int
hkn_hook_open(const char *path, int flags, int mode)
{
    int fd = hkn_real_open(path, flags, mode);
    if (fd < 0 || !hkn_is_shm_path(path)) {
        return fd;
    }
    /* Any failure here leaves the descriptor untranslated: SQLite then
     * uses POSIX locks on it, as it would without us. */
    char *copy = HKN_FAULT_ALLOC("shmlock.hook_open.strdup", strdup(path));
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
        if (hkn_shm_count == hkn_shm_capacity) {
            int capacity = hkn_shm_capacity ? hkn_shm_capacity * 2 : 8;
            hkn_shm_entry *grown = HKN_FAULT_ALLOC(
                "shmlock.hook_open.realloc",
                realloc(hkn_shm_table, (size_t)capacity * sizeof(*grown)));
            if (grown != NULL) {
                hkn_shm_table = grown;
                hkn_shm_capacity = capacity;
            }
        }
        if (hkn_shm_count < hkn_shm_capacity) {
            hkn_shm_table[hkn_shm_count++] = (hkn_shm_entry){fd, flags, copy, NULL, 0, 0};
            hkn_shm_opened++;
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
    }
    pthread_mutex_unlock(&hkn_shm_mutex);
    free(gone.path);
    free(gone.regions);
    return hkn_real_close(fd);
}

static void *
hkn_hook_mmap(void *address, size_t length, int prot, int flags, int fd, off_t offset)
{
    void *mapped = hkn_real_mmap(address, length, prot, flags, fd, offset);
    if (mapped == MAP_FAILED || fd < 0 || !(flags & MAP_SHARED)) {
        return mapped;
    }
    pthread_mutex_lock(&hkn_shm_mutex);
    int index = hkn_shm_index(fd);
    if (index >= 0) {
        /* Untracked (out of memory), a region only keeps the parent's
         * description alive in a forked child, as without this. */
        hkn_shm_entry *entry = &hkn_shm_table[index];
        if (entry->nregions == entry->cregions) {
            int capacity = entry->cregions ? entry->cregions * 2 : 4;
            hkn_shm_region *grown = HKN_FAULT_ALLOC(
                "shmlock.hook_mmap.realloc",
                realloc(entry->regions, (size_t)capacity * sizeof(*grown)));
            if (grown != NULL) {
                entry->regions = grown;
                entry->cregions = capacity;
            }
        }
        if (entry->nregions < entry->cregions) {
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
    return hkn_real_munmap(address, length);
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
    if (ofd_op == 0 || lock == NULL || lock->l_whence != SEEK_SET
        || lock->l_start >= HKN_PENDING_BYTE) {
        return hkn_real_fcntl(fd, op, arg);
    }
    pthread_mutex_lock(&hkn_shm_mutex);
    int ours = hkn_shm_index(fd) >= 0;
    pthread_mutex_unlock(&hkn_shm_mutex);
    if (!ours) {
        return hkn_real_fcntl(fd, op, arg);
    }
    /* OFD requests must have l_pid 0; SQLite leaves it uninitialised. */
    struct flock copy;
    memset(&copy, 0, sizeof(copy));
    copy.l_type = lock->l_type;
    copy.l_whence = lock->l_whence;
    copy.l_start = lock->l_start;
    copy.l_len = lock->l_len;
    int rc = hkn_real_fcntl(fd, ofd_op, &copy);
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

static void
hkn_shm_child_fork(void)
{
    /* Only this thread exists now, and only async-signal-safe calls may be
     * made.  If the file cannot be reopened as the same inode, the
     * inherited description stays (as it would without this). */
    for (int i = 0; i < hkn_shm_count; i++) {
        hkn_shm_entry *entry = &hkn_shm_table[i];
        int fresh = open(entry->path, (entry->flags & (O_ACCMODE | O_NOFOLLOW)) | O_CLOEXEC);
        if (fresh < 0) {
            continue;
        }
        struct stat was, now;
        if (fstat(entry->fd, &was) == 0 && fstat(fresh, &now) == 0
            && was.st_dev == now.st_dev && was.st_ino == now.st_ino) {
            for (int j = 0; j < entry->nregions; j++) {
                hkn_shm_region *r = &entry->regions[j];
                (void)mmap(r->address, r->length, r->prot, MAP_SHARED | MAP_FIXED, fresh,
                           r->offset);
            }
            (void)dup3(fresh, entry->fd, O_CLOEXEC);
        }
        close(fresh);
    }
    hkn_shm_count = 0;
    hkn_shm_table = NULL;       /* the child's copy is left, not freed: see above */
    hkn_shm_capacity = 0;
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
    if (HKN_FAULT_SYS("shmlock.install.fcntl_probe", EINVAL, -1,
                      fcntl(db_fd, F_OFD_GETLK, &probe)) != 0) {
        hkn_shm_reason = "the kernel refuses open-file-description locks";
        return 0;
    }
    hkn_sqlite3_vfs *vfs = state->api.vfs_find
        ? HKN_FAULT_SQLITE("shmlock.install.vfs_find", NULL, state->api.vfs_find("unix"))
        : NULL;
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
        real[i] = HKN_FAULT_SQLITE("shmlock.install.get_system_call", NULL,
                                   vfs->xGetSystemCall(vfs, names[i]));
        if (real[i] == NULL) {
            hkn_shm_reason = "SQLite's unix VFS lacks open, close, fcntl, mmap or munmap "
                             "in its system-call table";
            return 0;
        }
    }
    if (HKN_FAULT_SYS("shmlock.install.pthread_atfork", ENOMEM, ENOMEM,
                      pthread_atfork(hkn_shm_prepare_fork, hkn_shm_parent_fork,
                                     hkn_shm_child_fork)) != 0) {
        hkn_shm_reason = "pthread_atfork failed";
        return 0;
    }
    hkn_real_open = (hkn_open_fn)real[OPEN];
    hkn_real_close = (hkn_close_fn)real[CLOSE];
    hkn_real_fcntl = (hkn_fcntl_fn)real[FCNTL];
    hkn_real_mmap = (hkn_mmap_fn)real[MMAP];
    hkn_real_munmap = (hkn_munmap_fn)real[MUNMAP];
    for (int i = 0; i < WRAPPED; i++) {
        if (HKN_FAULT_SQLITE("shmlock.install.set_system_call", SQLITE_NOTFOUND,
                             vfs->xSetSystemCall(vfs, names[i], hooks[i])) == SQLITE_OK) {
            continue;
        }
        /* The ones switched already stay: with no descriptor ever in the
         * table they only pass every call on. */
        hkn_shm_reason = "SQLite refused to replace a system call";
        return 0;
    }
    hkn_shm_installed = 1;
    hkn_shm_reason = NULL;
    return 1;
}

int
hkn_shmlock_owns(int fd)
{
    if (!hkn_shm_installed) {
        return 0;
    }
    pthread_mutex_lock(&hkn_shm_mutex);
    int ours = hkn_shm_index(fd) >= 0;
    pthread_mutex_unlock(&hkn_shm_mutex);
    return ours;
}

const char *
hkn_shmlock_status(unsigned long long *opened, int *open_now)
{
    pthread_mutex_lock(&hkn_shm_mutex);
    *opened = hkn_shm_opened;
    *open_now = hkn_shm_count;
    pthread_mutex_unlock(&hkn_shm_mutex);
    return hkn_shm_reason;
}

#else   /* not Linux: no OFD locks */

int
hkn_shmlock_install(hkn_state *state, int db_fd)
{
    (void)state;
    (void)db_fd;
    return 0;
}

int
hkn_shmlock_owns(int fd)
{
    (void)fd;
    return 0;
}

const char *
hkn_shmlock_status(unsigned long long *opened, int *open_now)
{
    *opened = 0;
    *open_now = 0;
    return "open-file-description locks exist on Linux only";
}

#endif
