/* dk_gemm.h - BF16 / CFloat8 GEMM with FP32 accumulation (issues 4 and 10).
 *
 * C[i,j] = scale * sum_k A[i,k] * B[k,j], A and B given as BF16 codes (uint16) or as
 * 8-bit codes decoded through a 256-entry table (code -> BF16 bits, exact; the Python
 * layer builds it, pre-multiplied by an exact power of two, see below).
 *
 * Two ACCUMULATION ORDERS, chosen per call by the `order` argument of dk_gemm. Each gives
 * identical bits on every tier, thread count and blocking. In both:
 *   - every operation (fused multiply-add: product exact; or addition) is computed exactly
 *     and rounded once to FP32, round to nearest even, with an unbounded exponent;
 *   - DAZ: BF16 inputs that are subnormal are read as zeros of their sign;
 *   - FTZ with tininess after rounding: a result whose magnitude after rounding to 24 bits
 *     is below 2^-126 becomes a zero with the sign of the exact result (F below);
 *   - an exact zero sum is +0 unless both addends are -0 (RNE);
 *   - the end: C[i,j] = canon(acc * scale), an ordinary FP32 multiply (scale is a power of
 *     two: exact unless the result is subnormal) and canon() turns any NaN into the quiet
 *     NaN 0x7FC00000.
 *
 * DK_GEMM_ORDER_AMX (1) - what Intel AMX TDPBF16PS computes (docs/gemm.md; the default of
 *   dojo_kernels.gemm). k is taken in blocks of 32 elements (16 pairs) from k = 0, the last
 *   block padded with zeros (A and B both +0); per output:
 *       C = +0
 *       for each block (k0 = 0, 32, 64, ...):
 *           E = +0; O = +0
 *           for q in 0 .. 15:
 *               E = F(fma(A[i,k0+2q],   B[k0+2q,j],   E))    even elements
 *               O = F(fma(A[i,k0+2q+1], B[k0+2q+1,j], O))    odd elements
 *           T = F(E + O)
 *           C = F(C + T)
 *       C[i,j] = canon(C * scale)
 *   The padded steps of a partial last block are real steps: fma(+0, +0, -0) = +0, so an E
 *   or O of -0 becomes +0 there (the kernels add +0 to T of a partial block: the same bits).
 *   KC blocks of the CPU blocking are multiples of 32 elements, so block boundaries are
 *   absolute in k; a KC block continues from the C stored by the previous one.
 *
 * DK_GEMM_ORDER_VDPBF16PS (0) - one chain of VDPBF16PS steps along k. k is padded to an
 *   even length with a zero; the pairs p = 0, 1, ... are taken in order and, within a
 *   pair, the ODD element first:
 *       acc = +0
 *       for p in 0 .. ceil(k/2)-1:
 *           acc = F(fma(A[i,2p+1], B[2p+1,j], acc))
 *           acc = F(fma(A[i,2p],   B[2p,j],   acc))
 *       C[i,j] = canon(acc * scale)
 *   This is exactly VDPBF16PS (odd element first, DAZ, FTZ per step) chained along k; the
 *   KC blocks of the CPU blocking reload the running sum, so blocking changes nothing.
 *
 * Tiers: generic (portable scalar C, emulating each step in software), avx2 (FP32 FMA on
 * widened values under MXCSR FTZ|DAZ, which detects tininess after rounding: the same F),
 * avx512bf16 (VDPBF16PS 6x64 or FP32-FMA 14x32 for the vdpbf16ps order; FP32-FMA with an
 * E and an O accumulator per output for the amx order).
 */
#ifndef DK_GEMM_H
#define DK_GEMM_H

#include "dk_common.h"
#include <string.h>

/* Accumulation orders (the `order` argument of dk_gemm; see above). */
enum { DK_GEMM_ORDER_VDPBF16PS = 0, DK_GEMM_ORDER_AMX = 1 };
/* The amx order's block: 32 k elements = 16 k-pairs. */
#define DK_GEMM_AMX_BLOCK_PAIRS 16

/* Operand element kinds. */
enum { DK_GEMM_U16 = 0, /* BF16 codes */
       DK_GEMM_U8 = 1   /* 8-bit codes, decoded with table[256] -> BF16 bits */ };

/* One operand: a batch of (rows, cols) matrices with element strides (may be negative). */
typedef struct {
    const void *ptr;        /* element [0, 0, 0] */
    int64_t bs, rs, cs;     /* batch, row and column strides, in elements */
    int kind;               /* DK_GEMM_U16 or DK_GEMM_U8 */
    const uint16_t *table;  /* 256 BF16 codes when kind == DK_GEMM_U8, else unused */
} dk_gemm_operand;

