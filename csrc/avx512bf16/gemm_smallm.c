/* gemm_smallm.c (avx512bf16 tier) - products with few rows (GEMV and skinny m) in both
 * accumulation orders, reading B where it lies instead of packing it (the vdpbf16ps order's
 * kernels are the sections after the amx order's).
 *
 * With m <= DK_GEMM_SMALLM_MAX rows (B = W^T: up to DK_GEMM_SMALLM_BT_MAX, the section at
 * the end), each element of B is used by at most that many
 * multiply-adds, so packing B (a read and a write of all of it) costs more than the product:
 * this kernel streams B once, row-major (columns contiguous), widening BF16 codes (or
 * CFloat8 codes through the 256-entry table, dk_lut512.h) in registers. Two kernels: one for
 * a B with unit column stride (row-major B, below), one for unit row stride (B = W^T for a
 * row-major W, torch's linear layout: the section at the end).
 *
 * The arithmetic is step for step that of dk_gemm_ukr_amx_avx512 (dk_gemm.h's amx order):
 * FP32 zmm FMA under MXCSR FTZ|DAZ (tininess after rounding; DAZ reads BF16 subnormals,
 * widened to FP32 subnormals, as zeros of their sign), per output an E chain over the even
 * and an O chain over the odd k of each block of 16 pairs, both from +0; the missing odd
 * element of an odd k is a zero pair step; T = E + O (+ 0 when the block is partial: the
 * zero-padded steps turn a -0 into +0), C = C + T from C = +0; finally, under the caller's
 * MXCSR, C * scale and NaN -> 0x7FC00000.
 *
 * How B is read (a GEMV is a pass over B, so this decides its speed): a block's 32 rows are
 * taken 8 at a time (SUB pairs), each 8 across the whole column range of the call (up to a
 * panel), before the next 8. A register block of 16 pairs would read 32 rows at once, a
 * short run of each, which the hardware prefetchers follow poorly: the BF16 B of 1 x 4096 x
 * 4096 streamed at 7-8 GB/s that way on a Zen 4, at 15-25 GB/s this way (one thread;
 * docs/gemm.md). Between the sub-blocks, E and O wait in a panel buffer (L1/L2).
 * Register blocks of 1 x 128, 2 x 64 or 4 x 32 outputs (a missing row reads zeros and is not
 * stored; columns masked at the edge, and masked loads read nothing outside B); the 32
 * codes of a load are widened without crossing lanes (the even columns from the low halves
 * of the 32-bit lanes, the odd ones from the high halves), and T is put back in column
 * order once per block. */
#include "dk_gemm.h"

#include <immintrin.h>
#include <stdint.h>

#include "dk_lut512.h"

#define BLK DK_GEMM_AMX_BLOCK_PAIRS
#define SUB 4                /* pairs of a sub-block: 8 rows of B read together */
#define PANEL_FLOATS 8192    /* E and O between sub-blocks: 32 KiB on the stack */
/* the register blocks of 1, 2 or 4 rows cover the rows up to DK_GEMM_SMALLM_MAX exactly
 * (the A buffers below hold that many rows) */
_Static_assert(DK_GEMM_SMALLM_MAX % 4 == 0, "DK_GEMM_SMALLM_MAX: a multiple of 4 rows");

/* The magnitude range of BF16 codes (dk_gemm_bf16_range's: the smallest nonzero and the
 * largest finite magnitude bits), lane-wise, without mask registers: *mn holds the least
 * (v - 1) as unsigned (a zero wraps to 0xFFFF and never wins), *mx the greatest v + 0x80 as
 * signed (Inf and NaN, 0x7F80 and up, wrap to negatives and never win), v = code & 0x7FFF.
 * Lanes not loaded are zeros, which count for neither. range_start gives the empty range,
 * merge_range (below) the magnitudes. */
DK_INLINE void range_start(__m512i *mn, __m512i *mx)
{
    *mn = _mm512_set1_epi16(0x7FFE);
    *mx = _mm512_set1_epi16(0x0080);
}

DK_INLINE void track_range(__m512i codes, __m512i *mn, __m512i *mx)
{
    const __m512i v = _mm512_and_si512(codes, _mm512_set1_epi16(0x7FFF));
    *mx = _mm512_max_epi16(*mx, _mm512_add_epi16(v, _mm512_set1_epi16(0x0080)));
    *mn = _mm512_min_epu16(*mn, _mm512_sub_epi16(v, _mm512_set1_epi16(1)));
}

/* The column masks of a register block of CV vectors (CV even) whose first w columns are
 * valid: mask[v / 2] covers the 32 columns of vectors v and v + 1. */
DK_INLINE void chunk_masks(const int CV, int64_t w, __mmask32 mask[4])
{
#pragma GCC unroll 8
    for (int v = 0; v < CV; v += 2) {
        const int64_t left = w - 16 * v;
        mask[v / 2] = left >= 32 ? 0xFFFFFFFFu : left <= 0 ? 0u : (__mmask32)((1u << left) - 1);
    }
}

/* The register block of the row-major kernels: rows rb (1, 2 or 4; index rbi) and vectors
 * cv: one row, 128 columns (64 for an 8-bit B, whose table takes 8 registers); two, 64;
 * more, 4 x 32. */
DK_INLINE void reg_block(int64_t m, int u8, int *rbi, int *rb, int *cv)
{
    *rbi = m == 1 ? 0 : m == 2 ? 1 : 2;
    *rb = 1 << *rbi;
    *cv = *rb == 1 ? (u8 ? 4 : 8) : *rb == 2 ? 4 : 2;
}

