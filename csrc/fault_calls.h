/* fault_calls.h - the last include of every C file with fault points.
 *
 * In a normal build it is empty.  In an HKN_FAULTS build it brings in the
 * macros setup.py generates from fault_calls.tsv, which turn each call of a
 * listed function into a named fault point (faults.h).  It must come after
 * every system header, whose declarations of those functions the macros
 * would otherwise rewrite.
 */
#ifndef HKN_FAULT_CALLS_H
#define HKN_FAULT_CALLS_H

#ifdef HKN_FAULTS
#include "hkn_fault_calls.h"
#endif

#endif
