/* linux/fdscan.c - raw records from /proc/<pid>/fd, /proc/<pid>/maps,
 * /proc/locks and /proc/<pid>/fdinfo/<fd>.
 *
 * No policy here: hermes_kanban_native/fds.py decides what a record means.
 * Each scan runs its syscalls with the GIL released, collecting into plain C
 * buffers, and builds the Python objects afterwards with the GIL held.
 *
 * A database file is never open()ed here: closing any descriptor of a file
 * drops all of the process's POSIX locks on it (docs/sqlite-internals.md,
 * Lock cancellation), so the descriptors are reached through stat() and
 * readlink() of the /proc links.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

#include "faults.h"
#include "fdscan.h"
#include "fault_calls.h"     /* last: see faults.h */

/* Large enough for "/proc/<pid>/fdinfo/<fd>" with any int pid and fd. */
#define HKN_PROC_PATH_MAX 64
/* d_path() of a /proc link is limited to a page; readlink is retried with a
 * larger buffer up to this bound so very long paths are never cut short. */
#define HKN_LINK_MAX (1 << 20)

/* Where a scan failed, recorded while the GIL is released and turned into an
 * exception once it is held again. */
typedef struct {
    int err;
    const char *syscall;
    char path[HKN_PROC_PATH_MAX];
} hkn_failure;

/* A growable byte buffer: file contents, or the link texts of a scan. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} hkn_text;

typedef struct {
    int fd;
    int stat_errno;
    int has_link;
    unsigned long long dev;
    unsigned long long ino;
    unsigned long long nlink;
    unsigned long long size;
    unsigned int mode;
    size_t path_off;
    size_t path_len;
} hkn_fd_record;

typedef struct {
    unsigned long long start;
    unsigned long long end;
    unsigned long long offset;
    unsigned long long dev;
    unsigned long long ino;
    char perms[5];
    size_t path_off;
    size_t path_len;
} hkn_map_record;

typedef struct {
    char kind[16];
    char mode[16];
    char access[16];
    long long pid;
    int has_inode;
    int blocked;
    int to_eof;
    unsigned long long dev;
    unsigned long long ino;
    long long start;
    long long end;
} hkn_lock_record;

/* A growable array of fixed-size records. */
typedef struct {
    void *items;
    size_t count;
    size_t cap;
} hkn_array;

static void
hkn_fail(hkn_failure *failure, int err, const char *syscall, const char *path)
{
    failure->err = err;
    failure->syscall = syscall;
    snprintf(failure->path, sizeof(failure->path), "%s", path);
}

static int
hkn_reserve(void **items, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) {
        return 0;
    }
    size_t new_cap = *cap ? *cap : 64;
    while (new_cap < need) {
        if (new_cap > ((size_t)-1) / 2 / elem) {
            return -1;
        }
        new_cap *= 2;
    }
    void *grown = realloc(*items, new_cap * elem);
    if (grown == NULL) {
        return -1;
    }
    *items = grown;
    *cap = new_cap;
    return 0;
}

static void *
hkn_append(hkn_array *array, size_t elem)
{
    if (hkn_reserve(&array->items, &array->cap, array->count + 1, elem) < 0) {
        return NULL;
    }
    char *slot = (char *)array->items + array->count * elem;
    array->count++;
    memset(slot, 0, elem);
    return slot;
}

/* Reads a whole /proc file; /proc files report size 0, so read until EOF. */
static int
hkn_read_file(const char *path, hkn_text *text, hkn_failure *failure)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        hkn_fail(failure, errno, "open", path);
        return -1;
    }
    int result = -1;
    for (;;) {
        if (hkn_reserve((void **)&text->data, &text->cap, text->len + 16384, 1) < 0) {
            hkn_fail(failure, ENOMEM, "read", path);
            goto done;
        }
        ssize_t got = read(fd, text->data + text->len, text->cap - text->len);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            hkn_fail(failure, errno, "read", path);
            goto done;
        }
        if (got == 0) {
            break;
        }
        text->len += (size_t)got;
    }
    result = 0;
done:
    /* Read-only: a failing close loses nothing, and frees the fd anyway. */
    (void)close(fd);
    return result;
}

/* Turns a recorded failure into an OSError subclass carrying errno, the
 * syscall, the /proc path and the pid (as psutil does).  OSError's
 * constructor picks the subclass from errno (ESRCH -> ProcessLookupError,
 * EACCES/EPERM -> PermissionError). */
