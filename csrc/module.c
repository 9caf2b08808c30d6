/* module.c - multi-phase init of hermes_kanban_native._native (skeleton). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fdscan.h"

static int
hkn_module_exec(PyObject *module)
{
    return hkn_fdscan_exec(module);
}

static PyModuleDef_Slot hkn_module_slots[] = {
    {Py_mod_exec, hkn_module_exec},
    {0, NULL},
};

static struct PyModuleDef hkn_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hermes_kanban_native._native",
    .m_doc = "Native core of hermes_kanban_native.",
    .m_size = 0,
    .m_slots = hkn_module_slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&hkn_module_def);
}
