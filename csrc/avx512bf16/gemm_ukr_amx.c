/* gemm_ukr_amx.c (avx512bf16 tier) - the amx accumulation order (dk_gemm.h), 7 x 32.
 *
 * FP32 zmm FMA under MXCSR FTZ|DAZ (tininess after rounding): each FMA and add is one step
 * of the order. A and B arrive in the FP32 split layout (DAZ applied while packing): per
 * pair, A 7 odd-k values then 7 even-k values, B 32 odd-k then 32 even-k values.
 * 28 zmm accumulators: an E (even k) and an O (odd k) chain per output, reset to +0 at
 * every 16-pair block; at the block's end T = E + O and C = C + T, C kept in a contiguous
 * copy of the tile between blocks. Per pair: 4 B loads, 14 broadcasts, 28 FMAs and
 * nothing else on the FMA ports (B widened in registers instead, as the vdpbf16ps-order
 * FMA kernel does, costs 4 more vector ops per 28 FMAs: measured 12% slower alone). */
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
    const float *b = (const float *)bp;
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
            const float *bo = b + p * 2 * NR;
            __m512 b0 = _mm512_load_ps(bo), b1 = _mm512_load_ps(bo + 16);  /* odd k */
            ALL(FMA_O);
            b0 = _mm512_load_ps(bo + NR); b1 = _mm512_load_ps(bo + NR + 16);  /* even k */
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
