/* gemm_ukr_amx.c (avx512bf16 tier) - the amx accumulation order (dk_gemm.h), 7 x 32.
 *
 * FP32 zmm FMA under MXCSR FTZ|DAZ (tininess after rounding): each FMA and add is one step
 * of the order. A arrives in the FP32 split layout (DAZ applied while packing: per pair 7
 * odd-k values then 7 even-k values), B in the BF16 pair layout (32 lanes of (b[2p,j],
 * b[2p+1,j])), widened in registers: the odd element is the lane with its low half cleared,
 * the even one the lane shifted left (a subnormal BF16 widens to an FP32 subnormal, which
 * DAZ reads as zero, as the split layout's packing would have made it).
 * 28 zmm accumulators: an E (even k) and an O (odd k) chain per output, reset to +0 at
 * every 16-pair block; at the block's end T = E + O and C = C + T, C kept in a contiguous
 * copy of the tile between blocks. Per pair: 2 B loads, 4 widening ops, 14 broadcasts and
 * 28 FMAs. Widening costs those 4 vector ops per 28 FMAs, and alone, with B in L1, it was
 * the slower form; in place it halves B's bytes: a B sliver of a 512-element k block is
 * 32 KiB and stays in L1 while the A slivers stream past it (2048^3, one thread, forced
 * avx512bf16 tier on the AMX machine: 90 -> 100 GFLOP/s, with MC 84). */
#include "dk_gemm.h"

#include <immintrin.h>

#define MR DK_GEMM_AMX512_MR
#define NR DK_GEMM_AMX512_NR
#define BLK DK_GEMM_AMX_BLOCK_PAIRS

#define ALL(OP) OP(0); OP(1); OP(2); OP(3); OP(4); OP(5); OP(6)
#define DECL(i) __m512 e##i##0, e##i##1, o##i##0, o##i##1
#define ZERO(i) e##i##0 = e##i##1 = o##i##0 = o##i##1 = _mm512_setzero_ps()
#define FMA_O(i)                                                   \
    do {                                                           \
        __m512 av = _mm512_set1_ps(ao[i]);                         \
        o##i##0 = _mm512_fmadd_ps(av, b0, o##i##0);                \
        o##i##1 = _mm512_fmadd_ps(av, b1, o##i##1);                \
    } while (0)
#define FMA_E(i)                                                   \
    do {                                                           \
        __m512 av = _mm512_set1_ps(ao[MR + i]);                    \
        e##i##0 = _mm512_fmadd_ps(av, b0, e##i##0);                \
        e##i##1 = _mm512_fmadd_ps(av, b1, e##i##1);                \
    } while (0)

void dk_gemm_ukr_amx_avx512(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                            int flags, float scale)
{
    const float *a = (const float *)ap;
    const uint32_t *b = (const uint32_t *)bp;
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    const __m512 zero = _mm512_setzero_ps();
    /* C between blocks: a contiguous copy of the tile (its rows in distinct L1 sets; the
     * rows of C itself are ldc apart, often a multiple of 4 KiB: they would share a set,
     * be evicted between blocks and alias the stores of the rows before them) */
    float cl[MR * NR] __attribute__((aligned(64)));
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < NR; h += 16)
            _mm512_store_ps(cl + i * NR + h,
                            (flags & DK_UKR_LOAD) ? _mm512_loadu_ps(c + i * ldc + h) : zero);
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
    ALL(DECL);
    for (int64_t p0 = 0; p0 < kp; p0 += BLK) {
        int64_t np = kp - p0 < BLK ? kp - p0 : BLK;
        ALL(ZERO);
        for (int64_t p = p0; p < p0 + np; p++) {
            const float *ao = a + p * 2 * MR;
            const uint32_t *bo = b + p * NR;
            const __m512i r0 = _mm512_load_si512((const void *)bo);
            const __m512i r1 = _mm512_load_si512((const void *)(bo + 16));
            __m512 b0 = _mm512_castsi512_ps(_mm512_and_si512(r0, hi)); /* odd k */
            __m512 b1 = _mm512_castsi512_ps(_mm512_and_si512(r1, hi));
            ALL(FMA_O);
            b0 = _mm512_castsi512_ps(_mm512_slli_epi32(r0, 16));       /* even k */
            b1 = _mm512_castsi512_ps(_mm512_slli_epi32(r1, 16));
            ALL(FMA_E);
        }
        /* T = E + O; a partial (zero-padded) block's padded steps turn a -0 into +0 */
        const int partial = np < BLK;
#define ROW(i)                                                                           \
        do {                                                                             \
            __m512 t0 = _mm512_add_ps(e##i##0, o##i##0), t1 = _mm512_add_ps(e##i##1, o##i##1); \
            if (partial) { t0 = _mm512_add_ps(t0, zero); t1 = _mm512_add_ps(t1, zero); }  \
            _mm512_store_ps(cl + (i) * NR, _mm512_add_ps(_mm512_load_ps(cl + (i) * NR), t0)); \
            _mm512_store_ps(cl + (i) * NR + 16,                                          \
                            _mm512_add_ps(_mm512_load_ps(cl + (i) * NR + 16), t1));      \
        } while (0)
        ALL(ROW);
#undef ROW
    }
    _mm_setcsr(csr);
    const __m512 s = _mm512_set1_ps(scale);
    const __m512 qnan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000));
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < NR; h += 16) {
            __m512 x = _mm512_load_ps(cl + i * NR + h);
            if (flags & DK_UKR_LAST) {
                x = _mm512_mul_ps(x, s);
                x = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), qnan);
            }
            _mm512_storeu_ps(c + i * ldc + h, x);
        }
}