/* out[b] (m x n float32, row stride ldo elements, unit column stride, batch stride bso)
 * = the product above for each of `batch` items; a is (m x k), b is (k x n).
 * m, n, k >= 0. `out` is written, never read. `order` is DK_GEMM_ORDER_VDPBF16PS or
 * DK_GEMM_ORDER_AMX. Returns DK_OK, DK_ENOMEM or DK_EINVAL (also for an unknown order). */
int dk_gemm(int64_t batch, int64_t m, int64_t n, int64_t k,
            const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
            float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads, int order);

/* dk_gemm, and the magnitude ranges of the BF16 operands it reads in full (either range
 * pointer may be NULL): arange/brange[0] and [1] become what dk_gemm_bf16_range gives for
 * that operand (smallest nonzero and largest finite magnitude bits) and [2] = 1; [2] = 0
 * where the range was not measured (an 8-bit operand, m, n, k or batch 0, and A on the
 * few-rows path, which reads B where it lies and leaves A, a few rows, to the caller). The
 * packed path measures each block it packs right after packing it, from the caches; the
 * few-rows path measures B in the registers it loads. A caller that scales by the operands'
 * ranges (SPEC section 5) can thus compute with the scaling it expects and check it against
 * the ranges instead of reading the operands beforehand. */
/* Which ranges dk_gemm_ranges measures for BF16 operands on a nonempty product with m rows,
 * depth k and B's row and column strides b_rs, b_cs: bit 0 A, bit 1 B (0 for an unknown isa
 * or order). */
int dk_gemm_range_paths(int isa, int kernel, int order, int64_t m, int64_t b_rs, int64_t b_cs,
                        int64_t k);
int dk_gemm_ranges(int64_t batch, int64_t m, int64_t n, int64_t k,
                   const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                   float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads,
                   int order, uint16_t arange[3], uint16_t brange[3]);

/* An FP32 addend of the result: element (z, i, j) at ptr[z * bs + i * rs + j * cs] (strides
 * in elements; 0 broadcasts an axis, e.g. a bias of n values has bs = rs = 0, cs = 1). */
typedef struct {
    const float *ptr;
    int64_t bs, rs, cs;
} dk_gemm_addend;

/* dk_gemm_ranges, then out[z, i, j] = out[z, i, j] + term(z, i, j) for every element: one
 * FP32 add (RNE, default environment: no flush, whatever the caller's MXCSR; the product's
 * work items run under the default environment too, with or without a term), done on each
 * block of the result right after its last k block, while it is in the caches (not as a
 * pass of its own afterwards). term may be NULL (no addend: dk_gemm_ranges); it must not
 * overlap out. The bits are those of the product followed by the add. */
int dk_gemm_addend_ranges(int64_t batch, int64_t m, int64_t n, int64_t k,
                          const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                          const dk_gemm_addend *term, float *out, int64_t ldo, int64_t bso,
                          int isa, int kernel, int threads, int order, uint16_t arange[3],
                          uint16_t brange[3]);
/* Test only: dk_gemm_addend_ranges on one thread (no ranges) with this thread's MXCSR set to
 * csr for the call; *csr_after is the MXCSR seen right after it, then the caller's is
 * restored. Returns -1 where there is no MXCSR (not x86). */
int dk_gemm_test_under_mxcsr(unsigned csr, int64_t batch, int64_t m, int64_t n, int64_t k,
                             const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                             const dk_gemm_addend *term, float *out, int64_t ldo, int64_t bso,
                             int isa, int kernel, int order, unsigned *csr_after);

/* Free the work buffers (packed B panel, A blocks, B units, running sums) dk_gemm keeps
 * between calls (see gemm_driver.c); safe at any time, the next call allocates again. */
void dk_gemm_release_cache(void);
/* Tests: the jc steps run so far that took k inside the columns (counts[0]), that let the
 * kernels stream the result (counts[1]) and that took k inside the columns in more than one
 * range of k (counts[2]), and the few-rows W^T products run on the tiles (counts[3],
 * dk_gemm_smallm_bt_amxtile). */
void dk_gemm_path_counts(int64_t counts[4]);
/* Tests: hand every packed-path product of at least `macs` multiply-adds per step to the
 * pool, whatever the tier (0 restores the tiers' own thresholds, docs/threads.md); returns
 * the previous setting. */
int64_t dk_gemm_set_par_min(int64_t macs);

