/* gemm_ukr.c (avx2 tier) - 6 x 16 FP32 FMA micro-kernel on widened BF16 values.
 *
 * Same bits as VDPBF16PS: per k-pair the odd-k FMA, then the even-k FMA, with MXCSR
 * FTZ|DAZ set for the accumulation (saved and restored inside this call; the final scale
 * multiply runs under the caller's MXCSR, as on the other tiers). */
#include "dk_gemm.h"

#include <immintrin.h>

#define MR DK_GEMM_SPLIT_MR
#define NR DK_GEMM_SPLIT_NR

void dk_gemm_ukr_avx2(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                      int flags, float scale)
{
    const float *a = (const float *)ap, *b = (const float *)bp;
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (flags & DK_UKR_LOAD) {
        c00 = _mm256_loadu_ps(c + 0 * ldc); c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
        c10 = _mm256_loadu_ps(c + 1 * ldc); c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc); c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc); c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc); c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc); c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
#define STEP(AO, BO)                                                              \
    do {                                                                          \
        __m256 b0 = _mm256_load_ps(BO), b1 = _mm256_load_ps((BO) + 8), av;        \
        av = _mm256_broadcast_ss((AO) + 0);                                       \
        c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);   \
        av = _mm256_broadcast_ss((AO) + 1);                                       \
        c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);   \
        av = _mm256_broadcast_ss((AO) + 2);                                       \
        c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);   \
        av = _mm256_broadcast_ss((AO) + 3);                                       \
        c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);   \
        av = _mm256_broadcast_ss((AO) + 4);                                       \
        c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);   \
        av = _mm256_broadcast_ss((AO) + 5);                                       \
        c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);   \
    } while (0)
    for (int64_t p = 0; p < kp; p++) {
        const float *ao = a + p * 2 * MR, *bo = b + p * 2 * NR;
        _mm_prefetch((const char *)(bo + 8 * 2 * NR), _MM_HINT_T0);
        STEP(ao, bo);            /* odd k */
        STEP(ao + MR, bo + NR);  /* even k */
    }
#undef STEP
    _mm_setcsr(csr);
    if (flags & DK_UKR_LAST) {
        const __m256 s = _mm256_set1_ps(scale);
        const __m256 qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
#define FIN(X) do { X = _mm256_mul_ps(X, s); \
        X = _mm256_blendv_ps(X, qnan, _mm256_cmp_ps(X, X, _CMP_UNORD_Q)); } while (0)
        FIN(c00); FIN(c01); FIN(c10); FIN(c11); FIN(c20); FIN(c21);
        FIN(c30); FIN(c31); FIN(c40); FIN(c41); FIN(c50); FIN(c51);
#undef FIN
    }
    _mm256_storeu_ps(c + 0 * ldc, c00); _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10); _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20); _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30); _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40); _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50); _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* Peak probe: 10 independent FMA chains held in named registers. */
double dk_probe_fma_ymm(int64_t iters)
{
#define YDECL(i) __m256 x##i = _mm256_set1_ps((float)(i))
    YDECL(0); YDECL(1); YDECL(2); YDECL(3); YDECL(4); YDECL(5); YDECL(6); YDECL(7); YDECL(8); YDECL(9);
    __m256 mm = _mm256_set1_ps(1.0f), d = _mm256_set1_ps(1e-7f);
    __asm__ volatile("" : "+x"(mm), "+x"(d));
#define YFMA(i) x##i = _mm256_fmadd_ps(x##i, mm, d)
    for (int64_t it = 0; it < iters; it++) {
        YFMA(0); YFMA(1); YFMA(2); YFMA(3); YFMA(4); YFMA(5); YFMA(6); YFMA(7); YFMA(8); YFMA(9);
        __asm__ volatile("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4), "+x"(x5),
                         "+x"(x6), "+x"(x7), "+x"(x8), "+x"(x9));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)),
                             _mm256_add_ps(_mm256_add_ps(x4, x5), _mm256_add_ps(x6, x7)));
    s = _mm256_add_ps(s, _mm256_add_ps(x8, x9));
    float sink[8];
    _mm256_storeu_ps(sink, s);
    __asm__ volatile("" : : "r"(sink) : "memory");
    return (double)iters * 10 * 8 * 2;
}
