/* reduce_driver.c - dispatch and the program runner of the all-reduce additions.
 * Baseline code: tier bodies are called only for the tier the caller passes, which the
 * Python layer takes from the run-time CPU check. Work is split into (segment, tile) items,
 * each computed entirely by one thread, so results never depend on the thread count.
 * Threads come from the pool (dk_pool.h); calls below 2^20 elements (2^20 additions for a
 * program) run on the calling thread only. */
#include <stdlib.h>
#include <string.h>
#include "dk_pool.h"
#include "dk_reduce.h"
#include "dk_fpenv.h" /* dk_fpenv_enter / dk_fpenv_leave: the default MXCSR */

#define DK_TILE 2048 /* elements per tile: scratch slots stay in L1/L2 */

typedef void (*add_fn)(float *, const float *, const float *, int64_t);
typedef void (*widen_fn)(float *, const uint16_t *, int64_t);
typedef void (*narrow_fn)(uint16_t *, const float *, int64_t);

typedef struct { add_fn add, addr; widen_fn widen; narrow_fn narrow; } kernels;

static kernels pick(int isa)
{
    kernels k;
    switch (isa) {
    case DK_ISA_AMX: /* the reductions have no AMX form: the avx512bf16 kernels */
    case DK_ISA_AVX512BF16:
        k.add = dk_reduce_add_f32_avx512bf16; k.addr = dk_reduce_add_bf16r_avx512bf16;
        k.widen = dk_reduce_widen_avx512bf16; k.narrow = dk_reduce_narrow_avx512bf16;
        break;
    case DK_ISA_AVX2:
        k.add = dk_reduce_add_f32_avx2; k.addr = dk_reduce_add_bf16r_avx2;
        k.widen = dk_reduce_widen_avx2; k.narrow = dk_reduce_narrow_avx2;
        break;
    default:
        k.add = dk_reduce_add_f32_generic; k.addr = dk_reduce_add_bf16r_generic;
        k.widen = dk_reduce_widen_generic; k.narrow = dk_reduce_narrow_generic;
    }
    return k;
}

static int bad_isa(int isa) { return isa < 0 || isa >= DK_ISA_COUNT; }

#define CHUNK (1 << 16)
#define PAR_MIN ((int64_t)1 << 20) /* smallest call handed to the pool (elements) */

/* One elementwise call, cut into CHUNK items. */
typedef struct {
    kernels k;
    add_fn add;
    int op; /* 0 accumulate, 1 widen, 2 narrow */
    void *dst;
    const void *src;
    int64_t n;
} ew_args;

static void ew_item(void *arg, int64_t c, int slot)
{
    ew_args *E = arg;
    (void)slot;
    int64_t lo = c * CHUNK, len = E->n - lo < CHUNK ? E->n - lo : CHUNK;
    if (E->op == 0) {
        float *dst = E->dst;
        unsigned csr = dk_fpenv_enter();
        E->add(dst + lo, dst + lo, (const float *)E->src + lo, len);
        dk_fpenv_leave(csr);
    } else if (E->op == 1) {
        E->k.widen((float *)E->dst + lo, (const uint16_t *)E->src + lo, len);
    } else {
        E->k.narrow((uint16_t *)E->dst + lo, (const float *)E->src + lo, len);
    }
}

static void ew_run(int threads, ew_args *E)
{
    int64_t nch = (E->n + CHUNK - 1) / CHUNK;
    dk_pool_run(E->n >= PAR_MIN && threads > 1 ? threads : 1, nch, ew_item, E);
}

int dk_reduce_accumulate(int isa, int threads, float *dst, const float *src, int64_t n,
                         int round_bf16)
{
    if (bad_isa(isa) || n < 0 || (n && (!dst || !src))) return DK_EINVAL;
    kernels k = pick(isa);
    ew_args E = {k, round_bf16 ? k.addr : k.add, 0, dst, src, n};
    ew_run(threads, &E);
    return DK_OK;
}

int dk_reduce_bf16_to_f32(int isa, int threads, float *dst, const uint16_t *src, int64_t n)
{
    if (bad_isa(isa) || n < 0 || (n && (!dst || !src))) return DK_EINVAL;
    ew_args E = {pick(isa), NULL, 1, dst, src, n};
    ew_run(threads, &E);
    return DK_OK;
}

