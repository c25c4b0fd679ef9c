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
 * Threads (the pool of dk_pool.h) share out the (ic, jr-group) work items of one jc step;
 * an item runs its rows x columns of C through every pc block in order: threads never split
 * k. The micro-kernels continue each C tile from the running sum stored in C, so the
 * result is the fixed order of dk_gemm.h, independent of blocking and threads (for the
 * amx order KC is a multiple of the order's 32-element block, so blocks never straddle
 * two KC steps and a partial block can only be the last).
 * CFloat8 codes are decoded to BF16 through the table while packing (exact).
 *
 * No barrier: the packed B of a jc step holds every pc block, cut into units of
 * DK_GEMM_CHUNK slivers. The first item that needs a unit packs it (an atomic flag per
 * unit: unpacked, packing, ready); an item that finds it being packed by another thread
 * packs a private copy instead of waiting, so a descheduled thread holds up nobody.
 * Problems below a tier's threshold (par_min_for) of multiply-adds per jc step run on the
 * calling thread. */
#define _DEFAULT_SOURCE /* madvise (MADV_HUGEPAGE) */
#define _POSIX_C_SOURCE 200809L /* posix_memalign, also where glibc predates _DEFAULT_SOURCE */
#include "dk_gemm.h"

#include <math.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__has_include)
#if __has_include(<sys/mman.h>)
#include <sys/mman.h> /* madvise */
#endif
#endif
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "dk_pool.h"
#include "dk_fpenv.h" /* dk_fpenv_enter / dk_fpenv_leave: every work item under the default MXCSR */

/* The packed-B flags publish data with C11 release/acquire, which valgrind's helgrind does not
 * model: tell it (no-ops outside valgrind; absent without the valgrind headers). */
#if defined(__has_include)
#if __has_include(<valgrind/helgrind.h>)
#include <valgrind/helgrind.h>
#endif
#endif
#ifndef ANNOTATE_HAPPENS_BEFORE
#define ANNOTATE_HAPPENS_BEFORE(obj) ((void)0)
#define ANNOTATE_HAPPENS_AFTER(obj) ((void)0)
#endif

#define DK_GEMM_CHUNK 4                         /* B slivers per packing unit */
#define DEFER_MAX 64                            /* units an item may put off (gemm_item) */
/* Units (DK_GEMM_CHUNK slivers) a column group keeps at least when the groups are raised to
 * one per thread (gemm_item: each group packs the A block once more, a cost that grows as
 * the groups narrow; 8 units are 1024 columns on the amx tier) */
#define DK_GEMM_GROUP_MIN_UNITS 8
#define DK_GEMM_PAR_MIN ((double)(1 << 21))     /* m * ncols * k of a step handed to the pool:
                                                 * the generic tier and the few-rows path */
#define DK_GEMM_MIN_BLOCK_SL 2                  /* slivers per A block when m is cut finer */
#define DK_GEMM_BPANEL_MAX ((size_t)32 << 20)   /* bytes of packed B per jc step (all of k) */
#define DK_GEMM_L1_BYTES ((double)(32 << 10))   /* L1 data a kernel's operands may count on */
#define DK_GEMM_AMX_KC_L1 512                   /* amx tier: k per block for a small C block */
#define DK_GEMM_AMX_C_SMALL ((double)(1 << 18)) /* ... that is, up to these bytes of C an item */
#define DK_GEMM_AMX_A_ALLK ((double)(1 << 20))  /* amx tier: packed A of a block, all of k */

typedef struct {
    dk_gemm_ukr_fn ukr;
    int split_a;      /* A packing: 1 FP32 split layout, 0 BF16 pair layout */
    int split_b;      /* B packing: likewise */
    int64_t mr, nr;
    int64_t kc;       /* k per block (even; a multiple of 32 for the amx order) */
    int64_t mc_max;   /* rows per A block (multiple of mr) */
    int64_t nc;       /* columns per B panel (multiple of nr) */
    int simd_pack;    /* 1: the AVX-512 packers (B pairs, A lines or row tiles) and range scan */
    int rowtile_a;    /* 1: A in the AMX "row tiles" layout (overrides split_a) */
    int64_t kblk;     /* the kernel takes k-pairs in multiples of this (zero padded) */
    void (*enter)(void), (*leave)(void);  /* per-thread set-up around a work item */
    dk_gemm_ukr_add_fn ukr_add; /* NULL, or ukr with the addend fused into its last store */
    int streams;      /* 1: the kernel honours DK_UKR_STREAM (on 64-byte aligned rows) */
    dk_gemm_ukr_io_fn ukr_io; /* NULL, or ukr reading C from one place, writing it to another:
                               * the tier may keep running sums apart (gemm_item_body's kinner) */
    int pack_avx2;    /* 1: A's split layout from a row-major A with AVX2 (the avx2 tier) */
} tier_cfg;

static int get_cfg(int isa, int kernel, int order, tier_cfg *t)
{
    if (isa < 0 || isa >= DK_ISA_COUNT) return 0;
    if (order == DK_GEMM_ORDER_AMX) {
        /* KC is a multiple of 32 elements (whole blocks of the order), so the blocks are
         * absolute in k whatever the blocking. */
        if (isa >= DK_ISA_AMX)
            *t = (tier_cfg){dk_gemm_ukr_amxtile, 0, 0, DK_GEMM_AMXTILE_MR, DK_GEMM_AMXTILE_NR,
                            2048, 256, 4096, 1, 1, DK_GEMM_AMX_BLOCK_PAIRS, dk_gemm_amxtile_enter,
                            dk_gemm_amxtile_leave, dk_gemm_ukr_amxtile_add, 1,
                            dk_gemm_ukr_amxtile_io};
        else if (isa >= DK_ISA_AVX512BF16)
            /* MC 252: an A block of 516 KB (FP32) that a 1 MiB L2 still holds, B read from the
             * caches by 3x fewer A blocks than with MC 84 (2048^3, forced avx512bf16 tier on
             * the AMX machine, with B in the pair layout: 100 -> 113 GFLOP/s at one thread) */
            *t = (tier_cfg){dk_gemm_ukr_amx_avx512, 1, 0, DK_GEMM_AMX512_MR, DK_GEMM_AMX512_NR,
                            512, 252, 2048, 1};
        else if (isa == DK_ISA_AVX2)
            *t = (tier_cfg){dk_gemm_ukr_amx_avx2, 1, 1, DK_GEMM_AMX_AVX2_MR, DK_GEMM_SPLIT_NR,
                            256, 48, 2048, 0, .pack_avx2 = 1};
        else
            *t = (tier_cfg){dk_gemm_ukr_amx_generic, 1, 1, DK_GEMM_SPLIT_MR, DK_GEMM_SPLIT_NR,
                            256, 96, 512, 0};
        return 1;
    }
    if (order != DK_GEMM_ORDER_VDPBF16PS) return 0;
    if (isa >= DK_ISA_AVX512BF16) { /* amx has no vdpbf16ps-order form: these kernels */
        if (kernel == DK_GEMM_KERNEL_FMA) {
            *t = (tier_cfg){dk_gemm_ukr_avx512fma_pb, 1, 0, DK_GEMM_F512_MR, DK_GEMM_F512_NR,
                            512, 84, 2048, 1};
            return 1;
        }
        /* KC 2048, MC 72 (were 512, 96): a kernel call runs 4x longer per load and store
         * of its C block; the A block (288 KB) and the B sliver the A slivers stream past
         * (KC x NR, 256 KiB) sit in L2 (1 MiB on Zen 4), not L1. Zen 4, GFLOP/s, best
         * of 3 s: 2048^3 212 -> 222 at one thread, 419 -> 429 at two; 4096^3 206 -> 217,
         * 405 -> 428; 256 x 4096 x 4096 at two 331 -> 355; 512^3 unchanged (400). */
        *t = (tier_cfg){dk_gemm_ukr_avx512bf16, 0, 0, DK_GEMM_PAIR_MR, DK_GEMM_PAIR_NR,
                        2048, 72, 2048, 1};
        return 1;
    }
    if (isa == DK_ISA_AVX2) {
        *t = (tier_cfg){dk_gemm_ukr_avx2, 1, 1, DK_GEMM_SPLIT_MR, DK_GEMM_SPLIT_NR,
                        512, 48, 2048, 0, .pack_avx2 = 1};
        return 1;
    }
    *t = (tier_cfg){dk_gemm_ukr_generic, 1, 1, DK_GEMM_SPLIT_MR, DK_GEMM_SPLIT_NR,
                    256, 96, 512, 0};
    return 1;
}

/* Whether the packers take A's BF16 range on the way (dk_gemm_ranges): the pair layout and
 * the row tiles hold the codes; the FP32 split layout holds values with DAZ applied, so its
 * range is taken from the codes as they are read, which the AVX-512 packers do (the split
 * layouts of the avx512bf16 tier's amx-order and FMA kernels) and the portable one then does
 * too (pack_lines). The other split tiers (avx2, generic) scan A first. */
static int ranges_a(const tier_cfg *t) { return !t->split_a || t->simd_pack; }

/* The multiply-adds of a step (or of a whole batch of small products) from which the packed
 * path hands it to the pool: about 150 us of one thread's work on the kernel that runs it.
 * Waking a worker and bringing it up to speed costs tens of microseconds, up to a hundred
 * on a VM whose idle vCPUs halt; measured on the AMX machine (2t/1t time, contention guard
 * off), a second thread broke even at about 100 us of work on every tier: amx 448^3,
 * avx512bf16 192^3, avx2 160^3 (docs/threads.md). Tests may lower it (dk_gemm_set_par_min). */
static atomic_llong par_min_set;  /* 0: the tiers' own; > 0: this for every tier */

static double par_min_for(int isa, int order)
{
    long long set = atomic_load_explicit(&par_min_set, memory_order_relaxed);
    if (set > 0) return (double)set;
    if (order == DK_GEMM_ORDER_AMX && isa >= DK_ISA_AMX) return (double)(3LL << 25);
    if (isa >= DK_ISA_AVX512BF16) return (double)(3LL << 22);
    if (isa == DK_ISA_AVX2) return (double)(1LL << 22);
    return DK_GEMM_PAR_MIN;
}

int64_t dk_gemm_set_par_min(int64_t macs)
{
    return (int64_t)atomic_exchange_explicit(&par_min_set, macs > 0 ? macs : 0, memory_order_relaxed);
}

/* Tests: how many jc steps ran k inside the columns (kinner), how many let the kernels
 * stream the result, how many of the kinner steps took k in more than one range, and how
 * many few-rows W^T products ran on the tiles (dk_gemm_smallm_bt_amxtile), since the
 * process started (dk_gemm_path_counts). The bits are the same either way, so this is how a
 * test knows which path it exercised. */
static atomic_llong steps_kinner, steps_streamed, steps_kranges, bt_on_tiles;

