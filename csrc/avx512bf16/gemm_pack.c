/* gemm_pack.c (avx512bf16 tier) - packing with AVX-512BW: B into the BF16 pair layout (every
 * avx512bf16-tier kernel and the amx tier read B so), A into its slivers (the pair and split
 * layouts of this tier, the amx tier's row tiles).
 *
 * CFloat8 codes are decoded through the 256-entry table held in 8 zmm registers
 * (dk_lut512.h, exact). The (even k, odd k) rows are interleaved with VPERMT2W. */
#include "dk_gemm.h"

#include <immintrin.h>

#include "dk_lut512.h"
#include "dk_range512.h"

/* The VPERMT2W indices that interleave two rows of 32 codes into pairs (even[j], odd[j]):
 * lanes j = 0..15, then j = 16..31. */
static inline __m512i pairs_lo(void)
{
    return _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                            38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
}

static inline __m512i pairs_hi(void)
{
    return _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55,
                            23, 54, 22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
}

static inline void interleave_store(__m512i even, __m512i odd, uint32_t *dst)
{
    _mm512_store_si512((void *)dst, _mm512_permutex2var_epi16(even, pairs_lo(), odd));
    _mm512_store_si512((void *)(dst + 16), _mm512_permutex2var_epi16(even, pairs_hi(), odd));
}

#define PACK_AHEAD 4 /* pairs; 1, 2, 3, 8 and 16 were no better (64x4096x4096) */

/* Prefetch rows 2p and 2p + 1, `run` bytes each, when the rows are a page or more apart
 * (ldk_bytes): the hardware prefetchers do not follow such a walk. */
static inline void prefetch_pair(const char *r0, int64_t ldk_bytes, int64_t run)
{
    for (int64_t o = 0; o < run; o += 64) {
        _mm_prefetch(r0 + o, _MM_HINT_T0);
        _mm_prefetch(r0 + ldk_bytes + o, _MM_HINT_T0);
    }
}

void dk_gemm_pack_pair_u8_avx512(const uint8_t *src, int64_t ldk, int64_t kp, int64_t nr,
                                 int64_t nsl, int64_t ssl, const uint16_t *table, uint32_t *dst)
{
    __m512i t[8];
    dk_lut512_load(table, t);
    const int far = ldk >= 4096;
    for (int64_t p = 0; p < kp; p++) {
        const uint8_t *r0 = src + 2 * p * ldk, *r1 = r0 + ldk;
        if (far && p + PACK_AHEAD < kp)
            prefetch_pair((const char *)(r0 + 2 * PACK_AHEAD * ldk), ldk, nsl * nr);
        for (int64_t s = 0; s < nsl; s++)
            for (int64_t j = s * nr; j < (s + 1) * nr; j += 32) {
                __m512i c0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(r0 + j)));
                __m512i c1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(r1 + j)));
                interleave_store(dk_lut512(c0, t), dk_lut512(c1, t),
                                 dst + s * ssl + p * nr + (j - s * nr));
            }
    }
}

void dk_gemm_range_u16_avx512(const uint16_t *p, int64_t n, uint16_t *rng)
{
    dk_range512 r = dk_range512_start(rng);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) dk_range512_add(&r, _mm512_loadu_si512((const void *)(p + i)));
    if (i < n) /* the tail: masked-off lanes read as zeros, which count for neither end */
        dk_range512_add(&r, _mm512_maskz_loadu_epi16(dk_lanes32(n - i), p + i));
    dk_range512_end(r, rng);
}

void dk_gemm_pack_pair_u16_avx512(const uint16_t *src, int64_t ldk, int64_t kp, int64_t nr,
                                  int64_t nsl, int64_t ssl, uint32_t *dst, uint16_t *rng)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 r = dk_range512_start(rng ? rng : empty);
    /* pair outer, slivers inner: each k-row is read nsl * nr codes at a time. The rows of
     * a wide B are pages apart, past what the hardware prefetchers follow: there the rows
     * PACK_AHEAD pairs on are prefetched by hand (64x4096x4096 on the amx tier, one thread: 1.15x). */
    const int far = ldk * 2 >= 4096;   /* rows a page or more apart */
    for (int64_t p = 0; p < kp; p++) {
        const uint16_t *r0 = src + 2 * p * ldk, *r1 = r0 + ldk;
        if (far && p + PACK_AHEAD < kp)
            prefetch_pair((const char *)(r0 + 2 * PACK_AHEAD * ldk), ldk * 2, nsl * nr * 2);
        for (int64_t s = 0; s < nsl; s++)
            for (int64_t j = s * nr; j < (s + 1) * nr; j += 32) {
                __m512i e = _mm512_loadu_si512((const void *)(r0 + j));
                __m512i o = _mm512_loadu_si512((const void *)(r1 + j));
                if (rng) {
                    dk_range512_add(&r, e);
                    dk_range512_add(&r, o);
                }
                interleave_store(e, o, dst + s * ssl + p * nr + (j - s * nr));
            }
    }
    if (rng) dk_range512_end(r, rng);
}