/* The width of the chunk of a panel that starts at column j (panel from jp, jq - j left, a
 * register block `step` wide): the first chunk ends where B's rows (row 0's, exactly) reach
 * a 64-byte boundary, so the loads of the others do not straddle cache lines. */
DK_INLINE int64_t chunk_width(const void *b, int64_t esz, int64_t jp, int64_t j, int64_t jq,
                              int64_t step)
{
    int64_t w = jq - j < step ? jq - j : step;
    const int64_t lead = (64 - (int64_t)(((uintptr_t)b + (uintptr_t)(j * esz)) & 63)) % 64 / esz;
    if (j == jp && lead > 0 && lead < w) w = lead;
    return w;
}

/* Panel width: the columns whose per-row state (`per_col` floats a column and row of A, for
 * mp rows) fits the buffer, with a register block to spare. */
DK_INLINE int64_t panel_width(int64_t mp, int64_t per_col, int64_t step)
{
    const int64_t pw = (PANEL_FLOATS / (per_col * mp) - step) / step * step;
    return pw < step ? step : pw;
}

/* 32 codes of a B row from element offset off (mask: the valid ones) as FP32: *ev the even
 * columns of the 32 (0, 2, ..., 30), *od the odd ones. With trk, the BF16 codes read also
 * go into the range (rmn, rmx). */
DK_INLINE void load_brow(const void *b, int u8, int64_t off, __mmask32 mask, const __m512i t[8],
                         __m512 *ev, __m512 *od, int trk, __m512i *rmn, __m512i *rmx)
{
    __m512i codes;
    if (u8)
        codes = dk_lut512(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask, (const uint8_t *)b + off)), t);
    else
        codes = _mm512_maskz_loadu_epi16(mask, (const uint16_t *)b + off);
    if (trk) track_range(codes, rmn, rmx);
    *ev = _mm512_castsi512_ps(_mm512_slli_epi32(codes, 16));
    *od = _mm512_castsi512_ps(_mm512_and_si512(codes, _mm512_set1_epi32((int)0xFFFF0000u)));
}

/* Pairs [s0, s1) of the block of 16 pairs from p0, for rows i0 .. i0+RB-1 and columns
 * [j, j + 16*CV) (w of them valid; CV even). E and O (RB x CV registers) start from +0 at
 * the block's first pair, else from `part`; after the block's last pair C = C + T in `out`
 * (C = +0 + T for the first block), else E and O go back to `part` (RB*CV*32 floats,
 * 64-byte aligned: for each register, 16 floats of E then 16 of O, lanes as loaded).
 * ab: the block's A values as FP32, 32 per row (zeros past k). */
DK_INLINE void sub_block(const int RB, const int CV, const int u8, const int trk, int64_t m,
                         int64_t k, int64_t p0, int64_t s0, int64_t s1, int64_t i0, int64_t j,
                         int64_t w, const float *ab, const void *b, int64_t brs,
                         const __m512i t[8], float *out, int64_t ldo, __m512i *rng, float *part)
{
    __m512i rmn = trk ? rng[0] : _mm512_setzero_si512();
    __m512i rmx = trk ? rng[1] : _mm512_setzero_si512();
    const int64_t kpairs = (k + 1) / 2;
    const int64_t np = kpairs - p0 < BLK ? kpairs - p0 : BLK;
    const int first = s0 == p0, last = s1 == p0 + np;
    const __m512 zero = _mm512_setzero_ps();
    __mmask32 mask[4];
    chunk_masks(CV, w, mask);
    __m512 e[4][8], o[4][8];
#pragma GCC unroll 8
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 8
        for (int v = 0; v < CV; v++) {
            e[r][v] = first ? zero : _mm512_load_ps(part + 32 * (r * CV + v));
            o[r][v] = first ? zero : _mm512_load_ps(part + 32 * (r * CV + v) + 16);
        }
    /* pairs with both rows in k (the last pair of an odd k has only its even row) */
    const int64_t pfull = 2 * (p0 + np) > k ? p0 + np - 1 : p0 + np;
    for (int64_t p = s0; p < s1; p++) {
        const int64_t ke = 2 * p;
        const float *ap = ab + 2 * (p - p0);
#pragma GCC unroll 8
        for (int v = 0; v < CV; v += 2) {
            __m512 lo, hi;
            load_brow(b, u8, ke * brs + j + 16 * v, mask[v / 2], t, &lo, &hi, trk, &rmn, &rmx);
#pragma GCC unroll 8
            for (int r = 0; r < RB; r++) {
                const __m512 av = _mm512_set1_ps(ap[32 * r]);
                e[r][v] = _mm512_fmadd_ps(av, lo, e[r][v]);
                e[r][v + 1] = _mm512_fmadd_ps(av, hi, e[r][v + 1]);
            }
        }
        if (p < pfull) {
#pragma GCC unroll 8
            for (int v = 0; v < CV; v += 2) {
                __m512 lo, hi;
                load_brow(b, u8, (ke + 1) * brs + j + 16 * v, mask[v / 2], t, &lo, &hi, trk, &rmn,
                          &rmx);
#pragma GCC unroll 8
                for (int r = 0; r < RB; r++) {
                    const __m512 av = _mm512_set1_ps(ap[32 * r + 1]);
                    o[r][v] = _mm512_fmadd_ps(av, lo, o[r][v]);
                    o[r][v + 1] = _mm512_fmadd_ps(av, hi, o[r][v + 1]);
                }
            }
        } else { /* the missing odd element: a zero pair step, fma(+0, +0, O) = O + 0 */
#pragma GCC unroll 8
            for (int r = 0; r < RB; r++)
#pragma GCC unroll 8
                for (int v = 0; v < CV; v++) o[r][v] = _mm512_add_ps(o[r][v], zero);
        }
    }
    if (trk) {
        rng[0] = rmn;
        rng[1] = rmx;
    }
    if (!last) {
#pragma GCC unroll 8
        for (int r = 0; r < RB; r++)
#pragma GCC unroll 8
            for (int v = 0; v < CV; v++) {
                _mm512_store_ps(part + 32 * (r * CV + v), e[r][v]);
                _mm512_store_ps(part + 32 * (r * CV + v) + 16, o[r][v]);
            }
        return;
    }
    const int partial = np < BLK;
    /* T of the even and of the odd columns back to column order: columns 0..15, 16..31 */
    const __m512i c0 = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i c1 = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
#pragma GCC unroll 8
    for (int r = 0; r < RB; r++) {
        if (i0 + r >= m) break;
#pragma GCC unroll 8
        for (int v = 0; v < CV; v += 2) {
            __m512 te = _mm512_add_ps(e[r][v], o[r][v]);
            __m512 to = _mm512_add_ps(e[r][v + 1], o[r][v + 1]);
            if (partial) {
                te = _mm512_add_ps(te, zero);
                to = _mm512_add_ps(to, zero);
            }
            const __m512 tt[2] = {_mm512_permutex2var_ps(te, c0, to),
                                  _mm512_permutex2var_ps(te, c1, to)};
            for (int h = 0; h < 2; h++) {
                const __mmask16 mv = (__mmask16)(h ? mask[v / 2] >> 16 : mask[v / 2]);
                if (!mv) continue;
                float *cp = out + (i0 + r) * ldo + j + 16 * (v + h);
                const __m512 cv = p0 == 0 ? zero : _mm512_maskz_loadu_ps(mv, cp);
                _mm512_mask_storeu_ps(cp, mv, _mm512_add_ps(cv, tt[h]));
            }
        }
    }
}