static PyObject *
hkn_raise(const hkn_failure *failure, int pid)
{
    int err = failure->err;
    if (err == ENOMEM) {
        return PyErr_NoMemory();
    }
    /* The text is made in C and becomes a Python string in one call. */
    char text[256];
    if (pid > 0 && (err == ENOENT || err == ESRCH)) {
        /* A missing /proc/self means /proc is not mounted, not a dead pid. */
        if (access("/proc/self", F_OK) != 0) {
            snprintf(text, sizeof(text), "%s: /proc is not mounted", failure->syscall);
        }
        else {
            err = ESRCH;
            snprintf(text, sizeof(text), "no process with pid %d", pid);
        }
    }
    else if (pid > 0 && (err == EACCES || err == EPERM)) {
        snprintf(text, sizeof(text), "%s: not permitted to inspect pid %d (%s)",
                 failure->syscall, pid, strerror(err));
    }
    else {
        snprintf(text, sizeof(text), "%s: %s", failure->syscall, strerror(err));
    }
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iss", err, text, failure->path);
    if (exc == NULL) {
        return NULL;
    }
    if (pid > 0) {
        PyObject *pid_obj = PyLong_FromLong(pid);
        if (pid_obj == NULL
            || PyObject_SetAttrString(exc, "pid", pid_obj) < 0) {
            Py_XDECREF(pid_obj);
            Py_DECREF(exc);
            return NULL;
        }
        Py_DECREF(pid_obj);
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

static int
hkn_pid_from(PyObject *arg, int *pid)
{
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value <= 0 || value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "pid must be a positive int, not %ld", value);
        return -1;
    }
    *pid = (int)value;
    return 0;
}

static PyObject *
hkn_decode_path(const hkn_text *text, size_t off, size_t len)
{
    return PyUnicode_DecodeFSDefaultAndSize(text->data + off, (Py_ssize_t)len);
}

/* ------------------------------------------------------------------ fds */

/* Identities (st_dev, st_ino) a scan is limited to. */
typedef struct {
    unsigned long long dev, ino;
} hkn_identity;

static int
hkn_wanted(const struct stat *st, const hkn_identity *only, Py_ssize_t n_only)
{
    if (n_only < 0 || st->st_nlink == 0) {
        return 1;               /* no filter; or unlinked: only its name can tell */
    }
    for (Py_ssize_t i = 0; i < n_only; i++) {
        if (only[i].dev == (unsigned long long)st->st_dev
            && only[i].ino == (unsigned long long)st->st_ino) {
            return 1;
        }
    }
    return 0;
}

/* Appends the record of descriptor `fd` (its stat in *st unless stat_errno);
 * its link text, if any, is the last `link_len` bytes of the arena. */
static int
hkn_add_fd_record(hkn_array *records, const hkn_text *links, int fd, int stat_errno,
                  const struct stat *st, int has_link, size_t link_len)
{
    hkn_fd_record *record = hkn_append(records, sizeof(*record));
    if (record == NULL) {
        return -1;
    }
    record->fd = fd;
    record->stat_errno = stat_errno;
    if (stat_errno == 0) {
        record->dev = (unsigned long long)st->st_dev;
        record->ino = (unsigned long long)st->st_ino;
        record->nlink = (unsigned long long)st->st_nlink;
        record->size = (unsigned long long)st->st_size;
        record->mode = (unsigned int)st->st_mode;
    }
    record->has_link = has_link;
    record->path_off = links->len;
    record->path_len = link_len;
    return 0;
}

/* How many descriptor numbers to try one by one in our own process instead
 * of listing /proc/self/fd, or -1 to list it.  Listing costs the kernel a
 * dentry per open descriptor (about half of a scan of 1,000 descriptors);
 * trying a number that is not open costs one failed fstat.  So the numbers
 * below the descriptor table's size (FDSize in /proc/self/status; no open
 * descriptor lies beyond it) are tried when the table is not much larger
 * than the number of open descriptors, which Linux 6.2+ gives as the size
 * of /proc/self/fd (older kernels say 0: list). */