/* Up to 32 codes of one row of a B edge (the lanes of mask m; src NULL: none) as 16-bit
 * lanes, zeros elsewhere: BF16 codes as they are, 8-bit codes decoded through t. Masked-off
 * lanes are never read, and the caller forms no pointer past the matrix. */
static inline __m512i edge_row_u16(const uint16_t *src, __mmask32 m)
{
    return src ? _mm512_maskz_loadu_epi16(m, src) : _mm512_setzero_si512();
}

static inline __m512i edge_row_u8(const uint8_t *src, __mmask32 m, const __m512i t[8])
{
    if (!src) return _mm512_setzero_si512();
    return _mm512_maskz_mov_epi16(m, dk_lut512(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, src)), t));
}

/* In the edge packers below: the address of k-row `row` at column j, or NULL when there is
 * nothing to read there (the row is past the krows that exist, or no column from j exists:
 * w = ncols - j <= 0). */
#define EDGE_ROW(src, row) ((w) > 0 && (row) < krows ? (src) + (row) * ldk + j : NULL)

void dk_gemm_pack_pair_edge_u8_avx512(const uint8_t *src, int64_t ldk, int64_t krows, int64_t kp,
                                      int64_t ncols, int64_t nr, const uint16_t *table,
                                      uint32_t *dst)
{
    __m512i t[8];
    dk_lut512_load(table, t);
    for (int64_t p = 0; p < kp; p++)
        for (int64_t j = 0; j < nr; j += 32) {
            const int64_t w = ncols - j;
            const __mmask32 m = dk_lanes32(w);
            interleave_store(edge_row_u8(EDGE_ROW(src, 2 * p), m, t),
                             edge_row_u8(EDGE_ROW(src, 2 * p + 1), m, t), dst + p * nr + j);
        }
}

void dk_gemm_pack_pair_edge_u16_avx512(const uint16_t *src, int64_t ldk, int64_t krows,
                                       int64_t kp, int64_t ncols, int64_t nr, uint32_t *dst,
                                       uint16_t *rng)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 r = dk_range512_start(rng ? rng : empty);
    for (int64_t p = 0; p < kp; p++)
        for (int64_t j = 0; j < nr; j += 32) {
            const int64_t w = ncols - j;
            const __mmask32 m = dk_lanes32(w);
            const __m512i e = edge_row_u16(EDGE_ROW(src, 2 * p), m);
            const __m512i o = edge_row_u16(EDGE_ROW(src, 2 * p + 1), m);
            if (rng) {
                dk_range512_add(&r, e);
                dk_range512_add(&r, o);
            }
            interleave_store(e, o, dst + p * nr + j);
        }
    if (rng) dk_range512_end(r, rng);
}

#undef EDGE_ROW

void dk_gemm_pack_rowtile_u8_avx512(const uint8_t *src, int64_t lda, int64_t rows,
                                    int64_t nblk, int64_t klast, int64_t mr,
                                    const uint16_t *table, uint32_t *dst)
{
    __m512i t[8];
    dk_lut512_load(table, t);
    const __mmask32 last = dk_lanes32(klast);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *q = src + r * lda;
        for (int64_t b = 0; b < nblk; b++) {
            /* 32 codes in k order: lane j holds (k = 2j | k = 2j+1 << 16) once decoded; in a
             * partial last block the lanes past k are zeros */
            const __mmask32 mk = b + 1 < nblk ? (__mmask32)~0u : last;
            const __m256i raw = mk == (__mmask32)~0u ? _mm256_loadu_si256((const __m256i *)(q + 32 * b))
                                                     : _mm256_maskz_loadu_epi8(mk, q + 32 * b);
            __m512i c = _mm512_maskz_mov_epi16(mk, dk_lut512(_mm512_cvtepu8_epi16(raw), t));
            _mm512_store_si512((void *)(dst + b * 16 * mr + r * 16), c);
        }
    }
    for (int64_t r = rows; r < mr; r++) /* padding rows */
        for (int64_t b = 0; b < nblk; b++)
            _mm512_store_si512((void *)(dst + b * 16 * mr + r * 16), _mm512_setzero_si512());
}