/* The register blocks, one function per shape, B kind and range tracking. */
typedef void (*sub_block_fn)(int64_t m, int64_t k, int64_t p0, int64_t s0, int64_t s1,
                             int64_t i0, int64_t j, int64_t w, const float *ab, const void *b,
                             int64_t brs, const __m512i *t, float *out, int64_t ldo,
                             __m512i *rng, float *part);
#define SUB_BLOCK_FN(NAME, RB, CV, U8, TRK)                                                    \
    static void NAME(int64_t m, int64_t k, int64_t p0, int64_t s0, int64_t s1, int64_t i0,      \
                     int64_t j, int64_t w, const float *ab, const void *b, int64_t brs,         \
                     const __m512i *t, float *out, int64_t ldo, __m512i *rng, float *part)      \
    {                                                                                          \
        sub_block(RB, CV, U8, TRK, m, k, p0, s0, s1, i0, j, w, ab, b, brs, t, out, ldo, rng,    \
                  part);                                                                       \
    }
SUB_BLOCK_FN(r1_bf16, 1, 8, 0, 0)
SUB_BLOCK_FN(r1_bf16_range, 1, 8, 0, 1)
SUB_BLOCK_FN(r1_u8, 1, 4, 1, 0)   /* the table takes 8 registers: 64 columns */
SUB_BLOCK_FN(r2_bf16, 2, 4, 0, 0)
SUB_BLOCK_FN(r2_bf16_range, 2, 4, 0, 1)
SUB_BLOCK_FN(r2_u8, 2, 4, 1, 0)
SUB_BLOCK_FN(r4_bf16, 4, 2, 0, 0)
SUB_BLOCK_FN(r4_bf16_range, 4, 2, 0, 1)
SUB_BLOCK_FN(r4_u8, 4, 2, 1, 0)
static const sub_block_fn sub_blocks[3][3] = {{r1_bf16, r1_bf16_range, r1_u8},
                                              {r2_bf16, r2_bf16_range, r2_u8},
                                              {r4_bf16, r4_bf16_range, r4_u8}};

/* The lanes of track_range's (mn, mx) merged into brange[0] (smallest nonzero magnitude)
 * and brange[1] (largest finite one). */
static void merge_range(__m512i mn, __m512i mx, uint16_t *brange)
{
    uint16_t lo[32], hi[32];
    _mm512_storeu_si512((void *)lo, _mm512_add_epi16(mn, _mm512_set1_epi16(1)));
    _mm512_storeu_si512((void *)hi, _mm512_sub_epi16(mx, _mm512_set1_epi16(0x0080)));
    for (int i = 0; i < 32; i++) {
        brange[0] = lo[i] < brange[0] ? lo[i] : brange[0];
        brange[1] = hi[i] > brange[1] ? hi[i] : brange[1];
    }
}

/* The last step of every kernel, under the caller's MXCSR (no FTZ): C * scale, NaN ->
 * 0x7FC00000, for rows 0 .. m-1 and columns [j0, j1) of out. */
