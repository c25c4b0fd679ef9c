/* gemm_driver.c - the BLIS-style loops around the tier micro-kernels (baseline C).
 *
 * Loops (outer to inner), after Goto/BLIS:
 *   batch
 *   jc  : NC columns of C and B                      (B panel, shared by the threads)
 *   pc  : KC values of k (KC/2 pairs)                pack B panel KC x NC (parallel)
 *   ic  : MC rows of C and A                         pack A block MC x KC (per thread)
 *   jr  : NR columns (one packed B sliver, L1)
 *   ir  : MR rows   (one packed A sliver)            micro-kernel on an MR x NR tile
 * One (jc, pc, ic) block is the CPU image of one D1 SRAM tile (docs/gemm.md).
 * Threads share out the (ic, jr-group) work items of one (jc, pc) step: they never split
 * k. The micro-kernels continue each C tile from the running sum stored in C, so the
 * result is the fixed order of dk_gemm.h, independent of blocking and threads (for the
 * amx order KC is a multiple of the order's 32-element block, so blocks never straddle
 * two KC steps and a partial block can only be the last).
 * CFloat8 codes are decoded to BF16 through the table while packing (exact). */
#define _POSIX_C_SOURCE 200112L
#include "dk_gemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    dk_gemm_ukr_fn ukr;
    int split_a;      /* A packing: 1 FP32 split layout, 0 BF16 pair layout */
    int split_b;      /* B packing: likewise */
    int64_t mr, nr;
    int64_t kc;       /* k per block (even; a multiple of 32 for the amx order) */
    int64_t mc_max;   /* rows per A block (multiple of mr) */
    int64_t nc;       /* columns per B panel (multiple of nr) */
    int simd_pack;    /* 1: the avx512 B packers (pair or split layout) may be used */
} tier_cfg;

static int get_cfg(int isa, int kernel, int order, tier_cfg *t)
{
    if (isa < 0 || isa >= DK_ISA_COUNT) return 0;
    if (order == DK_GEMM_ORDER_AMX) {
        /* KC is a multiple of 32 elements (whole blocks of the order), so the blocks are
         * absolute in k whatever the blocking. */
        if (isa >= DK_ISA_AVX512BF16)
            *t = (tier_cfg){dk_gemm_ukr_amx_avx512, 1, 1, DK_GEMM_AMX512_MR, DK_GEMM_AMX512_NR,
                            512, 84, 2048, 1};
        else if (isa == DK_ISA_AVX2)
            *t = (tier_cfg){dk_gemm_ukr_amx_avx2, 1, 1, DK_GEMM_AMX_AVX2_MR, DK_GEMM_SPLIT_NR,
                            256, 48, 2048, 0};
        else
            *t = (tier_cfg){dk_gemm_ukr_amx_generic, 1, 1, DK_GEMM_SPLIT_MR, DK_GEMM_SPLIT_NR,
                            256, 96, 512, 0};
        return 1;
    }
    if (order != DK_GEMM_ORDER_VDPBF16PS) return 0;
    if (isa >= DK_ISA_AVX512BF16) {
        if (kernel == DK_GEMM_KERNEL_FMA) {
            *t = (tier_cfg){dk_gemm_ukr_avx512fma_pb, 1, 0, DK_GEMM_F512_MR, DK_GEMM_F512_NR,
                            512, 84, 2048, 1};
            return 1;
        }
        *t = (tier_cfg){dk_gemm_ukr_avx512bf16, 0, 0, DK_GEMM_PAIR_MR, DK_GEMM_PAIR_NR,
                        512, 96, 2048, 1};
        return 1;
    }
    if (isa == DK_ISA_AVX2) {
        *t = (tier_cfg){dk_gemm_ukr_avx2, 1, 1, DK_GEMM_SPLIT_MR, DK_GEMM_SPLIT_NR,
                        512, 48, 2048, 0};
        return 1;
    }
    *t = (tier_cfg){dk_gemm_ukr_generic, 1, 1, DK_GEMM_SPLIT_MR, DK_GEMM_SPLIT_NR,
                    256, 96, 512, 0};
    return 1;
}

/* ---- element access and packing ---------------------------------------------------- */