void dk_gemm_pack_rowtile_u16_avx512(const uint16_t *src, int64_t lda, int64_t rows,
                                     int64_t nblk, int64_t klast, int64_t mr, uint32_t *dst,
                                     uint16_t *rng)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 rg = dk_range512_start(rng ? rng : empty);
    /* the last block's codes: the lanes past them load as zeros (and are never read) */
    const __mmask32 last = dk_lanes32(klast);
    /* rows outer: each row of A is read in k order */
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *q = src + r * lda;
        for (int64_t b = 0; b < nblk; b++) {
            const __mmask32 mk = b + 1 < nblk ? (__mmask32)~0u : last;
            __m512i c = mk == (__mmask32)~0u ? _mm512_loadu_si512((const void *)(q + 32 * b))
                                             : _mm512_maskz_loadu_epi16(mk, q + 32 * b);
            if (rng) dk_range512_add(&rg, c);
            _mm512_store_si512((void *)(dst + b * 16 * mr + r * 16), c);
        }
    }
    for (int64_t r = rows; r < mr; r++) /* padding rows */
        for (int64_t b = 0; b < nblk; b++)
            _mm512_store_si512((void *)(dst + b * 16 * mr + r * 16), _mm512_setzero_si512());
    if (rng) dk_range512_end(rg, rng);
}

/* ---- transposing packers: the operands a torch Linear hands over as transposed views ----
 * (W^T as B, k contiguous; dY^T as A, rows contiguous). Both layouts then need a transpose
 * of 32-bit lanes, done 16 x 16 at a time in registers. */

/* The first two rounds of a 32-bit transpose of rows r[0..n) (n a multiple of 4): unpacks
 * of 32-bit, then 64-bit lanes give, per group g of 4 rows and element e of a 128-bit
 * block, v[4g + e] holding rows 4g..4g+3 at column 4L + e in block L. */
