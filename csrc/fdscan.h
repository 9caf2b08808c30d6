/* fdscan.h - the raw /proc scanners' entry into the module.
 *
 * The scanners return raw records (numbers and paths) and decide nothing:
 * hermes_kanban_native/fds.py gives them meaning.  One implementation per
 * platform: linux/fdscan.c reads /proc, other/fdscan.c raises
 * NotImplementedError so the package still imports elsewhere.
 */
#ifndef HKN_FDSCAN_H
#define HKN_FDSCAN_H

#include <Python.h>

/* Adds the scanner functions to the module; 0 on success, -1 with an
 * exception set.  Called once from the module's exec slot. */
int hkn_fdscan_exec(PyObject *module);

#endif
