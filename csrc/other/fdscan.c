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

/* Each scanner: its docstring, with the signature it has on Linux so that
 * inspect.signature() agrees everywhere, and a function that raises
 * NotImplementedError whatever its arguments.  They differ in nothing else. */
#define HKN_UNSUPPORTED(name, signature, what, parameters)                          \
    const char hkn_##name##_doc[] = PyDoc_STR(                                      \
        "_" #name signature "\n--\n\n" what "; needs /proc (Linux).");             \
    PyObject *hkn_##name parameters                                                 \
    {                                                                               \
        return hkn_unsupported("_" #name);                                          \
    }

HKN_UNSUPPORTED(scan_fds, "($module, pid, /, links=True, only=None)",
                "Open descriptors of process *pid*",
                (PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args),
                 PyObject *Py_UNUSED(kwargs)))
HKN_UNSUPPORTED(scan_maps, "($module, pid, /, only=None, prefix=None)",
                "Memory mappings of process *pid*",
                (PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args),
                 PyObject *Py_UNUSED(kwargs)))
HKN_UNSUPPORTED(scan_locks, "($module, /)", "Every lock record of /proc/locks",
                (PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored)))
HKN_UNSUPPORTED(scan_fd_locks, "($module, pid, fd, /)",
                "The locks taken through descriptor *fd* of process *pid*",
                (PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args)))