typedef struct {
    const char *p;    /* element [0,0] of this batch item */
    int64_t rs, cs;   /* element strides */
    int kind;
    const uint16_t *table;
} view;

/* BF16 code of element (r, c) (caller checks bounds). */
static inline uint16_t code_at(const view *v, int64_t r, int64_t c)
{
    int64_t off = r * v->rs + c * v->cs;
    if (v->kind == DK_GEMM_U8) return v->table[((const uint8_t *)v->p)[off]];
    return ((const uint16_t *)v->p)[off];
}

/* BF16 code -> FP32 bits with DAZ (a subnormal BF16 reads as a zero of its sign),
 * branch-free so that it vectorizes. */
static inline uint32_t widen_bits(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    uint32_t keep = (h & 0x7F80u) ? 0xFFFFFFFFu : 0x80000000u;
    return u & keep;
}

/* Load the (even, odd) codes of k-pair p of "row" r: element (r, 2p) and (r, 2p+1) of a
 * matrix seen as (rows x k) through (rs along rows, cs along k). Zero past the edges. */
static inline void pair_at(const view *v, int64_t r, int64_t nrows, int64_t p, int64_t k,
                           uint16_t *even, uint16_t *odd)
{
    int64_t k0 = 2 * p;
    *even = (r < nrows && k0 < k) ? code_at(v, r, k0) : 0;
    *odd = (r < nrows && k0 + 1 < k) ? code_at(v, r, k0 + 1) : 0;
}

/* Pack `width` slivers of mr (or nr) lines x kp pairs starting at line l0, pair p0.
 * For A the lines are rows (v as given); for B the driver passes a transposed view so
 * that lines are columns of B. Output sliver s at dst + s * kp * pair_bytes. */
