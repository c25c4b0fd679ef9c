/* gemm_ukr.c (avx512bf16 tier) - 6 x 64 VDPBF16PS micro-kernel.
 *
 * 24 zmm accumulators (6 rows x 4 x 16 columns); per k-pair 4 loads of the packed B
 * pair-row (64 lanes of (b[2p,j], b[2p+1,j])), a 32-bit broadcast of (a[i,2p],
 * a[i,2p+1]) per row and 24 VDPBF16PS. VDPBF16PS adds the odd element's product first,
 * then the even one, each rounded, DAZ on its inputs and FTZ on each step: this is the
 * reference order of dk_gemm.h, which the other tiers reproduce. */
#include "dk_gemm.h"

#include <immintrin.h>

#define MR DK_GEMM_PAIR_MR
#define NR DK_GEMM_PAIR_NR

#define ROW_DECL(i) __m512 c##i##0, c##i##1, c##i##2, c##i##3
#define ROW_ZERO(i) c##i##0 = c##i##1 = c##i##2 = c##i##3 = _mm512_setzero_ps()
#define ROW_LOAD(i)                                                   \
    c##i##0 = _mm512_loadu_ps(c + (i) * ldc);                         \
    c##i##1 = _mm512_loadu_ps(c + (i) * ldc + 16);                    \
    c##i##2 = _mm512_loadu_ps(c + (i) * ldc + 32);                    \
    c##i##3 = _mm512_loadu_ps(c + (i) * ldc + 48)
#define ROW_STORE(i)                                                  \
    _mm512_storeu_ps(c + (i) * ldc, c##i##0);                         \
    _mm512_storeu_ps(c + (i) * ldc + 16, c##i##1);                    \
    _mm512_storeu_ps(c + (i) * ldc + 32, c##i##2);                    \
    _mm512_storeu_ps(c + (i) * ldc + 48, c##i##3)
#define ROW_FIN(i) FIN(c##i##0); FIN(c##i##1); FIN(c##i##2); FIN(c##i##3)
/* One k-pair. Left to itself, GCC 12 hoists the next pair's B loads, spills B registers
 * to the stack to make room and keeps each A broadcast in a register (a separate
 * VPBROADCASTD) instead of folding it into the instruction. So the step is inline
 * assembly: the first statement loads B's four vectors and does rows 0-2, the second rows
 * 3-5 (GCC allows 30 operands per statement, a "+v" counting twice: the first uses all
 * 30), and each A pair is the instruction's memory operand with embedded broadcast
 * ({1to16}): per pair 4 vector loads of B, 24 VDPBF16PS that each load their A pair, no
 * other vector instruction. A is the second source, B the first: each lane's two products
 * commute, so the sums are the same bits as with A first (a NaN's payload may differ, and
 * every NaN is made the default one at the end). AddressSanitizer does not see loads
 * inside assembly: its builds (.ci/sanitize.sh) take the same step in intrinsics. */
#if defined(__SANITIZE_ADDRESS__)
#define PAIR_ROW(i, AP)                                                                 \
    do {                                                                                \
        __m512bh av = (__m512bh)_mm512_set1_epi32(((const int32_t *)(AP))[i]);          \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, (__m512bh)b0, av);                          \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, (__m512bh)b1, av);                          \
        c##i##2 = _mm512_dpbf16_ps(c##i##2, (__m512bh)b2, av);                          \
        c##i##3 = _mm512_dpbf16_ps(c##i##3, (__m512bh)b3, av);                          \
    } while (0)
#define PAIR(AP, BP)                                                                    \
    do {                                                                                \
        const __m512 b0 = _mm512_load_ps((const float *)(BP));                          \
        const __m512 b1 = _mm512_load_ps((const float *)((BP) + 16));                   \
        const __m512 b2 = _mm512_load_ps((const float *)((BP) + 32));                   \
        const __m512 b3 = _mm512_load_ps((const float *)((BP) + 48));                   \
        PAIR_ROW(0, AP); PAIR_ROW(1, AP); PAIR_ROW(2, AP);                              \
        PAIR_ROW(3, AP); PAIR_ROW(4, AP); PAIR_ROW(5, AP);                              \
    } while (0)
#else
#define DP_ROW(i)                                                                       \
    "vdpbf16ps " #i "*4(%[a])%{1to16%}, %[b0], %[c" #i "0]\n\t"                        \
    "vdpbf16ps " #i "*4(%[a])%{1to16%}, %[b1], %[c" #i "1]\n\t"                        \
    "vdpbf16ps " #i "*4(%[a])%{1to16%}, %[b2], %[c" #i "2]\n\t"                        \
    "vdpbf16ps " #i "*4(%[a])%{1to16%}, %[b3], %[c" #i "3]\n\t"
#define ACC_OPS(i) [c##i##0] "+v"(c##i##0), [c##i##1] "+v"(c##i##1), [c##i##2] "+v"(c##i##2), \
                   [c##i##3] "+v"(c##i##3)
#define PAIR(AP, BP)                                                                    \
    do {                                                                                \
        __m512 b0, b1, b2, b3;                                                          \
        __asm__("vmovaps (%[b]), %[b0]\n\t"                                             \
                "vmovaps 64(%[b]), %[b1]\n\t"                                           \
                "vmovaps 128(%[b]), %[b2]\n\t"                                          \
                "vmovaps 192(%[b]), %[b3]\n\t"                                          \
                DP_ROW(0) DP_ROW(1) DP_ROW(2)                                           \
                : ACC_OPS(0), ACC_OPS(1), ACC_OPS(2),                                   \
                  [b0] "=&v"(b0), [b1] "=&v"(b1), [b2] "=&v"(b2), [b3] "=&v"(b3)        \
                : [a] "r"(AP), [b] "r"(BP)                                              \
                : "memory");                                                            \
        __asm__(DP_ROW(3) DP_ROW(4) DP_ROW(5)                                           \
                : ACC_OPS(3), ACC_OPS(4), ACC_OPS(5)                                    \
                : [a] "r"(AP), [b0] "v"(b0), [b1] "v"(b1), [b2] "v"(b2), [b3] "v"(b3)   \
                : "memory");                                                            \
    } while (0)
#endif

void dk_gemm_ukr_avx512bf16(int64_t kp, const void *ap, const void *bp, float *c,
                            int64_t ldc, int flags, float scale)
{
    const uint32_t *a = (const uint32_t *)ap, *b = (const uint32_t *)bp;
    ROW_DECL(0); ROW_DECL(1); ROW_DECL(2); ROW_DECL(3); ROW_DECL(4); ROW_DECL(5);
    if (flags & DK_UKR_LOAD) {
        ROW_LOAD(0); ROW_LOAD(1); ROW_LOAD(2); ROW_LOAD(3); ROW_LOAD(4); ROW_LOAD(5);
    } else {
        ROW_ZERO(0); ROW_ZERO(1); ROW_ZERO(2); ROW_ZERO(3); ROW_ZERO(4); ROW_ZERO(5);
    }
    int64_t p = 0;
    for (; p + 4 <= kp; p += 4) {
        _mm_prefetch((const char *)(a + (p + 8) * MR), _MM_HINT_T0);
        PAIR(a + (p + 0) * MR, b + (p + 0) * NR);
        PAIR(a + (p + 1) * MR, b + (p + 1) * NR);
        PAIR(a + (p + 2) * MR, b + (p + 2) * NR);
        PAIR(a + (p + 3) * MR, b + (p + 3) * NR);
    }
    for (; p < kp; p++) PAIR(a + p * MR, b + p * NR);
    if (flags & DK_UKR_LAST) {
        const __m512 s = _mm512_set1_ps(scale);
        const __m512 qnan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000));
#define FIN(X) do { X = _mm512_mul_ps(X, s); \
        X = _mm512_mask_mov_ps(X, _mm512_cmp_ps_mask(X, X, _CMP_UNORD_Q), qnan); } while (0)
        ROW_FIN(0); ROW_FIN(1); ROW_FIN(2); ROW_FIN(3); ROW_FIN(4); ROW_FIN(5);
#undef FIN
    }
    ROW_STORE(0); ROW_STORE(1); ROW_STORE(2); ROW_STORE(3); ROW_STORE(4); ROW_STORE(5);
}