/* The magnitude range of a batch of BF16 code matrices (shape d0 x d1 x d2, element
 * strides s0, s1, s2, any sign): *maxfin = the largest magnitude bits (code & 0x7FFF)
 * below 0x7F80 (Inf/NaN left out), 0 when none; *minnz = the smallest nonzero magnitude
 * bits, 0x7FFF when none (NaN codes count: the caller only uses it when *maxfin > 0).
 * One pass, no allocation, on up to `threads` threads of the pool for large operands (the
 * scaling of SPEC section 5 needs both, see gemm.py). */
void dk_gemm_bf16_range(const uint16_t *p, int64_t d0, int64_t d1, int64_t d2, int64_t s0,
                        int64_t s1, int64_t s2, uint16_t *minnz, uint16_t *maxfin, int threads);

/* Result bytes (batch x m x n x 4) above which the driver lets the kernels write C with
 * non-temporal stores (DK_UKR_STREAM; the amx tile kernel, on 64-byte aligned rows): one
 * core's L2 on the AMX machines (2 MiB), past which the result cannot stay there anyway.
 * Streaming saves reading C's lines for ownership, from memory when the caller's `out` is
 * not in the caches (docs/gemm.md, "Streamed results"). gemm() allocates results above it
 * 64-byte aligned (gemm.py, _empty_result, through _gemm.STREAM_MIN_BYTES). */
#define DK_GEMM_STREAM_MIN_BYTES ((int64_t)2 << 20)

/* Micro-kernel contract (one per tier and order): full MR x NR tile, kp k-pairs of packed
 * A and B, C with row stride ldc. flags: DK_UKR_LOAD -> continue from the values in C
 * (else start from +0 and never read C: the driver's edge tiles rely on it); DK_UKR_LAST -> multiply by scale and canonicalize NaN before
 * storing. An amx-order kernel is given whole blocks of 16 pairs, except that the last
 * call of a C tile may end with a partial block (kp % 16 != 0), which it completes as if
 * padded with zero pairs. */
enum { DK_UKR_LOAD = 1, DK_UKR_LAST = 2,
       DK_UKR_STREAM = 4, /* C may be written with non-temporal stores (a kernel may ignore
                             it): with LAST the result, without it running sums that are read
                             back only later; the caller fences before publishing C */
       DK_UKR_STREAM_A = 8, /* the B sliver fits in L1 and the A slivers it meets do not: A
                               may be loaded past L1 (a hint a kernel may ignore) */
       DK_UKR_STREAM_C = 16 /* with LOAD: the C continued from is not read again soon (a hint
                               a kernel may ignore) */ };
typedef void (*dk_gemm_ukr_fn)(int64_t kp, const void *a, const void *b, float *c,
                               int64_t ldc, int flags, float scale);

/* generic and avx2: "split" layout, FP32 values (DAZ applied while packing).
 *   A sliver: per pair p, MR=6 odd-k values then 6 even-k values (12 floats).
 *   B sliver: per pair p, NR=16 odd-k values then 16 even-k values (32 floats). */
#define DK_GEMM_SPLIT_MR 6
#define DK_GEMM_SPLIT_NR 16
void dk_gemm_ukr_generic(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                         int flags, float scale);
void dk_gemm_ukr_avx2(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                      int flags, float scale);

/* avx512bf16: "pair" layout, BF16 codes, one 32-bit lane per (even k, odd k) pair.
 *   A sliver: per pair p, MR=6 lanes (a[i,2p] | a[i,2p+1] << 16).
 *   B sliver: per pair p, NR=64 lanes (b[2p,j] | b[2p+1,j] << 16). */
#define DK_GEMM_PAIR_MR 6
#define DK_GEMM_PAIR_NR 64
void dk_gemm_ukr_avx512bf16(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                            int flags, float scale);

/* amx order, generic and avx2 tiers: the split layout above (6 x 16 generic, 3 x 16 avx2:
 * an E and an O accumulator per output). */
#define DK_GEMM_AMX_AVX2_MR 3
void dk_gemm_ukr_amx_generic(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                             int flags, float scale);
void dk_gemm_ukr_amx_avx2(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                          int flags, float scale);

/* amx order, avx512bf16 tier: FP32 zmm FMA under MXCSR FTZ|DAZ, A in the split layout
 * with MR = 7, B in the pair layout with NR = 32, widened in registers; 28 zmm hold an E and
 * an O accumulator per output. */
#define DK_GEMM_AMX512_MR 7
#define DK_GEMM_AMX512_NR 32
void dk_gemm_ukr_amx_avx512(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                            int flags, float scale);

/* avx512bf16 tier, FMA variant (FP32 zmm FMA on widened values, MXCSR FTZ|DAZ): A in the
 * split layout with MR = 14, B in the pair layout with NR = 32, widened in registers. */
#define DK_GEMM_F512_MR 14
#define DK_GEMM_F512_NR 32
void dk_gemm_ukr_avx512fma_pb(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                              int flags, float scale);