static void scale_out(int64_t m, int64_t j0, int64_t j1, float scale, float *out, int64_t ldo)
{
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

/* ---- the vdpbf16ps order, B row-major ----------------------------------------------------
 *
 * One chain of VDPBF16PS per output over the pairs, in order, from +0 (dk_gemm.h; the
 * instruction itself: odd element first, DAZ, FTZ, MXCSR ignored). B is read as above: 8
 * rows (4 pairs) at a time across a panel of columns. Rows 2p and 2p + 1 (zeros for the
 * missing odd row of an odd k: the order's padding) are interleaved into pairs within the
 * 128-bit lanes (lo: columns 8L..8L+3 of lane L, hi: 8L+4..8L+7), so C waits in the panel
 * buffer in that order between the sub-blocks and is put back in column order once, after
 * the last pair. */

/* Pairs [s0, s1) for rows i0 .. i0+RB-1 and columns [j, j + 16*CV) (w valid; CV even): C
 * from +0 at pair 0, else from `part` (RB*CV*16 floats, 64-byte aligned); after the last
 * pair into out (not yet scaled), else back to `part`. ap: A's pairs s0 .. s1-1 of row
 * i0 + r at ap[r * SUB + (p - s0)] (zeros past k and m). */
DK_INLINE void vdp_sub(const int RB, const int CV, const int u8, const int trk, int64_t m,
                       int64_t k, int64_t s0, int64_t s1, int64_t i0, int64_t j, int64_t w,
                       const uint32_t *ap, const void *b, int64_t brs, const __m512i t[8],
                       float *out, int64_t ldo, __m512i *rng, float *part)
{
    __m512i rmn = trk ? rng[0] : _mm512_setzero_si512();
    __m512i rmx = trk ? rng[1] : _mm512_setzero_si512();
    const int64_t kpairs = (k + 1) / 2;
    const int first = s0 == 0, last = s1 == kpairs;
    __mmask32 mask[4];
    chunk_masks(CV, w, mask);
    __m512 c[4][8];
#pragma GCC unroll 8
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 8
        for (int v = 0; v < CV; v++)
            c[r][v] = first ? _mm512_setzero_ps() : _mm512_load_ps(part + 16 * (r * CV + v));
    for (int64_t p = s0; p < s1; p++) {
        const int odd = 2 * p + 1 < k;
#pragma GCC unroll 8
        for (int v = 0; v < CV; v += 2) {
            const int64_t off = 2 * p * brs + j + 16 * v;
            __m512i ev, od = _mm512_setzero_si512();
            if (u8) {
                ev = dk_lut512(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(
                                   mask[v / 2], (const uint8_t *)b + off)), t);
                if (odd)
                    od = dk_lut512(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(
                                       mask[v / 2], (const uint8_t *)b + off + brs)), t);
            } else {
                ev = _mm512_maskz_loadu_epi16(mask[v / 2], (const uint16_t *)b + off);
                if (odd) od = _mm512_maskz_loadu_epi16(mask[v / 2], (const uint16_t *)b + off + brs);
            }
            if (trk) {
                track_range(ev, &rmn, &rmx);
                track_range(od, &rmn, &rmx);
            }
            const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(ev, od);
            const __m512bh hi = (__m512bh)_mm512_unpackhi_epi16(ev, od);
#pragma GCC unroll 8
            for (int r = 0; r < RB; r++) {
                const __m512bh av = (__m512bh)_mm512_set1_epi32((int)ap[r * SUB + (p - s0)]);
                c[r][v] = _mm512_dpbf16_ps(c[r][v], lo, av);
                c[r][v + 1] = _mm512_dpbf16_ps(c[r][v + 1], hi, av);
            }
        }
    }
    if (trk) {
        rng[0] = rmn;
        rng[1] = rmx;
    }
    if (!last) {
#pragma GCC unroll 8
        for (int r = 0; r < RB; r++)
#pragma GCC unroll 8
            for (int v = 0; v < CV; v++) _mm512_store_ps(part + 16 * (r * CV + v), c[r][v]);
        return;
    }
    /* back to column order: columns 0..15, 16..31 of the 32 of (lo, hi) */
    const __m512i c0 = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i c1 = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
#pragma GCC unroll 8
    for (int r = 0; r < RB; r++) {
        if (i0 + r >= m) break;
#pragma GCC unroll 8
        for (int v = 0; v < CV; v += 2) {
            const __m512 tt[2] = {_mm512_permutex2var_ps(c[r][v], c0, c[r][v + 1]),
                                  _mm512_permutex2var_ps(c[r][v], c1, c[r][v + 1])};
            for (int h = 0; h < 2; h++) {
                const __mmask16 mv = (__mmask16)(h ? mask[v / 2] >> 16 : mask[v / 2]);
                if (mv) _mm512_mask_storeu_ps(out + (i0 + r) * ldo + j + 16 * (v + h), mv, tt[h]);
            }
        }
    }
}

typedef void (*vdp_sub_fn)(int64_t m, int64_t k, int64_t s0, int64_t s1, int64_t i0, int64_t j,
                           int64_t w, const uint32_t *ap, const void *b, int64_t brs,
                           const __m512i *t, float *out, int64_t ldo, __m512i *rng, float *part);
#define VDP_SUB_FN(NAME, RB, CV, U8, TRK)                                                      \
    static void NAME(int64_t m, int64_t k, int64_t s0, int64_t s1, int64_t i0, int64_t j,       \
                     int64_t w, const uint32_t *ap, const void *b, int64_t brs,                 \
                     const __m512i *t, float *out, int64_t ldo, __m512i *rng, float *part)      \
    {                                                                                          \
        vdp_sub(RB, CV, U8, TRK, m, k, s0, s1, i0, j, w, ap, b, brs, t, out, ldo, rng, part);   \
    }
/* the register blocks of the amx-order kernel above: rows x vectors, BF16 B, BF16 B with
 * its range measured, 8-bit B */