/* Peak probes: 12 independent accumulator chains held in named registers. */
#define P12(OP) OP(0); OP(1); OP(2); OP(3); OP(4); OP(5); OP(6); OP(7); OP(8); OP(9); OP(10); OP(11)
#define PDECL(i) __m512 x##i = _mm512_set1_ps((float)(i))
#define PSUM(i) s = _mm512_add_ps(s, x##i)
#define PKEEP __asm__ volatile("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(x4), "+v"(x5), \
                               "+v"(x6), "+v"(x7), "+v"(x8), "+v"(x9), "+v"(x10), "+v"(x11))

double dk_probe_vdpbf16ps_zmm(int64_t iters)
{
    P12(PDECL);
    __m512bh u = (__m512bh)_mm512_set1_epi32(0x3F803F80), v = (__m512bh)_mm512_set1_epi32(0x33803380);
    __asm__ volatile("" : "+v"(u), "+v"(v));
#define PDP(i) x##i = _mm512_dpbf16_ps(x##i, u, v)
    for (int64_t it = 0; it < iters; it++) {
        P12(PDP);
        PKEEP;
    }
    __m512 s = _mm512_setzero_ps();
    P12(PSUM);
    float sink[16];
    _mm512_storeu_ps(sink, s);
    __asm__ volatile("" : : "r"(sink) : "memory");
    return (double)iters * 12 * 16 * 4; /* 32 products + 32 adds per instruction */
}

double dk_probe_fma_zmm(int64_t iters)
{
    P12(PDECL);
    __m512 mm = _mm512_set1_ps(1.0f), d = _mm512_set1_ps(1e-7f);
    __asm__ volatile("" : "+v"(mm), "+v"(d));
#define PFMA(i) x##i = _mm512_fmadd_ps(x##i, mm, d)
    for (int64_t it = 0; it < iters; it++) {
        P12(PFMA);
        PKEEP;
    }
    __m512 s = _mm512_setzero_ps();
    P12(PSUM);
    float sink[16];
    _mm512_storeu_ps(sink, s);
    __asm__ volatile("" : : "r"(sink) : "memory");
    return (double)iters * 12 * 16 * 2;
}