void dk_gemm_path_counts(int64_t counts[4])
{
    counts[0] = (int64_t)atomic_load_explicit(&steps_kinner, memory_order_relaxed);
    counts[1] = (int64_t)atomic_load_explicit(&steps_streamed, memory_order_relaxed);
    counts[2] = (int64_t)atomic_load_explicit(&steps_kranges, memory_order_relaxed);
    counts[3] = (int64_t)atomic_load_explicit(&bt_on_tiles, memory_order_relaxed);
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

static void packed_range(const void *buf, int64_t n, uint16_t *rng, int simd);
static void range_row(const uint16_t *p, int64_t n, int64_t s, int16_t *lo, int16_t *hi);

/* Element [0, 0] of batch item bi of an operand. */
static inline const char *item_ptr(const dk_gemm_operand *o, int64_t bi)
{
    return (const char *)o->ptr + bi * o->bs * (o->kind == DK_GEMM_U8 ? 1 : 2);
}

/* The views of batch item bi: A seen as rows x k, B as columns x k (lines along n). */
static void item_views(const dk_gemm_operand *a, const dk_gemm_operand *b, int64_t bi, view *va,
                       view *vb)
{
    *va = (view){item_ptr(a, bi), a->rs, a->cs, a->kind, a->table};
    *vb = (view){item_ptr(b, bi), b->cs, b->rs, b->kind, b->table};
}

/* One (even k, odd k) pair of codes of line l into a packed sliver at o (lw lanes a pair):
 * split layout (FP32 values, DAZ) odd k then even k, or pair layout (even | odd << 16). */
__attribute__((always_inline)) static inline void put_pair(uint32_t *o, int64_t lw, int64_t l,
                                                           uint16_t e, uint16_t d, int split)
{
    if (split) {
        o[l] = widen_bits(d);
        o[lw + l] = widen_bits(e);
    } else {
        o[l] = (uint32_t)e | ((uint32_t)d << 16);
    }
}

/* One sliver of lw lines from base_line, kp pairs from pair p0, portably, into o (split: 2 *
 * lw lanes a pair, else lw); the lines past the matrix and the pairs past k are zeros.
 * Inlined twice, with split a constant, so that each copy keeps only its stores. */
__attribute__((always_inline)) static inline void
pack_sliver_portable(const view *v, int64_t nlines, int64_t k, int64_t base_line, int64_t p0,
                     int64_t kp, int64_t lw, int split, uint32_t *o)
{
    const int64_t width = split ? 2 * lw : lw; /* lanes per pair */
    int64_t nv = nlines - base_line < lw ? nlines - base_line : lw; /* lines that exist */
    if (nv < 0) nv = 0;
    const int u16 = v->kind == DK_GEMM_U16;
    const uint16_t *t = v->table;
    for (int64_t p = 0; p < kp; p++, o += width) {
        const int64_t k0 = 2 * (p0 + p);
        const int64_t nc = k0 < k ? nv : 0; /* lines with codes at this pair */
        /* Fast paths, both codes of the pair present: the lines contiguous (B row-major: two
         * k-rows, interleaved) or k contiguous (A row-major: two adjacent codes). */
        if (k0 + 1 < k && v->rs == 1 && u16) {
            const uint16_t *r0 = (const uint16_t *)v->p + base_line + k0 * v->cs, *r1 = r0 + v->cs;
            for (int64_t l = 0; l < nc; l++) put_pair(o, lw, l, r0[l], r1[l], split);
        } else if (k0 + 1 < k && v->cs == 1 && u16) {
            const uint16_t *r0 = (const uint16_t *)v->p + base_line * v->rs + k0;
            for (int64_t l = 0; l < nc; l++) put_pair(o, lw, l, r0[l * v->rs], r0[l * v->rs + 1], split);
        } else if (k0 + 1 < k && v->rs == 1) {
            const uint8_t *r0 = (const uint8_t *)v->p + base_line + k0 * v->cs, *r1 = r0 + v->cs;
            for (int64_t l = 0; l < nc; l++) put_pair(o, lw, l, t[r0[l]], t[r1[l]], split);
        } else if (k0 + 1 < k && v->cs == 1) {
            const uint8_t *r0 = (const uint8_t *)v->p + base_line * v->rs + k0;
            for (int64_t l = 0; l < nc; l++) put_pair(o, lw, l, t[r0[l * v->rs]], t[r0[l * v->rs + 1]], split);
        } else { /* the half pair of an odd k, other strides */
            for (int64_t l = 0; l < nc; l++) {
                uint16_t e, d;
                pair_at(v, base_line + l, nlines, p0 + p, k, &e, &d);
                put_pair(o, lw, l, e, d, split);
            }
        }
        if (nc < lw) { /* (most pairs have every line: no library call for nothing) */
            memset(o + nc, 0, sizeof(uint32_t) * (size_t)(lw - nc));
            if (split) memset(o + lw + nc, 0, sizeof(uint32_t) * (size_t)(lw - nc));
        }
    }
}

/* Pack `width` slivers of mr (or nr) lines x kp pairs starting at line l0, pair p0.
 * For A the lines are rows (v as given); for B the driver passes a transposed view so
 * that lines are columns of B. Output sliver s at dst + s * kp * pair_bytes. */
static void pack_lines(const view *v, int64_t nlines, int64_t k, int64_t l0, int64_t nl,
                       int64_t p0, int64_t kp, int64_t lw, int split, int simd, int avx2, void *dst,
                       uint16_t *rng)
{
    int64_t nsl = (nl + lw - 1) / lw, s_first = 0;
    /* avx512 fast path (pair layout: every avx512bf16-tier kernel's B and the amx tier's;
     * the split layout is packed portably): lines contiguous (B row-major), the slivers
     * wholly inside, full pairs; the last, half pair of an odd k and the slivers past the
     * edge go through the avx512 edge packers. rng: merge the range of the codes packed,
     * fused into the BF16 packers where it can be. */
    int64_t nin = lw > 0 && nlines > l0 ? (nlines - l0) / lw : 0;
    if (nin > nsl) nin = nsl;
    int64_t kfull = (k / 2) - p0;
    if (kfull > kp) kfull = kp;
    /* pair layout, lines contiguous: AVX-512 for the edges as well */
    const int edge512 = simd && v->rs == 1 && lw % 32 == 0 && !split;
    if (edge512 && nin > 0 && kfull > 0) {
        int64_t koff = 2 * p0 * v->cs;
        if (v->kind == DK_GEMM_U16)
            dk_gemm_pack_pair_u16_avx512((const uint16_t *)v->p + l0 + koff, v->cs, kfull, lw,
                                         nin, kp * lw, (uint32_t *)dst, rng);
        else /* 8-bit codes: never ranged */
            dk_gemm_pack_pair_u8_avx512((const uint8_t *)v->p + l0 + koff, v->cs, kfull, lw,
                                        nin, kp * lw, v->table, (uint32_t *)dst);
        s_first = nin;
    }
    if (edge512) {
        /* the edges with AVX-512 too: the pairs past kfull of the whole slivers (the half
         * pair of an odd k, the padding pairs) and the slivers at or past the matrix's edge */
        for (int64_t s = 0; s < nsl; s++) {
            const int64_t pst = s < s_first ? kfull : 0;
            if (pst >= kp) continue;
            const int64_t line = l0 + s * lw;
            const int64_t ncols = nlines - line < 0 ? 0 : nlines - line < lw ? nlines - line : lw;
            const int64_t krows = k - 2 * (p0 + pst) < 0 ? 0 : k - 2 * (p0 + pst);
            /* no pointer is formed where there is nothing to read (past the matrix) */
            const int have = ncols > 0 && krows > 0;
            const int64_t off = have ? line + 2 * (p0 + pst) * v->cs : 0; /* cs < 0: reversed k */
            uint32_t *o = (uint32_t *)dst + s * kp * lw + pst * lw;
            if (v->kind == DK_GEMM_U16)
                dk_gemm_pack_pair_edge_u16_avx512(have ? (const uint16_t *)v->p + off : NULL, v->cs,
                                                  krows, kp - pst, ncols, lw, o, rng);
            else /* never ranged */
                dk_gemm_pack_pair_edge_u8_avx512(have ? (const uint8_t *)v->p + off : NULL, v->cs,
                                                 krows, kp - pst, ncols, lw, v->table, o);
        }
        return;
    }
    /* k contiguous, with AVX-512 transposes, the edges included: a row-major A in slivers
     * of at most 16 lines, either layout (4096x256x4096, avx512bf16 tier, one thread: the
     * scalar loop below was a sixth of the time), and the pair layout of a transposed B (a
     * torch Linear's W^T) */
    const int klines = !split && lw % 16 == 0; /* B's pair_klines, else A's lines_kc */
    if (simd && v->cs == 1 && (lw <= 16 || klines)) {
        const int64_t kcodes = k - 2 * p0 > 0 ? k - 2 * p0 : 0;
        const size_t esz = v->kind == DK_GEMM_U16 ? 2 : 1;
        const int64_t width = split ? 2 * lw : lw; /* lanes per pair */
        for (int64_t s = 0; s < nsl; s++) {
            const int64_t line = l0 + s * lw;
            const int64_t ncols = nlines - line < 0 ? 0 : nlines - line < lw ? nlines - line : lw;
            /* no pointer is formed where there is nothing to read */
            const void *src = ncols > 0 && kcodes > 0
                                  ? v->p + (ptrdiff_t)((line * v->rs + 2 * p0) * (int64_t)esz) : NULL;
            uint32_t *o = (uint32_t *)dst + s * kp * width;
            /* the codes' range as they are read (either layout); 8-bit codes: never ranged */
            if (klines && v->kind == DK_GEMM_U16)
                dk_gemm_pack_pair_klines_u16_avx512(src, v->rs, ncols, kcodes, kp, lw, o, rng);
            else if (klines)
                dk_gemm_pack_pair_klines_u8_avx512(src, v->rs, ncols, kcodes, kp, lw, v->table, o);
            else if (v->kind == DK_GEMM_U16)
                dk_gemm_pack_lines_kc_u16_avx512(src, v->rs, ncols, kcodes, kp, lw, split, o, rng);
            else
                dk_gemm_pack_lines_kc_u8_avx512(src, v->rs, ncols, kcodes, kp, lw, split, v->table, o);
        }
        return;
    }
    /* lines contiguous (a transposed A: a torch Linear's dY^T), at most 16 a sliver: all the
     * slivers at once, down k */
    if (simd && v->rs == 1 && lw <= 16) {
        const int64_t kcodes = k - 2 * p0 > 0 ? k - 2 * p0 : 0;
        const size_t esz = v->kind == DK_GEMM_U16 ? 2 : 1;
        const int64_t nlv = nlines - l0 < 0 ? 0 : nlines - l0 < nl ? nlines - l0 : nl;
        const void *src = nlv > 0 && kcodes > 0
                              ? v->p + (ptrdiff_t)((l0 + 2 * p0 * v->cs) * (int64_t)esz) : NULL;
        if (v->kind == DK_GEMM_U16)
            dk_gemm_pack_lines_kr_u16_avx512(src, v->cs, nlv, nsl, kcodes, kp, lw, split,
                                             (uint32_t *)dst, rng);
        else /* never ranged */
            dk_gemm_pack_lines_kr_u8_avx512(src, v->cs, nlv, nsl, kcodes, kp, lw, split,
                                            v->table, (uint32_t *)dst);
        return;
    }
    /* avx2 tier, split layout of a row-major A: whole groups of 8 pairs with AVX2, the rest
     * (the pairs short of a group, the half pair of an odd k, padding pairs) portably */
    const int64_t kgroups = avx2 && split && v->cs == 1 && lw >= 2 && lw <= 8 ? (kfull < 0 ? 0 : kfull) / 8 * 8 : 0;
    for (int64_t s = s_first; s < nsl; s++) {
        const int64_t line = l0 + s * lw;
        if (split) {
            uint32_t *o = (uint32_t *)dst + s * kp * 2 * lw;
            const int64_t nlv = nlines - line < 0 ? 0 : nlines - line < lw ? nlines - line : lw;
            const int64_t done = nlv > 0 ? kgroups : 0;
            if (done > 0 && v->kind == DK_GEMM_U16)
                dk_gemm_pack_split_kc_u16_avx2((const uint16_t *)v->p + line * v->rs + 2 * p0, v->rs, nlv,
                                               done, lw, o);
            else if (done > 0)
                dk_gemm_pack_split_kc_u8_avx2((const uint8_t *)v->p + line * v->rs + 2 * p0, v->rs, nlv,
                                              done, lw, v->table, o);
            pack_sliver_portable(v, nlines, k, line, p0 + done, kp - done, lw, 1, o + done * 2 * lw);
        } else {
            pack_sliver_portable(v, nlines, k, line, p0, kp, lw, 0, (uint32_t *)dst + s * kp * lw);
        }
    }
    /* the range of the slivers packed portably: their pairs that hold codes (the padding
     * pairs are zeros, which count for neither end of a range); the split layout's (FP32
     * values with DAZ applied) from the codes of its lines, k from pair p0 */
    int64_t kvalid = (k + 1) / 2 - p0;
    if (kvalid > kp) kvalid = kp;
    for (int64_t s = s_first; rng && !split && s < nsl && kvalid > 0; s++)
        packed_range((uint32_t *)dst + s * kp * lw, kvalid * lw * 2, rng, simd);
    if (rng && split && v->kind == DK_GEMM_U16 && kvalid > 0) {
        const int64_t kn = k - 2 * p0 < 2 * kp ? k - 2 * p0 : 2 * kp; /* codes of each line */
        const int64_t l1 = l0 + nl < nlines ? l0 + nl : nlines;
        int16_t lo = (int16_t)rng[0], hi = (int16_t)rng[1];
        for (int64_t l = l0; l < l1; l++) { /* (s_first is 0: no split sliver is edge512's) */
            const uint16_t *first = (const uint16_t *)v->p + l * v->rs + 2 * p0 * v->cs;
            if (v->cs < 0) range_row(first + (kn - 1) * v->cs, kn, -v->cs, &lo, &hi);
            else range_row(first, kn, v->cs, &lo, &hi);
        }
        rng[0] = (uint16_t)lo;
        rng[1] = (uint16_t)hi;
    }
}

/* Pack A into the AMX "row tiles" layout (dk_gemm.h): slivers of mr rows from row l0,
 * kp pairs (a multiple of 16) from pair p0; per block of 16 pairs, mr rows x 16 lanes.
 * Rows past nlines and pairs past k are zeros. */
static void pack_rowtiles(const view *v, int64_t nlines, int64_t k, int64_t l0, int64_t nl,
                          int64_t p0, int64_t kp, int64_t mr, int simd, void *dst, uint16_t *rng)
{
    int64_t nsl = (nl + mr - 1) / mr;
    for (int64_t s = 0; s < nsl; s++) {
        uint32_t *o = (uint32_t *)dst + s * kp * mr;
        int64_t blk0 = 0;
        /* avx512 fast path, k contiguous, the edges too (the rows of the sliver that exist,
         * the codes of a partial last block): BF16 copied (its range taken on the way),
         * CFloat8 decoded */
        const int64_t rows = nlines - (l0 + s * mr) < mr ? nlines - (l0 + s * mr) : mr;
        if (simd && v->cs == 1 && 2 * p0 < k) {
            int64_t kin = k - 2 * p0, nblk = (kin + 31) / 32;
            if (nblk > kp / 16) nblk = kp / 16;
            const int64_t klast = kin - 32 * (nblk - 1) < 32 ? kin - 32 * (nblk - 1) : 32;
            if (v->kind == DK_GEMM_U16)
                dk_gemm_pack_rowtile_u16_avx512((const uint16_t *)v->p + (l0 + s * mr) * v->rs + 2 * p0,
                                                v->rs, rows, nblk, klast, mr, o, rng);
            else /* never ranged */
                dk_gemm_pack_rowtile_u8_avx512((const uint8_t *)v->p + (l0 + s * mr) * v->rs + 2 * p0,
                                               v->rs, rows, nblk, klast, mr, v->table, o);
            blk0 = nblk;
        } else if (simd && v->rs == 1 && mr == 32 && 2 * p0 < k && rows > 0) {
            /* rows contiguous (a transposed A: the dY^T of a torch Linear's dW): AVX-512
             * transposes, the same edges */
            int64_t kin = k - 2 * p0, nblk = (kin + 31) / 32;
            if (nblk > kp / 16) nblk = kp / 16;
            const int64_t klast = kin - 32 * (nblk - 1) < 32 ? kin - 32 * (nblk - 1) : 32;
            const int64_t off = l0 + s * mr + 2 * p0 * v->cs;
            if (v->kind == DK_GEMM_U16)
                dk_gemm_pack_rowtile_cols_u16_avx512((const uint16_t *)v->p + off, v->cs, rows,
                                                     nblk, klast, o, rng);
            else /* never ranged */
                dk_gemm_pack_rowtile_cols_u8_avx512((const uint8_t *)v->p + off, v->cs, rows,
                                                    nblk, klast, v->table, o);
            blk0 = nblk;
        }
        for (int64_t blk = blk0; blk < kp / 16; blk++) {
            int64_t k0 = 2 * (p0 + 16 * blk);  /* first k of the block */
            for (int64_t r = 0; r < mr; r++) {
                int64_t row = l0 + s * mr + r;
                uint32_t *orow = o + blk * 16 * mr + r * 16;
                if (row >= nlines || k0 >= k) {        /* a padding row or block */
                    memset(orow, 0, 64);
                    continue;
                }
                if (v->cs == 1) {  /* k contiguous: the block's codes (the last one partial) */
                    /* lane j: (k 2j | k 2j+1 << 16), that is the codes in order, little-endian */
                    uint16_t *o16 = (uint16_t *)orow;
                    const int64_t nv = k - k0 < 32 ? k - k0 : 32;
                    if (v->kind == DK_GEMM_U16) {
                        memcpy(o16, (const uint16_t *)v->p + row * v->rs + k0, sizeof(uint16_t) * (size_t)nv);
                    } else {
                        const uint8_t *q = (const uint8_t *)v->p + row * v->rs + k0;
                        for (int64_t j = 0; j < nv; j++) o16[j] = v->table[q[j]];
                    }
                    memset(o16 + nv, 0, sizeof(uint16_t) * (size_t)(32 - nv));
                    continue;
                }
                for (int64_t j = 0; j < 16; j++) {
                    uint16_t e, d;
                    pair_at(v, row, nlines, p0 + 16 * blk + j, k, &e, &d);
                    orow[j] = (uint32_t)e | ((uint32_t)d << 16);
                }
            }
            /* the rows that hold codes (the padding rows are zeros) */
            if (rng && rows > 0 && 2 * (p0 + 16 * blk) < k) packed_range(o + blk * 16 * mr, 16 * rows * 2, rng, simd);
        }
    }
}

/* ---- operand magnitude range (the scaling pre-pass) ---------------------------------- */

/* Magnitudes (code & 0x7FFF) are 0..0x7FFF: signed 16-bit compares suffice (SSE2, part
 * of the x86-64 baseline: pmaxsw / pminsw, 8 codes a step). */
static void range_row(const uint16_t *p, int64_t n, int64_t s, int16_t *lo, int16_t *hi)
{
    int16_t mn = *lo, mx = *hi;
    int64_t i = 0;
#ifdef __SSE2__
    if (s == 1 && n >= 16) {
        /* two pairs of accumulators (16 codes a step), reduced once at the end */
        const __m128i m7 = _mm_set1_epi16(0x7FFF), inf = _mm_set1_epi16(0x7F80);
        const __m128i zero = _mm_setzero_si128();
        __m128i mx0 = _mm_set1_epi16(mx), mn0 = _mm_set1_epi16(mn), mx1 = mx0, mn1 = mn0;
        for (; i + 16 <= n; i += 16) {
            __m128i x0 = _mm_and_si128(_mm_loadu_si128((const __m128i *)(p + i)), m7);
            __m128i x1 = _mm_and_si128(_mm_loadu_si128((const __m128i *)(p + i + 8)), m7);
            /* finite magnitudes (else 0) into the max, nonzero ones (else 0x7FFF) into the min */
            mx0 = _mm_max_epi16(mx0, _mm_and_si128(x0, _mm_cmpgt_epi16(inf, x0)));
            mx1 = _mm_max_epi16(mx1, _mm_and_si128(x1, _mm_cmpgt_epi16(inf, x1)));
            mn0 = _mm_min_epi16(mn0, _mm_or_si128(x0, _mm_and_si128(_mm_cmpeq_epi16(x0, zero), m7)));
            mn1 = _mm_min_epi16(mn1, _mm_or_si128(x1, _mm_and_si128(_mm_cmpeq_epi16(x1, zero), m7)));
        }
        int16_t a[8], b[8];
        _mm_storeu_si128((__m128i *)a, _mm_max_epi16(mx0, mx1));
        _mm_storeu_si128((__m128i *)b, _mm_min_epi16(mn0, mn1));
        for (int j = 0; j < 8; j++) {
            mx = a[j] > mx ? a[j] : mx;
            mn = b[j] < mn ? b[j] : mn;
        }
    }
#endif
    for (; i < n; i++) {
        int16_t v = (int16_t)(p[i * s] & 0x7FFF);
        int16_t f = v < 0x7F80 ? v : 0;      /* finite magnitude, else 0 */
        int16_t z = v != 0 ? v : 0x7FFF;     /* nonzero magnitude, else the top */
        mx = f > mx ? f : mx;
        mn = z < mn ? z : mn;
    }
    *lo = mn;
    *hi = mx;
}

typedef struct {
    const uint16_t *p;
    int64_t n_in, s_in, n_out, s_out, s0, rows_per_item, nrows;
    int16_t lo[64], hi[64];  /* per slot */
} range_args;

static void range_item(void *arg, int64_t item, int slot)
{
    range_args *R = arg;
    int64_t r0 = item * R->rows_per_item, r1 = r0 + R->rows_per_item;
    if (r1 > R->nrows) r1 = R->nrows;
    int16_t lo = R->lo[slot], hi = R->hi[slot];
    for (int64_t r = r0; r < r1; r++) { /* row r of the (batch x outer) rows */
        const uint16_t *row = R->p + (r / R->n_out) * R->s0 + (r % R->n_out) * R->s_out;
        if (R->s_in < 0) range_row(row + (R->n_in - 1) * R->s_in, R->n_in, -R->s_in, &lo, &hi);
        else range_row(row, R->n_in, R->s_in, &lo, &hi);
    }
    R->lo[slot] = lo;
    R->hi[slot] = hi;
}

/* The range of `n` contiguous BF16 codes, merged into rng[0] (smallest nonzero) and rng[1]
 * (largest finite): a block a packer has just written in the BF16 pair or row-tile layout,
 * which holds the operand's codes as they are plus zero padding (zeros count for neither),
 * read again from the caches. simd: the avx512 packers may be used, so may AVX-512 here. */
static void packed_range(const void *buf, int64_t n, uint16_t *rng, int simd)
{
    if (simd) {
        dk_gemm_range_u16_avx512((const uint16_t *)buf, n, rng);
        return;
    }
    int16_t lo = (int16_t)rng[0], hi = (int16_t)rng[1];
    range_row((const uint16_t *)buf, n, 1, &lo, &hi);
    rng[0] = (uint16_t)lo;
    rng[1] = (uint16_t)hi;
}

void dk_gemm_bf16_range(const uint16_t *p, int64_t d0, int64_t d1, int64_t d2, int64_t s0,
                        int64_t s1, int64_t s2, uint16_t *minnz, uint16_t *maxfin, int threads)
{
    int16_t lo = 0x7FFF, hi = 0;
    if (d0 > 0 && d1 > 0 && d2 > 0) {
        /* walk the longer of the two inner axes innermost, preferring a unit stride */
        int inner2 = (s2 == 1 || s2 == -1) || !(s1 == 1 || s1 == -1);
        range_args R = {.p = p, .n_in = inner2 ? d2 : d1, .s_in = inner2 ? s2 : s1,
                        .n_out = inner2 ? d1 : d2, .s_out = inner2 ? s1 : s2, .s0 = s0};
        /* a small contiguous matrix (rows back to back, up to an item's 2^18 codes) is
         * scanned as one row, and a small contiguous batch of them as one row in all:
         * fewer, longer scans (a batch of 16 x 16 matrices was 16 codes a call); larger
         * ones keep their rows, which the items share out */
        if (R.s_in == 1 && R.s_out == R.n_in && (double)R.n_in * (double)R.n_out <= (double)(1 << 18)) {
            R.n_in *= R.n_out;
            R.n_out = 1;
            if (d0 > 1 && R.s0 == R.n_in && (double)d0 * (double)R.n_in <= (double)(1 << 18)) {
                R.n_in *= d0;
                d0 = 1;
            }
        }
        R.nrows = d0 * R.n_out;
        /* items of about 256 Ki codes; large scans share them out on the pool */
        R.rows_per_item = ((int64_t)1 << 18) / R.n_in + 1;
        int64_t nitems = (R.nrows + R.rows_per_item - 1) / R.rows_per_item;
        int nthr = threads < 1 ? 1 : threads > 64 ? 64 : threads;
        if (nitems < 4) nthr = 1;
        for (int i = 0; i < 64; i++) {
            R.lo[i] = 0x7FFF;
            R.hi[i] = 0;
        }
        dk_pool_run(nthr, nitems, range_item, &R);
        for (int i = 0; i < nthr; i++) {
            lo = R.lo[i] < lo ? R.lo[i] : lo;
            hi = R.hi[i] > hi ? R.hi[i] : hi;
        }
    }
    *minnz = (uint16_t)lo;
    *maxfin = (uint16_t)hi;
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
    if (flags & DK_UKR_LOAD) { /* else the kernel writes the whole tile without reading it */
        memset(tmp, 0, sizeof(float) * (size_t)(t->mr * t->nr));
        for (int64_t i = 0; i < mm; i++) memcpy(tmp + i * t->nr, c + i * ldc, sizeof(float) * nn);
    }
#ifdef DK_CHECK_UKR_CONTRACT
    else /* sanitizer builds: a kernel that read C anyway would spread these NaNs */
        memset(tmp, 0xFF, sizeof(float) * (size_t)(t->mr * t->nr));
#endif
    /* the temporary is read straight back: no non-temporal stores into it */
    t->ukr(kp, ap, bp, tmp, t->nr, flags & ~DK_UKR_STREAM, scale);
    for (int64_t i = 0; i < mm; i++) memcpy(c + i * ldc, tmp + i * t->nr, sizeof(float) * nn);
}

/* The work buffers of the last large call (the packed B panel, the per-thread A blocks, B
 * units and running sums of the kinner items) are kept for the next one, up to DK_GEMM_CACHE_SLOTS buffers of at most
 * DK_GEMM_CACHE_MAX bytes each: a fresh allocation of more than a few hundred kilobytes is
 * mapped anew and zeroed page by page by the kernel on first touch, which cost more than the
 * packing itself on skinny products. Taken and given back under a mutex (a concurrent call
 * allocates its own); a full cache keeps the larger buffers. dk_gemm_release_cache() frees
 * them (interpreter exit). */
#define DK_GEMM_CACHE_MAX ((size_t)64 << 20)
#define DK_GEMM_CACHE_MIN ((size_t)128 << 10)
#define DK_GEMM_CACHE_SLOTS 4
static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static void *cache_ptr[DK_GEMM_CACHE_SLOTS];
static size_t cache_cap[DK_GEMM_CACHE_SLOTS];

static int cache_huge[DK_GEMM_CACHE_SLOTS]; /* 1: the slot's buffer was asked huge pages */

static void *aligned_alloc_bytes(size_t n, int huge);

/* A buffer of at least n bytes: the smallest cached one of the same kind (huge: the shared
 * B panel, aligned_alloc_bytes) that is large enough, else new. */
static void *buf_take(size_t n, size_t *cap, int huge)
{
    void *p = NULL;
    pthread_mutex_lock(&cache_mu);
    int best = -1;
    for (int i = 0; i < DK_GEMM_CACHE_SLOTS; i++)
        if (cache_ptr[i] && cache_huge[i] == huge && cache_cap[i] >= n &&
            (best < 0 || cache_cap[i] < cache_cap[best]))
            best = i;
    if (best >= 0) {
        p = cache_ptr[best];
        *cap = cache_cap[best];
        cache_ptr[best] = NULL;
        cache_cap[best] = 0;
    }
    pthread_mutex_unlock(&cache_mu);
    if (!p) {
        p = aligned_alloc_bytes(n, huge);
        *cap = n;
    }
    return p;
}

static void buf_give(void *p, size_t cap, int huge)
{
    if (!p) return;
    void *drop = p;
    if (cap <= DK_GEMM_CACHE_MAX && cap >= DK_GEMM_CACHE_MIN) {
        pthread_mutex_lock(&cache_mu);
        int slot = 0; /* an empty slot, else the smallest buffer */
        for (int i = 1; i < DK_GEMM_CACHE_SLOTS && cache_ptr[slot]; i++)
            if (!cache_ptr[i] || cache_cap[i] < cache_cap[slot]) slot = i;
        if (!cache_ptr[slot] || cache_cap[slot] < cap) {
            drop = cache_ptr[slot];
            cache_ptr[slot] = p;
            cache_cap[slot] = cap;
            cache_huge[slot] = huge;
        }
        pthread_mutex_unlock(&cache_mu);
    }
    free(drop);
}

void dk_gemm_release_cache(void)
{
    void *p[DK_GEMM_CACHE_SLOTS];
    pthread_mutex_lock(&cache_mu);
    for (int i = 0; i < DK_GEMM_CACHE_SLOTS; i++) {
        p[i] = cache_ptr[i];
        cache_ptr[i] = NULL;
        cache_cap[i] = 0;
    }
    pthread_mutex_unlock(&cache_mu);
    for (int i = 0; i < DK_GEMM_CACHE_SLOTS; i++) free(p[i]);
}

/* The shared packed B panel (huge: buf_take's callers ask it for that buffer only), when it
 * is at least DK_GEMM_HUGE_MIN bytes, is whole 2 MiB pages asked of the kernel as transparent
 * huge pages (MADV_HUGEPAGE): where THP is in "madvise" mode, as on the machines measured,
 * only such ranges get them (NumPy asks the same for its arrays from 4 MiB on); with THP
 * disabled the advice changes nothing. Each unit of the panel is read by every A block, a
 * 128 KiB run of 32 pages of 4 KiB. The build before / this one, alternated 3 times
 * (medians, GFLOP/s): 2048^3 one thread 963-967 / 960-1,044, two threads 1,445-1,510 /
 * 1,533-1,582; 4096 x 4096 x 1024 two threads 1,634-1,716 / 1,768-1,792. From 1 MiB, 1024^3
 * (a 2 MiB panel) measured 3-5% slower; the per-thread buffers on huge pages gained nothing
 * measurable, so they keep 4 KiB pages.
 * Sanitizer builds allocate exactly n (ASan and valgrind then see an overrun at once). */
#define DK_GEMM_HUGE_PAGE ((size_t)2 << 20)
#define DK_GEMM_HUGE_MIN ((size_t)4 << 20)
static void *aligned_alloc_bytes(size_t n, int huge)
{
    void *p = NULL;
    if (n == 0) n = 64;
#ifdef DK_CHECK_UKR_CONTRACT
    (void)huge;
    return posix_memalign(&p, 4096, n) ? NULL : p;
#else
    const size_t page = huge && n >= DK_GEMM_HUGE_MIN ? DK_GEMM_HUGE_PAGE : 4096;
    const size_t sz = (n + page - 1) & ~(page - 1);
    if (posix_memalign(&p, page, sz)) return NULL;
#ifdef MADV_HUGEPAGE
    if (page == DK_GEMM_HUGE_PAGE) (void)madvise(p, sz, MADV_HUGEPAGE); /* advice only */
#endif
    return p;
#endif
}

/* out (mm x nn, row stride ldo) += the addend's elements at (bi, i0.., j0..): one FP32 add
 * each, out's value the first operand (as NumPy's add(out, term)). The caller runs it under
 * the default environment (dk_fpenv_enter): no flush of a subnormal sum. */
static void add_term(const dk_gemm_addend *c, int64_t bi, int64_t i0, int64_t j0, int64_t mm,
                     int64_t nn, float *out, int64_t ldo)
{
    const float *base = c->ptr + bi * c->bs + i0 * c->rs + j0 * c->cs;
    for (int64_t i = 0; i < mm; i++) {
        float *restrict o = out + i * ldo;
        const float *restrict t = base + i * c->rs;
        if (c->cs == 1)
            for (int64_t j = 0; j < nn; j++) o[j] = o[j] + t[j];
        else if (c->cs == 0) {
            const float v = t[0];
            for (int64_t j = 0; j < nn; j++) o[j] = o[j] + v;
        } else
            for (int64_t j = 0; j < nn; j++) o[j] = o[j] + t[j * c->cs];
    }
}

/* Does the tier's kernel add this addend itself, in registers before its stores (its
 * columns unit or broadcast)? Else the driver adds it after each unit (run_unit). */
static int fuses_addend(const tier_cfg *t, const dk_gemm_addend *add)
{
    return add && t->ukr_add && (add->cs == 0 || add->cs == 1);
}

/* Columns [0, lead) that the first jc step takes as one extra, narrow sliver so that its
 * other tiles, and those of the later steps, start on 64-byte lines (0: none). The tile
 * kernel streams a large result only where its rows start on a line (whole lines written,
 * no read for ownership), and NumPy's large arrays start 16 bytes past one: an `out=` of
 * 2048 x 2048 FP32 ran 1.2-1.3x slower than an aligned one (amx tier, 1 and 2 threads).
 * When every row is off by the same offset (ldo a multiple of 16 floats), shifting the
 * column tiles by `lead` puts them all on lines; the lead columns are an edge tile per A
 * sliver, on the A block already packed. The bits do not change: every element's chain is
 * independent of the column blocking. */
static int64_t stream_lead(const tier_cfg *t, int stream, const float *cb, int64_t ldo, int64_t n)
{
    const uintptr_t off = (uintptr_t)cb & 63;
    if (!stream || !t->streams || ldo % 16 != 0 || off == 0 || off % sizeof(float) != 0)
        return 0;
    const int64_t lead = (int64_t)((64 - off) / sizeof(float));
    return lead < n ? lead : 0;
}

/* One jc step of one batch item, shared by its work items. */
typedef struct {
    const tier_cfg *t;
    const view *va, *vb;
    float *cb;
    int64_t m, n, k, ldo, jc, nsl, nchunks, ngroups, kpairs, kcp, mc, pairA, pairB;
    int stream;          /* the result is large: the kernels may stream it (DK_UKR_STREAM) */
    float scale;
    uint16_t *arng, *brng; /* NULL, or per slot the range of the BF16 codes packed (2 each) */
    char *bbuf;          /* packed B of the step: pc block at sliver offset nsl * pc; NULL
                          * when m is one A block (no unit is used twice: see gemm_item) */
    atomic_int *bstate;  /* per (pc block, chunk): 0 unpacked, 1 being packed, 2 ready */
    char *abuf, *bpriv;  /* per slot: packed A block, private copy of one B unit */
    size_t abytes, bpriv_bytes;
    const dk_gemm_addend *add; /* NULL, or added to each tile after its last k block */
    int64_t bi;          /* the batch item (the addend's batch index) */
    int64_t lead;        /* > 0: columns [0, lead) too, one narrow sliver per A block (the
                          * step's own columns then start at jc = lead: stream_lead) */
    int kinner;          /* 1: the item packs its A block for all of k (for each range of k,
                          * krange), then runs each unit of columns through every k block (of
                          * the range), its running sums in csum; never in a batch (gemm_batch
                          * leaves krange 0) */
    float *csum;         /* kinner: per slot, the running sums of one unit's C block */
    size_t csum_bytes;
    int64_t krange;      /* kinner: pairs per k range (a multiple of kcp), the A blocks of one
                          * range packed at a time; the running sums wait in C between ranges */
} gemm_step;

/* The addend on a unit's block of the result (slivers s0..s1-1, msl A slivers from row i0),
 * for the addends the kernel does not fuse. */
static void add_unit_term(const gemm_step *S, int64_t s0, int64_t s1, int64_t i0, int64_t msl)
{
    const tier_cfg *t = S->t;
    const int64_t j0 = S->jc + s0 * t->nr, j1 = S->jc + s1 * t->nr < S->n ? S->jc + s1 * t->nr : S->n;
    const int64_t i1 = i0 + msl * t->mr < S->m ? i0 + msl * t->mr : S->m;
    add_term(S->add, S->bi, i0, j0, i1 - i0, j1 - j0, S->cb + i0 * S->ldo + j0, S->ldo);
}

/* The micro-kernel over one packed unit of B (slivers s0..s1-1) and the item's A block. */
static void run_unit(const gemm_step *S, const char *unit, int64_t s0, int64_t s1, int64_t kp,
                     int64_t i0, int64_t msl, const char *mya, int flags)
{
    const tier_cfg *t = S->t;
    const dk_gemm_addend *add = (flags & DK_UKR_LAST) ? S->add : NULL;
    const int fuse = fuses_addend(t, add);
    for (int64_t s = s0; s < s1; s++) {
        const char *bp = unit + (size_t)(s - s0) * kp * S->pairB;
        int64_t j = S->jc + s * t->nr;
        for (int64_t r = 0; r < msl; r++) {
            int64_t i = i0 + r * t->mr;
            const char *ap = mya + (size_t)r * kp * S->pairA;
            float *c = S->cb + i * S->ldo + j;
            if (fuse && S->m - i >= t->mr && S->n - j >= t->nr) {
                t->ukr_add(kp, ap, bp, c, S->ldo, flags, S->scale,
                           add->ptr + S->bi * add->bs + i * add->rs + j * add->cs, add->rs, add->cs);
                continue;
            }
            tile(t, kp, ap, bp, c, S->ldo, S->m - i, S->n - j, flags, S->scale);
            if (fuse) /* an edge tile (the add reads back what was just stored: rare) */
                add_term(add, S->bi, i, j, S->m - i < t->mr ? S->m - i : t->mr,
                         S->n - j < t->nr ? S->n - j : t->nr, c, S->ldo);
        }
    }
    /* Other kernels: the addend on the unit's block of the result once it is complete, from
     * the caches (tile by tile, each read right after the kernel's stores, it measured
     * slower than a pass of its own afterwards). */
    if (add && !fuse) add_unit_term(S, s0, s1, i0, msl);
}

/* Row stride (floats) of the running sums of a unit's C block: 4 slivers and one line, so
 * that the 16 rows of a tile fall in different cache sets (C's own rows, a power of two
 * floats apart for square products, all fall in one L1 set: the tile loads and stores then
 * evicted one another and the B sliver the kernel keeps in L1). */
#define DK_GEMM_CSUM_LD (DK_GEMM_CHUNK * DK_GEMM_AMXTILE_NR + 16)

/* run_unit for the kinner items: the k blocks before the last continue the running sums in
 * the thread's buffer csum (whole tiles: rows past m and columns past n are computed from
 * the packers' zero padding and never copied out), and the last block reads them there and
 * writes the result (scaled, canonicalized, with the addend if fused) to C. With k in
 * ranges, the first block of a later range continues from C (from_c) and the last block of
 * a range before the last writes the running sums to C (to_c), streamed past the caches
 * when the result is large: they are read back only when the next range reaches this unit.
 * Each element's chain is the same as run_unit's: only where its running sum is kept
 * differs. */
static void run_unit_kinner(const gemm_step *S, const char *unit, int64_t s0, int64_t s1,
                            int64_t kp, int64_t i0, int64_t msl, const char *mya, int flags,
                            float *csum, int from_c, int to_c)
{
    const tier_cfg *t = S->t;
    const int last = flags & DK_UKR_LAST;
    to_c = to_c && !last;
    const dk_gemm_addend *add = last ? S->add : NULL;
    const int fuse = fuses_addend(t, add);
    for (int64_t s = s0; s < s1; s++) {
        const char *bp = unit + (size_t)(s - s0) * kp * S->pairB;
        const int64_t j = S->jc + s * t->nr;
        for (int64_t r = 0; r < msl; r++) {
            const int64_t i = i0 + r * t->mr;
            const char *ap = mya + (size_t)r * kp * S->pairA;
            float *cs = csum + r * t->mr * DK_GEMM_CSUM_LD + (s - s0) * t->nr;
            float *c = S->cb + i * S->ldo + j;
            const int64_t mm = S->m - i < t->mr ? S->m - i : t->mr;
            const int64_t nn = S->n - j < t->nr ? S->n - j : t->nr;
            if (mm == t->mr && nn == t->nr) { /* a whole tile: C read or written where it is */
                t->ukr_io(kp, ap, bp, from_c ? c : cs, from_c ? S->ldo : DK_GEMM_CSUM_LD,
                          last || to_c ? c : cs, last || to_c ? S->ldo : DK_GEMM_CSUM_LD,
                          flags | (to_c && S->stream ? DK_UKR_STREAM : 0) | (from_c ? DK_UKR_STREAM_C : 0),
                          S->scale, fuse ? add->ptr + S->bi * add->bs + i * add->rs + j * add->cs : NULL,
                          fuse ? add->rs : 0, fuse ? add->cs : 0);
                continue;
            }
            /* an edge tile: whole in csum, its valid part copied from and to C */
            if (from_c)
                for (int64_t ii = 0; ii < mm; ii++)
                    memcpy(cs + ii * DK_GEMM_CSUM_LD, c + ii * S->ldo, sizeof(float) * (size_t)nn);
            t->ukr_io(kp, ap, bp, cs, DK_GEMM_CSUM_LD, cs, DK_GEMM_CSUM_LD,
                      flags & ~DK_UKR_STREAM, S->scale, NULL, 0, 0);
            if (to_c)
                for (int64_t ii = 0; ii < mm; ii++)
                    memcpy(c + ii * S->ldo, cs + ii * DK_GEMM_CSUM_LD, sizeof(float) * (size_t)nn);
            if (!last) continue;
            /* the last block of an edge tile: its valid part copied to C */
            for (int64_t ii = 0; ii < mm; ii++)
                memcpy(c + ii * S->ldo, cs + ii * DK_GEMM_CSUM_LD, sizeof(float) * (size_t)nn);
            if (fuse) add_term(add, S->bi, i, j, mm, nn, c, S->ldo);
        }
    }
    if (add && !fuse) add_unit_term(S, s0, s1, i0, msl);
}

/* The pairs of the k block from pair pc: *kreal of them hold codes, and the kernel is given
 * the returned count, a whole number of its granularity t->kblk (the packers pad with zero
 * pairs; only the last block can be partial, kcp is a multiple of t->kblk). */
static int64_t block_pairs(const gemm_step *S, int64_t pc, int64_t *kreal)
{
    *kreal = S->kpairs - pc < S->kcp ? S->kpairs - pc : S->kcp;
    return (*kreal + S->t->kblk - 1) / S->t->kblk * S->t->kblk;
}

/* The flags of the k block [pc, pc + kreal) of pairs, kp of them given to the kernel. */
static int block_flags(const gemm_step *S, int64_t pc, int64_t kreal, int64_t kp, int64_t msl)
{
    int flags = (pc > 0 ? DK_UKR_LOAD : 0) | (pc + kreal == S->kpairs ? DK_UKR_LAST : 0);
    if ((flags & DK_UKR_LAST) && S->stream) flags |= DK_UKR_STREAM;
    /* a B sliver that fits in L1 meets A slivers that do not: they may stream past it */
    if ((double)kp * (double)S->pairB <= DK_GEMM_L1_BYTES &&
        (double)msl * (double)kp * (double)S->pairA > DK_GEMM_L1_BYTES)
        flags |= DK_UKR_STREAM_A;
    return flags;
}

/* The packed unit c (slivers s0..s1-1) of k block pb: the step's shared one, packed here if
 * nobody has; or, if another thread is packing it, NULL when the caller may put it off,
 * else a private copy packed into myb. Without a shared panel (one A block) always myb. */
static const char *take_unit(const gemm_step *S, int64_t pb, int64_t pc, int64_t kp, int64_t c,
                             int64_t s0, int64_t s1, char *myb, int slot, int may_defer)
{
    const tier_cfg *t = S->t;
    uint16_t *brng = S->brng ? S->brng + 2 * slot : NULL;
    if (!S->bbuf) {
        /* One A block: this item is the unit's only user, so it is packed into the thread's
         * own buffer, which stays in the caches from one unit to the next, instead of a panel
         * written out to memory and read back once. */
        pack_lines(S->vb, S->n, S->k, S->jc + s0 * t->nr, (s1 - s0) * t->nr, pc, kp, t->nr,
                   t->split_b, t->simd_pack, t->pack_avx2, myb, brng);
        return myb;
    }
    char *unit = S->bbuf + (size_t)(S->nsl * pc + s0 * kp) * S->pairB;
    atomic_int *st = &S->bstate[pb * S->nchunks + c];
    /* read-modify-write (not a plain load): helgrind sees locked accesses as atomic */
    int seen = atomic_fetch_or_explicit(st, 0, memory_order_acquire);
    if (seen == 2) ANNOTATE_HAPPENS_AFTER(st);
    if (seen == 1 && may_defer) return NULL;
    if (seen != 2) {
        char *dst = unit;
        seen = 0;
        if (!atomic_compare_exchange_strong_explicit(st, &seen, 1, memory_order_acquire,
                                                     memory_order_acquire)) {
            if (seen != 2) dst = myb; /* still being packed elsewhere: our own copy */
            else dst = NULL;          /* became ready meanwhile */
            if (seen == 2) ANNOTATE_HAPPENS_AFTER(st);
        }
        if (dst) {
            /* the unit's slivers at once (each k-row read across all of them), the range of
             * B's codes (if asked) taken while packing */
            pack_lines(S->vb, S->n, S->k, S->jc + s0 * t->nr, (s1 - s0) * t->nr, pc, kp, t->nr,
                       t->split_b, t->simd_pack, t->pack_avx2, dst, brng);
            if (dst == unit) {
                ANNOTATE_HAPPENS_BEFORE(st);
                atomic_exchange_explicit(st, 2, memory_order_release);
            }
            else unit = myb;
        }
    }
    return unit;
}

/* The lead columns (see stream_lead) of k block [pc, pc + kp): one sliver, zero past
 * `lead`, packed into the thread's own buffer and run as a product of those columns only. */
static void run_lead(const gemm_step *S, int64_t pc, int64_t kp, int64_t i0, int64_t msl,
                     const char *mya, char *myb, int slot, int flags)
{
    const tier_cfg *t = S->t;
    gemm_step L = *S;
    L.jc = 0;
    L.n = S->lead;
    pack_lines(S->vb, S->lead, S->k, 0, S->lead, pc, kp, t->nr, t->split_b, t->simd_pack, t->pack_avx2, myb,
               S->brng ? S->brng + 2 * slot : NULL);
    run_unit(&L, myb, 0, 1, kp, i0, msl, mya, flags);
}

/* Work item w = (ic block, column group): all pc blocks in order, for its tiles only. */
static void gemm_item_body(const gemm_step *S, int64_t w, int slot)
{
    const tier_cfg *t = S->t;
    const int64_t m = S->m, k = S->k, nsl = S->nsl;
    const int64_t ic = w / S->ngroups, g = w % S->ngroups;
    const int64_t i0 = ic * S->mc, mcur = m - i0 < S->mc ? m - i0 : S->mc;
    const int64_t msl = (mcur + t->mr - 1) / t->mr;
    const int64_t c0 = S->nchunks * g / S->ngroups, c1 = S->nchunks * (g + 1) / S->ngroups;
    char *mya = S->abuf + (size_t)slot * S->abytes;
    char *myb = S->bpriv + (size_t)slot * S->bpriv_bytes;
    uint16_t *arng = S->arng ? S->arng + 2 * slot : NULL;
    if (S->kinner) {
        float *csum = (float *)((char *)S->csum + (size_t)slot * S->csum_bytes);
        const size_t ablk = (size_t)msl * S->kcp * S->pairA;
        /* k in ranges of S->krange pairs (all of k when the A block for it fits): the A block
         * for every k block of the range first (the block from pair pc at
         * mya + (pc - r0) / kcp * ablk), then each unit of columns through the range's k
         * blocks: its C block (msl tiles x 4 slivers) stays in csum, in L2, between the k
         * blocks, while the B sliver of a k block stays in L1 across the A slivers. Between
         * ranges the running sums wait in C. */
        for (int64_t r0 = 0; r0 < S->kpairs; r0 += S->krange) {
            const int64_t r1 = r0 + S->krange < S->kpairs ? r0 + S->krange : S->kpairs;
            for (int64_t pc = r0; pc < r1; pc += S->kcp) {
                int64_t kreal;
                const int64_t kp = block_pairs(S, pc, &kreal);
                char *ab = mya + (pc - r0) / S->kcp * ablk;
                pack_rowtiles(S->va, m, k, i0, mcur, pc, kp, t->mr, t->simd_pack, ab, arng);
                if (S->lead && g == 0)
                    run_lead(S, pc, kp, i0, msl, ab, myb, slot, block_flags(S, pc, kreal, kp, msl));
            }
            int64_t deferred[DEFER_MAX], nd = 0;
            for (int64_t ci = c0, pass2 = 0; ci < c1 || pass2 < nd;) {
                const int may_defer = ci < c1 && nd < DEFER_MAX;
                const int64_t c = ci < c1 ? ci++ : deferred[pass2++];
                int64_t s0 = c * DK_GEMM_CHUNK, s1 = s0 + DK_GEMM_CHUNK < nsl ? s0 + DK_GEMM_CHUNK : nsl;
#ifdef DK_CHECK_UKR_CONTRACT
                /* sanitizer builds: a kernel that read C in a first k block would spread these
                 * NaNs (as tile()'s edge temporary) */
                memset(csum, 0xFF, S->csum_bytes);
#endif
                for (int64_t pc = r0; pc < r1; pc += S->kcp) {
                    int64_t kreal;
                    const int64_t kp = block_pairs(S, pc, &kreal);
                    /* only a unit's first k block of the range may be put off: nothing of the
                     * range has run on it yet */
                    const char *unit = take_unit(S, pc / S->kcp, pc, kp, c, s0, s1, myb, slot,
                                                 may_defer && pc == r0);
                    if (!unit) {
                        deferred[nd++] = c;
                        break;
                    }
                    run_unit_kinner(S, unit, s0, s1, kp, i0, msl, mya + (pc - r0) / S->kcp * ablk,
                                    block_flags(S, pc, kreal, kp, msl), csum, pc == r0 && pc > 0,
                                    pc + kreal == r1);
                }
            }
        }
        return;
    }
    for (int64_t pc = 0, pb = 0; pc < S->kpairs; pc += S->kcp, pb++) {
        int64_t kreal;
        const int64_t kp = block_pairs(S, pc, &kreal);
        const int flags = block_flags(S, pc, kreal, kp, msl);
        /* the range of A's codes (if asked) is taken while packing */
        if (t->rowtile_a)
            pack_rowtiles(S->va, m, k, i0, mcur, pc, kp, t->mr, t->simd_pack, mya, arng);
        else
            pack_lines(S->va, m, k, i0, mcur, pc, kp, t->mr, t->split_a, t->simd_pack, t->pack_avx2, mya, arng);
        if (S->lead && g == 0) run_lead(S, pc, kp, i0, msl, mya, myb, slot, flags);
        /* A unit another thread is packing is put off (up to DEFER_MAX of them) and taken
         * after the others, by when it is usually ready; only one still being packed then
         * gets a private copy. Threads side by side thus pack different units instead of
         * copies of the same one, and nobody ever waits. The order of the units is the order
         * of C's columns, not of k: it has no effect on the bits. */
        int64_t deferred[DEFER_MAX], nd = 0;
        for (int64_t ci = c0, pass2 = 0; ci < c1 || pass2 < nd;) {
            const int may_defer = ci < c1 && nd < DEFER_MAX;
            const int64_t c = ci < c1 ? ci++ : deferred[pass2++];
            int64_t s0 = c * DK_GEMM_CHUNK, s1 = s0 + DK_GEMM_CHUNK < nsl ? s0 + DK_GEMM_CHUNK : nsl;
            const char *unit = take_unit(S, pb, pc, kp, c, s0, s1, myb, slot, may_defer);
            if (!unit) {
                deferred[nd++] = c;
                continue;
            }
            run_unit(S, unit, s0, s1, kp, i0, msl, mya, flags);
        }
    }
}

static void gemm_item(void *arg, int64_t w, int slot)
{
    const gemm_step *S = arg;
    /* every item (the product and the addend) under the default environment, whatever the
     * thread's MXCSR (the caller's, on the calling thread): round to nearest-even */
    const unsigned csr = dk_fpenv_enter();
    if (S->t->enter) S->t->enter(); /* e.g. the AMX tile configuration of this thread */
    gemm_item_body(S, w, slot);
#ifdef __SSE2__
    if (S->stream) _mm_sfence(); /* order the non-temporal stores before the pool's release */
#endif
    if (S->t->leave) S->t->leave();
    dk_fpenv_leave(csr);
}

/* A batch of small products (each one A block and one column step): work item w is batch
 * items [w * per, (w + 1) * per), each run whole by one thread (no shared packed B: gemm_item
 * packs B into the thread's buffer when bbuf is NULL), so the threads share the batch and
 * set up the tiles once per item, not once per product. */
typedef struct {
    gemm_step step;      /* all but va, vb and cb, which move along the batch */
    const dk_gemm_operand *a, *b;
    int64_t batch, per, bso;
} gemm_batch;

static void gemm_batch_item(void *arg, int64_t w, int slot)
{
    const gemm_batch *B = arg;
    const int64_t b0 = w * B->per, b1 = b0 + B->per < B->batch ? b0 + B->per : B->batch;
    gemm_step S = B->step;
    view va, vb;
    S.va = &va;
    S.vb = &vb;
    const unsigned csr = dk_fpenv_enter(); /* as gemm_item */
    if (S.t->enter) S.t->enter();
    for (int64_t bi = b0; bi < b1; bi++) {
        item_views(B->a, B->b, bi, &va, &vb);
        S.cb = B->step.cb + bi * B->bso;
        S.bi = bi;
        gemm_item_body(&S, 0, slot);
    }
#ifdef __SSE2__
    if (S.stream) _mm_sfence();
#endif
    if (S.t->leave) S.t->leave();
    dk_fpenv_leave(csr);
}

/* Few rows (m <= DK_GEMM_SMALLM_MAX; B = W^T up to DK_GEMM_SMALLM_BT_MAX), AVX-512: no
 * packing (gemm_smallm.c), B read where it
 * lies, by one of two kernels per order: B's columns unit (row-major B), or B's rows unit
 * (B = W^T, W row-major: torch's linear layout; the "bt" kernels, which take A as FP32
 * values (amx order) or BF16 pairs (vdpbf16ps order): each thread converts the A of a batch
 * item once, into its own buffer). The items are ranges of
 * columns, so the bits do not depend on the threads. Row-major B: an item has up to
 * DK_GEMM_SMALLM_COLS columns, long runs of each B row, which the prefetchers follow (1 x
 * 4096 x 4096 BF16 in a scratch C loop over the kernel, one thread of a Zen 4: 1.3 ms with
 * items of 2,048 columns, 2.1 ms with 512; docs/gemm.md); fewer when that would leave a
 * thread without one. B = W^T: each column is a whole row of W; about 4 items a thread,
 * at most DK_GEMM_SMALLM_BT_COLS columns. */
#define DK_GEMM_SMALLM_COLS 2048
#define DK_GEMM_SMALLM_BT_COLS 256
typedef struct {
    const dk_gemm_operand *a, *b;
    int64_t m, n, k, ldo, bso, cols, ncolblk;
    float scale;
    float *out;
    uint16_t *range;     /* NULL, or per slot the range of B's codes read (2 each) */
    const dk_gemm_addend *add; /* NULL, or added to the item's columns after the product */
    int bt;              /* the bt kernel: */
    int order;           /* its order */
    int tiles;           /* 1: the amx tier's tile kernel (dk_gemm_smallm_bt_amxtile) */
    int64_t kpad;        /* k rounded up to a block of 32 */
    int64_t aw;          /* words of abuf per slot (bt_abuf_words) */
    float *abuf;         /* per slot m x kpad FP32 values of A (amx order), or m x kpad/2
                          * BF16 pairs in the same space (vdpbf16ps order), or A^T's pair
                          * layout (tiles) */
    int64_t *abuf_item;  /* per slot the batch item whose A abuf holds, -1 for none */
} smallm_args;

static void smallm_item(void *arg, int64_t item, int slot)
{
    const smallm_args *S = arg;
    const int64_t bi = item / S->ncolblk, j0 = (item % S->ncolblk) * S->cols;
    const int64_t j1 = j0 + S->cols < S->n ? j0 + S->cols : S->n;
    const dk_gemm_operand *a = S->a, *b = S->b;
    uint16_t *range = S->range ? S->range + 2 * slot : NULL;
    float *out = S->out + bi * S->bso;
    const unsigned csr = dk_fpenv_enter(); /* as gemm_item */
    if (S->bt) {
        float *af = S->abuf + (int64_t)slot * S->aw;
        uint32_t *ap = (uint32_t *)af;
        const int vdp = S->order == DK_GEMM_ORDER_VDPBF16PS;
        if (S->abuf_item[slot] != bi) {
            if (S->tiles)
                dk_gemm_a_tpairs(item_ptr(a, bi), a->rs, a->cs, a->kind, a->table, S->m, S->k,
                                 S->kpad, ap);
            else if (vdp)
                dk_gemm_a_pairs(item_ptr(a, bi), a->rs, a->cs, a->kind, a->table, S->m, S->k,
                                0, S->m, S->kpad / 2, ap, S->kpad / 2);
            else
                dk_gemm_a_f32(item_ptr(a, bi), a->rs, a->cs, a->kind, a->table, S->m, S->k, 0,
                              S->m, S->kpad, af, S->kpad);
            S->abuf_item[slot] = bi;
        }
        if (S->tiles)
            dk_gemm_smallm_bt_amxtile(S->m, S->k, j0, j1, ap, S->kpad, item_ptr(b, bi), b->cs,
                                      b->kind, b->table, S->scale, out, S->ldo, range);
        else if (vdp)
            dk_gemm_smallm_bt_vdp_avx512(S->m, S->k, j0, j1, ap, S->kpad, item_ptr(b, bi),
                                         b->cs, b->kind, b->table, S->scale, out, S->ldo, range);
        else
            dk_gemm_smallm_bt_amx_avx512(S->m, S->k, j0, j1, af, S->kpad, item_ptr(b, bi),
                                         b->cs, b->kind, b->table, S->scale, out, S->ldo, range);
    } else {
        (S->order == DK_GEMM_ORDER_VDPBF16PS ? dk_gemm_smallm_vdp_avx512
                                             : dk_gemm_smallm_amx_avx512)(
            S->m, S->k, j0, j1, item_ptr(a, bi), a->rs, a->cs, a->kind, a->table,
            item_ptr(b, bi), b->rs, b->kind, b->table, S->scale, out, S->ldo, range);
    }
    if (S->add) add_term(S->add, bi, 0, j0, S->m, j1 - j0, out + j0, S->ldo);
    dk_fpenv_leave(csr);
}

int dk_gemm_ranges(int64_t batch, int64_t m, int64_t n, int64_t k,
                   const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                   float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads,
                   int order, uint16_t arange[3], uint16_t brange[3])
{
    return dk_gemm_addend_ranges(batch, m, n, k, a, b, scale, NULL, out, ldo, bso, isa, kernel,
                                 threads, order, arange, brange);
}

int dk_gemm_test_under_mxcsr(unsigned csr, int64_t batch, int64_t m, int64_t n, int64_t k,
                             const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                             const dk_gemm_addend *term, float *out, int64_t ldo, int64_t bso,
                             int isa, int kernel, int order, unsigned *csr_after)
{
#ifdef DK_HAVE_MXCSR
    unsigned saved = _mm_getcsr();
    _mm_setcsr(csr);
    int rc = dk_gemm_addend_ranges(batch, m, n, k, a, b, scale, term, out, ldo, bso, isa, kernel, 1,
                                   order, NULL, NULL);
    *csr_after = _mm_getcsr();
    _mm_setcsr(saved);
    return rc;
#else
    (void)csr; (void)batch; (void)m; (void)n; (void)k; (void)a; (void)b; (void)scale; (void)term;
    (void)out; (void)ldo; (void)bso; (void)isa; (void)kernel; (void)order; (void)csr_after;
    return -1;
#endif
}

int dk_gemm(int64_t batch, int64_t m, int64_t n, int64_t k,
            const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
            float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads, int order)
{
    return dk_gemm_ranges(batch, m, n, k, a, b, scale, out, ldo, bso, isa, kernel, threads, order,
                          NULL, NULL);
}

/* Per-slot range accumulators (2 each, empty), or NULL when not measuring or not BF16. */
static uint16_t *ranges_new(int want, const dk_gemm_operand *o, int nthr, int *fail)
{
    if (!want || o->kind != DK_GEMM_U16) return NULL;
    uint16_t *r = malloc(sizeof(uint16_t) * 2 * (size_t)nthr);
    if (!r) {
        *fail = 1;
        return NULL;
    }
    for (int i = 0; i < nthr; i++) {
        r[2 * i] = 0x7FFF;
        r[2 * i + 1] = 0;
    }
    return r;
}

/* Merge the slots into out[0..1], set out[2] = 1 and free them. */
static void ranges_done(uint16_t *r, int nthr, uint16_t out[3])
{
    if (!r) return;
    out[0] = 0x7FFF;
    out[1] = 0;
    for (int i = 0; i < nthr; i++) {
        out[0] = r[2 * i] < out[0] ? r[2 * i] : out[0];
        out[1] = r[2 * i + 1] > out[1] ? r[2 * i + 1] : out[1];
    }
    out[2] = 1;
    free(r);
}

/* The most rows of the few-rows kernels (gemm_smallm.c; AVX-512 only) for B's columns
 * unit (bt = 0: DK_GEMM_SMALLM_MAX, in the vdpbf16ps order DK_GEMM_SMALLM_VDP_MAX) or B's
 * rows unit (bt = 1: DK_GEMM_SMALLM_BT_MAX, in the vdpbf16ps order
 * DK_GEMM_SMALLM_BT_VDP_MAX); in the amx order on the amx tier DK_GEMM_SMALLM_AMX_MAX for
 * B's columns unit (the packed tiles are faster beyond) and DK_GEMM_SMALLM_BT_TILE_MAX for
 * B's rows unit (beyond DK_GEMM_SMALLM_AMX_MAX rows on the tiles: bt_tiles). The vdpbf16ps
 * order has no tiles: both tiers run the avx512bf16 kernels in it. */
static int64_t few_rows_max(int isa, int order, int bt)
{
    if (isa < DK_ISA_AVX512BF16) return 0;
    if (order == DK_GEMM_ORDER_AMX && isa >= DK_ISA_AMX)
        return bt ? DK_GEMM_SMALLM_BT_TILE_MAX : DK_GEMM_SMALLM_AMX_MAX;
    if (bt) return order == DK_GEMM_ORDER_AMX ? DK_GEMM_SMALLM_BT_MAX : DK_GEMM_SMALLM_BT_VDP_MAX;
    return order == DK_GEMM_ORDER_AMX ? DK_GEMM_SMALLM_MAX : DK_GEMM_SMALLM_VDP_MAX;
}

/* The few-rows path takes the product with B's columns unit ... */
static int few_rows(int isa, int order, int64_t m, int64_t b_cs)
{
    return b_cs == 1 && m <= few_rows_max(isa, order, 0);
}

/* ... or else with B's rows unit (the bt kernels; beyond DK_GEMM_SMALLM_MAX rows while
 * A's copy fits DK_GEMM_SMALLM_BT_AWORDS). */
/* k rounded up to whole blocks of the amx order (the bt kernels' A buffers) */
static int64_t k_padded(int64_t k)
{
    const int64_t blk = 2 * DK_GEMM_AMX_BLOCK_PAIRS;
    return (k + blk - 1) / blk * blk;
}

/* B's rows unit on the amx tier's tiles (dk_gemm_smallm_bt_amxtile): the amx order beyond
 * DK_GEMM_SMALLM_AMX_MAX rows */
static int bt_tiles(int isa, int order, int64_t m)
{
    return isa >= DK_ISA_AMX && order == DK_GEMM_ORDER_AMX && m > DK_GEMM_SMALLM_AMX_MAX;
}

/* words of a bt kernel's copy of A (per thread): m x kpad, or A^T's pair layout for the
 * tiles (16 x kpad: m <= DK_GEMM_SMALLM_BT_TILE_MAX = 32) */
static int64_t bt_abuf_words(int tiles, int64_t m, int64_t kpad)
{
    return tiles ? 16 * kpad : m * kpad;
}

/* ... and from DK_GEMM_SMALLM_BT_TILE_MIN to DK_GEMM_SMALLM_AMX_MAX rows when every row of
 * W (B's columns: batch items, rows) starts on a 64-byte line, BF16, while A^T's copy fits
 * DK_GEMM_SMALLM_BT_AWORDS (else the FMA kernel, which any k, line and kind suit: the
 * operands measured, hence range_paths, are the same for both). */
static int bt_tiles_lined(int isa, int order, int64_t m, int64_t kpad, const dk_gemm_operand *b)
{
    return isa >= DK_ISA_AMX && order == DK_GEMM_ORDER_AMX && m >= DK_GEMM_SMALLM_BT_TILE_MIN &&
           b->kind == DK_GEMM_U16 && (uintptr_t)b->ptr % 64 == 0 && (b->cs * 2) % 64 == 0 &&
           (b->bs * 2) % 64 == 0 && bt_abuf_words(1, m, kpad) <= DK_GEMM_SMALLM_BT_AWORDS;
}

static int few_rows_bt(int isa, int order, int64_t m, int64_t k, int64_t b_rs, int64_t b_cs)
{
    if (few_rows(isa, order, m, b_cs) || b_rs != 1 || m > few_rows_max(isa, order, 1))
        return 0;
    return (m <= DK_GEMM_SMALLM_MAX && !bt_tiles(isa, order, m)) ||
           bt_abuf_words(bt_tiles(isa, order, m), m, k_padded(k)) <= DK_GEMM_SMALLM_BT_AWORDS;
}

int dk_gemm_range_paths(int isa, int kernel, int order, int64_t m, int64_t b_rs, int64_t b_cs,
                        int64_t k)
{
    tier_cfg t;
    if (!get_cfg(isa, kernel, order, &t)) return 0;
    if (few_rows(isa, order, m, b_cs) || few_rows_bt(isa, order, m, k, b_rs, b_cs)) return 2;
    return (ranges_a(&t) ? 1 : 0) | (t.split_b ? 0 : 2);
}

int dk_gemm_addend_ranges(int64_t batch, int64_t m, int64_t n, int64_t k,
                          const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                          const dk_gemm_addend *term, float *out, int64_t ldo, int64_t bso,
                          int isa, int kernel, int threads, int order, uint16_t arange[3],
                          uint16_t brange[3])
{
    if (term && !term->ptr) return DK_EINVAL;
    if (arange) arange[2] = 0;
    if (brange) brange[2] = 0;
    tier_cfg t;
    if (!get_cfg(isa, kernel, order, &t) || batch < 0 || m < 0 || n < 0 || k < 0 || threads < 1 || !a || !b)
        return DK_EINVAL;
    if (t.kblk < 1) t.kblk = 1;
    if ((a->kind == DK_GEMM_U8 && !a->table) || (b->kind == DK_GEMM_U8 && !b->table))
        return DK_EINVAL;
    if (batch == 0 || m == 0 || n == 0) return DK_OK;
    if (k == 0) {
        for (int64_t bi = 0; bi < batch; bi++)
            for (int64_t i = 0; i < m; i++) memset(out + bi * bso + i * ldo, 0, sizeof(float) * n);
        if (term) {
            const unsigned csr = dk_fpenv_enter();
            for (int64_t bi = 0; bi < batch; bi++) add_term(term, bi, 0, 0, m, n, out + bi * bso, ldo);
            dk_fpenv_leave(csr);
        }
        return DK_OK;
    }

    const int bt = few_rows_bt(isa, order, m, k, b->rs, b->cs);
    if (bt || few_rows(isa, order, m, b->cs)) {
        const double work = (double)m * (double)n * (double)k * (double)batch;
        int nthr = work < DK_GEMM_PAR_MIN ? 1 : dk_pool_advise(threads, smallm_item, work);
        /* columns per item: a multiple of the kernel's column step (128, or a group of 16) */
        const int tiles = bt && (bt_tiles(isa, order, m) ||
                                 bt_tiles_lined(isa, order, m, k_padded(k), b));
        /* (the tile kernel takes W's rows 32 at a time) */
        const int64_t unit = tiles ? 32 : bt ? 16 : 128;
        const int64_t cap = bt ? DK_GEMM_SMALLM_BT_COLS : DK_GEMM_SMALLM_COLS;
        const int64_t per = bt ? 4 * nthr : nthr;
        int64_t cols = (n + per - 1) / per;
        cols = cols > cap ? cap : (cols + unit - 1) / unit * unit;
        const int64_t kpad = k_padded(k);
        smallm_args S = {a, b, m, n, k, ldo, bso, cols, (n + cols - 1) / cols, scale, out, NULL,
                         term, bt, order, tiles, kpad, bt_abuf_words(tiles, m, kpad), NULL,
                         NULL};
        int fail = 0;
        S.range = ranges_new(brange != NULL, b, nthr, &fail);
        if (bt && !fail) {
            /* 64-byte aligned: the tile kernel loads A^T's rows of 64 bytes as tiles */
            void *p = NULL;
            S.abuf = posix_memalign(&p, 64, sizeof(float) * (size_t)nthr * (size_t)S.aw) ? NULL : p;
            S.abuf_item = malloc(sizeof(int64_t) * (size_t)nthr);
            fail = !S.abuf || !S.abuf_item;
            for (int i = 0; !fail && i < nthr; i++) S.abuf_item[i] = -1;
        }
        if (!fail && tiles) atomic_fetch_add_explicit(&bt_on_tiles, 1, memory_order_relaxed);
        if (!fail) dk_pool_run_as(nthr, batch * S.ncolblk, smallm_item, &S, work);
        free(S.abuf);
        free(S.abuf_item);
        if (fail) {
            free(S.range);
            return DK_ENOMEM;
        }
        ranges_done(S.range, nthr, brange);  /* A (few rows) is the caller's to scan */
        return DK_OK;
    }

    const int64_t kpairs = (k + 1) / 2;
    const int64_t pairA = t.mr * 2 * (t.split_a ? 4 : 2), pairB = t.nr * 2 * (t.split_b ? 4 : 2);
    int64_t nc = t.nc < n ? t.nc : ((n + t.nr - 1) / t.nr) * t.nr;
    /* The packed B of a step holds all of k: bound it by narrowing the step. */
    int64_t nsl_cap = (int64_t)(DK_GEMM_BPANEL_MAX / ((size_t)kpairs * (size_t)pairB));
    if (nsl_cap < DK_GEMM_CHUNK) nsl_cap = DK_GEMM_CHUNK;
    if (nc > nsl_cap * t.nr) nc = nsl_cap * t.nr;

    /* Small steps run on the calling thread: waking a worker costs more than it saves; and
     * so do the calls the contention guard keeps there (cut for one thread, too). */
    /* A batch of small products (each one A block and one column step, and too small to
     * use the threads by itself): the threads share the batch (gemm_batch_item), m is not
     * cut. Larger products keep the per-product path, which cuts each across the threads. */
    const double par_min = par_min_for(isa, order);
    const int batched = batch > 1 && m <= t.mc_max && n <= nc &&
                        (double)m * (double)n * (double)k < par_min;
    const double work = batched ? (double)batch * (double)m * (double)n * (double)k
                                : (double)m * (double)(n < nc ? n : nc) * (double)k;
    int nthr = work < par_min
                   ? 1 : dk_pool_advise(threads, batched ? gemm_batch_item : gemm_item, work);

    /* Rows per A block: an even share per thread when m is large, so no thread idles. */
    int64_t nb_m = 1, mc;
    if (!batched && m > t.mc_max) {
        int64_t per = (m + (int64_t)nthr * t.mc_max - 1) / ((int64_t)nthr * t.mc_max);
        nb_m = per * nthr;
    }
    /* Too few items for the threads (a short, narrow product on a kernel with a large
     * register block, e.g. AMX's 32 x 32): cut m finer, down to one sliver per block. */
    const int64_t nchunks0 = ((nc + t.nr - 1) / t.nr + DK_GEMM_CHUNK - 1) / DK_GEMM_CHUNK;
    if (!batched && nthr > 1 && nb_m * nchunks0 < nthr) {
        int64_t msl_all = (m + t.mr - 1) / t.mr;
        nb_m = msl_all < nthr ? msl_all : nthr;
    }
    /* Fewer than 4 blocks per thread (for the dynamic hand-out): cut m finer first, down to
     * blocks of DK_GEMM_MIN_BLOCK_SL slivers, before more column groups are made for it
     * below: every item packs its own A block, so column groups pack the same A block once
     * each (at 512^3 on 2 threads, four times), while a thinner block only reuses each B
     * sliver fewer times from the caches. (Wide products get a group per thread anyway,
     * for another reason: see the work items.) */
    if (!batched && nthr > 1 && nb_m < 4 * (int64_t)nthr) {
        int64_t thin = (m + t.mr - 1) / t.mr / DK_GEMM_MIN_BLOCK_SL;
        int64_t want = thin < 4 * (int64_t)nthr ? thin : 4 * (int64_t)nthr;
        if (want > nb_m) nb_m = want;
    }
    mc = (m + nb_m - 1) / nb_m;
    mc = ((mc + t.mr - 1) / t.mr) * t.mr;
    nb_m = (m + mc - 1) / mc;

    /* The amx tier takes k in blocks of DK_GEMM_AMX_KC_L1 when an item's C block (mc rows x
     * the step's columns) is small: each B sliver of a block (32 KiB) is then read from L1 by
     * every A sliver, which the kernel streams past it (dk_gemm_ukr_amxtile), for one reload
     * of the C block per k block. Larger C blocks take whole k up to t.kc: at 1 MiB (1024^3
     * on one thread) k blocks of 512 were 1.07-1.1x faster in back-to-back calls but about
     * 0.75x in calls 0.2-0.3 s apart, whose C comes back from memory; at 2 MiB (2048^3)
     * 0.85-0.9x back to back. Both are bit-identical (blocks of 32 k are absolute). (Since
     * then, products with k above 512 and such a C block take k inside the columns instead,
     * below; whole k up to t.kc remains for k up to 512, batches and the tiers without
     * dk_gemm_ukr_io_fn.) */
    if (t.rowtile_a && (double)mc * (double)nc * sizeof(float) <= DK_GEMM_AMX_C_SMALL)
        t.kc = DK_GEMM_AMX_KC_L1;
    const int64_t kpairs_pad = (kpairs + t.kblk - 1) / t.kblk * t.kblk;
    /* Where the item's A block for all of k fits in half the L2, the amx tier runs k inside
     * the columns instead (gemm_item_body's kinner): the item packs its A block for every k
     * block first, then takes each unit of 4 B slivers through all k blocks of 512, its
     * running sums in a per-thread buffer (144 KiB at MC 256) that stays in L2, with a row
     * stride that spreads a tile's rows over the L1 sets; the result is written to C in the
     * last k block. One thread, GFLOP/s, before / after (medians of 5 rounds, alternated 3
     * times; docs/gemm.md): 1024^3 787-798 / 992-1,010, 512 x 512 x 1024 733-740 / 877-889;
     * 2048^3 (A block 1 MiB) 945-1,013 / 921-976, alike in a direct comparison.
     * A longer k (an A block past 1 MiB) is taken in ranges of k blocks whose A block fits
     * (krange; 4 blocks of 512, 2048 k, at MC 256), the same way inside each range, the
     * running sums waiting in C between ranges (written there with non-temporal stores, read
     * back with the T1 hint), when the item's C block is too large for the blocking above to
     * keep it in the caches. 4096^3, one thread: 738-752 -> 765-823 GFLOP/s (docs/gemm.md,
     * "k in ranges"). A small C block (4096 x 256 x 4096) keeps k blocks of 512 with C in
     * place: 0.92x in ranges. */
    const int fits_allk = (double)(mc / t.mr) * (double)kpairs_pad * (double)pairA <= DK_GEMM_AMX_A_ALLK;
    const int kinner = !batched && t.ukr_io && t.rowtile_a && kpairs_pad > DK_GEMM_AMX_KC_L1 / 2 &&
                       (fits_allk || (double)mc * (double)nc * sizeof(float) > DK_GEMM_AMX_C_SMALL);
    if (kinner) t.kc = DK_GEMM_AMX_KC_L1;
    const int64_t kcp = t.kc / 2;                    /* pairs per block */

    /* the kernel's k granularity (t.kblk pairs; the packers pad with zero pairs) and buffers
     * for the largest k block actually used (small products allocate little) */
    const int64_t kcp_use = kpairs_pad < kcp ? kpairs_pad : kcp;
    const int64_t nsl_max = (nc + t.nr - 1) / t.nr;
    const int64_t npc = (kpairs + kcp - 1) / kcp;
    const int64_t nchunks_max = (nsl_max + DK_GEMM_CHUNK - 1) / DK_GEMM_CHUNK;
    size_t bbytes = (size_t)nsl_max * (size_t)kpairs_pad * (size_t)pairB;
    /* kinner: k blocks per range, all of them when the A block for all of k fits, else as
     * many as fit in DK_GEMM_AMX_A_ALLK (integer arithmetic: no inexact flag raised in the
     * caller's MXCSR) */
    int64_t krange_blocks = npc;
    if (kinner && !fits_allk) {
        krange_blocks = (int64_t)DK_GEMM_AMX_A_ALLK / ((mc / t.mr) * kcp * pairA);
        if (krange_blocks < 1) krange_blocks = 1;
        if (krange_blocks > npc) krange_blocks = npc;
    }
    const int kranges = kinner && krange_blocks < npc;
    size_t abytes = (size_t)(mc / t.mr) * kcp_use * pairA * (size_t)(kinner ? krange_blocks : 1);
    size_t bpriv_bytes = (size_t)DK_GEMM_CHUNK * kcp_use * pairB;
    size_t bcap = 0;
    /* one A block: no shared panel (each unit is packed by its only user, gemm_item) */
    const int shared_b = nb_m > 1;
    char *bbuf = shared_b ? buf_take(bbytes, &bcap, 1) : NULL;
    size_t acap = 0, pcap = 0;
    char *abuf = buf_take(abytes * nthr, &acap, 0);
    char *bpriv = buf_take(bpriv_bytes * nthr, &pcap, 0);
    size_t scap = 0, csum_bytes = kinner ? (size_t)mc * DK_GEMM_CSUM_LD * sizeof(float) : 0;
    float *csum = kinner ? buf_take(csum_bytes * nthr, &scap, 0) : NULL;
    atomic_int *bstate = shared_b ? malloc((size_t)(npc * nchunks_max) * sizeof(atomic_int)) : NULL;
    int fail = 0;
    /* ranges from the packed blocks: BF16 layouts, and A's split layout where its packers
     * take the codes' range (ranges_a; the FP32 split layouts hold values with DAZ applied,
     * not the codes) */
    uint16_t *arng = ranges_new(arange != NULL && ranges_a(&t), a, nthr, &fail);
    uint16_t *brng = ranges_new(brange != NULL && !t.split_b, b, nthr, &fail);
    if ((shared_b && (!bbuf || !bstate)) || !abuf || !bpriv || (kinner && !csum) || fail) {
        buf_give(csum, scap, 0);
        buf_give(bbuf, bcap, 1);
        buf_give(abuf, acap, 0);
        buf_give(bpriv, pcap, 0);
        free(bstate);
        free(arng);
        free(brng);
        return DK_ENOMEM;
    }
    /* A result larger than the L2 caches is written past them (see DK_UKR_STREAM); with an
     * addend only where the kernel adds it before its stores (run_unit's `fuse`). */
    const int stream = (!term || fuses_addend(&t, term)) && (double)batch * (double)m * (double)n * sizeof(float) > (double)DK_GEMM_STREAM_MIN_BYTES;
    if (batched) {
        /* up to 4 items a thread (dynamic hand-out), each a run of whole products */
        const int64_t nsl = (n + t.nr - 1) / t.nr;
        const int64_t nchunks = (nsl + DK_GEMM_CHUNK - 1) / DK_GEMM_CHUNK;
        int64_t items = nthr > 1 ? 4 * (int64_t)nthr : 1;
        if (items > batch) items = batch;
        const int64_t per = (batch + items - 1) / items;
        gemm_batch G = {{&t, NULL, NULL, out, m, n, k, ldo, 0, nsl, nchunks, 1, kpairs, kcp, mc,
                         pairA, pairB, stream, scale, arng, brng, NULL, NULL, abuf, bpriv,
                         abytes, bpriv_bytes, term, 0},
                        a, b, batch, per, bso};
        if (stream) atomic_fetch_add_explicit(&steps_streamed, 1, memory_order_relaxed);
        dk_pool_run_as(nthr, (batch + per - 1) / per, gemm_batch_item, &G, work);
    } else {
        for (int64_t bi = 0; bi < batch; bi++) {
            view va, vb;
            item_views(a, b, bi, &va, &vb);
            float *cb = out + bi * bso;
            const int64_t lead = stream_lead(&t, stream, cb, ldo, n);
            for (int64_t jc = lead; jc < n; jc += nc) {
                int64_t ncur = n - jc < nc ? n - jc : nc;
                int64_t nsl = (ncur + t.nr - 1) / t.nr;
                int64_t nchunks = (nsl + DK_GEMM_CHUNK - 1) / DK_GEMM_CHUNK;
                /* Work items (ic block, column group), handed out dynamically so that a
                 * thread slowed by a busy core takes fewer. Each block's columns are split
                 * into groups of whole packing units (an item packs its A block itself, so
                 * each group packs it once more): enough groups for 4 items per thread when
                 * there are fewer than 4 A blocks per thread, and at least one group per
                 * thread as long as each keeps DK_GEMM_GROUP_MIN_UNITS units. Threads that
                 * take items in step then each keep to one group and read mostly the B
                 * units they packed themselves (with one group for all, both read every
                 * unit, and an item ran 1.1-1.4x slower than on one thread). Measured on
                 * two threads only: docs/gemm.md, "Column groups". The order inside every
                 * C element is fixed, so the schedule never changes the bits. */
                int64_t ngroups = nthr > 1 && nb_m < 4 * (int64_t)nthr
                                      ? (4 * (int64_t)nthr + nb_m - 1) / nb_m : 1;
                const int64_t per_thread = nchunks / DK_GEMM_GROUP_MIN_UNITS < nthr
                                               ? nchunks / DK_GEMM_GROUP_MIN_UNITS : nthr;
                if (ngroups < per_thread) ngroups = per_thread;
                if (ngroups > nchunks) ngroups = nchunks;
                for (int64_t u = 0; shared_b && u < npc * nchunks; u++) atomic_init(&bstate[u], 0);
                gemm_step S = {&t, &va, &vb, cb, m, n, k, ldo, jc, nsl, nchunks, ngroups, kpairs,
                               kcp, mc, pairA, pairB, stream, scale, arng, brng, bbuf, bstate,
                               abuf, bpriv, abytes, bpriv_bytes, term, bi,
                               jc == lead ? lead : 0, kinner, csum, csum_bytes,
                               krange_blocks * kcp};
                if (kinner) atomic_fetch_add_explicit(&steps_kinner, 1, memory_order_relaxed);
                if (kranges) atomic_fetch_add_explicit(&steps_kranges, 1, memory_order_relaxed);
                if (stream) atomic_fetch_add_explicit(&steps_streamed, 1, memory_order_relaxed);
                dk_pool_run_as(nthr, nb_m * ngroups, gemm_item, &S, work);
            }
        }
    }
    buf_give(csum, scap, 0);
    buf_give(bbuf, bcap, 1);
    buf_give(abuf, acap, 0);
    buf_give(bpriv, pcap, 0);
    free(bstate);
    ranges_done(arng, nthr, arange);
    ranges_done(brng, nthr, brange);
    return DK_OK;
}