#define VDP_SUB_FNS(RB, CV, CV8)                                                               \
    VDP_SUB_FN(v##RB##_bf16, RB, CV, 0, 0)                                                     \
    VDP_SUB_FN(v##RB##_bf16_range, RB, CV, 0, 1)                                               \
    VDP_SUB_FN(v##RB##_u8, RB, CV8, 1, 0)
VDP_SUB_FNS(1, 8, 4)
VDP_SUB_FNS(2, 4, 4)
VDP_SUB_FNS(4, 2, 2)
static const vdp_sub_fn vdp_subs[3][3] = {{v1_bf16, v1_bf16_range, v1_u8},
                                          {v2_bf16, v2_bf16_range, v2_u8},
                                          {v4_bf16, v4_bf16_range, v4_u8}};

/* The row-major kernels of both orders: B read 8 rows at a time across a panel of columns
 * (the amx order: blocks of 16 pairs outermost, E and O in the panel buffer between the
 * sub-blocks, C in out between the blocks; the vdpbf16ps order: panels outermost, C in the
 * panel buffer over all of k). */
static void smallm_rm(int vdp, int64_t m, int64_t k, int64_t j0, int64_t j1, const void *a,
                      int64_t ars, int64_t acs, int akind, const uint16_t *atab, const void *b,
                      int64_t brs, int bkind, const uint16_t *btab, float scale, float *out,
                      int64_t ldo, uint16_t *brange)
{
    __m512i t[8] = {0};
    __m512i rng[2];
    range_start(&rng[0], &rng[1]);
    const int u8 = bkind == DK_GEMM_U8;
    __m512i *r = brange && !u8 ? rng : NULL;
    if (u8) dk_lut512_load(btab, t);
    int rbi, rb, cv;
    reg_block(m, u8, &rbi, &rb, &cv);
    const int64_t step = 16 * cv, mp = (m + rb - 1) / rb * rb;
    const int64_t esz = u8 ? 1 : 2;
    const int64_t kpairs = (k + 1) / 2;
    float part[PANEL_FLOATS] __attribute__((aligned(64)));
    if (vdp) {
        const vdp_sub_fn plain = vdp_subs[rbi][u8 ? 2 : 0];
        const vdp_sub_fn first = r ? vdp_subs[rbi][1] : plain; /* B read, and measured, once */
        const int64_t pw = panel_width(mp, 1, step);             /* C */
        uint32_t ap[DK_GEMM_SMALLM_MAX * SUB];
        for (int64_t jp = j0; jp < j1; jp += pw) {
            const int64_t jq = j1 - jp < pw ? j1 : jp + pw;
            for (int64_t s0 = 0; s0 < kpairs; s0 += SUB) {
                const int64_t s1 = s0 + SUB < kpairs ? s0 + SUB : kpairs;
                /* A's pairs s0 .. s0+SUB-1, zeros past k and m */
                dk_gemm_a_pairs(a, ars, acs, akind, atab, m, k, s0, mp, SUB, ap, SUB);
                float *pp = part;
                for (int64_t j = jp, w; j < jq; j += w) {
                    w = chunk_width(b, esz, jp, j, jq, step);
                    for (int64_t i0 = 0; i0 < m; i0 += rb, pp += 16 * rb * cv)
                        (i0 == 0 ? first : plain)(m, k, s0, s1, i0, j, w, ap + i0 * SUB, b, brs,
                                                  t, out, ldo, i0 == 0 ? r : NULL, pp);
                }
            }
        }
    } else {
        const sub_block_fn plain = sub_blocks[rbi][u8 ? 2 : 0];
        const sub_block_fn first = r ? sub_blocks[rbi][1] : plain;
        const int64_t pw = panel_width(mp, 2, step);             /* E and O */
        float ab[DK_GEMM_SMALLM_MAX][32];
        unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
        for (int64_t p0 = 0; p0 < kpairs; p0 += BLK) {
            /* the block's A values as FP32: zeros past k and in the rows from m up to mp */
            dk_gemm_a_f32(a, ars, acs, akind, atab, m, k, 2 * p0, mp, 32, &ab[0][0], 32);
            const int64_t np = kpairs - p0 < BLK ? kpairs - p0 : BLK;
            for (int64_t jp = j0; jp < j1; jp += pw) {
                const int64_t jq = j1 - jp < pw ? j1 : jp + pw;
                for (int64_t s0 = p0; s0 < p0 + np; s0 += SUB) {
                    const int64_t s1 = s0 + SUB < p0 + np ? s0 + SUB : p0 + np;
                    float *pp = part;
                    for (int64_t j = jp, w; j < jq; j += w) {
                        w = chunk_width(b, esz, jp, j, jq, step);
                        for (int64_t i0 = 0; i0 < m; i0 += rb, pp += 32 * rb * cv)
                            (i0 == 0 ? first : plain)(m, k, p0, s0, s1, i0, j, w, ab[i0], b, brs,
                                                      t, out, ldo, i0 == 0 ? r : NULL, pp);
                    }
                }
            }
        }
        _mm_setcsr(csr);
    }
    if (r) merge_range(rng[0], rng[1], brange);
    scale_out(m, j0, j1, scale, out, ldo);
}

void dk_gemm_smallm_amx_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1,
                               const void *a, int64_t ars, int64_t acs, int akind,
                               const uint16_t *atab, const void *b, int64_t brs, int bkind,
                               const uint16_t *btab, float scale, float *out, int64_t ldo,
                               uint16_t *brange)
{
    smallm_rm(0, m, k, j0, j1, a, ars, acs, akind, atab, b, brs, bkind, btab, scale, out, ldo,
              brange);
}

void dk_gemm_smallm_vdp_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1,
                               const void *a, int64_t ars, int64_t acs, int akind,
                               const uint16_t *atab, const void *b, int64_t brs, int bkind,
                               const uint16_t *btab, float scale, float *out, int64_t ldo,
                               uint16_t *brange)
{
    smallm_rm(1, m, k, j0, j1, a, ars, acs, akind, atab, b, brs, bkind, btab, scale, out, ldo,
              brange);
}

/* ---- B with unit row stride (B = W^T, W row-major: torch's linear layout) ------------------
 *
 * Column j of B is a contiguous row of W. A group of 16 columns is read 16 rows of W at a
 * time, 32 k-values (one block) of each: 16 loads of 32 codes, a 16 x 16 transpose of their
 * 32-bit pairs, and pair q of the 16 columns is one vector (column l in lane l), as the
 * packers' pair layout would hold it. Per row of A, E and O are one register each over the
 * block's 16 pairs, in order, from +0 (a partial block runs its padding pairs: A's buffer
 * holds zeros there and the masked loads read zeros, so each is fma(+0, +0, .), as in the
 * order's definition); C = C + T stays in a register over all of k up to
 * DK_GEMM_SMALLM_MAX rows, and waits in a stack buffer between the blocks beyond
 * (bt_group_rows). The 16 rows of W are read front to back, 16 streams the prefetchers
 * follow. */

/* t[q] lane l = r[l] lane q (32-bit lanes). */
DK_INLINE void transpose16(const __m512i r[16], __m512i t[16])
{
    __m512i a[16], b[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* b[4i + c], 128-bit lane L: rows 4i .. 4i+3 of element 4L + c */
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    /* t[4L + c] = lane L of b[c], b[4 + c], b[8 + c], b[12 + c] */
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        const __m512i s01 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);     /* lanes 0, 1 */
        const __m512i s23 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
        const __m512i u01 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);     /* lanes 2, 3 */
        const __m512i u23 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
        t[c] = _mm512_shuffle_i32x4(s01, s23, 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(s01, s23, 0xDD);
        t[8 + c] = _mm512_shuffle_i32x4(u01, u23, 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(u01, u23, 0xDD);
    }
}

/* track_range over 16 loads, their lanes reduced as a tree first: a chain of 16 updates
 * of (mn, mx) made the kernel a quarter slower. */
DK_INLINE void track_range16(const __m512i rw[16], __m512i *mn, __m512i *mx)
{
    __m512i lo[16], hi[16];
#pragma GCC unroll 16
    for (int l = 0; l < 16; l++) {
        const __m512i v = _mm512_and_si512(rw[l], _mm512_set1_epi16(0x7FFF));
        hi[l] = _mm512_add_epi16(v, _mm512_set1_epi16(0x0080));
        lo[l] = _mm512_sub_epi16(v, _mm512_set1_epi16(1));
    }
#pragma GCC unroll 4
    for (int h = 8; h >= 1; h /= 2)
#pragma GCC unroll 8
        for (int l = 0; l < h; l++) {
            hi[l] = _mm512_max_epi16(hi[l], hi[l + h]);
            lo[l] = _mm512_min_epu16(lo[l], lo[l + h]);
        }
    *mx = _mm512_max_epi16(*mx, hi[0]);
    *mn = _mm512_min_epu16(*mn, lo[0]);
}

/* The k block [k0, k0 + 32) of columns [j, j + g) (g <= 16) of B, transposed: tw[q] lane
 * l = the BF16 pair (2q, 2q + 1) of the block in column j + l, zeros past k and past g
 * (for an 8-bit B, zeros too, not table[0]: the padding pairs read them); their range
 * merged into (rmn, rmx) when trk. */
DK_INLINE void bt_block(const int u8, const int trk, int64_t k, int64_t k0, int64_t j,
                        int64_t g, const void *b, int64_t bcs, const __m512i lut[8],
                        __m512i tw[16], __m512i *rmn, __m512i *rmx)
{
    const int64_t kc = k - k0 < 32 ? k - k0 : 32;
    const __mmask32 km = kc == 32 ? 0xFFFFFFFFu : (__mmask32)((1u << kc) - 1);
    __m512i rw[16];
#pragma GCC unroll 16
    for (int l = 0; l < 16; l++) {
        if (l >= g) {
            rw[l] = _mm512_setzero_si512();
            continue;
        }
        if (u8)
            rw[l] = _mm512_maskz_mov_epi16(
                km, dk_lut512(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(
                                  km, (const uint8_t *)b + (j + l) * bcs + k0)), lut));
        else
            rw[l] = _mm512_maskz_loadu_epi16(km, (const uint16_t *)b + (j + l) * bcs + k0);
    }
    if (trk) track_range16(rw, rmn, rmx);
    transpose16(rw, tw);
}

