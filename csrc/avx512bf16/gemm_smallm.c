/* gemm_smallm.c (avx512bf16 tier) - the amx accumulation order for products with few rows
 * (GEMV and skinny m), reading B where it lies instead of packing it.
 *
 * With m <= DK_GEMM_SMALLM_MAX rows, each element of B is used by at most that many
 * multiply-adds, so packing B (a read and a write of all of it) costs more than the product:
 * this kernel streams B once, row-major (columns contiguous), widening BF16 codes (or
 * CFloat8 codes through the 256-entry table, dk_lut512.h) in registers.
 *
 * The arithmetic is step for step that of dk_gemm_ukr_amx_avx512 (dk_gemm.h's amx order):
 * FP32 zmm FMA under MXCSR FTZ|DAZ (tininess after rounding; DAZ reads BF16 subnormals,
 * widened to FP32 subnormals, as zeros of their sign), per output an E chain over the even
 * and an O chain over the odd k of each block of 16 pairs, both from +0; the missing odd
 * element of an odd k is a zero pair step; T = E + O (+ 0 when the block is partial: the
 * zero-padded steps turn a -0 into +0), C = C + T from C = +0; finally, under the caller's
 * MXCSR, C * scale and NaN -> 0x7FC00000. Register blocks of 1 x 128, 2 x 64 or 4 x 32
 * outputs (a missing row reads zeros and is not stored; columns masked at the edge, and
 * masked loads read nothing outside B). */
#include "dk_gemm.h"

#include <immintrin.h>

#include "dk_lut512.h"

#define BLK DK_GEMM_AMX_BLOCK_PAIRS

/* The magnitude range of BF16 codes (dk_gemm_bf16_range's): *mn the smallest nonzero
 * magnitude bits, *mx the largest finite ones, lane-wise. Lanes not loaded are zeros, which
 * count for neither. */
static inline void track_range(__m512i codes, __m512i *mn, __m512i *mx)
{
    const __m512i v = _mm512_and_si512(codes, _mm512_set1_epi16(0x7FFF));
    const __mmask32 finite = _mm512_cmplt_epu16_mask(v, _mm512_set1_epi16(0x7F80));
    const __mmask32 nonzero = _mm512_test_epi16_mask(v, v);
    *mx = _mm512_mask_max_epu16(*mx, finite, *mx, v);
    *mn = _mm512_mask_min_epu16(*mn, nonzero, *mn, v);
}

/* Row kk of B, columns j .. j+31 (mask: the valid ones), as two FP32 vectors; with trk,
 * the BF16 codes read also go into the range (rmn, rmx). */
static inline void load_brow(const void *b, int bkind, int64_t off, __mmask32 mask,
                             const __m512i t[8], __m512 *lo, __m512 *hi, int trk,
                             __m512i *rmn, __m512i *rmx)
{
    __m512i codes;
    if (bkind == DK_GEMM_U8)
        codes = dk_lut512(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask, (const uint8_t *)b + off)), t);
    else
        codes = _mm512_maskz_loadu_epi16(mask, (const uint16_t *)b + off);
    if (trk) track_range(codes, rmn, rmx);
    *lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(codes)), 16));
    *hi = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(codes, 1)), 16));
}

