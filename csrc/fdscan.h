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

/* The module functions _scan_fds, _scan_maps, _scan_locks and
 * _scan_fd_locks and their docstrings, defined by each platform's file with
 * these signatures; module.c's method table lists them once for all. */
PyObject *hkn_scan_fds(PyObject *module, PyObject *args, PyObject *kwargs);
PyObject *hkn_scan_maps(PyObject *module, PyObject *args, PyObject *kwargs);
PyObject *hkn_scan_locks(PyObject *module, PyObject *ignored);
PyObject *hkn_scan_fd_locks(PyObject *module, PyObject *args);
extern const char hkn_scan_fds_doc[];
extern const char hkn_scan_maps_doc[];
extern const char hkn_scan_locks_doc[];
extern const char hkn_scan_fd_locks_doc[];

#endif
