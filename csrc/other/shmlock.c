/* other/shmlock.c - for systems other than Linux: there are no
 * open-file-description locks, so SQLite's -shm locks stay POSIX locks.
 * The same functions as linux/shmlock.c, doing nothing. */
#include "hkn.h"

int
hkn_shmlock_guard_fd(dev_t dev, ino_t ino, int fd)
{
    (void)dev;
    (void)ino;
    (void)fd;
    return 0;
}

int
hkn_shmlock_holds(dev_t dev, ino_t ino, int fd)
{
    (void)dev;
    (void)ino;
    (void)fd;
    return 0;
}

int
hkn_shmlock_guard_forget(dev_t dev, ino_t ino, int opt_out, int *unlocked)
{
    (void)dev;
    (void)ino;
    (void)opt_out;
    *unlocked = 0;
    return 0;
}

int
hkn_shmlock_opt_out(dev_t dev, ino_t ino, int delta)
{
    (void)dev;
    (void)ino;
    (void)delta;
    return 0;
}

void
hkn_shmlock_db_stats(unsigned long long *stepped, unsigned long long *shadowed)
{
    *stepped = 0;
    *shadowed = 0;
}

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