/* One row of A on a transposed block tw (bt_block), amx order: c + (E + O), E and O the FMA
 * chains of the even and the odd elements over the block's 16 pairs; ap: the row's 32 FP32
 * values of the block. */
DK_INLINE __m512 bt_row(__m512 c, const __m512i tw[16], const float *ap)
{
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 e = _mm512_setzero_ps(), o = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int q = 0; q < 16; q++) {
        e = _mm512_fmadd_ps(_mm512_set1_ps(ap[2 * q]),
                            _mm512_castsi512_ps(_mm512_slli_epi32(tw[q], 16)), e);
        o = _mm512_fmadd_ps(_mm512_set1_ps(ap[2 * q + 1]),
                            _mm512_castsi512_ps(_mm512_and_si512(tw[q], high)), o);
    }
    return _mm512_add_ps(c, _mm512_add_ps(e, o));
}

/* ... and in the vdpbf16ps order: one chain of VDPBF16PS over the block's first np pairs
 * (np = 16 but in the last block: see bt_group_vdp); pp: the row's pairs of the block. */
DK_INLINE __m512 bt_row_vdp(__m512 c, const __m512i tw[16], const uint32_t *pp, int np)
{
    if (np == 16) {
#pragma GCC unroll 16
        for (int q = 0; q < 16; q++)
            c = _mm512_dpbf16_ps(c, (__m512bh)tw[q], (__m512bh)_mm512_set1_epi32((int)pp[q]));
    } else {
        for (int q = 0; q < np; q++)
            c = _mm512_dpbf16_ps(c, (__m512bh)tw[q], (__m512bh)_mm512_set1_epi32((int)pp[q]));
    }
    return c;
}

