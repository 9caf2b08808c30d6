/* other/shmlock.c - for systems other than Linux: there are no
 * open-file-description locks, so SQLite's -shm locks stay POSIX locks.
 * Only what the common code calls (stats(), sqlite_api()); the rest of
 * linux/shmlock.c serves linux/guard.c alone. */
#include "hkn.h"

void
hkn_shmlock_db_stats(unsigned long long *stepped, unsigned long long *shadowed)
{
    *stepped = 0;
    *shadowed = 0;
}

const char *
hkn_shmlock_status(unsigned long long *opened, int *open_now)
{
    *opened = 0;
    *open_now = 0;
    return "open-file-description locks exist on Linux only";
}
