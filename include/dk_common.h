/* dk_common.h - shared definitions of the dojo_kernels C layer.
 *
 * Every function defined in a header is `static inline`: a non-static inline
 * compiled into an AVX-512 tier could be the copy the linker keeps for a
 * baseline caller, which would then die with SIGILL on an older CPU. */
#ifndef DK_COMMON_H
#define DK_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define DK_INLINE static inline __attribute__((always_inline))

/* ISA tiers, in increasing order of capability. */
enum dk_isa { DK_ISA_GENERIC = 0, DK_ISA_AVX2 = 1, DK_ISA_AVX512BF16 = 2, DK_ISA_COUNT = 3 };

/* Per-call exception counts (SPEC section 3): each field counts elements. */
typedef struct {
    int64_t invalid;
    int64_t denormal;
    int64_t overflow;
    int64_t underflow;
} dk_flags;

/* Status codes returned by C drivers to the Cython glue. */
enum { DK_OK = 0, DK_ENOMEM = 1, DK_EINVAL = 2 };

#endif