static int
hkn_own_fd_numbers(void)
{
    struct stat dir;
    if (stat("/proc/self/fd", &dir) != 0 || dir.st_size <= 0) {
        return -1;
    }
    char text[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t got = read(fd, text, sizeof(text) - 1);
    (void)close(fd);
    if (got <= 0) {
        return -1;
    }
    text[got] = '\0';
    const char *line = strstr(text, "\nFDSize:");
    long table = line == NULL ? -1 : strtol(line + sizeof("\nFDSize:") - 1, NULL, 10);
    if (table <= 0 || table > 2 * (long)dir.st_size + 64) {
        return -1;
    }
    return (int)table;
}

/* The records of our own descriptors below `numbers` (see above); link
 * texts are not read this way. */
static int
hkn_probe_own_fds(int numbers, const hkn_identity *only, Py_ssize_t n_only,
                  hkn_array *records, hkn_text *links, hkn_failure *failure)
{
    for (int fd = 0; fd < numbers; fd++) {
        struct stat st;
        int stat_errno = 0;
        if (fstat(fd, &st) != 0) {
            stat_errno = errno;
            if (stat_errno == EBADF) {
                continue;       /* not open */
            }
        }
        else if (!hkn_wanted(&st, only, n_only)) {
            continue;
        }
        if (hkn_add_fd_record(records, links, fd, stat_errno, &st, 0, 0) < 0) {
            hkn_fail(failure, ENOMEM, "fstat", "/proc/self/fd");
            return -1;
        }
    }
    return 0;
}

/* n_only < 0: every descriptor; else only those on the n_only identities
 * of `only` and those whose inode is unlinked or cannot be stat()ed. */
static int
hkn_collect_fds(int pid, int want_links, const hkn_identity *only, Py_ssize_t n_only,
                hkn_array *records, hkn_text *links, hkn_failure *failure)
{
    if (!want_links && pid == (int)getpid()) {
        int numbers = hkn_own_fd_numbers();
        if (numbers > 0) {
            return hkn_probe_own_fds(numbers, only, n_only, records, links, failure);
        }
    }
    char path[HKN_PROC_PATH_MAX];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    DIR *dir = opendir(path);
    if (dir == NULL) {
        hkn_fail(failure, errno, "opendir", path);
        return -1;
    }
    int dir_fd = dirfd(dir);
    /* In our own process fstat(fd) reaches the same inode as a stat through
     * the /proc link, without the per-entry /proc lookup that dominates the
     * scan's cost (about 2 us each on a VM).  Neither opens the file. */
    int own = (pid == (int)getpid());
    int result = -1;
    for (;;) {
        errno = 0;
        struct dirent *entry = readdir(dir);
        if (entry == NULL) {
            if (errno != 0) {
                hkn_fail(failure, errno, "readdir", path);
                goto done;
            }
            break;
        }
        const char *name = entry->d_name;
        if (name[0] < '0' || name[0] > '9') {
            continue;
        }
        int fd = atoi(name);
        if (own && fd == dir_fd) {
            continue;   /* the scan's own descriptor is not the caller's */
        }
        struct stat st;
        int stat_errno = 0;
        /* fstatat follows the magic link to the open inode: no open(), so no
         * POSIX lock of the scanned process is touched. */
        if ((own ? fstat(fd, &st)
                 : fstatat(dir_fd, name, &st, 0)) != 0) {
            stat_errno = errno;
            if (stat_errno == ENOENT || stat_errno == EBADF) {
                continue;
            }
            if (stat_errno == EACCES || stat_errno == EPERM) {
                hkn_fail(failure, stat_errno, "stat", path);
                goto done;
            }
        }
        else if (!hkn_wanted(&st, only, n_only)) {
            continue;           /* no record, no link read, no Python object */
        }
        ssize_t got = 0;
        int has_link = want_links;
        if (want_links) {
            /* Read the link straight into the text arena; a result that
             * fills the space may be cut short, so grow and read again. */
            size_t room = 4096;
            for (;;) {
                if (hkn_reserve((void **)&links->data, &links->cap, links->len + room, 1) < 0) {
                    hkn_fail(failure, ENOMEM, "readlinkat", path);
                    goto done;
                }
                got = readlinkat(dir_fd, name, links->data + links->len, room);
                if (got < 0 || (size_t)got < room || room >= HKN_LINK_MAX) {
                    break;
                }
                room *= 2;
            }
            if (got < 0) {
                if (errno == ENOENT) {
                    continue;   /* closed while we scanned */
                }
                if (errno == EACCES || errno == EPERM) {
                    hkn_fail(failure, errno, "readlinkat", path);
                    goto done;
                }
                /* The kernel prints at most a page (ENAMETOOLONG beyond):
                 * keep the descriptor, without its name. */
                has_link = 0;
                got = 0;
            }
        }
        if (hkn_add_fd_record(records, links, fd, stat_errno, &st, has_link, (size_t)got) < 0) {
            hkn_fail(failure, ENOMEM, "readdir", path);
            goto done;
        }
        links->len += (size_t)got;
    }
    result = 0;
done:
    (void)closedir(dir);
    return result;
}

/* The number objects of one fd record; stat fields None when stat failed. */
/* Makes the Python row of one record; NULL with an exception on failure. */
typedef PyObject *(*hkn_row_fn)(const void *record, const void *context);

/* The list of the rows of `records` (each `elem` bytes), or NULL at the
 * first row that fails. */
static PyObject *
hkn_rows(const hkn_array *records, size_t elem, hkn_row_fn make_row, const void *context)
{
    PyObject *result = PyList_New((Py_ssize_t)records->count);
    for (size_t i = 0; result != NULL && i < records->count; i++) {
        PyObject *row = make_row((const char *)records->items + i * elem, context);
        if (row == NULL) {
            Py_CLEAR(result);
        }
        else {
            PyList_SET_ITEM(result, (Py_ssize_t)i, row);
        }
    }
    return result;
}

/* What one scan leaves: its records, the text they point into, and why it
 * failed. */
typedef struct {
    hkn_array records;
    hkn_text text;
    hkn_failure failure;
} hkn_scan;

/* The rows of a finished scan (rc 0), or its failure raised (rc -1); frees
 * what the scan holds either way. */
static PyObject *
hkn_finish_scan(hkn_scan *scan, int rc, int pid, size_t elem, hkn_row_fn make_row)
{
    PyObject *result = rc < 0 ? hkn_raise(&scan->failure, pid)
                              : hkn_rows(&scan->records, elem, make_row, &scan->text);
    free(scan->records.items);
    free(scan->text.data);
    return result;
}

static PyObject *
hkn_fd_row(const void *record, const void *context)
{
    const hkn_fd_record *r = record;
    const hkn_text *links = context;
    PyObject *row = PyTuple_New(7);
    if (row == NULL) {
        return NULL;
    }
    /* Built one by one, stopping at the first failure: no call is made with
     * an exception set. */
    PyObject *items[7] = {NULL};
    items[0] = PyLong_FromLong(r->fd);
    if (items[0] != NULL) {
        items[1] = r->has_link ? hkn_decode_path(links, r->path_off, r->path_len)
                               : Py_NewRef(Py_None);
    }
    if (items[1] != NULL && r->stat_errno == 0
        && (items[2] = PyLong_FromUnsignedLongLong(r->dev)) != NULL
        && (items[3] = PyLong_FromUnsignedLongLong(r->ino)) != NULL
        && (items[4] = PyLong_FromUnsignedLongLong(r->nlink)) != NULL
        && (items[5] = PyLong_FromUnsignedLong(r->mode)) != NULL) {
        items[6] = PyLong_FromUnsignedLongLong(r->size);
    }
    else if (items[1] != NULL && r->stat_errno != 0) {
        for (int i = 2; i < 7; i++) {
            items[i] = Py_NewRef(Py_None);
        }
    }
    int ok = 1;
    for (int i = 0; i < 7; i++) {
        if (items[i] == NULL) {
            ok = 0;
        }
        PyTuple_SET_ITEM(row, i, items[i]);   /* NULL slots are fine in dealloc */
    }
    if (!ok) {
        Py_DECREF(row);
        return NULL;
    }
    return row;
}

/* *only* of _scan_fds: a sequence of (st_dev, st_ino) pairs of ints. */
static int
hkn_identities(PyObject *obj, hkn_identity **out, Py_ssize_t *count)
{
    PyObject *items = PySequence_Fast(obj, "only must be a sequence of (st_dev, st_ino) pairs");
    if (items == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    hkn_identity *identities = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(*identities));
    if (identities == NULL) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(items, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2
            || !PyLong_Check(PyTuple_GET_ITEM(pair, 0)) || !PyLong_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_Format(PyExc_TypeError,
                         "only must hold (st_dev, st_ino) tuples of ints, not %R", pair);
            goto fail;
        }
        identities[i].dev = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(pair, 0));
        identities[i].ino = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(pair, 1));
        if (PyErr_Occurred()) {
            goto fail;
        }
    }
    Py_DECREF(items);
    *out = identities;
    *count = n;
    return 0;
