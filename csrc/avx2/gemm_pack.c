/* gemm_pack.c (avx2 tier) - A's FP32 split layout from a row-major A, with AVX2.
 *
 * The avx2 tier's kernels (both orders) take A in slivers of 3 or 6 lines in the split
 * layout (dk_gemm.h: per k-pair, the lw odd-k values, then the lw even-k values, FP32 with
 * DAZ). The portable packer writes those a pair and a line at a time; here eight pairs of
 * every line come in one load (16 codes), are widened in registers (the odd codes are the
 * high halves of the 32-bit lanes, the even ones the low halves) and turned into pairs by
 * 8 x 8 transposes. Same values as the driver's widen_bits, so the same bits. */
#include "dk_gemm.h"

#include <immintrin.h>
#include <string.h>

/* The FP32 values of the high (odd-k) BF16 codes of the lanes, with DAZ (a subnormal
 * reads as a zero of its sign): w & 0xFFFF0000, or only the sign where the exponent is 0.
 * The low (even-k) codes are the high ones of the lanes shifted left by 16. */
static inline __m256i widen_high(__m256i w)
{
    const __m256i expo = _mm256_set1_epi32(0x7F800000);
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u), sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i sub = _mm256_cmpeq_epi32(_mm256_and_si256(w, expo), _mm256_setzero_si256());
    return _mm256_and_si256(w, _mm256_or_si256(_mm256_andnot_si256(sub, hi), sign));
}

/* r[j] lane p -> r[p] lane j (8 x 8 of 32-bit lanes). */
static inline void transpose8(__m256 r[8])
{
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Eight pairs of a sliver from rows[] (row j < lw: the odd-k values of line j, lane p for
 * pair p; row lw + j: the even-k ones; the rest zeros) to dst (2 * lw lanes a pair). A
 * pair's stores may run into the next pair's lanes (lw >= 2: no further), which its own
 * stores then overwrite; the sliver's last pair (last set) is stored exactly. */
__attribute__((always_inline)) static inline void
put_pairs(__m256 rows[16], int64_t lw, int last, uint32_t *dst)
{
    const int64_t width = 2 * lw;
    transpose8(rows);
    if (width > 8) transpose8(rows + 8);
    for (int p = 0; p < 8; p++) {
        uint32_t *o = dst + p * width;
        if (last && p == 7) {
            uint32_t tmp[16];
            _mm256_storeu_ps((float *)tmp, rows[p]);
            _mm256_storeu_ps((float *)tmp + 8, rows[8 + p]);
            memcpy(o, tmp, sizeof(uint32_t) * (size_t)width);
        } else {
            _mm256_storeu_ps((float *)o, rows[p]);
            if (width > 8) _mm256_storeu_ps((float *)o + 8, rows[8 + p]);
        }
    }
}

/* The sliver's groups of 8 pairs: line l's odd-k values in rows[l], its even-k ones in
 * rows[lw + l], from BF16 codes (wide NULL) or 8-bit codes through wide[256] (their values,
 * widened); the lines past nlines zeros. */
__attribute__((always_inline)) static inline void
split_kc(const void *src, int64_t ldl, int64_t nlines, int64_t npairs, int64_t lw, const uint32_t *wide,
         uint32_t *dst)
{
    for (int64_t g = 0; g < npairs; g += 8) {
        __m256 rows[16];
        for (int j = 0; j < 16; j++) rows[j] = _mm256_setzero_ps();
        for (int64_t l = 0; l < nlines; l++) {
            __m256i odd, even;
            if (wide) {
                const uint8_t *s = (const uint8_t *)src + l * ldl + 2 * g;
                odd = _mm256_set_epi32((int)wide[s[15]], (int)wide[s[13]], (int)wide[s[11]], (int)wide[s[9]],
                                       (int)wide[s[7]], (int)wide[s[5]], (int)wide[s[3]], (int)wide[s[1]]);
                even = _mm256_set_epi32((int)wide[s[14]], (int)wide[s[12]], (int)wide[s[10]], (int)wide[s[8]],
                                        (int)wide[s[6]], (int)wide[s[4]], (int)wide[s[2]], (int)wide[s[0]]);
            } else {
                const __m256i w = _mm256_loadu_si256((const __m256i *)((const uint16_t *)src + l * ldl + 2 * g));
                odd = widen_high(w);
                even = widen_high(_mm256_slli_epi32(w, 16));
            }
            rows[l] = _mm256_castsi256_ps(odd);
            rows[lw + l] = _mm256_castsi256_ps(even);
        }
        put_pairs(rows, lw, g + 8 == npairs, dst + g * 2 * lw);
    }
}

/* split_kc with the tier's two sliver heights as constants (the loops over lines unrolled) */
static void split_kc_lw(const void *src, int64_t ldl, int64_t nlines, int64_t npairs, int64_t lw,
                        const uint32_t *wide, uint32_t *dst)
{
    if (lw == DK_GEMM_AMX_AVX2_MR) split_kc(src, ldl, nlines, npairs, DK_GEMM_AMX_AVX2_MR, wide, dst);
    else if (lw == DK_GEMM_SPLIT_MR) split_kc(src, ldl, nlines, npairs, DK_GEMM_SPLIT_MR, wide, dst);
    else split_kc(src, ldl, nlines, npairs, lw, wide, dst);
}

void dk_gemm_pack_split_kc_u16_avx2(const uint16_t *src, int64_t ldl, int64_t nlines, int64_t npairs,
                                    int64_t lw, uint32_t *dst)
{
    split_kc_lw(src, ldl, nlines, npairs, lw, NULL, dst);
}

void dk_gemm_pack_split_kc_u8_avx2(const uint8_t *src, int64_t ldl, int64_t nlines, int64_t npairs,
                                   int64_t lw, const uint16_t *table, uint32_t *dst)
{
    /* the decoded values of the 256 codes, widened (DAZ) once */
    uint32_t wide[256] __attribute__((aligned(32)));
    for (int c = 0; c < 256; c += 8) {
        const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(table + c)));
        _mm256_store_si256((__m256i *)(wide + c), widen_high(_mm256_slli_epi32(h, 16)));
    }
    split_kc_lw(src, ldl, nlines, npairs, lw, wide, dst);
}