static inline void unpack_rounds_u32(const __m512i *r, int n, __m512i *v)
{
    for (int g = 0; g < n / 4; g++) {
        const __m512i t0 = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
        const __m512i t1 = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
        const __m512i t2 = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
        const __m512i t3 = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
        v[4 * g + 0] = _mm512_unpacklo_epi64(t0, t2);
        v[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
        v[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
        v[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
}

/* r[0..15] (16 lanes each) transposed in place: lane j of r[i] goes to lane i of r[j]. After
 * the unpack rounds, two rounds of 128-bit shuffles transpose the 4 x 4 blocks (g, L). */
static inline void transpose16_u32(__m512i r[16])
{
    __m512i v[16];
    unpack_rounds_u32(r, 16, v);
    for (int e = 0; e < 4; e++) {
        __m512i x0 = _mm512_shuffle_i32x4(v[e], v[4 + e], 0x44);
        __m512i x1 = _mm512_shuffle_i32x4(v[e], v[4 + e], 0xEE);
        __m512i x2 = _mm512_shuffle_i32x4(v[8 + e], v[12 + e], 0x44);
        __m512i x3 = _mm512_shuffle_i32x4(v[8 + e], v[12 + e], 0xEE);
        r[e] = _mm512_shuffle_i32x4(x0, x2, 0x88);
        r[4 + e] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
        r[8 + e] = _mm512_shuffle_i32x4(x1, x3, 0x88);
        r[12 + e] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
    }
}

/* dk_line_codes (dk_lut512.h): n codes of a line, 8-bit ones decoded */

/* The pair layout from k-contiguous lines, for both code widths (esz bytes a code; t as in
 * line_codes; rng NULL or the BF16 range to merge). */
__attribute__((always_inline)) static inline void
pair_klines(const char *src, size_t esz, int64_t ldl, int64_t nlines, int64_t kcodes, int64_t kp,
            int64_t nr, const __m512i *t, uint32_t *dst, uint16_t *rng)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 rg = dk_range512_start(rng ? rng : empty);
    for (int64_t p0 = 0; p0 < kp; p0 += 16) {
        const int64_t np = kp - p0 < 16 ? kp - p0 : 16; /* pairs of this block stored */
        const int64_t kin = kcodes - 2 * p0;             /* codes of each line from here */
        for (int64_t g = 0; g < nr; g += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                const int64_t l = g + i; /* no pointer past the lines or codes that exist */
                r[i] = dk_line_codes(l < nlines && kin > 0 ? src + (l * ldl + 2 * p0) * (int64_t)esz : NULL,
                                  kin, t);
                if (rng) dk_range512_add(&rg, r[i]);
            }
            transpose16_u32(r);
            for (int64_t q = 0; q < np; q++)
                _mm512_store_si512((void *)(dst + (p0 + q) * nr + g), r[q]);
        }
    }
    if (rng) dk_range512_end(rg, rng);
}

void dk_gemm_pack_pair_klines_u16_avx512(const uint16_t *src, int64_t ldl, int64_t nlines,
                                         int64_t kcodes, int64_t kp, int64_t nr, uint32_t *dst,
                                         uint16_t *rng)
{
    pair_klines((const char *)src, 2, ldl, nlines, kcodes, kp, nr, NULL, dst, rng);
}

void dk_gemm_pack_pair_klines_u8_avx512(const uint8_t *src, int64_t ldl, int64_t nlines,
                                        int64_t kcodes, int64_t kp, int64_t nr,
                                        const uint16_t *table, uint32_t *dst)
{
    __m512i t[8];
    dk_lut512_load(table, t);
    pair_klines((const char *)src, 1, ldl, nlines, kcodes, kp, nr, t, dst, NULL); /* never ranged */
}

/* Row tiles from an A whose rows are contiguous (column kk at src + kk*ldk), for both code
 * widths (as pair_klines): per block of 32 k and half of 16 rows, the two columns of each
 * pair interleaved into 16 pair lanes over the rows, then transposed into the tile's 16 rows
 * of 16 pairs. */
__attribute__((always_inline)) static inline void
rowtile_cols(const char *src, size_t esz, int64_t ldk, int64_t rows, int64_t nblk, int64_t klast,
             const __m512i *t, uint32_t *dst, uint16_t *rng)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 rg = dk_range512_start(rng ? rng : empty);
    const int64_t ldb = ldk * (int64_t)esz;
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t kb = b + 1 < nblk ? 32 : klast; /* codes of this block */
        __m512i lo[16], hi[16];
        for (int p = 0; p < 16; p++) {
            const __m512i e = dk_line_codes(2 * p < kb ? src + (32 * b + 2 * p) * ldb : NULL, rows, t);
            const __m512i o = dk_line_codes(2 * p + 1 < kb ? src + (32 * b + 2 * p + 1) * ldb : NULL, rows, t);
            if (rng) {
                dk_range512_add(&rg, e);
                dk_range512_add(&rg, o);
            }
            lo[p] = _mm512_permutex2var_epi16(e, pairs_lo(), o); /* rows 0..15 */
            hi[p] = _mm512_permutex2var_epi16(e, pairs_hi(), o); /* rows 16..31 */
        }
        transpose16_u32(lo);
        transpose16_u32(hi);
        for (int i = 0; i < 16; i++) {
            _mm512_store_si512((void *)(dst + b * 16 * 32 + i * 16), lo[i]);
            _mm512_store_si512((void *)(dst + b * 16 * 32 + (16 + i) * 16), hi[i]);
        }
    }
    if (rng) dk_range512_end(rg, rng);
}

void dk_gemm_pack_rowtile_cols_u16_avx512(const uint16_t *src, int64_t ldk, int64_t rows,
                                          int64_t nblk, int64_t klast, uint32_t *dst,
                                          uint16_t *rng)
{
    rowtile_cols((const char *)src, 2, ldk, rows, nblk, klast, NULL, dst, rng);
}

void dk_gemm_pack_rowtile_cols_u8_avx512(const uint8_t *src, int64_t ldk, int64_t rows,
                                         int64_t nblk, int64_t klast, const uint16_t *table,
                                         uint32_t *dst)
{
    __m512i t[8];
    dk_lut512_load(table, t);
    rowtile_cols((const char *)src, 1, ldk, rows, nblk, klast, t, dst, NULL); /* never ranged */
}

/* ---- A from k-contiguous rows (a row-major A) into the few-line slivers of this tier's
 * kernels: the pair layout (MR = 6) and the split layout (MR = 7 and 14, FP32 with DAZ) ----
 * Per block of 16 pairs and group of 8 lines, the lines' pair lanes are transposed in
 * registers and each pair's lines stored with a mask: no scalar loop, no per-pair call. */

