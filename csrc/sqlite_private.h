/* sqlite_private.h - every assumption about SQLite that its public API does
 * not promise, in one place.
 *
 * The lock bytes are fixed by SQLite's file format and wal-index format
 * (changing them would break every other process using the file); the
 * struct offsets are os_unix.c's private layout, which the guard never
 * trusts without checking (guard.c).  docs/sqlite-internals.md gives the
 * argument for each ("The locks that protect a WAL generation", "The unix
 * VFS objects the guard reads").
 *
 * Checked against SQLite 3.40.1, 3.45.1, 3.47.0, 3.49.1 and 3.50.4, shared
 * and static with hidden symbols (.ci/run, "SQLite versions" and "SQLite
 * static with hidden symbols").
 */
#ifndef HKN_SQLITE_PRIVATE_H
#define HKN_SQLITE_PRIVATE_H

#include <stddef.h>

/* ------------------------------------------------------- the main database
 *
 * sqlite3_db_filename() and sqlite3_file_control() find the schema by name
 * (sqlite3DbNameToBtree): a NULL name is schema 0, the main database, with
 * no case-insensitive compare against each attached schema's name ("main"
 * costs about 140 instructions per call).  Undocumented; a SQLite that did
 * otherwise would give no file name and no file object, and the guard would
 * not be taken (the tests would say so on every build CI makes). */
#define HKN_MAIN_DB NULL

/* -------------------------------------------------------------- lock bytes
 *
 * The database file's locks all lie at PENDING_BYTE (1 GiB) and above:
 * PENDING_BYTE itself, RESERVED_BYTE (+1), and each connection's read lock
 * somewhere in the SHARED range (+2, 510 bytes).  The -shm's dead-man
 * switch is byte (22 + SQLITE_SHM_NLOCK) * 4 with SQLITE_SHM_NLOCK 8. */
#define HKN_PENDING_BYTE  0x40000000
#define HKN_SHARED_FIRST  (HKN_PENDING_BYTE + 2)
#define HKN_SHARED_SIZE   510
#define HKN_DMS_OFFSET    128

/* ------------------------------------------------------ unix VFS objects
 *
 * unixFile (os_unix.c), on LP64, field by field:
 *     sqlite3_io_methods const *pMethod;   0   public sqlite3_file header
 *     sqlite3_vfs *pVfs;                   8
 *     unixInodeInfo *pInode;              16
 *     int h;                              24   the database descriptor
 *     unsigned char eFileLock;            28
 *     unsigned short int ctrlFlags;       30
 *     int lastErrno;                      32   (then padding to 40)
 *     void *lockingContext;               40
 *     UnixUnusedFd *pPreallocatedUnused;  48
 *     const char *zPath;                  56   what sqlite3_db_filename() returns
 *     unixShm *pShm;                      64   NULL before the first read
 * unixShm starts with its unixShmNode *pShmNode; unixShmNode starts with
 *     unixInodeInfo *pInode;               0
 *     sqlite3_mutex *pShmMutex;            8
 *     char *zFilename;                    16   the -shm path
 *     int hShm;                           24   the -shm descriptor
 * unixInodeInfo starts with its lookup key, unixFileId:
 *     dev_t dev;                           0
 *     u64 ino;                             sizeof(dev_t)
 * SQLite fills it from its own fstat() of the descriptor when it opens the
 * file; the guard reads it instead of a second fstat() once one comparison
 * has matched (guard.c, hkn_db_identity).
 * Elsewhere than LP64 the zPath check fails and no guard is taken. */
#define HKN_FILE_PINODE_OFFSET (2 * sizeof(void *))
#define HKN_FILE_H_OFFSET      (3 * sizeof(void *))
#define HKN_FILE_ZPATH_OFFSET  (3 * sizeof(void *) + 4 * sizeof(int) + 2 * sizeof(void *))
#define HKN_FILE_PSHM_OFFSET   (HKN_FILE_ZPATH_OFFSET + sizeof(void *))
#define HKN_NODE_ZNAME_OFFSET  (2 * sizeof(void *))
#define HKN_NODE_HSHM_OFFSET   (3 * sizeof(void *))

/* ------------------------------------------------------ wal-index header
 *
 * The first 136 bytes of the -shm, in the native byte order, as SQLite's
 * WAL-index format document describes them: the 48-byte header twice
 * (SQLite writes the second copy, then the first; a reader that finds them
 * different is looking at a header being written), then the checkpoint
 * information.  In each header copy:
 *     u32 iVersion                         0   3007000
 *     u32 unused, iChange                  4, 8
 *     u8  isInit                          12   1 once initialised
 *     u8  bigEndCksum; u16 szPage         13, 14
 *     u32 mxFrame                         16   the last valid frame
 * and after the two copies:
 *     u32 nBackfill                       96   frames copied into the database
 * mxFrame - nBackfill is the number of frames a checkpoint would copy. */
#define HKN_WALINDEX_HDR_SIZE     48
#define HKN_WALINDEX_VERSION      3007000u
#define HKN_WALINDEX_ISINIT       12
#define HKN_WALINDEX_MXFRAME      16
#define HKN_WALINDEX_NBACKFILL    96

#endif
