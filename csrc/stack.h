/* stack.h - the calling thread's Python stack, read outward one frame at a
 * time (stack.c).  Separate from hkn.h because stack.c is compiled against
 * CPython's internal headers on the versions where that avoids making frame
 * objects, and nothing else should be. */
#ifndef HKN_STACK_H
#define HKN_STACK_H

#include <Python.h>

typedef struct hkn_stack {
    void *frame;        /* the next frame to read, NULL at the end */
} hkn_stack;

/* Starts at the innermost Python frame of the calling thread (the GIL held).
 * A thread without Python frames has an empty stack; so has one whose first
 * frame object could not be made (no memory: the error is left set). */
void hkn_stack_start(hkn_stack *it);

/* Reads the next frame outward: a new reference to its code object and the
 * offset in bytes of the instruction it is executing.  Returns 0 at the end
 * of the stack, and when a frame object could not be made (no memory: the
 * error is left set for the caller to clear). */
int hkn_stack_next(hkn_stack *it, PyCodeObject **code, int *lasti);

/* Ends a walk that stopped before the end of the stack. */
void hkn_stack_stop(hkn_stack *it);

#endif