/* A element (row i < m, column kk < k) as FP32 (its BF16 value); zero outside. */
static inline float a_at(const void *a, int akind, const uint16_t *atab, int64_t ars, int64_t acs,
                         int64_t i, int64_t m, int64_t kk, int64_t k)
{
    if (i >= m || kk >= k) return 0.0f;
    int64_t off = i * ars + kk * acs;
    uint16_t h = akind == DK_GEMM_U8 ? atab[((const uint8_t *)a)[off]] : ((const uint16_t *)a)[off];
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* One block of 16 k-pairs (from pair p0) for rows i0 .. i0+RB-1 and columns
 * [j, j + 16*CV) (w of them valid): E and O in RB x CV registers (RB * CV <= 8), then
 * C = C + T in `out` (C = +0 + T for the first block). With rng (BF16 B only), the range
 * of the B codes read is merged into rng[0] (smallest nonzero) and rng[1] (largest
 * finite), lane-wise. */
#define SMALLM_BLOCK(NAME, RB, CV)                                                             \
    static void NAME(int64_t m, int64_t k, int64_t p0, int64_t i0, int64_t j, int64_t w,        \
                     const void *a, int64_t ars, int64_t acs, int akind, const uint16_t *atab,  \
                     const void *b, int64_t brs, int bkind, const __m512i t[8], float *out,     \
                     int64_t ldo, __m512i *rng)                                                 \
    {                                                                                          \
        const int trk = rng != NULL && bkind != DK_GEMM_U8;                                    \
        __m512i rmn = trk ? rng[0] : _mm512_setzero_si512();                                   \
        __m512i rmx = trk ? rng[1] : _mm512_setzero_si512();                                   \
        const int64_t kpairs = (k + 1) / 2;                                                    \
        const int64_t np = kpairs - p0 < BLK ? kpairs - p0 : BLK;                              \
        const __m512 zero = _mm512_setzero_ps();                                               \
        __mmask32 mask[(CV + 1) / 2];                                                          \
        for (int v = 0; v < CV; v += 2) {                                                      \
            int64_t left = w - 16 * v;                                                         \
            mask[v / 2] = left >= 32 ? 0xFFFFFFFFu : left <= 0 ? 0u : (__mmask32)((1u << left) - 1); \
        }                                                                                      \
        __m512 e[RB][CV], o[RB][CV];                                                           \
        for (int r = 0; r < RB; r++)                                                           \
            for (int v = 0; v < CV; v++) e[r][v] = o[r][v] = zero;                             \
        for (int64_t p = p0; p < p0 + np; p++) {                                               \
            const int64_t ke = 2 * p, ko = ke + 1;                                             \
            __m512 be[CV], bo[CV];                                                             \
            for (int v = 0; v < CV; v += 2) {                                                  \
                load_brow(b, bkind, ke * brs + j + 16 * v, mask[v / 2], t, &be[v], &be[v + 1], \
                          trk, &rmn, &rmx);                                                    \
                if (ko < k)                                                                    \
                    load_brow(b, bkind, ko * brs + j + 16 * v, mask[v / 2], t, &bo[v],         \
                              &bo[v + 1], trk, &rmn, &rmx);                                    \
                else                                                                           \
                    bo[v] = bo[v + 1] = zero;                                                  \
            }                                                                                  \
            for (int r = 0; r < RB; r++) {                                                     \
                __m512 ae = _mm512_set1_ps(a_at(a, akind, atab, ars, acs, i0 + r, m, ke, k));   \
                __m512 ao = _mm512_set1_ps(a_at(a, akind, atab, ars, acs, i0 + r, m, ko, k));   \
                for (int v = 0; v < CV; v++) {                                                 \
                    e[r][v] = _mm512_fmadd_ps(ae, be[v], e[r][v]);                             \
                    o[r][v] = _mm512_fmadd_ps(ao, bo[v], o[r][v]);                             \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        const int partial = np < BLK;                                                          \
        for (int r = 0; r < RB && i0 + r < m; r++)                                             \
            for (int v = 0; v < CV; v++) {                                                     \
                __mmask32 mk = mask[v / 2];                                                    \
                __mmask16 mv = (__mmask16)((v & 1) ? mk >> 16 : mk);                           \
                if (!mv) continue;                                                             \
                __m512 tt = _mm512_add_ps(e[r][v], o[r][v]);                                   \
                if (partial) tt = _mm512_add_ps(tt, zero);                                     \
                float *cp = out + (i0 + r) * ldo + j + 16 * v;                                 \
                __m512 cv = p0 == 0 ? zero : _mm512_maskz_loadu_ps(mv, cp);                    \
                _mm512_mask_storeu_ps(cp, mv, _mm512_add_ps(cv, tt));                          \
            }                                                                                  \
        if (trk) {                                                                             \
            rng[0] = rmn;                                                                      \
            rng[1] = rmx;                                                                      \
        }                                                                                      \
    }

SMALLM_BLOCK(block_1x8, 1, 8)
SMALLM_BLOCK(block_2x4, 2, 4)
SMALLM_BLOCK(block_4x2, 4, 2)

void dk_gemm_smallm_amx_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1,
                               const void *a, int64_t ars, int64_t acs, int akind,
                               const uint16_t *atab, const void *b, int64_t brs, int bkind,
                               const uint16_t *btab, float scale, float *out, int64_t ldo,
                               uint16_t *brange)
{
    __m512i t[8] = {0};
    __m512i rng[2] = {_mm512_set1_epi16(0x7FFF), _mm512_setzero_si512()};
    __m512i *r = brange && bkind != DK_GEMM_U8 ? rng : NULL;
    if (bkind == DK_GEMM_U8) dk_lut512_load(btab, t);
    const int64_t kpairs = (k + 1) / 2;
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
    /* k blocks outermost: each block reads its 32 rows of B across all the columns (whole
     * runs of a row, which the prefetchers follow), while C (m x (j1 - j0) FP32, in `out`)
     * stays in L1/L2. One row: 128 columns a register block; two: 64; more: 4 x 32. */
    const int64_t step = m == 1 ? 128 : m == 2 ? 64 : 32;
    for (int64_t p0 = 0; p0 < kpairs; p0 += BLK)
        for (int64_t j = j0; j < j1; j += step) {
            const int64_t w = j1 - j < step ? j1 - j : step;
            if (m == 1)
                block_1x8(m, k, p0, 0, j, w, a, ars, acs, akind, atab, b, brs, bkind, t, out, ldo,
                          r);
            else if (m == 2)
                block_2x4(m, k, p0, 0, j, w, a, ars, acs, akind, atab, b, brs, bkind, t, out, ldo,
                          r);
            else /* B is read once, by the first row block */
                for (int64_t i0 = 0; i0 < m; i0 += 4)
                    block_4x2(m, k, p0, i0, j, w, a, ars, acs, akind, atab, b, brs, bkind, t, out,
                              ldo, i0 == 0 ? r : NULL);
        }
    if (r) {
        uint16_t mn[32], mx[32];
        _mm512_storeu_si512((void *)mn, rng[0]);
        _mm512_storeu_si512((void *)mx, rng[1]);
        for (int i = 0; i < 32; i++) {
            brange[0] = mn[i] < brange[0] ? mn[i] : brange[0];
            brange[1] = mx[i] > brange[1] ? mx[i] : brange[1];
        }
    }
    /* the scale under the caller's MXCSR, as every kernel's last step (no FTZ) */
    _mm_setcsr(csr);
    const __m512 s = _mm512_set1_ps(scale);
    const __m512 qnan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = j0; j < j1; j += 16) {
            const int64_t w = j1 - j < 16 ? j1 - j : 16;
            const __mmask16 mv = w == 16 ? 0xFFFF : (__mmask16)((1u << w) - 1);
            float *cp = out + i * ldo + j;
            __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(mv, cp), s);
            x = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), qnan);
            _mm512_mask_storeu_ps(cp, mv, x);
        }
}
