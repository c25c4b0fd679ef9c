/* gemm_ukr_fma.c (avx512bf16 tier) - 14 x 32 FP32 FMA micro-kernel on widened values.
 *
 * A arrives in the FP32 split layout (MR = 14), B in the BF16 pair layout (NR = 32 lanes of
 * (b[2p,j], b[2p+1,j])) and is widened in registers: half the B bytes of an FP32 panel.
 *
 * Same bits as the VDPBF16PS kernel (dk_gemm.h order): per k-pair the odd-k FMA then the
 * even-k FMA, MXCSR FTZ|DAZ set for the accumulation. Exists because on some CPUs
 * (measured: a Sapphire-Rapids-class Xeon) VDPBF16PS issues once per two cycles while
 * 512-bit FMA issues twice per cycle, so this kernel has twice the peak there. The
 * Python layer picks the faster of the two from the peak probes. */
#include "dk_gemm.h"

#include <immintrin.h>

#define MR DK_GEMM_F512_MR
#define NR DK_GEMM_F512_NR

#define RD(i) __m512 c##i##0, c##i##1
#define RZ(i) c##i##0 = c##i##1 = _mm512_setzero_ps()
#define RL(i) c##i##0 = _mm512_loadu_ps(c + (i) * ldc); c##i##1 = _mm512_loadu_ps(c + (i) * ldc + 16)
#define RS(i) _mm512_storeu_ps(c + (i) * ldc, c##i##0); _mm512_storeu_ps(c + (i) * ldc + 16, c##i##1)
#define RF(i) FIN(c##i##0); FIN(c##i##1)
#define RM(i, AP)                                                  \
    do {                                                           \
        __m512 av = _mm512_set1_ps((AP)[i]);                       \
        c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0);                \
        c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);                \
    } while (0)
#define ALL(OP) OP(0); OP(1); OP(2); OP(3); OP(4); OP(5); OP(6); OP(7); OP(8); OP(9); \
                OP(10); OP(11); OP(12); OP(13)
/* B given in the BF16 pair layout (u32 lanes: even k low, odd k high), widened here: the
 * odd element is the lane with its low half cleared, the even one the lane shifted left. */
#define KSTEP_PB(AP, BP, WIDEN)                                                         \
    do {                                                                                \
        __m512 b0 = WIDEN(_mm512_load_si512((const void *)(BP)));                       \
        __m512 b1 = WIDEN(_mm512_load_si512((const void *)((BP) + 16)));                \
        RM(0, AP); RM(1, AP); RM(2, AP); RM(3, AP); RM(4, AP); RM(5, AP); RM(6, AP);    \
        RM(7, AP); RM(8, AP); RM(9, AP); RM(10, AP); RM(11, AP); RM(12, AP); RM(13, AP); \
    } while (0)
#define ODD(V) _mm512_castsi512_ps(_mm512_and_si512((V), hi))
#define EVEN(V) _mm512_castsi512_ps(_mm512_slli_epi32((V), 16))

void dk_gemm_ukr_avx512fma_pb(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                              int flags, float scale)
{
    const float *a = (const float *)ap;
    const uint32_t *b = (const uint32_t *)bp;
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ (DAZ also zeroes subnormal BF16 inputs) */
    ALL(RD);
    if (flags & DK_UKR_LOAD) {
        ALL(RL);
    } else {
        ALL(RZ);
    }
    for (int64_t p = 0; p < kp; p++) {
        const float *ao = a + p * 2 * MR;
        const uint32_t *bo = b + p * NR;
        _mm_prefetch((const char *)(bo + 8 * NR), _MM_HINT_T0);
        KSTEP_PB(ao, bo, ODD);       /* odd k */
        KSTEP_PB(ao + MR, bo, EVEN); /* even k */
    }
    _mm_setcsr(csr);
    if (flags & DK_UKR_LAST) {
        const __m512 s = _mm512_set1_ps(scale);
        const __m512 qnan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000));
#define FIN(X) do { X = _mm512_mul_ps(X, s); \
        X = _mm512_mask_mov_ps(X, _mm512_cmp_ps_mask(X, X, _CMP_UNORD_Q), qnan); } while (0)
        ALL(RF);
#undef FIN
    }
    ALL(RS);
}