/* The pairs of the order in the block from k0 (k > k0): 16, or ceil((k - k0)/2) in the last. */
DK_INLINE int bt_block_pairs(int64_t k, int64_t k0) { return k - k0 >= 32 ? 16 : (int)(k - k0 + 1) / 2; }

/* Columns [j, j + g) (g <= 16) for rows 0 .. min(m, MR) - 1: C into out (not yet scaled).
 * af: A as FP32, row r at af + r*kpad, zeros from k to kpad. */
DK_INLINE void bt_group(const int MR, const int u8, const int trk, int64_t m, int64_t k,
                        int64_t j, int64_t g, const float *af, int64_t kpad, const void *b,
                        int64_t bcs, const __m512i lut[8], float *out, int64_t ldo,
                        __m512i *rmn, __m512i *rmx)
{
    __m512 c[8];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) c[r] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < k; k0 += 32) {
        __m512i tw[16];
        bt_block(u8, trk, k, k0, j, g, b, bcs, lut, tw, rmn, rmx);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            if (r >= m) break;
            c[r] = bt_row(c[r], tw, af + r * kpad + k0);
        }
    }
    const __mmask16 gm = g == 16 ? 0xFFFF : (__mmask16)((1u << g) - 1);
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        if (r >= m) break;
        _mm512_mask_storeu_ps(out + r * ldo + j, gm, c[r]);
    }
}

/* The vdpbf16ps order on the same blocks: per row of A one chain of VDPBF16PS over the
 * pairs, in order, from +0, the instruction itself (odd element first, DAZ, FTZ: dk_gemm.h;
 * it ignores MXCSR). Only the ceil(k/2) pairs of the order run (a padding pair past them
 * would turn a -0 into +0); a missing odd element of an odd k is the zero of the order's
 * padding (masked loads read zeros, A's pairs hold zeros there). ap: A's BF16 codes as
 * pairs, row r at ap + r*kpad/2, zeros from k. */
DK_INLINE void bt_group_vdp(const int MR, const int u8, const int trk, int64_t m, int64_t k,
                            int64_t j, int64_t g, const uint32_t *ap, int64_t kpad,
                            const void *b, int64_t bcs, const __m512i lut[8], float *out,
                            int64_t ldo, __m512i *rmn, __m512i *rmx)
{
    __m512 c[8];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) c[r] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < k; k0 += 32) {
        __m512i tw[16];
        bt_block(u8, trk, k, k0, j, g, b, bcs, lut, tw, rmn, rmx);
        const int np = bt_block_pairs(k, k0);
        /* bt_row_vdp's steps written out: through the helper GCC kept tw on the stack
         * (1 to 4 rows 5-12% slower, 1 x 4096 x 4096 on a Zen 4) */
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            if (r >= m) break;
            const uint32_t *pp = ap + r * (kpad / 2) + k0 / 2;
            if (np == 16) {
#pragma GCC unroll 16
                for (int q = 0; q < 16; q++)
                    c[r] = _mm512_dpbf16_ps(c[r], (__m512bh)tw[q],
                                            (__m512bh)_mm512_set1_epi32((int)pp[q]));
            } else {
                for (int q = 0; q < np; q++)
                    c[r] = _mm512_dpbf16_ps(c[r], (__m512bh)tw[q],
                                            (__m512bh)_mm512_set1_epi32((int)pp[q]));
            }
        }
    }
    const __mmask16 gm = g == 16 ? 0xFFFF : (__mmask16)((1u << g) - 1);
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        if (r >= m) break;
        _mm512_mask_storeu_ps(out + r * ldo + j, gm, c[r]);
    }
}

/* Columns [j, j + g) for m rows, DK_GEMM_SMALLM_MAX < m <= DK_GEMM_SMALLM_BT_MAX, in either
 * order (vdp: a holds BF16 pairs, else FP32 values): each block of B is loaded and
 * transposed once and used by every row, 8 rows at a time, each row's C loaded from cb
 * and stored back (two memory operations per row and block, beside 32 FMAs or 16
 * VDPBF16PS). Blocks of 8 rows over the whole of k, each transposing B again, measured
 * 7.4 ms at 9 x 4096 x 4096 against 4.4 at 8 rows (one thread of a Zen 4). */
DK_INLINE void bt_group_rows(const int vdp, const int u8, const int trk, int64_t m, int64_t k,
                             int64_t j, int64_t g, const void *a, int64_t kpad, const void *b,
                             int64_t bcs, const __m512i lut[8], float *out, int64_t ldo,
                             __m512i *rmn, __m512i *rmx)
{
    _Static_assert(DK_GEMM_SMALLM_BT_VDP_MAX <= DK_GEMM_SMALLM_BT_MAX, "cb holds every row");
    __m512 cb[DK_GEMM_SMALLM_BT_MAX]; /* m <= DK_GEMM_SMALLM_BT_MAX: the driver's limits */
    for (int64_t r = 0; r < m; r++) cb[r] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < k; k0 += 32) {
        __m512i tw[16];
        bt_block(u8, trk, k, k0, j, g, b, bcs, lut, tw, rmn, rmx);
        const int np = bt_block_pairs(k, k0);
        for (int64_t r0 = 0; r0 < m; r0 += 8) {
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                const int64_t i = r0 + r;
                if (i >= m) break;
                cb[i] = vdp ? bt_row_vdp(cb[i], tw, (const uint32_t *)a + i * (kpad / 2) + k0 / 2, np)
                            : bt_row(cb[i], tw, (const float *)a + i * kpad + k0);
            }
        }
    }
    const __mmask16 gm = g == 16 ? 0xFFFF : (__mmask16)((1u << g) - 1);
    for (int64_t i = 0; i < m; i++) _mm512_mask_storeu_ps(out + i * ldo + j, gm, cb[i]);
}

