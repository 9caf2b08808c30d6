/* faults.c - arming and counting the fault points of faults.h (compiled only
 * in HKN_FAULTS builds; setup.py leaves this file out otherwise).
 *
 * The points are static records, one per call site, so their state is
 * process-wide rather than module state: every instance of the module (the
 * tests load extra ones to fail their initialisation) shares them.  The
 * Python calls below are the machinery's own and are not points.
 *
 * Points are hit from threads without the GIL (SQLite and system calls run
 * with it released), so hit counts are atomic and arming is guarded by a
 * mutex; a counter of armed points keeps the unarmed path to one atomic
 * increment and one atomic load.
 */
#include "hkn.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The linker defines these around the section (weak: with no point
 * compiled in there is no section, and both are NULL). */
extern hkn_fault_point *__start_hkn_fault_points[] __attribute__((weak, visibility("hidden")));
extern hkn_fault_point *__stop_hkn_fault_points[] __attribute__((weak, visibility("hidden")));

static pthread_mutex_t hkn_fault_mutex = PTHREAD_MUTEX_INITIALIZER;
static atomic_long hkn_faults_armed;    /* points with remaining > 0 */

int
hkn_fault_fire(hkn_fault_point *point, int how)
{
    atomic_fetch_add_explicit(&point->hits, 1, memory_order_relaxed);
    if (atomic_load_explicit(&hkn_faults_armed, memory_order_acquire) == 0) {
        return 0;
    }
    int fire = 0;
    pthread_mutex_lock(&hkn_fault_mutex);
    if (point->remaining > 0 && --point->countdown <= 0) {
        fire = 1;
        if (--point->remaining == 0) {
            atomic_fetch_sub_explicit(&hkn_faults_armed, 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&hkn_fault_mutex);
    if (fire) {
        if (how == HKN_FAULT_RAISE) {
            PyErr_NoMemory();
        }
        else if (how > 0) {
            errno = how;
        }
    }
    return fire;
}

static int
hkn_compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* ---------------------------------------------------------------- names */

/* "csrc/linux/guard.c" -> "guard", "csrc/other/guard.c" -> "guard_other". */
static void
hkn_file_part(const char *file, char *out, size_t size)
{
    const char *base = strrchr(file, '/');
    base = base != NULL ? base + 1 : file;
    size_t length = strcspn(base, ".");
    int other = base - file >= 6 && strncmp(base - 6, "other/", 6) == 0;
    snprintf(out, size, "%.*s%s", (int)length, base, other ? "_other" : "");
}

/* Points of one call in one function sort by line: the first keeps the
 * plain name, the others get ".2", ".3". */
static int
hkn_compare_sites(const void *a, const void *b)
{
    const hkn_fault_point *x = *(hkn_fault_point *const *)a, *y = *(hkn_fault_point *const *)b;
    int order = strcmp(x->name, y->name);
    if (order == 0) {
        order = (x->line > y->line) - (x->line < y->line);
    }
    if (order == 0) {           /* two calls on one line: source order */
        order = (x > y) - (x < y);
    }
    return order;
}

/* Fills every point's name, once; called with the GIL held, by each module
 * instance's exec (the first does the work). */
static int
hkn_name_points(void)
{
    static int named = 0;
    size_t count = (size_t)(__stop_hkn_fault_points - __start_hkn_fault_points);
    if (named || count == 0) {
        return 0;
    }
    hkn_fault_point **sites = PyMem_Malloc(count * sizeof(*sites));
    if (sites == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        hkn_fault_point *point = __start_hkn_fault_points[i];
        char file[32];
        hkn_file_part(point->file, file, sizeof(file));
        const char *function = point->function;
        if (strncmp(function, "hkn_", 4) == 0) {
            function += 4;
        }
        size_t stem = strlen(file);
        if (stem > 6 && strcmp(file + stem - 6, "_other") == 0) {
            stem -= 6;                          /* "guard" of "guard_other" */
        }
        if (strncmp(function, file, stem) == 0 && function[stem] == '_') {
            function += stem + 1;               /* hkn_guard_refresh: "refresh" */
        }
        snprintf(point->name, sizeof(point->name), "%s.%s.%s", file, function, point->call);
        sites[i] = point;
    }
    qsort(sites, count, sizeof(*sites), hkn_compare_sites);
    int repeat = 1;
    for (size_t i = 1; i < count; i++) {
        /* sites[i - 1] may already carry its suffix: compare the stems */
        size_t stem = strlen(sites[i]->name);
        if (strncmp(sites[i - 1]->name, sites[i]->name, stem) == 0
            && (sites[i - 1]->name[stem] == '\0' || sites[i - 1]->name[stem] == '.')) {
            repeat++;
            size_t used = strlen(sites[i]->name);
            snprintf(sites[i]->name + used, sizeof(sites[i]->name) - used, ".%d", repeat);
        }
        else {
            repeat = 1;
        }
    }
    PyMem_Free(sites);
    named = 1;
    return 0;
}

PyDoc_STRVAR(hkn_fault_points_doc,
"_fault_points($module, /)\n--\n\n"
"Names of every fault point compiled into this build, sorted.");

static PyObject *
hkn_fault_points(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    size_t count = (size_t)(__stop_hkn_fault_points - __start_hkn_fault_points);
    const char **names = PyMem_Malloc((count ? count : 1) * sizeof(*names));
    if (names == NULL) {
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < count; i++) {
        names[i] = __start_hkn_fault_points[i]->name;
    }
    qsort(names, count, sizeof(*names), hkn_compare_names);
    PyObject *result = PyTuple_New((Py_ssize_t)count);
    for (size_t i = 0; result != NULL && i < count; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (name == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, (Py_ssize_t)i, name);
    }
    PyMem_Free(names);
    return result;
}

PyDoc_STRVAR(hkn_fault_arm_doc,
"_fault_arm($module, /, name, countdown=1, times=1)\n--\n\n"
"Arm fault point *name*: its countdown-th hit from now fails, and so do the\n"
"following hits until *times* hits have failed.  Other armed points stay\n"
"armed.  ValueError for an unknown name.");

static PyObject *
hkn_fault_arm(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "countdown", "times", NULL};
    const char *name;
    long countdown = 1, times = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|ll:_fault_arm", keywords,
                                     &name, &countdown, &times)) {
        return NULL;
    }
    if (countdown < 1 || times < 1) {
        PyErr_SetString(PyExc_ValueError, "countdown and times must be >= 1");
        return NULL;
    }
    int found = 0;
    pthread_mutex_lock(&hkn_fault_mutex);
    for (hkn_fault_point **p = __start_hkn_fault_points; p < __stop_hkn_fault_points; p++) {
        if (strcmp((*p)->name, name) == 0) {
            if ((*p)->remaining == 0) {
                atomic_fetch_add_explicit(&hkn_faults_armed, 1, memory_order_release);
            }
            (*p)->countdown = countdown;
            (*p)->remaining = times;
            found = 1;
        }
    }
    pthread_mutex_unlock(&hkn_fault_mutex);
    if (!found) {
        PyErr_Format(PyExc_ValueError, "no fault point named '%s'", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hkn_fault_disarm_doc,
"_fault_disarm($module, /)\n--\n\n"
"Disarm every fault point.");

static PyObject *
hkn_fault_disarm(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&hkn_fault_mutex);
    for (hkn_fault_point **p = __start_hkn_fault_points; p < __stop_hkn_fault_points; p++) {
        (*p)->countdown = 0;
        (*p)->remaining = 0;
    }
    atomic_store_explicit(&hkn_faults_armed, 0, memory_order_release);
    pthread_mutex_unlock(&hkn_fault_mutex);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hkn_fault_hits_doc,
"_fault_hits($module, /)\n--\n\n"
"How often each fault point was reached since the process started (armed\n"
"or not), as a new dict name -> count.");

