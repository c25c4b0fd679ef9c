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
enum dk_isa { DK_ISA_GENERIC = 0, DK_ISA_AVX2 = 1, DK_ISA_AVX512BF16 = 2,
              DK_ISA_AMX = 3, /* avx512bf16 plus AMX-TILE/AMX-BF16, tile data granted by the OS */
              DK_ISA_COUNT = 4 };

/* Per-call exception counts (SPEC section 3): each field counts elements. */
typedef struct {
    int64_t invalid;
    int64_t denormal;
    int64_t overflow;
    int64_t underflow;
} dk_flags;

/* Status codes returned by C drivers to the Cython glue. */
enum { DK_OK = 0, DK_ENOMEM = 1, DK_EINVAL = 2 };

/* FP32 bits -> BF16 bits, round to nearest even (SPEC section 2, as ml_dtypes):
 * NaN -> sign | 0x7FC0, overflow -> +-Inf, FP32 subnormals rounded, not flushed. */
DK_INLINE uint16_t dk_bf16_from_f32_bits(uint32_t u)
{
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7FC0u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* BF16 bits -> FP32 bits (exact). */
DK_INLINE uint32_t dk_f32_bits_from_bf16(uint16_t h) { return (uint32_t)h << 16; }

#endif