static void pack_lines(const view *v, int64_t nlines, int64_t k, int64_t l0, int64_t nl,
                       int64_t p0, int64_t kp, int64_t lw, int split, int simd, void *dst)
{
    int64_t nsl = (nl + lw - 1) / lw;
    /* avx512 fast path: lines contiguous (B row-major), whole slivers, full pairs; the
     * last, half pair of an odd k goes through the portable loop below. Pair layout (the
     * vdpbf16ps order's kernels) or split layout (the amx order's). */
    if (simd && v->rs == 1 && lw % 32 == 0 && l0 + nsl * lw <= nlines) {
        int64_t kfull = (k / 2) - p0;
        if (kfull > kp) kfull = kp;
        if (kfull > 0) {
            for (int64_t s = 0; s < nsl; s++) {
                int64_t line = l0 + s * lw, koff = 2 * p0 * v->cs;
                if (split) {
                    float *o = (float *)dst + s * kp * 2 * lw;
                    if (v->kind == DK_GEMM_U8)
                        dk_gemm_pack_split_u8_avx512((const uint8_t *)v->p + line + koff, v->cs,
                                                     kfull, lw, v->table, o);
                    else
                        dk_gemm_pack_split_u16_avx512((const uint16_t *)v->p + line + koff,
                                                      v->cs, kfull, lw, o);
                    continue;
                }
                uint32_t *o = (uint32_t *)dst + s * kp * lw;
                if (v->kind == DK_GEMM_U8)
                    dk_gemm_pack_pair_u8_avx512((const uint8_t *)v->p + line + koff, v->cs, kfull,
                                                lw, v->table, o);
                else
                    dk_gemm_pack_pair_u16_avx512((const uint16_t *)v->p + line + koff, v->cs,
                                                 kfull, lw, o);
            }
            if (kfull == kp) return;
            /* pack the remaining pair(s) portably */
            for (int64_t s = 0; s < nsl; s++) {
                for (int64_t p = kfull; p < kp; p++)
                    for (int64_t l = 0; l < lw; l++) {
                        uint16_t e, d;
                        pair_at(v, l0 + s * lw + l, nlines, p0 + p, k, &e, &d);
                        if (split) {
                            uint32_t *o = (uint32_t *)dst + s * kp * 2 * lw + p * 2 * lw;
                            o[l] = widen_bits(d);
                            o[lw + l] = widen_bits(e);
                        } else {
                            uint32_t *o = (uint32_t *)dst + s * kp * lw;
                            o[p * lw + l] = (uint32_t)e | ((uint32_t)d << 16);
                        }
                    }
            }
            return;
        }
    }
    for (int64_t s = 0; s < nsl; s++) {
        int64_t base_line = l0 + s * lw;
        if (split) {
            float *o = (float *)dst + s * kp * 2 * lw;
            int inside = base_line + lw <= nlines;
            for (int64_t p = 0; p < kp; p++) {
                float *op = o + p * 2 * lw;
                int64_t k0 = 2 * (p0 + p);
                uint32_t *ou = (uint32_t *)op;
                if (inside && v->kind == DK_GEMM_U16 && v->rs == 1 && k0 + 1 < k) {
                    const uint16_t *r0 = (const uint16_t *)v->p + base_line + k0 * v->cs;
                    const uint16_t *r1 = r0 + v->cs;
                    for (int64_t l = 0; l < lw; l++) {
                        ou[l] = widen_bits(r1[l]);      /* odd k first */
                        ou[lw + l] = widen_bits(r0[l]); /* then even k */
                    }
                } else if (inside && v->kind == DK_GEMM_U16 && v->cs == 1 && k0 + 1 < k) {
                    const uint16_t *r0 = (const uint16_t *)v->p + base_line * v->rs + k0;
                    for (int64_t l = 0; l < lw; l++) {
                        const uint16_t *q = r0 + l * v->rs;
                        ou[l] = widen_bits(q[1]);
                        ou[lw + l] = widen_bits(q[0]);
                    }
                } else if (inside && v->kind == DK_GEMM_U8 && v->rs == 1 && k0 + 1 < k) {
                    const uint8_t *r0 = (const uint8_t *)v->p + base_line + k0 * v->cs;
                    const uint8_t *r1 = r0 + v->cs;
                    const uint16_t *t = v->table;
                    for (int64_t l = 0; l < lw; l++) {
                        ou[l] = widen_bits(t[r1[l]]);
                        ou[lw + l] = widen_bits(t[r0[l]]);
                    }
                } else if (inside && v->kind == DK_GEMM_U8 && v->cs == 1 && k0 + 1 < k) {
                    const uint8_t *r0 = (const uint8_t *)v->p + base_line * v->rs + k0;
                    const uint16_t *t = v->table;
                    for (int64_t l = 0; l < lw; l++) {
                        const uint8_t *q = r0 + l * v->rs;
                        ou[l] = widen_bits(t[q[1]]);
                        ou[lw + l] = widen_bits(t[q[0]]);
                    }
                } else {
                    for (int64_t l = 0; l < lw; l++) {
                        uint16_t e, d;
                        pair_at(v, base_line + l, nlines, p0 + p, k, &e, &d);
                        ou[l] = widen_bits(d);
                        ou[lw + l] = widen_bits(e);
                    }
                }
            }
        } else {
            uint32_t *o = (uint32_t *)dst + s * kp * lw;
            /* Fast path: BF16 codes, lines fully inside, contiguous along the line index
             * (B row-major): copy two k-rows and interleave. */
            int inside = base_line + lw <= nlines;
            for (int64_t p = 0; p < kp; p++) {
                uint32_t *op = o + p * lw;
                int64_t k0 = 2 * (p0 + p);
                if (inside && v->kind == DK_GEMM_U16 && v->rs == 1 && k0 + 1 < k) {
                    const uint16_t *r0 = (const uint16_t *)v->p + base_line + k0 * v->cs;
                    const uint16_t *r1 = r0 + v->cs;
                    for (int64_t l = 0; l < lw; l++)
                        op[l] = (uint32_t)r0[l] | ((uint32_t)r1[l] << 16);
                } else if (inside && v->kind == DK_GEMM_U16 && v->cs == 1 && k0 + 1 < k) {
                    /* A row-major: the pair is two adjacent codes */
                    const uint16_t *r0 = (const uint16_t *)v->p + base_line * v->rs + k0;
                    for (int64_t l = 0; l < lw; l++) {
                        const uint16_t *q = r0 + l * v->rs;
                        op[l] = (uint32_t)q[0] | ((uint32_t)q[1] << 16);
                    }
                } else if (inside && v->kind == DK_GEMM_U8 && v->rs == 1 && k0 + 1 < k) {
                    const uint8_t *r0 = (const uint8_t *)v->p + base_line + k0 * v->cs;
                    const uint8_t *r1 = r0 + v->cs;
                    const uint16_t *t = v->table;
                    for (int64_t l = 0; l < lw; l++)
                        op[l] = (uint32_t)t[r0[l]] | ((uint32_t)t[r1[l]] << 16);
                } else if (inside && v->kind == DK_GEMM_U8 && v->cs == 1 && k0 + 1 < k) {
                    const uint8_t *r0 = (const uint8_t *)v->p + base_line * v->rs + k0;
                    const uint16_t *t = v->table;
                    for (int64_t l = 0; l < lw; l++) {
                        const uint8_t *q = r0 + l * v->rs;
                        op[l] = (uint32_t)t[q[0]] | ((uint32_t)t[q[1]] << 16);
                    }
                } else {
                    for (int64_t l = 0; l < lw; l++) {
                        uint16_t e, d;
                        pair_at(v, base_line + l, nlines, p0 + p, k, &e, &d);
                        op[l] = (uint32_t)e | ((uint32_t)d << 16);
                    }
                }
            }
        }
    }
}