static PyObject *
hkn_fault_hits(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyObject *result = PyDict_New();
    for (hkn_fault_point **p = __start_hkn_fault_points;
         result != NULL && p < __stop_hkn_fault_points; p++) {
        PyObject *hits = PyLong_FromUnsignedLong(
            atomic_load_explicit(&(*p)->hits, memory_order_relaxed));
        if (hits == NULL || PyDict_SetItemString(result, (*p)->name, hits) < 0) {
            Py_CLEAR(result);
        }
        Py_XDECREF(hits);
    }
    return result;
}

static PyMethodDef hkn_fault_methods[] = {
    {"_fault_points", hkn_fault_points, METH_NOARGS, hkn_fault_points_doc},
    {"_fault_arm", (PyCFunction)(void (*)(void))hkn_fault_arm, METH_VARARGS | METH_KEYWORDS,
     hkn_fault_arm_doc},
    {"_fault_disarm", hkn_fault_disarm, METH_NOARGS, hkn_fault_disarm_doc},
    {"_fault_hits", hkn_fault_hits, METH_NOARGS, hkn_fault_hits_doc},
    {NULL, NULL, 0, NULL},
};

int
hkn_faults_exec(PyObject *module)
{
    if (hkn_name_points() < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, hkn_fault_methods);
}
