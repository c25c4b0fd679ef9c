/* gemm_amx.c (amx tier) - the GEMM micro-kernel on Intel AMX tiles (TDPBF16PS).
 *
 * What TDPBF16PS computes was measured bit for bit (shared/notes/amx.md): per output and
 * per instruction of K <= 16 BF16 pairs, two FP32 fused chains E (even elements) and O (odd
 * elements), T = E + O, C = C + T, each step rounded once (RNE), inputs DAZ, results FTZ
 * (tininess after rounding), MXCSR ignored. That is the `amx` accumulation order of
 * dk_gemm.h with blocks of 16 pairs; this kernel produces it by running the instruction.
 *
 * Register block: 32 x 32 outputs in four C tiles (tmm0..3), A as two 16-row tiles
 * (tmm4, tmm5), B as two 16-column tiles (tmm6, tmm7). One configuration for all:
 * palette 1, every tile 16 rows x 64 bytes.
 *
 * Packed layouts (written by the driver):
 *   A ("row tiles", MR = 32): per block of 16 k-pairs, 32 rows x 16 uint32 lanes, each lane
 *     (a[i, 2p] | a[i, 2p+1] << 16): the A tile of rows 0-15 then the one of rows 16-31,
 *     each 1 KiB, contiguous.
 *   B (pair layout, NR = 32): per k-pair, 32 lanes (b[2p, j] | b[2p+1, j] << 16); a B tile
 *     is 16 consecutive pairs of 16 lanes (row stride 128 bytes).
 *   kp (the pairs given to the kernel) is a multiple of 16: the packers pad with zeros.
 *
 * The tile state belongs to the thread: dk_gemm_amxtile_enter() loads the configuration and
 * dk_gemm_amxtile_leave() releases it; the driver brackets each work item with them, so no
 * other code (another library using AMX on the same thread) can run in between. */
#include "dk_gemm.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "dk_lut512.h"
#include "dk_range512.h"

#define MR DK_GEMM_AMXTILE_MR
#define NR DK_GEMM_AMXTILE_NR

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tilecfg;

static tilecfg full_config(void)
{
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    return cfg;
}

void dk_gemm_amxtile_enter(void)
{
    tilecfg cfg = full_config();
    _tile_loadconfig(&cfg);
}

void dk_gemm_amxtile_leave(void) { _tile_release(); }

/* The k loop. With DK_UKR_STREAM_A (the driver's: the B sliver fits in L1, the A slivers it
 * meets do not) A is loaded with the T1 hint (TILELOADDT1: data not reused soon), so that
 * streaming the A slivers past it keeps the B sliver, which every A sliver of the block
 * reuses (run_unit), in L1. Measured one thread: 512^3 1.05-1.1x; with B slivers past L1
 * (k blocks of 2048) the hint was no better, and with an A block that fits in L1 (batches
 * of 128^3 products) it was slower: A then came back from L2 for every B sliver. */
__attribute__((always_inline)) static inline void kloop(int64_t kp, const uint32_t *a,
                                                        const uint32_t *b, const int t1)
{
    for (int64_t blk = 0; blk < kp / 16; blk++) {
        const uint32_t *ab = a + blk * (MR * 16);
        const uint32_t *bb = b + blk * (16 * NR);
        if (t1) _tile_stream_loadd(4, ab, 64);
        else _tile_loadd(4, ab, 64);
        _tile_loadd(6, bb, NR * 4);
        _tile_loadd(7, bb + 16, NR * 4);
        if (t1) _tile_stream_loadd(5, ab + 16 * 16, 64);
        else _tile_loadd(5, ab + 16 * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
}

/* the four C tiles (tmm0..3) of the 32 x 32 block at P, row stride LD floats, moved by OP
 * (a tile load or store intrinsic; tile numbers must be immediates) */
#define C_TILES(OP, P, LD)                                            \
    do {                                                              \
        OP(0, (P), (size_t)(LD) * 4);                                 \
        OP(1, (P) + 16, (size_t)(LD) * 4);                            \
        OP(2, (P) + 16 * (LD), (size_t)(LD) * 4);                     \
        OP(3, (P) + 16 * (LD) + 16, (size_t)(LD) * 4);                \
    } while (0)

/* The kernel: continues from cin (row stride ldcin) with DK_UKR_LOAD, stores to c; t: NULL,
 * or the addend of the tile (dk_gemm_ukr_amxtile_add). */
__attribute__((always_inline)) static inline void ukr(int64_t kp, const void *ap, const void *bp,
                                                      const float *cin, int64_t ldcin,
                                                      float *c, int64_t ldc, int flags,
                                                      float scale, const float *t, int64_t trs,
                                                      int64_t tcs)
{
    const uint32_t *a = (const uint32_t *)ap;
    const uint32_t *b = (const uint32_t *)bp;
    if ((flags & DK_UKR_LOAD) && (flags & DK_UKR_STREAM_C))
        C_TILES(_tile_stream_loadd, cin, ldcin);
    else if (flags & DK_UKR_LOAD)
        C_TILES(_tile_loadd, cin, ldcin);
    else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    if (flags & DK_UKR_STREAM_A) kloop(kp, a, b, 1);
    else kloop(kp, a, b, 0);
    /* A large result, or running sums read back only later (the driver's k ranges), stream
     * past the caches: non-temporal stores of whole 64-byte lines, no read-for-ownership of
     * lines that are only written (the driver fences after its item). */
    const int stream = (flags & DK_UKR_STREAM) && !((uintptr_t)c & 63) && !(ldc & 15);
    const int last = flags & DK_UKR_LAST;
    if (!last && !stream) {
        C_TILES(_tile_stored, c, ldc);
        return;
    }
    /* Through a temporary. Last k block: the exact power-of-two scale and NaN -> 0x7FC00000
     * (dk_gemm.h), then the addend if any. */
    float tmp[MR * NR] __attribute__((aligned(64)));
    C_TILES(_tile_stored, tmp, NR);
    const __m512 s = _mm512_set1_ps(scale);
    const __m512 qnan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000));
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < NR; h += 16) {
            __m512 x = _mm512_load_ps(tmp + i * NR + h);
            if (last) {
                x = _mm512_mul_ps(x, s);
                x = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), qnan);
            }
            if (t) /* the product's value first, as NumPy's add(result, term) */
                x = _mm512_add_ps(x, tcs ? _mm512_loadu_ps(t + i * trs + h) : _mm512_set1_ps(t[i * trs]));
            if (stream) _mm512_stream_ps(c + i * ldc + h, x);
            else _mm512_storeu_ps(c + i * ldc + h, x);
        }
}

