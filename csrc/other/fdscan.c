/* other/fdscan.c - the scanner entry points where there is no Linux /proc.
 *
 * The functions fdscan.h declares, which module.c's one method table lists
 * for both files, so the package imports and inspect.signature() agrees
 * everywhere (CI builds this file on Linux too, with HKN_FDSCAN_STUB=1, and
 * checks what users see); each call raises
 * NotImplementedError naming the platform.  A port (macOS libproc, say)
 * replaces this file for its platform in setup.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "faults.h"
#include "fdscan.h"
#include "fault_calls.h"     /* last: see faults.h */

static PyObject *
hkn_unsupported(const char *name)
{
    PyObject *platform = PySys_GetObject("platform");   /* borrowed */
    if (platform != NULL && PyUnicode_Check(platform)) {
        PyErr_Format(PyExc_NotImplementedError,
                     "%s needs /proc (Linux); this platform is %U", name, platform);
    }
    else {
        PyErr_Format(PyExc_NotImplementedError,
                     "%s needs /proc (Linux); this platform has none", name);
    }
    return NULL;
}

const char hkn_scan_fds_doc[] = PyDoc_STR(
"_scan_fds($module, pid, /, links=True, only=None)\n--\n\n"
"Open descriptors of process *pid*; needs /proc (Linux).");

PyObject *
hkn_scan_fds(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"", "links", "only", NULL};
    PyObject *pid, *only = Py_None;
    int links = 1;
    /* Wrong arguments still fail as TypeError, as on Linux. */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|pO:_scan_fds", keywords, &pid, &links,
                                     &only)) {
        return NULL;
    }
    return hkn_unsupported("_scan_fds");
}

const char hkn_scan_maps_doc[] = PyDoc_STR(
"_scan_maps($module, pid, /)\n--\n\n"
"Memory mappings of process *pid*; needs /proc (Linux).");

PyObject *
hkn_scan_maps(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(pid))
{
    return hkn_unsupported("_scan_maps");
}

const char hkn_scan_locks_doc[] = PyDoc_STR(
"_scan_locks($module, /)\n--\n\n"
"Every lock record of /proc/locks; needs /proc (Linux).");

PyObject *
hkn_scan_locks(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return hkn_unsupported("_scan_locks");
}

const char hkn_scan_fd_locks_doc[] = PyDoc_STR(
"_scan_fd_locks($module, pid, fd, /)\n--\n\n"
"The locks taken through descriptor *fd* of process *pid*; needs /proc (Linux).");

PyObject *
hkn_scan_fd_locks(PyObject *Py_UNUSED(module), PyObject *args)
{
    int pid, fd;
    /* Wrong arguments still fail as TypeError, as on Linux. */
    if (!PyArg_ParseTuple(args, "ii:_scan_fd_locks", &pid, &fd)) {
        return NULL;
    }
    return hkn_unsupported("_scan_fd_locks");
}