/* ---- the macro-kernel -------------------------------------------------------------- */

static void tile(const tier_cfg *t, int64_t kp, const void *ap, const void *bp, float *c,
                 int64_t ldc, int64_t mrem, int64_t nrem, int flags, float scale)
{
    if (mrem >= t->mr && nrem >= t->nr) {
        t->ukr(kp, ap, bp, c, ldc, flags, scale);
        return;
    }
    /* Edge tile: run on a full temporary tile, copy the valid part (BLIS-style). */
    float tmp[16 * 64] __attribute__((aligned(64)));
    int64_t mm = mrem < t->mr ? mrem : t->mr, nn = nrem < t->nr ? nrem : t->nr;
    memset(tmp, 0, sizeof(float) * (size_t)(t->mr * t->nr));
    if (flags & DK_UKR_LOAD)
        for (int64_t i = 0; i < mm; i++) memcpy(tmp + i * t->nr, c + i * ldc, sizeof(float) * nn);
    t->ukr(kp, ap, bp, tmp, t->nr, flags, scale);
    for (int64_t i = 0; i < mm; i++) memcpy(c + i * ldc, tmp + i * t->nr, sizeof(float) * nn);
}

static void *aligned_alloc_bytes(size_t n)
{
    void *p = NULL;
    if (n == 0) n = 64;
    if (posix_memalign(&p, 4096, (n + 4095) & ~(size_t)4095)) return NULL;
    return p;
}