void dk_gemm_ukr_amxtile(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                         int flags, float scale)
{
    ukr(kp, ap, bp, c, ldc, c, ldc, flags, scale, NULL, 0, 0);
}

void dk_gemm_ukr_amxtile_add(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                             int flags, float scale, const float *t, int64_t trs, int64_t tcs)
{
    ukr(kp, ap, bp, c, ldc, c, ldc, flags, scale, (flags & DK_UKR_LAST) ? t : NULL, trs, tcs);
}

void dk_gemm_ukr_amxtile_io(int64_t kp, const void *ap, const void *bp, const float *cin,
                            int64_t ldcin, float *c, int64_t ldc, int flags, float scale,
                            const float *t, int64_t trs, int64_t tcs)
{
    ukr(kp, ap, bp, cin, ldcin, c, ldc, flags, scale, (flags & DK_UKR_LAST) ? t : NULL, trs, tcs);
}

/* Few rows, B = W^T (W row-major: torch's linear layout), on the tiles: the transposed
 * product C^T = W . A^T, which has the same bits (each output's E and O chains take the same
 * products in the same order: a x b = b x a, and fma(a, b, c) = fma(b, a, c)). W's rows are
 * the "A" operand and are loaded as tiles where they lie (16 rows x 32 codes, row stride
 * bcs), so W is read once, unpacked; A^T is the "B" operand, given in the pair layout
 * (dk_gemm.h: apt). A block that a whole tile load cannot take (the last rows of W when
 * fewer than 32 remain in the column range, k's last partial block, every block of a
 * CFloat8 W) is staged: copied (decoded) into a zero-padded buffer first. */
#define BT_ROWS 32 /* W rows (columns of C) per group: two A tiles */
_Static_assert(DK_GEMM_SMALLM_BT_TILE_MAX <= 32, "A^T in one tile column of 32 lanes");

/* W rows [0, rows) of the group at w (rows <= BT_ROWS; esz bytes a code), codes [kk0, kk0 +
 * kn), 8-bit ones decoded through t (NULL: BF16), into st (BT_ROWS x 32 codes, zeros
 * elsewhere); the codes' range into r (NULL: none). */
static void stage_block(const char *w, size_t esz, int64_t bcs, const __m512i *t, int64_t rows,
                        int64_t kk0, int64_t kn, uint16_t *st, dk_range512 *r)
{
    for (int64_t i = 0; i < BT_ROWS; i++) {
        const __m512i v = dk_line_codes(i < rows ? w + (i * bcs + kk0) * (int64_t)esz : NULL, kn, t);
        if (r) dk_range512_add(r, v); /* (zeros count for neither end) */
        _mm512_store_si512((void *)(st + i * 32), v);
    }
}

