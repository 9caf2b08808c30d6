/* other/guard.c - for systems other than Linux: there are no
 * open-file-description locks, so no WAL-generation guard (hkn_guard_unavailable() says why).
 * The same functions as linux/guard.c, doing nothing. */
#include "hkn.h"

int
hkn_guard_claim(hkn_state *state, hkn_conn *conn, sqlite3 *db, const char *name)
{
    (void)state;
    (void)conn;
    (void)db;
    (void)name;
    return 0;
}

void
hkn_guard_refresh(hkn_state *state, hkn_conn *conn, sqlite3 *db)
{
    (void)state;
    (void)conn;
    (void)db;
}

long
hkn_guard_pending_frames(const hkn_conn *conn)
{
    (void)conn;
    return -1;
}

void
hkn_guard_release(hkn_state *state, hkn_conn *conn, int opt_out)
{
    (void)state;
    (void)conn;
    (void)opt_out;
}

int
hkn_guard_opt_out(hkn_state *state, hkn_conn *conn, sqlite3 *db, int enable)
{
    (void)state;
    (void)conn;
    (void)db;
    (void)enable;
    return 0;
}

void
hkn_guard_free_all(hkn_state *state)
{
    (void)state;
}

void
hkn_guard_after_fork(hkn_state *state)
{
    (void)state;
}

const char *
hkn_guard_unavailable(void)
{
    return "open-file-description locks exist on Linux only";
}