fail:
    Py_DECREF(items);
    PyMem_Free(identities);
    return -1;
}

const char hkn_scan_fds_doc[] = PyDoc_STR(
"_scan_fds($module, pid, /, links=True, only=None)\n--\n\n"
"Open descriptors of process *pid* from /proc/<pid>/fd.\n\n"
"Returns a list of (fd, link, st_dev, st_ino, st_nlink, st_mode, st_size)\n"
"tuples in fd order.  link is the text of /proc/<pid>/fd/N, or None when\n"
"*links* is false (reading it costs as much as the stat) or the kernel\n"
"cannot print it (a path longer than a page).  The stat fields\n"
"describe the open inode, reached through the /proc link (fstat() for this\n"
"process) and never by opening the file; they are None when that stat\n"
"failed.  Descriptors closed during the scan are left out.  With *only*, a\n"
"sequence of (st_dev, st_ino) pairs, a descriptor on a linked inode not\n"
"among them is skipped before any object is made for it (unlinked and\n"
"unstat()able ones stay: only their names can tie them to a file).\n"
"Raises ProcessLookupError or PermissionError (errno, path and .pid set).");

PyObject *
hkn_scan_fds(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"", "links", "only", NULL};
    PyObject *pid_obj, *only_obj = Py_None;
    int want_links = 1;
    int pid;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|pO:_scan_fds", keywords,
                                     &pid_obj, &want_links, &only_obj)) {
        return NULL;
    }
    if (hkn_pid_from(pid_obj, &pid) < 0) {
        return NULL;
    }
    hkn_identity *only = NULL;
    Py_ssize_t n_only = -1;
    if (only_obj != Py_None && hkn_identities(only_obj, &only, &n_only) < 0) {
        return NULL;
    }
    hkn_scan scan = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = hkn_collect_fds(pid, want_links, only, n_only, &scan.records, &scan.text,
                         &scan.failure);
    Py_END_ALLOW_THREADS
    PyMem_Free(only);
    return hkn_finish_scan(&scan, rc, pid, sizeof(hkn_fd_record), hkn_fd_row);
}