/* avx512bf16-tier packing of B into the pair layout: kp full k-pairs of nsl adjacent
 * slivers of nr (a multiple of 32) columns, rows 2p and 2p+1 at src + 2p*ldk and
 * src + (2p+1)*ldk (columns contiguous), sliver s (columns s*nr..) at dst + s*ssl lanes
 * (64-byte aligned, nr lanes per pair); each k-row is read across all the slivers, and rows a
 * page or more apart are prefetched. The u8 form decodes through table[256] (8-bit codes
 * are never ranged). The u16 form, when rng is not NULL, merges the codes' range into
 * rng[0] (smallest nonzero magnitude) and rng[1] (largest finite), as dk_gemm_bf16_range
 * measures it. */
void dk_gemm_pack_pair_u8_avx512(const uint8_t *src, int64_t ldk, int64_t kp, int64_t nr,
                                 int64_t nsl, int64_t ssl, const uint16_t *table, uint32_t *dst);
void dk_gemm_pack_pair_u16_avx512(const uint16_t *src, int64_t ldk, int64_t kp, int64_t nr,
                                  int64_t nsl, int64_t ssl, uint32_t *dst, uint16_t *rng);
/* The edges of the same, one sliver of nr lanes (a multiple of 32) at dst (64-byte
 * aligned): kp pairs of the k-rows src + i*ldk, of which the first krows exist, and of their
 * first ncols columns; the lanes of missing rows or columns are zeros (kp may run past k:
 * padding pairs). src may be NULL when krows or ncols is 0 (nothing is read). The u8 form
 * decodes through table[256] and is never ranged. */
void dk_gemm_pack_pair_edge_u16_avx512(const uint16_t *src, int64_t ldk, int64_t krows,
                                       int64_t kp, int64_t ncols, int64_t nr, uint32_t *dst,
                                       uint16_t *rng);
void dk_gemm_pack_pair_edge_u8_avx512(const uint8_t *src, int64_t ldk, int64_t krows, int64_t kp,
                                      int64_t ncols, int64_t nr, const uint16_t *table,
                                      uint32_t *dst);
/* avx512bf16 tier: merge the range of n contiguous BF16 codes into rng[0] (smallest nonzero
 * magnitude) and rng[1] (largest finite), as the packers above do while packing. rng holds
 * magnitudes (0..0x7FFF: start from 0x7FFF and 0), which the reduction relies on. */
void dk_gemm_range_u16_avx512(const uint16_t *p, int64_t n, uint16_t *rng);

/* avx512bf16 tier (used by the amx tier too), amx order: products of at most
 * DK_GEMM_SMALLM_MAX rows (GEMV, skinny m) straight from unpacked operands, columns
 * [j0, j1) of out (row stride ldo). A: m x k, element (i, kk) at a + i*ars + kk*acs; B: k x n
 * with unit column stride, row kk at b + kk*brs; each BF16 codes (DK_GEMM_U16) or 8-bit codes
 * decoded through a table (DK_GEMM_U8). The bits of the packed kernels, scale and NaN
 * canonicalization included. */
#define DK_GEMM_SMALLM_MAX 8
/* On the amx tier the tile kernel, with B packed a unit at a time, was the faster from 5 rows
 * (m x 4096 x 4096, 1 and 2 threads: 1.3x at m = 5, 1.5x at m = 8; 0.85-1.0x at m = 4),
 * measured against the few-rows kernel before it read B 8 rows at a time. */
#define DK_GEMM_SMALLM_AMX_MAX 4
void dk_gemm_smallm_amx_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1,
                               const void *a, int64_t ars, int64_t acs, int akind,
                               const uint16_t *atab, const void *b, int64_t brs, int bkind,
                               const uint16_t *btab, float scale, float *out, int64_t ldo,
                               uint16_t *brange);
/* A's BF16 code (i, kk) for the few-rows kernels: element (i, kk) at a + i*ars + kk*acs,
 * BF16 codes or 8-bit codes through atab; 0 where i >= m or kk >= k. */
DK_INLINE uint32_t dk_gemm_a_code(const void *a, int64_t ars, int64_t acs, int akind,
                                  const uint16_t *atab, int64_t m, int64_t k, int64_t r,
                                  int64_t kk)
{
    if (r >= m || kk >= k) return 0;
    const int64_t off = r * ars + kk * acs;
    return akind == DK_GEMM_U8 ? atab[((const uint8_t *)a)[off]] : ((const uint16_t *)a)[off];
}

