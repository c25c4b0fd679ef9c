/* dk_fpenv.h - run float code under the default floating-point environment.
 *
 * Results must not depend on the caller's MXCSR: a library built with -ffast-math can set
 * FTZ/DAZ process-wide, and a caller may change the rounding mode. Code whose bits depend
 * on it saves the running thread's MXCSR, runs under the default (round to nearest, all
 * exceptions masked, no FTZ, no DAZ; the exception flag bits kept as they were) and
 * restores the saved value when it leaves (each thread has its own MXCSR). Baseline code. */
#ifndef DK_FPENV_H
#define DK_FPENV_H

#include "dk_common.h"
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define DK_HAVE_MXCSR 1
#endif

#define DK_MXCSR_DEFAULT 0x1F80u
#define DK_MXCSR_FLAGS 0x003Fu

/* Set the default environment; returns what to give dk_fpenv_leave. */
DK_INLINE unsigned dk_fpenv_enter(void)
{
#ifdef DK_HAVE_MXCSR
    unsigned saved = _mm_getcsr();
    _mm_setcsr(DK_MXCSR_DEFAULT | (saved & DK_MXCSR_FLAGS));
    return saved;
#else
    return 0;
#endif
}

DK_INLINE void dk_fpenv_leave(unsigned saved)
{
#ifdef DK_HAVE_MXCSR
    _mm_setcsr(saved);
#else
    (void)saved;
#endif
}

#endif