/* ----------------------------------------------------------------- maps */

static const char *
hkn_skip_spaces(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }
    return p;
}

/* Parses an unsigned number in the given base; NULL when there is none. */
static const char *
hkn_parse_unsigned(const char *p, const char *end, int base, unsigned long long *out)
{
    unsigned long long value = 0;
    const char *start = p;
    for (; p < end; p++) {
        int digit;
        if (*p >= '0' && *p <= '9') {
            digit = *p - '0';
        }
        else if (base == 16 && *p >= 'a' && *p <= 'f') {
            digit = *p - 'a' + 10;
        }
        else if (base == 16 && *p >= 'A' && *p <= 'F') {
            digit = *p - 'A' + 10;
        }
        else {
            break;
        }
        value = value * (unsigned)base + (unsigned)digit;
    }
    if (p == start) {
        return NULL;
    }
    *out = value;
    return p;
}

static const char *
hkn_expect(const char *p, const char *end, char c)
{
    return (p != NULL && p < end && *p == c) ? p + 1 : NULL;
}

/* Parses one line (without its newline) into a record; -1 to skip it.
 * `base` is the start of the text, for records that point into it. */
typedef int (*hkn_line_fn)(const char *p, const char *end, const char *base, void *record);

/* Appends a record of `elem` bytes to *records* for every line of *text*
 * that starts with *prefix* ("" for all) and parses; -1 out of memory. */
static int
hkn_parse_lines(const hkn_text *text, const char *prefix, hkn_line_fn parse, size_t elem,
                hkn_array *records)
{
    size_t prefix_len = strlen(prefix);
    const char *p = text->data;
    const char *stop = text->data + text->len;
    while (p < stop) {
        const char *eol = memchr(p, '\n', (size_t)(stop - p));
        if (eol == NULL) {
            eol = stop;
        }
        union {
            hkn_map_record map;
            hkn_lock_record lock;
        } parsed;
        memset(&parsed, 0, sizeof(parsed));
        if ((size_t)(eol - p) > prefix_len && memcmp(p, prefix, prefix_len) == 0
            && parse(p + prefix_len, eol, text->data, &parsed) == 0) {
            void *record = hkn_append(records, elem);
            if (record == NULL) {
                return -1;
            }
            memcpy(record, &parsed, elem);
        }
        p = eol + 1;
    }
    return 0;
}

/* One line of /proc/<pid>/maps: "start-end perms offset maj:min inode  path".
 * The kernel prints the device as major:minor in hex; st_dev uses makedev()'s
 * encoding, so convert here to make the two comparable. */