/* r[0..7] (lines 0..7, 16 pair lanes each) into w[0..7], each two pairs' 8 lines: w[e]
 * holds pair e (low 256 bits) and pair 4 + e (high), w[4 + e] pairs 8 + e and 12 + e
 * (e = 0..3). After the unpack rounds (u[4g + e]: lines 4g..4g+3 of pair 4L + e in
 * 128-bit block L) a VPERMT2Q joins the two halves of the lines per pair. */
static inline void transpose8x16_u32(const __m512i r[8], __m512i w[8])
{
    __m512i u[8];
    unpack_rounds_u32(r, 8, u);
    const __m512i blocks01 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i blocks23 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (int e = 0; e < 4; e++) {
        w[e] = _mm512_permutex2var_epi64(u[e], blocks01, u[4 + e]);
        w[4 + e] = _mm512_permutex2var_epi64(u[e], blocks23, u[4 + e]);
    }
}

/* The FP32 values (DAZ: a subnormal reads as a zero of its sign) of the high (odd-k) codes
 * of pair lanes: the split layout's widening (the driver's widen_bits). The even-k (low)
 * codes are the high ones of the lanes shifted left by 16. */
static inline __m512i widen_high(__m512i w)
{
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u), expo = _mm512_set1_epi32(0x7F800000);
    const __m512i v = _mm512_and_si512(w, _mm512_set1_epi32((int)0xFFFF0000u));
    return _mm512_mask_mov_epi32(_mm512_and_si512(w, sign), _mm512_test_epi32_mask(w, expo), v);
}

/* Half h (0: low 256 bits, 1: high) of v. */
static inline __m256i half256(__m512i v, int h)
{
    return h ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v);
}

/* One sliver of lw (1..16) lines, nlines <= lw of them present, for both code widths (esz
 * bytes a code; t as in dk_line_codes; rng NULL or the BF16 range to merge). */
__attribute__((always_inline)) static inline void
lines_kc(const char *src, size_t esz, int64_t ldl, int64_t nlines, int64_t kcodes, int64_t kp,
         int64_t lw, int split, const __m512i *t, uint32_t *dst, uint16_t *rng)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 rg = dk_range512_start(rng ? rng : empty);
    const int64_t width = split ? 2 * lw : lw; /* lanes per pair */
    for (int64_t p0 = 0; p0 < kp; p0 += 16) {
        const int64_t np = kp - p0 < 16 ? kp - p0 : 16; /* pairs of this block stored */
        const int64_t kin = kcodes - 2 * p0;             /* codes of each line from here */
        for (int64_t g = 0; g < lw; g += 8) {
            const __mmask8 lanes = (__mmask8)((1u << (lw - g < 8 ? lw - g : 8)) - 1u);
            __m512i r[8], w[8];
            for (int i = 0; i < 8; i++) {
                const int64_t l = g + i; /* no pointer past the lines or codes that exist */
                r[i] = dk_line_codes(l < nlines && kin > 0 ? src + (l * ldl + 2 * p0) * (int64_t)esz : NULL,
                                  kin, t);
                if (rng) dk_range512_add(&rg, r[i]);
            }
            transpose8x16_u32(r, w);
            for (int x = 0; x < 8; x++) {
                const __m512i odd = split ? widen_high(w[x]) : w[x];
                const __m512i even = split ? widen_high(_mm512_slli_epi32(w[x], 16)) : w[x];
                for (int h = 0; h < 2; h++) {
                    const int64_t q = (x < 4 ? 0 : 8) + 4 * h + (x & 3); /* the pair */
                    if (q >= np) continue;
                    uint32_t *o = dst + (p0 + q) * width + g;
                    _mm256_mask_storeu_epi32((void *)o, lanes, half256(odd, h));
                    if (split) _mm256_mask_storeu_epi32((void *)(o + lw), lanes, half256(even, h));
                }
            }
        }
    }
    if (rng) dk_range512_end(rg, rng);
}

void dk_gemm_pack_lines_kc_u16_avx512(const uint16_t *src, int64_t ldl, int64_t nlines,
                                      int64_t kcodes, int64_t kp, int64_t lw, int split,
                                      uint32_t *dst, uint16_t *rng)
{
    if (split) lines_kc((const char *)src, 2, ldl, nlines, kcodes, kp, lw, 1, NULL, dst, rng);
    else lines_kc((const char *)src, 2, ldl, nlines, kcodes, kp, lw, 0, NULL, dst, rng);
}

