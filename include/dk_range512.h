/* dk_range512.h - the magnitude range of BF16 codes with AVX-512BW (the scaling pre-pass,
 * dk_gemm_ranges), kept per 16-bit lane while the codes are read: the largest finite
 * magnitude and the smallest nonzero one, as the driver's range_row keeps them
 * (magnitudes are 0..0x7FFF: signed compares suffice). Used by the avx512bf16 packers and
 * the amx tier's few-rows tile kernel; include only from files built with AVX-512BW. */
#ifndef DK_RANGE512_H
#define DK_RANGE512_H

#include <immintrin.h>
#include <stdint.h>

#include "dk_common.h"
#include "dk_lut512.h" /* dk_lanes32 */

typedef struct { __m512i lo, hi; } dk_range512;

/* rng: {smallest nonzero, largest finite} so far ({0x7FFF, 0}: empty) */
DK_INLINE dk_range512 dk_range512_start(const uint16_t *rng)
{
    dk_range512 r = {_mm512_set1_epi16((short)rng[0]), _mm512_set1_epi16((short)rng[1])};
    return r;
}

DK_INLINE void dk_range512_add(dk_range512 *r, __m512i codes)
{
    const __m512i m7 = _mm512_set1_epi16(0x7FFF), inf = _mm512_set1_epi16(0x7F80);
    __m512i x = _mm512_and_si512(codes, m7);
    r->hi = _mm512_mask_max_epi16(r->hi, _mm512_cmplt_epi16_mask(x, inf), r->hi, x);
    r->lo = _mm512_mask_min_epi16(r->lo, _mm512_test_epi16_mask(x, x), r->lo, x);
}

DK_INLINE void dk_range512_end(dk_range512 r, uint16_t *rng)
{
    /* halve to 8 lanes, then PHMINPOSUW (unsigned; magnitudes are 0..0x7FFF, and the max is
     * the min of the complements) */
    __m256i lo = _mm256_min_epi16(_mm512_castsi512_si256(r.lo), _mm512_extracti64x4_epi64(r.lo, 1));
    __m256i hi = _mm256_max_epi16(_mm512_castsi512_si256(r.hi), _mm512_extracti64x4_epi64(r.hi, 1));
    __m128i lo8 = _mm_min_epi16(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1));
    __m128i hi8 = _mm_max_epi16(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
    /* the lanes started from rng (dk_range512_start), so this is the merged range */
    rng[0] = (uint16_t)_mm_extract_epi16(_mm_minpos_epu16(lo8), 0);
    rng[1] = (uint16_t)(0xFFFF ^ _mm_extract_epi16(_mm_minpos_epu16(_mm_xor_si128(hi8, _mm_set1_epi16(-1))), 0));
}

#endif