int dk_reduce_f32_to_bf16(int isa, int threads, uint16_t *dst, const float *src, int64_t n)
{
    if (bad_isa(isa) || n < 0 || (n && (!dst || !src))) return DK_EINVAL;
    ew_args E = {pick(isa), NULL, 2, dst, src, n};
    ew_run(threads, &E);
    return DK_OK;
}

/* Check every index of the program once, so the runner never reads out of bounds. */
static int check_program(const dk_reduce_program *p)
{
    if (!p || p->nodes < 1 || p->out_rows < 1 || p->out_rows > p->nodes || p->nseg < 0 || p->nslots < 0 || p->nodes > INT32_MAX) return 0;
    if (!p->seg_lo || !p->add_off || (p->nseg && !p->out_op)) return 0;
    if (p->seg_lo[0] < 0 || p->add_off[0] != 0) return 0;
    for (int64_t s = 0; s < p->nseg; s++) {
        if (p->seg_lo[s + 1] < p->seg_lo[s] || p->add_off[s + 1] < p->add_off[s]) return 0;
    }
    int64_t nadd = p->add_off[p->nseg];
    if (nadd && (!p->add_out || !p->add_a || !p->add_b)) return 0;
    for (int64_t i = 0; i < nadd; i++) {
        if (p->add_out[i] < 0 || p->add_out[i] >= p->nslots) return 0;
        int32_t ops[2] = {p->add_a[i], p->add_b[i]};
        for (int j = 0; j < 2; j++)
            if (ops[j] >= p->nslots || (ops[j] < 0 && -(int64_t)ops[j] - 1 >= p->nodes)) return 0;
    }
    for (int64_t i = 0; i < p->nseg * p->out_rows; i++) {
        int32_t o = p->out_op[i];
        if (o >= p->nslots || (o < 0 && -(int64_t)o - 1 >= p->nodes)) return 0;
    }
    return 1;
}

/* One call of the program runner, shared by its tiles. */
typedef struct {
    const dk_reduce_program *p;
    int fmt;
    kernels k;
    add_fn addf;
    const int64_t *tile_off;
    float *scratch;
    size_t per;
    const void *in;
    int64_t in_stride;
    void *out;
    int64_t out_stride;
} run_args;

/* Tile t of the program: every addition of its segment on this tile's columns, in the
 * program's order, then the outputs. Scratch slots are the running thread's own. */
static void run_tile(void *arg, int64_t t, int slot)
{
    const run_args *A = arg;
    const dk_reduce_program *p = A->p;
    const int fmt = A->fmt;
    const kernels k = A->k;
    const int64_t *tile_off = A->tile_off, R = p->out_rows, in_stride = A->in_stride,
                  out_stride = A->out_stride;
    const float *inf = A->in; const uint16_t *inh = A->in;
    float *outf = A->out; uint16_t *outh = A->out;
    float *mine = A->scratch + (size_t)slot * A->per;
    float *tmp0 = mine + (size_t)p->nslots * DK_TILE, *tmp1 = tmp0 + DK_TILE;
    /* the segment of tile t: the last s with tile_off[s] <= t (empty segments skipped) */
    int64_t lo_s = 0, hi_s = p->nseg - 1;
    while (lo_s < hi_s) {
        int64_t mid = (lo_s + hi_s + 1) / 2;
        if (tile_off[mid] <= t) lo_s = mid; else hi_s = mid - 1;
    }
    int64_t s = lo_s;
    unsigned csr = dk_fpenv_enter();
    int64_t lo = p->seg_lo[s] + (t - tile_off[s]) * DK_TILE;
    int64_t len = p->seg_lo[s + 1] - lo;
    if (len > DK_TILE) len = DK_TILE;
    for (int64_t i = p->add_off[s]; i < p->add_off[s + 1]; i++) {
        const float *opnd[2];
        int32_t o[2] = {p->add_a[i], p->add_b[i]};
        for (int j = 0; j < 2; j++) {
            if (o[j] >= 0) {
                opnd[j] = mine + (size_t)o[j] * DK_TILE;
            } else if (fmt == DK_REDUCE_F32) {
                opnd[j] = inf + (-(int64_t)o[j] - 1) * in_stride + lo;
            } else {
                float *tmp = j ? tmp1 : tmp0;
                k.widen(tmp, inh + (-(int64_t)o[j] - 1) * in_stride + lo, len);
                opnd[j] = tmp;
            }
        }
        A->addf(mine + (size_t)p->add_out[i] * DK_TILE, opnd[0], opnd[1], len);
    }
    for (int64_t node = 0; node < R; node++) {
        int32_t o = p->out_op[s * R + node];
        if (fmt == DK_REDUCE_F32) {
            const float *src = o >= 0 ? mine + (size_t)o * DK_TILE
                                      : inf + (-(int64_t)o - 1) * in_stride + lo;
            memcpy(outf + node * out_stride + lo, src, (size_t)len * sizeof(float));
        } else if (o >= 0) {
            k.narrow(outh + node * out_stride + lo, mine + (size_t)o * DK_TILE, len);
        } else {
            memcpy(outh + node * out_stride + lo, inh + (-(int64_t)o - 1) * in_stride + lo,
                   (size_t)len * sizeof(uint16_t));
        }
    }
    dk_fpenv_leave(csr);
}