/* A's values as FP32: dst[r * ldd + q] = A(r, k0 + q) for r < rows and q < width, zero
 * where r >= m or k0 + q >= k. Exact (BF16 widened; no DAZ here: the FMAs' MXCSR applies
 * it). */
DK_INLINE void dk_gemm_a_f32(const void *a, int64_t ars, int64_t acs, int akind,
                             const uint16_t *atab, int64_t m, int64_t k, int64_t k0,
                             int64_t rows, int64_t width, float *dst, int64_t ldd)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t q = 0; q < width; q++) {
            const union { uint32_t u; float f; } v = {
                dk_gemm_a_code(a, ars, acs, akind, atab, m, k, r, k0 + q) << 16};
            dst[r * ldd + q] = v.f;
        }
}

/* ... and as BF16 pairs for the vdpbf16ps order: dst[r * ldd + q] = A(r, 2p) | A(r, 2p + 1)
 * << 16 (codes), p = p0 + q, for r < rows and q < pairs, zero where r >= m or the element
 * is past k. */
DK_INLINE void dk_gemm_a_pairs(const void *a, int64_t ars, int64_t acs, int akind,
                               const uint16_t *atab, int64_t m, int64_t k, int64_t p0,
                               int64_t rows, int64_t pairs, uint32_t *dst, int64_t ldd)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t q = 0; q < pairs; q++) {
            const int64_t kk = 2 * (p0 + q);
            dst[r * ldd + q] = dk_gemm_a_code(a, ars, acs, akind, atab, m, k, r, kk) |
                               dk_gemm_a_code(a, ars, acs, akind, atab, m, k, r, kk + 1) << 16;
        }
}

/* ... and as the pair layout of A^T (m <= 32), for the amx tier's W^T tile kernel
 * (dk_gemm_smallm_bt_amxtile): pair p at dst + p * 32, lane l = A(l, 2p) | A(l, 2p + 1) <<
 * 16 (codes), zero where the row is past m or the element past k (kpad/2 pairs, kpad a
 * multiple of 32). */
DK_INLINE void dk_gemm_a_tpairs(const void *a, int64_t ars, int64_t acs, int akind,
                                const uint16_t *atab, int64_t m, int64_t k, int64_t kpad,
                                uint32_t *dst)
{
    const int64_t kp = k / 2; /* whole pairs */
    memset(dst, 0, sizeof(uint32_t) * 16 * (size_t)kpad);
    for (int64_t l = 0; l < m; l++) {
        if (akind == DK_GEMM_U16 && acs == 1) { /* a row of BF16 codes, k contiguous */
            const uint16_t *row = (const uint16_t *)a + l * ars;
            for (int64_t p = 0; p < kp; p++)
                dst[p * 32 + l] = row[2 * p] | (uint32_t)row[2 * p + 1] << 16;
        } else
            for (int64_t p = 0; p < kp; p++)
                dst[p * 32 + l] = dk_gemm_a_code(a, ars, acs, akind, atab, m, k, l, 2 * p) |
                                  dk_gemm_a_code(a, ars, acs, akind, atab, m, k, l, 2 * p + 1)
                                      << 16;
        if (k & 1) dst[kp * 32 + l] = dk_gemm_a_code(a, ars, acs, akind, atab, m, k, l, k - 1);
    }
}

/* The same for a B with unit row stride (B = W^T for a row-major W: column j of B, k
 * contiguous, at b + j*bcs), A given as FP32 values: row i at af + i*kpad, k <= kpad, zeros
 * from k to kpad (kpad a multiple of 32). Columns [j0, j1) of out, the same bits. Up to
 * DK_GEMM_SMALLM_BT_MAX rows (DK_GEMM_SMALLM_BT_VDP_MAX in the vdpbf16ps order): each block
 * of B transposed once for all of them. The limits are where the packed path, which
 * transposes all of W into its panels, became the faster or about as fast (one thread of a
 * Zen 4, m x 4096 x 4096 BF16: docs/gemm.md has the table). */
#define DK_GEMM_SMALLM_BT_MAX 64
#define DK_GEMM_SMALLM_BT_VDP_MAX 48
/* Beyond DK_GEMM_SMALLM_MAX rows the W^T kernels are taken only while A's copy (m x kpad
 * 4-byte words, one per thread; 16 x kpad for the amx tier's tile kernel, at any m) fits in
 * this many words (4 MiB): for a huge k the packed path's bounded buffers cost less
 * memory. */
#define DK_GEMM_SMALLM_BT_AWORDS ((int64_t)1 << 20)
void dk_gemm_smallm_bt_amx_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1, const float *af,
                                  int64_t kpad, const void *b, int64_t bcs, int bkind,
                                  const uint16_t *btab, float scale, float *out, int64_t ldo,
                                  uint16_t *brange);