void dk_gemm_pack_lines_kc_u8_avx512(const uint8_t *src, int64_t ldl, int64_t nlines,
                                     int64_t kcodes, int64_t kp, int64_t lw, int split,
                                     const uint16_t *table, uint32_t *dst)
{
    __m512i t[8];
    dk_lut512_load(table, t);
    if (split) lines_kc((const char *)src, 1, ldl, nlines, kcodes, kp, lw, 1, t, dst, NULL);
    else lines_kc((const char *)src, 1, ldl, nlines, kcodes, kp, lw, 0, t, dst, NULL);
}

/* The same slivers from an A whose rows are contiguous (a transposed A: the dY^T of a torch
 * Linear's dW; k-row kk at src + kk*ldk, lines in order): nsl slivers at once, pair outer,
 * so that each k-row is read across all of them (the B packers' walk) and a page-strided
 * walk down k runs once, not once a sliver; per pair and sliver the lines' codes of the two
 * k-rows are interleaved with VPERMT2W and stored with a mask. */
__attribute__((always_inline)) static inline void
lines_kr(const char *src, size_t esz, int64_t ldk, int64_t nlines, int64_t nsl, int64_t kcodes,
         int64_t kp, int64_t lw, int split, const __m512i *t, uint32_t *dst, uint16_t *rng)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 rg = dk_range512_start(rng ? rng : empty);
    const int64_t width = split ? 2 * lw : lw; /* lanes per pair */
    const __mmask16 lanes = (__mmask16)((1u << lw) - 1u);
    const int64_t ldb = ldk * (int64_t)esz;
    const int far = ldb >= 4096 || ldb <= -4096; /* k-rows a page or more apart */
    for (int64_t p = 0; p < kp; p++) {
        /* no pointer past the k-rows or lines that exist */
        const char *r0 = nlines > 0 && 2 * p < kcodes ? src + 2 * p * ldb : NULL;
        const char *r1 = nlines > 0 && 2 * p + 1 < kcodes ? src + (2 * p + 1) * ldb : NULL;
        if (far && 2 * (p + PACK_AHEAD) + 1 < kcodes && nlines > 0)
            prefetch_pair(src + 2 * (p + PACK_AHEAD) * ldb, ldb, nlines * (int64_t)esz);
        for (int64_t s = 0; s < nsl; s++) {
            const int64_t l = s * lw, nl = nlines - l < 0 ? 0 : nlines - l < lw ? nlines - l : lw;
            const __m512i e = dk_line_codes(r0 && nl > 0 ? r0 + l * (int64_t)esz : NULL, nl, t);
            const __m512i o = dk_line_codes(r1 && nl > 0 ? r1 + l * (int64_t)esz : NULL, nl, t);
            if (rng) {
                dk_range512_add(&rg, e);
                dk_range512_add(&rg, o);
            }
            const __m512i w = _mm512_permutex2var_epi16(e, pairs_lo(), o); /* lines 0..15 */
            uint32_t *out = dst + s * kp * width + p * width;
            if (split) {
                _mm512_mask_storeu_epi32((void *)out, lanes, widen_high(w));
                _mm512_mask_storeu_epi32((void *)(out + lw), lanes, widen_high(_mm512_slli_epi32(w, 16)));
            } else {
                _mm512_mask_storeu_epi32((void *)out, lanes, w);
            }
        }
    }
    if (rng) dk_range512_end(rg, rng);
}

void dk_gemm_pack_lines_kr_u16_avx512(const uint16_t *src, int64_t ldk, int64_t nlines,
                                      int64_t nsl, int64_t kcodes, int64_t kp, int64_t lw,
                                      int split, uint32_t *dst, uint16_t *rng)
{
    if (split) lines_kr((const char *)src, 2, ldk, nlines, nsl, kcodes, kp, lw, 1, NULL, dst, rng);
    else lines_kr((const char *)src, 2, ldk, nlines, nsl, kcodes, kp, lw, 0, NULL, dst, rng);
}

void dk_gemm_pack_lines_kr_u8_avx512(const uint8_t *src, int64_t ldk, int64_t nlines,
                                     int64_t nsl, int64_t kcodes, int64_t kp, int64_t lw,
                                     int split, const uint16_t *table, uint32_t *dst)
{
    __m512i t[8];
    dk_lut512_load(table, t);
    if (split) lines_kr((const char *)src, 1, ldk, nlines, nsl, kcodes, kp, lw, 1, t, dst, NULL);
    else lines_kr((const char *)src, 1, ldk, nlines, nsl, kcodes, kp, lw, 0, t, dst, NULL);
}