void dk_gemm_smallm_bt_amxtile(int64_t m, int64_t k, int64_t j0, int64_t j1, const uint32_t *apt,
                               int64_t kpad, const void *b, int64_t bcs, int bkind,
                               const uint16_t *btab, float scale, float *out, int64_t ldo,
                               uint16_t *brange)
{
    static const uint16_t empty[2] = {0x7FFF, 0};
    dk_range512 rg = dk_range512_start(brange ? brange : empty);
    __m512i tab[8];
    if (bkind == DK_GEMM_U8) dk_lut512_load(btab, tab);
    uint16_t st[BT_ROWS * 32] __attribute__((aligned(64)));
    float tmp[BT_ROWS * 32] __attribute__((aligned(64)));
    const int64_t nblk = kpad / 32;
    /* the blocks loaded straight from W: whole blocks of BF16 codes */
    const int64_t direct = bkind == DK_GEMM_U16 ? k / 32 : 0;
    const size_t esz = bkind == DK_GEMM_U8 ? 1 : 2;
    dk_range512 *r = brange && bkind == DK_GEMM_U16 ? &rg : NULL;
    dk_gemm_amxtile_enter();
    for (int64_t jb = j0; jb < j1; jb += BT_ROWS) {
        const int64_t rows = j1 - jb < BT_ROWS ? j1 - jb : BT_ROWS;
        const uint16_t *w16 = (const uint16_t *)b + jb * bcs;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t blk = 0; blk < nblk; blk++) {
            if (rows == BT_ROWS && blk < direct) {
                const uint16_t *w0 = w16 + 32 * blk;
                _tile_loadd(4, w0, (size_t)bcs * 2);
                _tile_loadd(5, w0 + 16 * bcs, (size_t)bcs * 2);
                if (r)
                    for (int i = 0; i < BT_ROWS; i++)
                        dk_range512_add(r, _mm512_loadu_si512((const void *)(w0 + i * bcs)));
            } else {
                const int64_t kk0 = 32 * blk;
                stage_block((const char *)b + jb * bcs * (int64_t)esz, esz, bcs,
                            bkind == DK_GEMM_U8 ? tab : NULL, rows, kk0, k - kk0, st, r);
                _tile_loadd(4, st, 64);
                _tile_loadd(5, st + 16 * 32, 64);
            }
            _tile_loadd(6, apt + blk * 16 * 32, 128);
            _tile_loadd(7, apt + blk * 16 * 32 + 16, 128);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        /* tmp[jj * 32 + i]: column jb + jj of C, row i */
        C_TILES(_tile_stored, tmp, 32);
        for (int64_t i = 0; i < m; i++) {
            float *o = out + i * ldo + jb;
            for (int64_t jj = 0; jj < rows; jj++) {
                /* the last k block's steps of every kernel: the exact power-of-two scale,
                 * then NaN -> 0x7FC00000 */
                const float x = tmp[jj * 32 + i] * scale;
                if (x != x) {
                    const uint32_t qnan = 0x7FC00000u;
                    memcpy(o + jj, &qnan, 4);
                } else
                    o[jj] = x;
            }
        }
    }
    dk_gemm_amxtile_leave();
    if (brange) dk_range512_end(rg, brange);
}

/* One TDPBF16PS on tiles of the given shape, for the tests that prove the contract
 * against the instruction itself: c (m x n FP32, row stride ldc floats) +=
 * a (m x 2*kpairs BF16 codes, row stride lda codes) . b (kpairs x n pair lanes, row
 * stride ldb lanes). 1 <= m, n, kpairs <= 16. No scaling, no NaN canonicalization,
 * MXCSR untouched: exactly the instruction. */
void dk_amx_tdpbf16ps(const uint16_t *a, int64_t lda, const uint32_t *b, int64_t ldb,
                      float *c, int64_t ldc, int m, int n, int kpairs)
{
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    cfg.rows[0] = (uint8_t)m;                     /* C: m x n FP32 */
    cfg.colsb[0] = (uint16_t)(n * 4);
    cfg.rows[1] = (uint8_t)m;                     /* A: m x kpairs pairs */
    cfg.colsb[1] = (uint16_t)(kpairs * 4);
    cfg.rows[2] = (uint8_t)kpairs;                /* B: kpairs x n pairs */
    cfg.colsb[2] = (uint16_t)(n * 4);
    _tile_loadconfig(&cfg);
    _tile_loadd(0, c, (size_t)ldc * 4);
    _tile_loadd(1, a, (size_t)lda * 2);
    _tile_loadd(2, b, (size_t)ldb * 4);
    _tile_dpbf16ps(0, 1, 2);
    _tile_stored(0, c, (size_t)ldc * 4);
    _tile_release();
}

/* Peak probe: four independent C tiles, A and B held in tiles, no memory traffic. */
double dk_probe_tdpbf16ps(int64_t iters)
{
    static const uint16_t ones[16 * 32] __attribute__((aligned(64))) = {0};
    float sink[16 * 16] __attribute__((aligned(64)));
    dk_gemm_amxtile_enter();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, ones, 64);
    _tile_loadd(5, ones, 64);
    _tile_loadd(6, ones, 64);
    _tile_loadd(7, ones, 64);
    for (int64_t it = 0; it < iters; it++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, sink, 64);
    __asm__ volatile("" : : "r"(sink) : "memory");
    dk_gemm_amxtile_leave();
    return (double)iters * 4 * (16.0 * 16 * 32 * 2);
}