/* amx tier, amx order: the same product on the tiles, from DK_GEMM_SMALLM_AMX_MAX + 1 to
 * DK_GEMM_SMALLM_BT_TILE_MAX rows (32: A^T in one tile column; with 64 rows in two, W's
 * rows were read twice and the packed tiles were the faster; docs/gemm.md), as C^T = W .
 * A^T (the same bits): W's rows loaded as tiles where they lie (BF16; CFloat8 W and the
 * edges staged, decoded), A given as the pair layout of A^T (dk_gemm_a_tpairs; kpad/2 x 32
 * words, 64-byte aligned). Same other arguments as dk_gemm_smallm_bt_amx_avx512. Loads and
 * releases its own tile configuration. */
#define DK_GEMM_SMALLM_BT_TILE_MAX 32
/* ... and from this many rows up to DK_GEMM_SMALLM_AMX_MAX when every row of W (BF16)
 * starts on a 64-byte line and A^T's copy fits DK_GEMM_SMALLM_BT_AWORDS (k <= 65,536):
 * then the faster there too (m x 4096 x 4096, one thread, W on a line: 1.65-1.74 ms against
 * the FMA kernel's 1.84-3.36 at m = 2-4; docs/gemm.md). A row that straddles two lines
 * costs the tiles, not the FMA kernel. */
#define DK_GEMM_SMALLM_BT_TILE_MIN 2
void dk_gemm_smallm_bt_amxtile(int64_t m, int64_t k, int64_t j0, int64_t j1, const uint32_t *apt,
                               int64_t kpad, const void *b, int64_t bcs, int bkind,
                               const uint16_t *btab, float scale, float *out, int64_t ldo,
                               uint16_t *brange);
/* The vdpbf16ps order on row-major B, read as dk_gemm_smallm_amx_avx512 reads it (one chain
 * of VDPBF16PS per output, the instruction itself), on the avx512bf16 and amx tiers up to
 * DK_GEMM_SMALLM_VDP_MAX rows: from 5 rows (two row blocks of 4, the second reading B from
 * the caches) the packed path was the faster on one thread of a Zen 4 (m x 4096 x 4096 BF16,
 * builds alternated twice, medians of 15 calls: m = 5 6.1-6.3 ms against 5.1-5.5 packed;
 * m = 4 3.3-4.2 against 4.1-5.8; m = 8 6.2 against 5.1-6.6). Same arguments. */
#define DK_GEMM_SMALLM_VDP_MAX 4
void dk_gemm_smallm_vdp_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1,
                               const void *a, int64_t ars, int64_t acs, int akind,
                               const uint16_t *atab, const void *b, int64_t brs, int bkind,
                               const uint16_t *btab, float scale, float *out, int64_t ldo,
                               uint16_t *brange);
/* The vdpbf16ps order on the same reads of B (one chain of VDPBF16PS per output, the
 * instruction itself), A given as BF16 pairs (dk_gemm_a_pairs): row i at apairs + i*kpad/2,
 * zeros from k. Used on the avx512bf16 and amx tiers up to DK_GEMM_SMALLM_BT_VDP_MAX rows. */
void dk_gemm_smallm_bt_vdp_avx512(int64_t m, int64_t k, int64_t j0, int64_t j1,
                                  const uint32_t *apairs, int64_t kpad, const void *b,
                                  int64_t bcs, int bkind, const uint16_t *btab, float scale,
                                  float *out, int64_t ldo, uint16_t *brange);

/* avx512bf16-tier packing of CFloat8 A into the AMX "row tiles" layout (dk_gemm_ukr_amxtile):
 * `rows` rows (row r at src + r*lda, k contiguous) x nblk blocks of 32 k-values, decoded
 * through table[256]; block b of row r goes to dst + b*16*mr + r*16 (16 lanes, each the BF16
 * pair (k even | k odd << 16)). dst 64-byte aligned. The edges in place: the last block
 * holds klast (1..32) codes of each row, the rest of it zeros, and the rows from `rows` up
 * to mr (rows <= mr) are zeros. */
void dk_gemm_pack_rowtile_u8_avx512(const uint8_t *src, int64_t lda, int64_t rows,
                                    int64_t nblk, int64_t klast, int64_t mr,
                                    const uint16_t *table, uint32_t *dst);
/* The same for BF16 codes, merging the codes' range into rng (as
 * dk_gemm_pack_pair_u16_avx512) when rng is not NULL. Both: 1 <= rows <= mr, nblk >= 1. */
void dk_gemm_pack_rowtile_u16_avx512(const uint16_t *src, int64_t lda, int64_t rows,
                                     int64_t nblk, int64_t klast, int64_t mr, uint32_t *dst,
                                     uint16_t *rng);