/* One function per row count and operand kind (A's type is the order's: FP32 values for
 * the amx order, BF16 pairs for the vdpbf16ps order). */
typedef void (*bt_group_fn)(int64_t m, int64_t k, int64_t j, int64_t g, const void *a,
                            int64_t kpad, const void *b, int64_t bcs, const __m512i *lut,
                            float *out, int64_t ldo, __m512i *rmn, __m512i *rmx);
#define BT_GROUP_FN(NAME, BODY, ATYPE, MR, U8, TRK)                                            \
    static void NAME(int64_t m, int64_t k, int64_t j, int64_t g, const void *a, int64_t kpad,  \
                     const void *b, int64_t bcs, const __m512i *lut, float *out, int64_t ldo,   \
                     __m512i *rmn, __m512i *rmx)                                                \
    {                                                                                          \
        BODY(MR, U8, TRK, m, k, j, g, (const ATYPE *)a, kpad, b, bcs, lut, out, ldo, rmn, rmx); \
    }
/* per order and row count: BF16 B, BF16 B with its range measured, 8-bit B */
#define BT_GROUP_FNS(P, BODY, ATYPE, MR)                                                       \
    BT_GROUP_FN(P##MR##_bf16, BODY, ATYPE, MR, 0, 0)                                           \
    BT_GROUP_FN(P##MR##_bf16_range, BODY, ATYPE, MR, 0, 1)                                     \
    BT_GROUP_FN(P##MR##_u8, BODY, ATYPE, MR, 1, 0)
#define BT_ORDER_FNS(P, BODY, ATYPE)                                                           \
    BT_GROUP_FNS(P, BODY, ATYPE, 1)                                                            \
    BT_GROUP_FNS(P, BODY, ATYPE, 2)                                                            \
    BT_GROUP_FNS(P, BODY, ATYPE, 4)                                                            \
    BT_GROUP_FNS(P, BODY, ATYPE, 8)
#define BT_ORDER_TABLE(P, R)                                                                   \
    {{P##1_bf16, P##1_bf16_range, P##1_u8}, {P##2_bf16, P##2_bf16_range, P##2_u8},              \
     {P##4_bf16, P##4_bf16_range, P##4_u8}, {P##8_bf16, P##8_bf16_range, P##8_u8},              \
     {R##_bf16, R##_bf16_range, R##_u8}}
BT_ORDER_FNS(bt, bt_group, float)
BT_ORDER_FNS(btv, bt_group_vdp, uint32_t)
/* more than DK_GEMM_SMALLM_MAX rows: bt_group_rows, its first argument the order (btr0 the
 * amx order, btr1 vdpbf16ps) */
BT_GROUP_FNS(btr, bt_group_rows, void, 0)
BT_GROUP_FNS(btr, bt_group_rows, void, 1)
static const bt_group_fn bt_groups[2][5][3] = {BT_ORDER_TABLE(bt, btr0), BT_ORDER_TABLE(btv, btr1)};

static void smallm_bt(int vdp, int64_t m, int64_t k, int64_t j0, int64_t j1, const void *a,
                      int64_t kpad, const void *b, int64_t bcs, int bkind,
                      const uint16_t *btab, float scale, float *out, int64_t ldo,
                      uint16_t *brange)
{
    __m512i lut[8] = {0};
    __m512i rmn, rmx;
    range_start(&rmn, &rmx);
    const int u8 = bkind == DK_GEMM_U8, trk = brange != NULL && !u8;
    if (u8) dk_lut512_load(btab, lut);
    /* registers for 1, 2, 4 or 8 rows of A (the rows past m are not computed), or 8 at a
     * time for more (bt_group_rows) */
    const int rows = m == 1 ? 0 : m == 2 ? 1 : m <= 4 ? 2 : m <= DK_GEMM_SMALLM_MAX ? 3 : 4;
    const bt_group_fn fn = bt_groups[vdp][rows][u8 ? 2 : trk];
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ (the amx order's FMAs; VDPBF16PS ignores it) */
    for (int64_t j = j0; j < j1; j += 16)
        fn(m, k, j, j1 - j < 16 ? j1 - j : 16, a, kpad, b, bcs, lut, out, ldo, &rmn, &rmx);
    if (trk) merge_range(rmn, rmx, brange);
    _mm_setcsr(csr);
    scale_out(m, j0, j1, scale, out, ldo);
}

void dk_gemm_smallm_bt_amx_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1, const float *af,
                                  int64_t kpad, const void *b, int64_t bcs, int bkind,
                                  const uint16_t *btab, float scale, float *out, int64_t ldo,
                                  uint16_t *brange)
{
    smallm_bt(0, m, k, j0, j1, af, kpad, b, bcs, bkind, btab, scale, out, ldo, brange);
}

void dk_gemm_smallm_bt_vdp_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1,
                                  const uint32_t *apairs, int64_t kpad, const void *b,
                                  int64_t bcs, int bkind, const uint16_t *btab, float scale,
                                  float *out, int64_t ldo, uint16_t *brange)
{
    smallm_bt(1, m, k, j0, j1, apairs, kpad, b, bcs, bkind, btab, scale, out, ldo, brange);
}
