/* stack.c - the calling Python stack, without making frame objects.
 *
 * Every open records where it came from (opener.c): a few code objects and
 * instruction offsets from the caller outward.  CPython's public API reads
 * a stack through frame objects, and since 3.11 a running function has none
 * until someone asks: PyThreadState_GetFrame() and PyFrame_GetBack() make one
 * for each frame they return, and the interpreter frees it again when the
 * function returns.  That costs about 670 instructions per frame, for each
 * of up to HKN_OPENER_FRAMES frames per open (docs/performance.md).
 *
 * So on the versions this walk was built and tested against, it reads the
 * interpreter's own frame records instead: the thread's current frame, each
 * frame's link to its caller, its code object and its instruction pointer.
 * These are CPython's internal structures (Py_BUILD_CORE, defined in this
 * file only), compiled against the headers of the interpreter being built
 * for, so their layout always matches; what they mean can change between
 * minor versions, which is why each version is opted in only once the test
 * suite has passed on it.  The walk skips exactly the frames the public API
 * skips, with the same test (_PyFrame_IsIncomplete: a frame still in its
 * prologue, or the entry frame of a C call into Python), so both give the
 * same stack; tests/test_connection.py compares it with
 * traceback.extract_stack() in generators, coroutines, class bodies, exec'd
 * code and threads.
 *
 * Tested on 3.11 to 3.15 (3.14 and 3.15 as Debian sid builds them: CI's
 * sid stage).  Everything else uses the public API: 3.10, whose frames are
 * objects anyway, and versions after 3.15 until they are tested.
 */
#include <patchlevel.h>         /* PY_VERSION_HEX, before Python.h */

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x03100000
#  define HKN_READS_INTERPRETER_FRAMES 1
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE 1
#  endif
#else
#  define HKN_READS_INTERPRETER_FRAMES 0
#endif

#include "stack.h"
#include "compat.h"

#if HKN_READS_INTERPRETER_FRAMES
/* From 3.14 the internal headers have inline functions with unused
 * parameters. */
#  if defined(__GNUC__)
#    pragma GCC diagnostic push
#    pragma GCC diagnostic ignored "-Wunused-parameter"
#  endif
#  if PY_VERSION_HEX >= 0x030E0000
#    include "internal/pycore_interpframe.h"
#  else
#    include "internal/pycore_frame.h"
#  endif
#  if defined(__GNUC__)
#    pragma GCC diagnostic pop
#  endif
#else
#  include "frameobject.h"      /* PyFrame_GetBack, f_lasti on 3.10 */
#endif

#if HKN_READS_INTERPRETER_FRAMES

static _PyInterpreterFrame *
hkn_complete(_PyInterpreterFrame *frame)
{
    while (frame != NULL && _PyFrame_IsIncomplete(frame)) {
        frame = frame->previous;
    }
    return frame;
}

void
hkn_stack_start(hkn_stack *it)
{
    PyThreadState *tstate = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    it->frame = hkn_complete(tstate->current_frame);
#else
    it->frame = hkn_complete(tstate->cframe->current_frame);
#endif
}

int
hkn_stack_next(hkn_stack *it, PyCodeObject **code, int *lasti)
{
    _PyInterpreterFrame *frame = it->frame;
    if (frame == NULL) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    *code = (PyCodeObject *)Py_NewRef(_PyFrame_GetCode(frame));
#else
    *code = (PyCodeObject *)Py_NewRef(frame->f_code);
#endif
    /* As PyFrame_GetLasti(): in bytes, -1 before the first instruction. */
    int units = _PyInterpreterFrame_LASTI(frame);
    *lasti = units < 0 ? -1 : units * (int)sizeof(_Py_CODEUNIT);
    it->frame = hkn_complete(frame->previous);
    return 1;
}

void
hkn_stack_stop(hkn_stack *it)
{
    it->frame = NULL;           /* borrowed: the frames belong to the thread */
}

#else   /* frame objects */

void
hkn_stack_start(hkn_stack *it)
{
    it->frame = PyThreadState_GetFrame(PyThreadState_Get());
}

int
hkn_stack_next(hkn_stack *it, PyCodeObject **code, int *lasti)
{
    PyFrameObject *frame = it->frame;
    if (frame == NULL) {
        return 0;
    }
    *code = PyFrame_GetCode(frame);
#if HKN_PY_HAS_FRAME_GETLASTI
    *lasti = PyFrame_GetLasti(frame);
#else
    *lasti = frame->f_lasti * (int)sizeof(_Py_CODEUNIT);
#endif
    it->frame = PyFrame_GetBack(frame);
    Py_DECREF(frame);
    return 1;
}

void
hkn_stack_stop(hkn_stack *it)
{
    Py_CLEAR(it->frame);
}

#endif