/* Transposing packers (in the avx512bf16 tier's code; pair_klines serves that tier's pair
 * layout and the amx tier, rowtile_cols the amx tier only), for operands whose k runs the
 * other way: the transposed views a torch Linear passes (W^T as B, dY^T as A).
 *   pair_klines: the pair layout of one sliver of nr lanes (a multiple of 16) from lines that
 *     are k contiguous (line l at src + l*ldl, its codes in k order): kp pairs, of which the
 *     first kcodes codes of each of the first nlines lines exist; the rest are zeros (the
 *     half pair of an odd k, padding pairs, missing lines). src may be NULL when nlines or
 *     kcodes is 0. Nothing past the codes that exist is read. dst 64-byte aligned.
 *   rowtile_cols: the AMX row tiles (MR = 32, dk_gemm_pack_rowtile_u16_avx512's layout and
 *     edges) of `rows` rows (1..32) from an A whose rows are contiguous (column kk at
 *     src + kk*ldk).
 * The u16 forms merge the codes' range into rng when it is not NULL; the u8 forms decode
 * through table[256] and are never ranged. */
void dk_gemm_pack_pair_klines_u16_avx512(const uint16_t *src, int64_t ldl, int64_t nlines,
                                         int64_t kcodes, int64_t kp, int64_t nr, uint32_t *dst,
                                         uint16_t *rng);
void dk_gemm_pack_pair_klines_u8_avx512(const uint8_t *src, int64_t ldl, int64_t nlines,
                                        int64_t kcodes, int64_t kp, int64_t nr,
                                        const uint16_t *table, uint32_t *dst);
void dk_gemm_pack_rowtile_cols_u16_avx512(const uint16_t *src, int64_t ldk, int64_t rows,
                                          int64_t nblk, int64_t klast, uint32_t *dst,
                                          uint16_t *rng);
void dk_gemm_pack_rowtile_cols_u8_avx512(const uint8_t *src, int64_t ldk, int64_t rows,
                                         int64_t nblk, int64_t klast, const uint16_t *table,
                                         uint32_t *dst);

/* avx512bf16-tier packing of an A whose rows are k contiguous (line l at src + l*ldl, its
 * codes in k order) into one sliver of lw lines (1..16): the pair layout (lw lanes a pair,
 * split 0) or the split layout (split 1: per pair lw odd-k then lw even-k FP32 values, DAZ),
 * as the driver's portable packer writes them. kp pairs, of which the first kcodes codes of
 * each of the first nlines (<= lw) lines exist; the rest are zeros (the half pair of an odd k,
 * padding pairs, missing lines). src may be NULL when nlines or kcodes is 0; nothing past
 * the codes that exist is read, nothing past the sliver written. The u16 form merges the
 * codes' range into rng when it is not NULL; the u8 form decodes through table[256] and is
 * never ranged. */
void dk_gemm_pack_lines_kc_u16_avx512(const uint16_t *src, int64_t ldl, int64_t nlines,
                                      int64_t kcodes, int64_t kp, int64_t lw, int split,
                                      uint32_t *dst, uint16_t *rng);
void dk_gemm_pack_lines_kc_u8_avx512(const uint8_t *src, int64_t ldl, int64_t nlines,
                                     int64_t kcodes, int64_t kp, int64_t lw, int split,
                                     const uint16_t *table, uint32_t *dst);
/* avx2 tier: one sliver of lw lines (2..8: each pair's 8-value stores run into the next
 * pair's lanes, which with lw 1 would reach past the sliver) of a row-major A (line l at
 * src + l*ldl, its codes contiguous) in the split layout, npairs pairs (a multiple of 8),
 * all of whose 2*npairs codes exist for the first nlines (<= lw) lines; the other lines are
 * zeros.
 * Writes exactly npairs * 2*lw values at dst; nothing past the codes named is read. The u8
 * form decodes through table[256]. The edges (a half pair, padding pairs, the last pairs
 * short of 8) stay with the driver's portable packer. */
void dk_gemm_pack_split_kc_u16_avx2(const uint16_t *src, int64_t ldl, int64_t nlines, int64_t npairs,
                                    int64_t lw, uint32_t *dst);
void dk_gemm_pack_split_kc_u8_avx2(const uint8_t *src, int64_t ldl, int64_t nlines, int64_t npairs,
                                   int64_t lw, const uint16_t *table, uint32_t *dst);
/* The same slivers from an A whose rows are contiguous (a transposed A; k-row kk at
 * src + kk*ldk, its lines in order), nsl of them at once (sliver s: lines s*lw.., at
 * dst + s*kp*lanes, lanes = lw or 2*lw a pair), of which the first nlines lines exist; the
 * same edges, range and decoding. */