static int
hkn_parse_map_line(const char *p, const char *end, const char *base, void *record)
{
    hkn_map_record *r = record;
    unsigned long long major, minor;
    p = hkn_parse_unsigned(p, end, 16, &r->start);
    p = hkn_expect(p, end, '-');
    if (p == NULL || (p = hkn_parse_unsigned(p, end, 16, &r->end)) == NULL) {
        return -1;
    }
    p = hkn_skip_spaces(p, end);
    if (end - p < 4) {
        return -1;
    }
    memcpy(r->perms, p, 4);
    r->perms[4] = '\0';
    p = hkn_skip_spaces(p + 4, end);
    if ((p = hkn_parse_unsigned(p, end, 16, &r->offset)) == NULL) {
        return -1;
    }
    p = hkn_skip_spaces(p, end);
    p = hkn_parse_unsigned(p, end, 16, &major);
    p = hkn_expect(p, end, ':');
    if (p == NULL || (p = hkn_parse_unsigned(p, end, 16, &minor)) == NULL) {
        return -1;
    }
    r->dev = (unsigned long long)makedev((unsigned int)major, (unsigned int)minor);
    p = hkn_skip_spaces(p, end);
    if ((p = hkn_parse_unsigned(p, end, 10, &r->ino)) == NULL) {
        return -1;
    }
    /* The path is the rest of the line and may itself contain spaces. */
    p = hkn_skip_spaces(p, end);
    r->path_off = (size_t)(p - base);
    r->path_len = (size_t)(end - p);
    return 0;
}

/* Which mappings a scan keeps: all (n_only < 0 and no prefix), or those of
 * a file (inode not 0) among the identities or named from the prefix on. */
typedef struct {
    const hkn_identity *only;
    Py_ssize_t n_only;
    const char *prefix;
    size_t prefix_len;
} hkn_map_filter;

static int
hkn_map_wanted(const hkn_map_record *r, const hkn_text *text, const hkn_map_filter *filter)
{
    if (filter->n_only < 0 && filter->prefix == NULL) {
        return 1;
    }
    if (r->ino == 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < filter->n_only; i++) {
        if (filter->only[i].dev == r->dev && filter->only[i].ino == r->ino) {
            return 1;
        }
    }
    return filter->prefix != NULL && r->path_len >= filter->prefix_len
           && memcmp(text->data + r->path_off, filter->prefix, filter->prefix_len) == 0;
}

static int
hkn_collect_maps(int pid, const hkn_map_filter *filter, hkn_array *records, hkn_text *text,
                 hkn_failure *failure)
{
    char path[HKN_PROC_PATH_MAX];
    snprintf(path, sizeof(path), "/proc/%d/maps", pid);
    if (hkn_read_file(path, text, failure) < 0) {
        return -1;
    }
    if (hkn_parse_lines(text, "", hkn_parse_map_line, sizeof(hkn_map_record), records) < 0) {
        hkn_fail(failure, ENOMEM, "read", path);
        return -1;
    }
    /* Filtered in place: a process maps hundreds of libraries, and each
     * left out here is a row never made. */
    hkn_map_record *maps = records->items;
    size_t kept = 0;
    for (size_t i = 0; i < records->count; i++) {
        if (hkn_map_wanted(&maps[i], text, filter)) {
            maps[kept++] = maps[i];
        }
    }
    records->count = kept;
    return 0;
}

const char hkn_scan_maps_doc[] = PyDoc_STR(
"_scan_maps($module, pid, /, only=None, prefix=None)\n--\n\n"
"Memory mappings of process *pid* from /proc/<pid>/maps.\n\n"
"Returns a list of (start, end, perms, offset, st_dev, st_ino, path)\n"
"tuples, one per line.  The device is converted from the kernel's\n"
"major:minor to the st_dev encoding of os.stat().  path is '' for\n"
"anonymous mappings and the text as the kernel prints it otherwise.\n"
"With *only* (a sequence of (st_dev, st_ino) pairs) or *prefix* (a path,\n"
"str or bytes), only mappings of files are returned whose identity is\n"
"among *only* or whose path starts with *prefix* (a deleted file's, or one\n"
"seen under another device number, is known by its name alone).\n"
"Raises ProcessLookupError or PermissionError.");

static PyObject *
hkn_map_row(const void *record, const void *context)
{
    const hkn_map_record *r = record;
    PyObject *map_path = hkn_decode_path(context, r->path_off, r->path_len);
    if (map_path == NULL) {
        return NULL;
    }
    PyObject *row = Py_BuildValue("(KKsKKKO)", r->start, r->end, r->perms,
                                  r->offset, r->dev, r->ino, map_path);
    Py_DECREF(map_path);
    return row;
}

