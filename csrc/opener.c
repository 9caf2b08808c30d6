/* opener.c - where a WalSafeConnection was opened.
 *
 * A leak report is only useful if it names code someone can change.  The
 * frame that called sqlite3.connect is usually a project's connect helper,
 * the same line for every leak; the code that called the helper is what
 * leaked.  So each open keeps a short stack: up to HKN_OPENER_FRAMES frames
 * outward from the first frame outside this package, each as its code object
 * and instruction offset.  Nothing else is kept (no frame objects, so no
 * locals stay alive), and nothing is formatted on the open path: working out
 * a line number costs more than the rest of an open's bookkeeping, and only
 * a report needs it.
 *
 * Which frame a report names ("the primary frame"): the innermost frame,
 * outward from the one that called sqlite3.connect, that is
 *   - not that same function again (a recursive helper),
 *   - not the standard library (contextlib's __enter__ for a helper written
 *     as a context manager, threading's run for a thread target; a
 *     site-packages inside its directory holds installed code, not its own),
 *   - not installed code (below sys.prefix and friends: pytest, pluggy)
 *     when the function that called sqlite3.connect is not installed itself:
 *     a test that connects directly is its own opener, not pytest's caller.
 * When no frame qualifies, the function that called sqlite3.connect is
 * named.  Reports add the frames between it and the primary one ("via").
 */
#include "hkn.h"

#include "stack.h"
#include "fault_calls.h"     /* last: see faults.h */

void
hkn_opener_clear(hkn_opener *op)
{
    for (int i = 0; i < op->depth; i++) {
        Py_CLEAR(op->code[i]);
    }
    op->depth = 0;
}

int
hkn_opener_traverse(hkn_opener *op, visitproc visit, void *arg)
{
    for (int i = 0; i < op->depth; i++) {
        Py_VISIT(op->code[i]);
    }
    return 0;
}

void
hkn_opener_capture(hkn_state *state, hkn_opener *op)
{
    hkn_opener_clear(op);
    hkn_stack it;
    PyCodeObject *code;
    int lasti;
    hkn_stack_start(&it);
    while (op->depth < HKN_OPENER_FRAMES && hkn_stack_next(&it, &code, &lasti)) {
        /* Only the frames before the first user frame are skipped as ours
         * (hkn.connect() calling sqlite3.connect); co_filename is a str, so
         * Tailmatch cannot fail here. */
        if (op->depth == 0
            && PyUnicode_Tailmatch(code->co_filename, state->package_dir,
                                   0, PY_SSIZE_T_MAX, -1) == 1) {
            Py_DECREF(code);
            continue;
        }
        op->code[op->depth] = (PyObject *)code;
        op->lasti[op->depth] = lasti;
        op->depth++;
    }
    hkn_stack_stop(&it);
    if (PyErr_Occurred()) {
        /* No memory for a frame object: the stack is kept as far as it got. */
        PyErr_Clear();
    }
}

/* Whether `filename` starts with one of the str prefixes in the tuple. */
static int
hkn_starts_with_any(PyObject *filename, PyObject *prefixes)
{
    if (prefixes == NULL) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
        if (PyUnicode_Tailmatch(filename, PyTuple_GET_ITEM(prefixes, i),
                                0, PY_SSIZE_T_MAX, -1) == 1) {
            return 1;
        }
    }
    return 0;
}

static PyObject *
hkn_filename(PyObject *code)
{
    return ((PyCodeObject *)code)->co_filename;
}

/* A file of the standard library: below one of its directories, but not in
 * the site-packages directory (dist-packages on Debian) that an interpreter
 * used without a venv keeps inside it (pyenv, python.org and source builds,
 * Docker's python images), where installed code lives. */