void dk_gemm_pack_lines_kr_u16_avx512(const uint16_t *src, int64_t ldk, int64_t nlines,
                                      int64_t nsl, int64_t kcodes, int64_t kp, int64_t lw,
                                      int split, uint32_t *dst, uint16_t *rng);
void dk_gemm_pack_lines_kr_u8_avx512(const uint8_t *src, int64_t ldk, int64_t nlines,
                                     int64_t nsl, int64_t kcodes, int64_t kp, int64_t lw,
                                     int split, const uint16_t *table, uint32_t *dst);

/* amx tier: TDPBF16PS on tile registers, the amx order (dk_gemm.h; blocks of 16 pairs).
 *   A in the "row tiles" layout: per block of 16 pairs, MR = 32 rows x 16 pair lanes
 *     (a[i,2p] | a[i,2p+1] << 16), rows 0-15 then rows 16-31 (two 1 KiB tiles).
 *   B in the pair layout with NR = 32 lanes per pair.
 *   kp is a multiple of 16 (the driver rounds up; the packers pad with zero pairs, which
 *   is the order's padding). Call only between dk_gemm_amxtile_enter() and
 *   dk_gemm_amxtile_leave() on the same thread (they load and release the tile
 *   configuration). */
#define DK_GEMM_AMXTILE_MR 32
#define DK_GEMM_AMXTILE_NR 32
void dk_gemm_ukr_amxtile(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                         int flags, float scale);
/* The same, and with DK_UKR_LAST the result's tile then plus an FP32 addend (one add per
 * element, the result first): element (i, j) of the tile gets t[i * trs + j * tcs], tcs 0
 * or 1. The add is done in registers, before the tile is stored (dk_gemm_addend_ranges). */
void dk_gemm_ukr_amxtile_add(int64_t kp, const void *a, const void *b, float *c, int64_t ldc,
                             int flags, float scale, const float *t, int64_t trs, int64_t tcs);
/* The same with C read from one place and written to another: with DK_UKR_LOAD the tile
 * continues from cin (row stride ldcin); the result goes to c (row stride ldc). cin and c
 * may be the same tile or apart, never partly overlapping. t: NULL or as above. (The driver
 * keeps a C block's running sums in a per-thread buffer and writes the result to C in its
 * last k block: gemm_driver.c, run_unit_kinner.) */
void dk_gemm_ukr_amxtile_io(int64_t kp, const void *a, const void *b, const float *cin,
                            int64_t ldcin, float *c, int64_t ldc, int flags, float scale,
                            const float *t, int64_t trs, int64_t tcs);
typedef void (*dk_gemm_ukr_io_fn)(int64_t kp, const void *a, const void *b, const float *cin,
                                  int64_t ldcin, float *c, int64_t ldc, int flags, float scale,
                                  const float *t, int64_t trs, int64_t tcs);
/* Micro-kernels with a fused addend (dk_gemm_ukr_amxtile_add's form). */
typedef void (*dk_gemm_ukr_add_fn)(int64_t kp, const void *a, const void *b, float *c,
                                   int64_t ldc, int flags, float scale, const float *t,
                                   int64_t trs, int64_t tcs);
void dk_gemm_amxtile_enter(void);
void dk_gemm_amxtile_leave(void);
/* One TDPBF16PS on an m x n C tile with kpairs pairs (1..16 each), for tests. */
void dk_amx_tdpbf16ps(const uint16_t *a, int64_t lda, const uint32_t *b, int64_t ldb,
                      float *c, int64_t ldc, int m, int n, int kpairs);
double dk_probe_tdpbf16ps(int64_t iters);

/* Kernel variants of the avx512bf16 tier for the vdpbf16ps order (the `kernel` argument
 * of dk_gemm; ignored by the other tiers and by the amx order). Both give the same bits. */
enum { DK_GEMM_KERNEL_FMA = 0, DK_GEMM_KERNEL_VDPBF16PS = 1 };

/* Peak probes (bench only): run `iters` rounds of independent dependency chains of one
 * instruction and return the FLOP count done. Call only on a CPU with that tier. */
double dk_probe_vdpbf16ps_zmm(int64_t iters);
double dk_probe_fma_zmm(int64_t iters);
double dk_probe_fma_ymm(int64_t iters);

/* The scalar steps of the generic tier, exposed for tests of the semantics (baseline):
 * F(fma(a, b, acc)) and F(x + y), inputs already DAZ'd. */
float dk_gemm_step_generic(float acc, float a, float b);
float dk_gemm_add_generic(float x, float y);

#endif