int dk_gemm(int64_t batch, int64_t m, int64_t n, int64_t k,
            const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
            float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads, int order)
{
    tier_cfg t;
    if (!get_cfg(isa, kernel, order, &t) || batch < 0 || m < 0 || n < 0 || k < 0 || threads < 1 || !a || !b)
        return DK_EINVAL;
    if ((a->kind == DK_GEMM_U8 && !a->table) || (b->kind == DK_GEMM_U8 && !b->table))
        return DK_EINVAL;
    if (batch == 0 || m == 0 || n == 0) return DK_OK;
    if (k == 0) {
        for (int64_t bi = 0; bi < batch; bi++)
            for (int64_t i = 0; i < m; i++) memset(out + bi * bso + i * ldo, 0, sizeof(float) * n);
        return DK_OK;
    }

    const int64_t kpairs = (k + 1) / 2;
    const int64_t kcp = t.kc / 2;                    /* pairs per block */
    const int64_t pairA = t.mr * 2 * (t.split_a ? 4 : 2), pairB = t.nr * 2 * (t.split_b ? 4 : 2);
    int64_t nc = t.nc < n ? t.nc : ((n + t.nr - 1) / t.nr) * t.nr;

    /* Rows per A block: an even share per thread when m is large, so no thread idles. */
    int64_t nb_m = 1, mc;
    if (m > t.mc_max) {
        int64_t per = (m + (int64_t)threads * t.mc_max - 1) / ((int64_t)threads * t.mc_max);
        nb_m = per * threads;
    }
    mc = (m + nb_m - 1) / nb_m;
    mc = ((mc + t.mr - 1) / t.mr) * t.mr;
    nb_m = (m + mc - 1) / mc;

    int nthr = threads;
    size_t bbytes = (size_t)((nc + t.nr - 1) / t.nr) * kcp * pairB;
    size_t abytes = (size_t)(mc / t.mr) * kcp * pairA;
    char *bbuf = aligned_alloc_bytes(bbytes);
    char *abuf = aligned_alloc_bytes(abytes * nthr);
    if (!bbuf || !abuf) {
        free(bbuf);
        free(abuf);
        return DK_ENOMEM;
    }
    for (int64_t bi = 0; bi < batch; bi++) {
        /* A seen as rows x k; B seen as columns x k (lines along n). */
        view va = {(const char *)a->ptr + bi * a->bs * (a->kind == DK_GEMM_U8 ? 1 : 2),
                   a->rs, a->cs, a->kind, a->table};
        view vb = {(const char *)b->ptr + bi * b->bs * (b->kind == DK_GEMM_U8 ? 1 : 2),
                   b->cs, b->rs, b->kind, b->table};
        float *cb = out + bi * bso;

#pragma omp parallel num_threads(nthr)
        {
#ifdef _OPENMP
            int tid = omp_get_thread_num();
            int nteam = omp_get_num_threads();
#else
            int tid = 0, nteam = 1;
#endif
            char *mya = abuf + (size_t)tid * abytes;
            for (int64_t jc = 0; jc < n; jc += nc) {
                int64_t ncur = n - jc < nc ? n - jc : nc;
                int64_t nsl = (ncur + t.nr - 1) / t.nr;
                /* Work items (ic block, jr group), handed out dynamically so that a thread
                 * slowed by a busy core takes fewer. With fewer than 4 items per thread,
                 * each block's columns are split into groups; a thread takes items in
                 * increasing order, so it packs an A block at most once per pc (the
                 * packed_ic check). The order inside every C element is fixed, so the
                 * schedule never changes the bits. */
                int64_t ngroups = nb_m < 4 * (int64_t)nteam ? (4 * (int64_t)nteam + nb_m - 1) / nb_m : 1;
                if (ngroups > nsl) ngroups = nsl;
                int64_t nwork = nb_m * ngroups;
                for (int64_t pc = 0; pc < kpairs; pc += kcp) {
                    int64_t kp = kpairs - pc < kcp ? kpairs - pc : kcp;
                    int flags = (pc > 0 ? DK_UKR_LOAD : 0) | (pc + kp == kpairs ? DK_UKR_LAST : 0);
#pragma omp for schedule(dynamic, 2)
                    for (int64_t s = 0; s < nsl; s++)
                        pack_lines(&vb, n, k, jc + s * t.nr, t.nr, pc, kp, t.nr, t.split_b, t.simd_pack,
                                   bbuf + (size_t)s * kp * pairB);
                    int64_t packed_ic = -1;
#pragma omp for schedule(dynamic, 1)
                    for (int64_t w = 0; w < nwork; w++) {
                        int64_t ic = w / ngroups, g = w % ngroups;
                        int64_t i0 = ic * mc, mcur = m - i0 < mc ? m - i0 : mc;
                        int64_t msl = (mcur + t.mr - 1) / t.mr;
                        if (ic != packed_ic) {
                            pack_lines(&va, m, k, i0, mcur, pc, kp, t.mr, t.split_a, 0, mya);
                            packed_ic = ic;
                        }
                        int64_t s0 = nsl * g / ngroups, s1 = nsl * (g + 1) / ngroups;
                        for (int64_t s = s0; s < s1; s++) {
                            const char *bp = bbuf + (size_t)s * kp * pairB;
                            int64_t j = jc + s * t.nr;
                            for (int64_t r = 0; r < msl; r++) {
                                int64_t i = i0 + r * t.mr;
                                tile(&t, kp, mya + (size_t)r * kp * pairA, bp, cb + i * ldo + j,
                                     ldo, m - i, n - j, flags, scale);
                            }
                        }
                    }
                }
            }
        }
    }
    free(bbuf);
    free(abuf);
    return DK_OK;
}
