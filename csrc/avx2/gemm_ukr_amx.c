/* gemm_ukr_amx.c (avx2 tier) - the amx accumulation order (dk_gemm.h), 3 x 16.
 *
 * FP32 ymm FMA on widened values (split layout, DAZ applied while packing) under MXCSR
 * FTZ|DAZ, which detects tininess after rounding: each FMA and add is one step of the
 * order. 12 ymm accumulators: an E (even k) and an O (odd k) chain per output, reset to +0
 * at every 16-pair block; at the block's end T = E + O and C = C + T, C kept in a
 * contiguous copy of the tile between blocks. */
#include "dk_gemm.h"

#include <immintrin.h>

#define MR DK_GEMM_AMX_AVX2_MR
#define NR DK_GEMM_SPLIT_NR
#define BLK DK_GEMM_AMX_BLOCK_PAIRS

void dk_gemm_ukr_amx_avx2(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                          int flags, float scale)
{
    const float *a = (const float *)ap, *b = (const float *)bp;
    /* C between blocks: a contiguous copy of the tile (the rows of C are ldc apart, often
     * a multiple of 4 KiB: they would share an L1 set and alias the stores before them) */
    const __m256 zero = _mm256_setzero_ps();
    float cl[MR * NR] __attribute__((aligned(32)));
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < NR; h += 8)
            _mm256_store_ps(cl + i * NR + h,
                            (flags & DK_UKR_LOAD) ? _mm256_loadu_ps(c + i * ldc + h) : zero);
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
    for (int64_t p0 = 0; p0 < kp; p0 += BLK) {
        int64_t np = kp - p0 < BLK ? kp - p0 : BLK;
        __m256 e00 = zero, e01 = zero, e10 = zero, e11 = zero, e20 = zero, e21 = zero;
        __m256 o00 = zero, o01 = zero, o10 = zero, o11 = zero, o20 = zero, o21 = zero;
        for (int64_t p = p0; p < p0 + np; p++) {
            const float *ao = a + p * 2 * MR, *bo = b + p * 2 * NR;
            __m256 b0 = _mm256_load_ps(bo), b1 = _mm256_load_ps(bo + 8), av; /* odd k */
            av = _mm256_broadcast_ss(ao + 0);
            o00 = _mm256_fmadd_ps(av, b0, o00); o01 = _mm256_fmadd_ps(av, b1, o01);
            av = _mm256_broadcast_ss(ao + 1);
            o10 = _mm256_fmadd_ps(av, b0, o10); o11 = _mm256_fmadd_ps(av, b1, o11);
            av = _mm256_broadcast_ss(ao + 2);
            o20 = _mm256_fmadd_ps(av, b0, o20); o21 = _mm256_fmadd_ps(av, b1, o21);
            b0 = _mm256_load_ps(bo + NR); b1 = _mm256_load_ps(bo + NR + 8);          /* even k */
            av = _mm256_broadcast_ss(ao + MR + 0);
            e00 = _mm256_fmadd_ps(av, b0, e00); e01 = _mm256_fmadd_ps(av, b1, e01);
            av = _mm256_broadcast_ss(ao + MR + 1);
            e10 = _mm256_fmadd_ps(av, b0, e10); e11 = _mm256_fmadd_ps(av, b1, e11);
            av = _mm256_broadcast_ss(ao + MR + 2);
            e20 = _mm256_fmadd_ps(av, b0, e20); e21 = _mm256_fmadd_ps(av, b1, e21);
        }
        /* T = E + O; a partial (zero-padded) block's padded steps turn a -0 into +0 */
        const int partial = np < BLK;
#define ROW(i)                                                                          \
        do {                                                                            \
            __m256 t0 = _mm256_add_ps(e##i##0, o##i##0), t1 = _mm256_add_ps(e##i##1, o##i##1); \
            if (partial) { t0 = _mm256_add_ps(t0, zero); t1 = _mm256_add_ps(t1, zero); } \
            _mm256_store_ps(cl + (i) * NR, _mm256_add_ps(_mm256_load_ps(cl + (i) * NR), t0)); \
            _mm256_store_ps(cl + (i) * NR + 8,                                          \
                            _mm256_add_ps(_mm256_load_ps(cl + (i) * NR + 8), t1));      \
        } while (0)
        ROW(0); ROW(1); ROW(2);
#undef ROW
    }
    _mm_setcsr(csr);
    const __m256 s = _mm256_set1_ps(scale);
    const __m256 qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < NR; h += 8) {
            __m256 x = _mm256_load_ps(cl + i * NR + h);
            if (flags & DK_UKR_LAST) {
                x = _mm256_mul_ps(x, s);
                x = _mm256_blendv_ps(x, qnan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
            }
            _mm256_storeu_ps(c + i * ldc + h, x);
        }
}