PyObject *
hkn_scan_maps(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"", "only", "prefix", NULL};
    PyObject *pid_obj, *only_obj = Py_None, *prefix_obj = Py_None;
    int pid;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO:_scan_maps", keywords,
                                     &pid_obj, &only_obj, &prefix_obj)) {
        return NULL;
    }
    if (hkn_pid_from(pid_obj, &pid) < 0) {
        return NULL;
    }
    hkn_map_filter filter = {NULL, -1, NULL, 0};
    PyObject *prefix_bytes = NULL;
    if (prefix_obj != Py_None) {
        if (!PyUnicode_FSConverter(prefix_obj, &prefix_bytes)) {
            return NULL;
        }
        filter.prefix = PyBytes_AS_STRING(prefix_bytes);
        filter.prefix_len = (size_t)PyBytes_GET_SIZE(prefix_bytes);
    }
    hkn_identity *only = NULL;
    if (only_obj != Py_None && hkn_identities(only_obj, &only, &filter.n_only) < 0) {
        Py_XDECREF(prefix_bytes);
        return NULL;
    }
    if (filter.n_only < 0 && filter.prefix != NULL) {
        filter.n_only = 0;          /* a prefix alone: no identity matches */
    }
    filter.only = only;
    hkn_scan scan = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = hkn_collect_maps(pid, &filter, &scan.records, &scan.text, &scan.failure);
    Py_END_ALLOW_THREADS
    PyMem_Free(only);
    Py_XDECREF(prefix_bytes);
    return hkn_finish_scan(&scan, rc, pid, sizeof(hkn_map_record), hkn_map_row);
}

/* ---------------------------------------------------------------- locks */

/* Copies the next whitespace-separated token; NULL at the end of the line. */
static const char *
hkn_token(const char *p, const char *end, const char **token, size_t *len)
{
    p = hkn_skip_spaces(p, end);
    if (p >= end) {
        return NULL;
    }
    *token = p;
    while (p < end && *p != ' ' && *p != '\t') {
        p++;
    }
    *len = (size_t)(p - *token);
    return p;
}

static void
hkn_copy_token(char *dst, size_t size, const char *token, size_t len)
{
    if (len >= size) {
        len = size - 1;
    }
    memcpy(dst, token, len);
    dst[len] = '\0';
}

static const char *
hkn_parse_signed(const char *p, const char *end, long long *out)
{
    int negative = (p < end && *p == '-');
    unsigned long long magnitude;
    p = hkn_parse_unsigned(negative ? p + 1 : p, end, 10, &magnitude);
    if (p == NULL) {
        return NULL;
    }
    *out = negative ? -(long long)magnitude : (long long)magnitude;
    return p;
}

/* One lock line as /proc/locks and the "lock:" lines of fdinfo print it:
 *   "1: POSIX  ADVISORY  READ 2645 fe:00:2146439 5 14"
 *   "2: -> OFDLCK ADVISORY  WRITE -1 fe:00:2146439 100 EOF"  (a blocked waiter)
 * Leases print no range of their own ("0 EOF"), and a lock without an inode
 * prints "<none>:0"; both still parse. */
static int
hkn_parse_lock_line(const char *p, const char *end, const char *Py_UNUSED(base), void *record)
{
    hkn_lock_record *r = record;
    const char *token;
    size_t len;
    unsigned long long major, minor;

    if ((p = hkn_token(p, end, &token, &len)) == NULL || token[len - 1] != ':') {
        return -1;
    }
    if ((p = hkn_token(p, end, &token, &len)) == NULL) {
        return -1;
    }
    if (len == 2 && memcmp(token, "->", 2) == 0) {
        r->blocked = 1;
        if ((p = hkn_token(p, end, &token, &len)) == NULL) {
            return -1;
        }
    }
    hkn_copy_token(r->kind, sizeof(r->kind), token, len);
    if ((p = hkn_token(p, end, &token, &len)) == NULL) {
        return -1;
    }
    hkn_copy_token(r->mode, sizeof(r->mode), token, len);
    if ((p = hkn_token(p, end, &token, &len)) == NULL) {
        return -1;
    }
    hkn_copy_token(r->access, sizeof(r->access), token, len);
    if ((p = hkn_token(p, end, &token, &len)) == NULL
        || hkn_parse_signed(token, token + len, &r->pid) != token + len) {
        return -1;
    }
    if ((p = hkn_token(p, end, &token, &len)) == NULL) {
        return -1;
    }
    if (token[0] != '<') {
        const char *q = hkn_parse_unsigned(token, token + len, 16, &major);
        q = hkn_expect(q, token + len, ':');
        if (q != NULL) {
            q = hkn_parse_unsigned(q, token + len, 16, &minor);
        }
        q = hkn_expect(q, token + len, ':');
        if (q == NULL || hkn_parse_unsigned(q, token + len, 10, &r->ino) != token + len) {
            return -1;
        }
        r->dev = (unsigned long long)makedev((unsigned int)major, (unsigned int)minor);
        r->has_inode = 1;
    }
    if ((p = hkn_token(p, end, &token, &len)) == NULL
        || hkn_parse_signed(token, token + len, &r->start) != token + len) {
        return -1;
    }
    if ((p = hkn_token(p, end, &token, &len)) == NULL) {
        return -1;
    }
    if (len == 3 && memcmp(token, "EOF", 3) == 0) {
        r->to_eof = 1;
    }
    else if (hkn_parse_signed(token, token + len, &r->end) != token + len) {
        return -1;
    }
    return 0;
}