static int
hkn_in_stdlib(hkn_state *state, PyObject *filename)
{
    PyObject *prefixes = state->stdlib_prefixes;
    if (prefixes == NULL) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(prefixes, i);
        if (PyUnicode_Tailmatch(filename, prefix, 0, PY_SSIZE_T_MAX, -1) != 1) {
            continue;
        }
        Py_ssize_t prefix_size;
        const char *name = PyUnicode_AsUTF8(filename);
        const char *start = PyUnicode_AsUTF8AndSize(prefix, &prefix_size);
        if (name == NULL || start == NULL) {
            PyErr_Clear();      /* a name with lone surrogates: judged by its prefix */
            return 1;
        }
        const char *rest = name + prefix_size;
        static const char *const installed[2] = {"site-packages", "dist-packages"};
        int in_installed = 0;
        for (int k = 0; k < 2; k++) {
            size_t n = strlen(installed[k]);
            if (strncmp(rest, installed[k], n) == 0 && (rest[n] == '/' || rest[n] == '\\')) {
                in_installed = 1;
            }
        }
        if (!in_installed) {
            return 1;
        }
    }
    return 0;
}

/* Index of the primary frame (see the file's comment), -1 when none was
 * captured. */
static int
hkn_opener_primary(hkn_state *state, const hkn_opener *op)
{
    if (op->depth == 0) {
        return -1;
    }
    int helper_installed = hkn_starts_with_any(hkn_filename(op->code[0]),
                                               state->install_prefixes);
    for (int i = 1; i < op->depth; i++) {
        PyObject *filename = hkn_filename(op->code[i]);
        if (op->code[i] == op->code[0]
            || hkn_in_stdlib(state, filename)
            || (!helper_installed && hkn_starts_with_any(filename, state->install_prefixes))) {
            continue;
        }
        return i;
    }
    return 0;
}

static PyObject *
hkn_frame_where(const hkn_opener *op, int i, int with_name)
{
    PyCodeObject *code = (PyCodeObject *)op->code[i];
    int line = PyCode_Addr2Line(code, op->lasti[i]);
    if (with_name) {
        return PyUnicode_FromFormat("%U:%d in %U", code->co_filename, line, code->co_name);
    }
    return PyUnicode_FromFormat("%U:%d", code->co_filename, line);
}

PyObject *
hkn_opener_where(hkn_state *state, const hkn_opener *op)
{
    int primary = hkn_opener_primary(state, op);
    if (primary < 0) {
        return PyUnicode_FromString("<unknown>");
    }
    return hkn_frame_where(op, primary, 0);
}

PyObject *
hkn_opener_frames(const hkn_opener *op)
{
    PyObject *frames = PyTuple_New(op->depth);
    for (int i = 0; frames != NULL && i < op->depth; i++) {
        PyObject *where = hkn_frame_where(op, i, 1);
        if (where == NULL) {
            Py_CLEAR(frames);
            break;
        }
        PyTuple_SET_ITEM(frames, i, where);
    }
    return frames;
}

PyObject *
hkn_opener_describe(hkn_state *state, const hkn_opener *op)
{
    int primary = hkn_opener_primary(state, op);
    PyObject *where = hkn_opener_where(state, op);
    if (where == NULL || primary <= 0) {
        return where;
    }
    /* "test.py:57 (via helpers.py:12 in connect, contextlib.py:137 in __enter__)" */
    PyObject *result = where;
    for (int i = 0; result != NULL && i < primary; i++) {
        PyObject *frame = hkn_frame_where(op, i, 1);
        PyObject *next = frame == NULL ? NULL
                         : PyUnicode_FromFormat("%U%s%U", result,
                                                i == 0 ? " (via " : ", ", frame);
        Py_XDECREF(frame);
        Py_SETREF(result, next);
    }
    if (result != NULL) {
        Py_SETREF(result, PyUnicode_FromFormat("%U)", result));
    }
    return result;
}

PyObject *
hkn_opener_here(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    hkn_state *state = PyModule_GetState(module);
    hkn_opener op = {.depth = 0};
    hkn_opener_capture(state, &op);
    PyObject *where = hkn_opener_where(state, &op);
    PyObject *frames = where == NULL ? NULL : hkn_opener_frames(&op);
    PyObject *result = frames == NULL ? NULL
                       : PyTuple_Pack(2, where, frames);
    Py_XDECREF(where);
    Py_XDECREF(frames);
    hkn_opener_clear(&op);
    return result;
}