int dk_reduce_run(int isa, int threads, const dk_reduce_program *p, int fmt, int round_each,
                  const void *in, int64_t in_stride, void *out, int64_t out_stride)
{
    if (bad_isa(isa) || (fmt != DK_REDUCE_F32 && fmt != DK_REDUCE_BF16)) return DK_EINVAL;
    if (!check_program(p) || !in || !out || in_stride < 0 || out_stride < 0) return DK_EINVAL;
    if (p->nseg == 0) return DK_OK;
    const int64_t R = p->out_rows, S = p->nseg;
    if (p->seg_lo[S] > in_stride || p->seg_lo[S] > out_stride) return DK_EINVAL;
    kernels k = pick(isa);
    add_fn addf = (fmt == DK_REDUCE_BF16 && round_each) ? k.addr : k.add;

    /* tiles per segment */
    int64_t *tile_off = malloc((size_t)(S + 1) * sizeof(int64_t));
    if (!tile_off) return DK_ENOMEM;
    tile_off[0] = 0;
    for (int64_t s = 0; s < S; s++) {
        int64_t len = p->seg_lo[s + 1] - p->seg_lo[s];
        tile_off[s + 1] = tile_off[s] + (len + DK_TILE - 1) / DK_TILE;
    }
    const int64_t ntiles = tile_off[S];
    int nthr = threads > 0 ? threads : 1;
    if (ntiles < nthr) nthr = ntiles > 0 ? (int)ntiles : 1;
    /* Small jobs stay on one thread: waking a team costs more than the work. */
    double work = 0;
    for (int64_t s = 0; s < S; s++)
        work += (double)(p->seg_lo[s + 1] - p->seg_lo[s]) * (double)(p->add_off[s + 1] - p->add_off[s] + R);
    if (work < (double)(1 << 20)) nthr = 1;
    const size_t per = (size_t)(p->nslots + 2) * DK_TILE; /* slots + two widened operands */
    float *scratch = aligned_alloc(64, (size_t)nthr * per * sizeof(float));
    if (!scratch) { free(tile_off); return DK_ENOMEM; }

    run_args A = {p, fmt, k, addf, tile_off, scratch, per, in, in_stride, out, out_stride};
    dk_pool_run(nthr, ntiles, run_tile, &A);
    free(scratch);
    free(tile_off);
    return DK_OK;
}

int dk_reduce_test_under_mxcsr(int isa, unsigned csr, int which, const float *in, int64_t n,
                               float *out, unsigned *csr_after)
{
#ifdef DK_HAVE_MXCSR
    if (!in || !out || !csr_after || n < 1 || (which != 0 && which != 1)) return DK_EINVAL;
    int64_t seg_lo[2] = {0, n}, add_off[2] = {0, 1};
    int32_t add_out[1] = {0}, add_a[1] = {-1}, add_b[1] = {-2}, out_op[1] = {0};
    dk_reduce_program p = {2, 1, 1, 1, seg_lo, add_off, add_out, add_a, add_b, out_op};
    unsigned saved = _mm_getcsr();
    _mm_setcsr(csr);
    int rc;
    if (which == 0) {
        memcpy(out, in, (size_t)n * sizeof(float));
        rc = dk_reduce_accumulate(isa, 1, out, in + n, n, 0);
    } else {
        rc = dk_reduce_run(isa, 1, &p, DK_REDUCE_F32, 0, in, n, out, n);
    }
    *csr_after = _mm_getcsr();
    _mm_setcsr(saved);
    return rc;
#else
    (void)isa; (void)csr; (void)which; (void)in; (void)n; (void)out; (void)csr_after;
    return -1;
#endif
}
