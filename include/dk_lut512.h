/* dk_lut512.h - decoding 8-bit codes through a 256-entry table of BF16 codes with AVX-512BW
 * (the GEMM packers and the few-rows kernel of the avx512bf16 tier; include only from files
 * built with that tier's flags).
 *
 * The table is held in 8 zmm registers (dk_lut512_load); a lookup of 32 codes (one per
 * 16-bit lane) is four VPERMI2W lookups of 64 entries, then two blends on code bits 6 and 7.
 * Exact: the table is the decode. */
#ifndef DK_LUT512_H
#define DK_LUT512_H

#include <immintrin.h>
#include <stdint.h>

#include "dk_common.h"

DK_INLINE void dk_lut512_load(const uint16_t *table, __m512i t[8])
{
    for (int i = 0; i < 8; i++) t[i] = _mm512_loadu_si512((const void *)(table + 32 * i));
}

DK_INLINE __m512i dk_lut512(__m512i code, const __m512i t[8])
{
    __m512i r0 = _mm512_permutex2var_epi16(t[0], code, t[1]);
    __m512i r1 = _mm512_permutex2var_epi16(t[2], code, t[3]);
    __m512i r2 = _mm512_permutex2var_epi16(t[4], code, t[5]);
    __m512i r3 = _mm512_permutex2var_epi16(t[6], code, t[7]);
    __mmask32 b6 = _mm512_test_epi16_mask(code, _mm512_set1_epi16(0x40));
    __mmask32 b7 = _mm512_test_epi16_mask(code, _mm512_set1_epi16(0x80));
    __m512i lo = _mm512_mask_blend_epi16(b6, r0, r1);
    __m512i hi = _mm512_mask_blend_epi16(b6, r2, r3);
    return _mm512_mask_blend_epi16(b7, lo, hi);
}

/* The mask of the first n of 32 lanes (none for n <= 0, all for n >= 32). */
DK_INLINE __mmask32 dk_lanes32(int64_t n)
{
    return n <= 0 ? 0 : n >= 32 ? (__mmask32)~0u : (__mmask32)((1u << n) - 1);
}

/* n (0..32) codes of one line as 16-bit lanes, zeros past them; src NULL: none. The u8 form
 * decodes through t. Nothing past the n codes is read. */
DK_INLINE __m512i dk_line_u16(const uint16_t *src, int64_t n)
{
    if (!src || n <= 0) return _mm512_setzero_si512();
    return n >= 32 ? _mm512_loadu_si512((const void *)src) : _mm512_maskz_loadu_epi16(dk_lanes32(n), src);
}

DK_INLINE __m512i dk_line_u8(const uint8_t *src, int64_t n, const __m512i t[8])
{
    if (!src || n <= 0) return _mm512_setzero_si512();
    const __mmask32 m = dk_lanes32(n);
    const __m256i raw = n >= 32 ? _mm256_loadu_si256((const __m256i *)src) : _mm256_maskz_loadu_epi8(m, src);
    return _mm512_maskz_mov_epi16(m, dk_lut512(_mm512_cvtepu8_epi16(raw), t));
}

/* n codes of a line of either width: 8-bit ones decoded through t (t NULL: BF16 codes). */
DK_INLINE __m512i dk_line_codes(const char *src, int64_t n, const __m512i *t)
{
    return t ? dk_line_u8((const uint8_t *)src, n, t) : dk_line_u16((const uint16_t *)src, n);
}

#endif