static PyObject *
hkn_lock_row(const void *record, const void *Py_UNUSED(context))
{
    const hkn_lock_record *r = record;
    PyObject *dev = NULL, *ino = NULL, *end = NULL, *row = NULL;
    if ((dev = r->has_inode ? PyLong_FromUnsignedLongLong(r->dev) : Py_NewRef(Py_None)) != NULL
        && (ino = r->has_inode ? PyLong_FromUnsignedLongLong(r->ino)
                               : Py_NewRef(Py_None)) != NULL
        && (end = r->to_eof ? Py_NewRef(Py_None) : PyLong_FromLongLong(r->end)) != NULL) {
        row = Py_BuildValue("(sssLOOLOO)", r->kind, r->mode, r->access, r->pid,
                            dev, ino, r->start, end, r->blocked ? Py_True : Py_False);
    }
    Py_XDECREF(dev);
    Py_XDECREF(ino);
    Py_XDECREF(end);
    return row;
}

#define HKN_LOCK_TUPLE_DOC \
    "(kind, mode, access, pid, st_dev, st_ino, start, end, blocked) tuples:\n" \
    "kind is 'POSIX', 'FLOCK', 'OFDLCK', 'LEASE', ...; mode 'ADVISORY' or\n" \
    "'MANDATORY'; access 'READ' or 'WRITE'; pid is -1 for OFD locks; st_dev\n" \
    "and st_ino are None when the kernel prints no inode; end is None for\n" \
    "EOF; blocked is True for a request waiting on the lock above it."

const char hkn_scan_locks_doc[] = PyDoc_STR(
"_scan_locks($module, /)\n--\n\n"
"Every lock record of /proc/locks, as a list of\n"
HKN_LOCK_TUPLE_DOC);

PyObject *
hkn_scan_locks(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    hkn_scan scan = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = hkn_read_file("/proc/locks", &scan.text, &scan.failure);
    if (rc == 0 && hkn_parse_lines(&scan.text, "", hkn_parse_lock_line, sizeof(hkn_lock_record),
                                    &scan.records) < 0) {
        hkn_fail(&scan.failure, ENOMEM, "read", "/proc/locks");
        rc = -1;
    }
    Py_END_ALLOW_THREADS
    return hkn_finish_scan(&scan, rc, 0, sizeof(hkn_lock_record), hkn_lock_row);
}

const char hkn_scan_fd_locks_doc[] = PyDoc_STR(
"_scan_fd_locks($module, pid, fd, /)\n--\n\n"
"The locks taken through descriptor *fd* of process *pid*, from the\n"
"'lock:' lines of /proc/<pid>/fdinfo/<fd>; this is how an OFD lock\n"
"(pid -1 in /proc/locks) is attributed to a process.  A list of\n"
HKN_LOCK_TUPLE_DOC "\n"
"An fd that is no longer open gives an empty list.");

PyObject *
hkn_scan_fd_locks(PyObject *Py_UNUSED(module), PyObject *args)
{
    int pid, fd;
    if (!PyArg_ParseTuple(args, "ii:_scan_fd_locks", &pid, &fd)) {
        return NULL;
    }
    if (pid <= 0 || fd < 0) {
        PyErr_SetString(PyExc_ValueError, "pid must be positive and fd non-negative");
        return NULL;
    }
    char path[HKN_PROC_PATH_MAX];
    char proc_dir[HKN_PROC_PATH_MAX];
    snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", pid, fd);
    snprintf(proc_dir, sizeof(proc_dir), "/proc/%d", pid);
    hkn_scan scan = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = hkn_read_file(path, &scan.text, &scan.failure);
    if (rc < 0 && scan.failure.err == ENOENT && access(proc_dir, F_OK) == 0) {
        rc = 0;                 /* the fd was closed: it holds nothing */
    }
    else if (rc == 0 && hkn_parse_lines(&scan.text, "lock:", hkn_parse_lock_line,
                                         sizeof(hkn_lock_record), &scan.records) < 0) {
        hkn_fail(&scan.failure, ENOMEM, "read", path);
        rc = -1;
    }
    Py_END_ALLOW_THREADS
    return hkn_finish_scan(&scan, rc, pid, sizeof(hkn_lock_record), hkn_lock_row);
}
