/* convert_driver.c - baseline drivers for conversion and arithmetic: split the work into
 * fixed blocks (so results never depend on the thread count), run the blocks on the pool's
 * threads (dk_pool.h), call the tier kernel chosen by the caller, and count exception flags.
 * Calls below DK_PAR_MIN elements run on the calling thread only.
 *
 * Flags and float64 sources of conversions take the scalar semantics of dk_format.h on every
 * tier; the FP32/BF16 conversions without flags and the arithmetic take the tier's SIMD
 * kernels (the arithmetic ones count flags themselves). */
#include <stdatomic.h>
#include <string.h>

#include "dk_convert.h"
#include "dk_pool.h"
#include "dk_fpenv.h" /* dk_fpenv_enter / dk_fpenv_leave: the default MXCSR */

#define DK_BLOCK 32768 /* elements per parallel block */
#define DK_CHUNK 2048  /* elements per stack buffer inside a block */
/* Smallest call handed to the pool (4 blocks): below it, waking a worker (tens of
 * microseconds) costs about what a second thread would save. */
#define DK_PAR_MIN ((int64_t)4 * DK_BLOCK)

static int threads_for(int64_t n, int nthreads) { return n >= DK_PAR_MIN ? nthreads : 1; }

/* Flag counts summed over blocks (integer sums: the order of the blocks does not matter). */
typedef struct { atomic_llong inv, den, ovf, und; } flag_sums;
static void add_counts(flag_sums *s, int64_t inv, int64_t den, int64_t ovf, int64_t und)
{
    if (inv) atomic_fetch_add_explicit(&s->inv, inv, memory_order_relaxed);
    if (den) atomic_fetch_add_explicit(&s->den, den, memory_order_relaxed);
    if (ovf) atomic_fetch_add_explicit(&s->ovf, ovf, memory_order_relaxed);
    if (und) atomic_fetch_add_explicit(&s->und, und, memory_order_relaxed);
}

typedef void (*dk_q_fn)(const float *, void *, int64_t, const dk_format *, int, uint64_t, int64_t);
typedef void (*dk_d_fn)(const void *, float *, int64_t, const dk_format *);

static dk_q_fn pick_q(int isa)
{
    return isa >= DK_ISA_AVX512BF16 ? dk_quantize_f32_avx512bf16
           : isa == DK_ISA_AVX2     ? dk_quantize_f32_avx2
                                    : dk_quantize_f32_generic;
}
typedef void (*dk_fq_fn)(const float *, float *, int64_t, const dk_format *, int, uint64_t, int64_t);
static dk_fq_fn pick_fq(int isa)
{
    return isa >= DK_ISA_AVX512BF16 ? dk_fake_quantize_f32_avx512bf16
           : isa == DK_ISA_AVX2     ? dk_fake_quantize_f32_avx2
                                    : dk_fake_quantize_f32_generic;
}
static dk_d_fn pick_d(int isa)
{
    return isa >= DK_ISA_AVX512BF16 ? dk_dequantize_f32_avx512bf16
           : isa == DK_ISA_AVX2     ? dk_dequantize_f32_avx2
                                    : dk_dequantize_f32_generic;
}

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t b = dk_f32_bits_from_bf16(h);
    float v;
    memcpy(&v, &b, 4);
    return v;
}
static inline void count(unsigned fl, int64_t *inv, int64_t *den, int64_t *ovf, int64_t *und)
{
    *inv += (fl & DK_FL_INVALID) != 0;
    *den += (fl & DK_FL_DENORMAL) != 0;
    *ovf += (fl & DK_FL_OVERFLOW) != 0;
    *und += (fl & DK_FL_UNDERFLOW) != 0;
}

/* Scalar quantization of elements [i0, i0 + len) with flags. */
static void quantize_scalar(const void *x, int xkind, void *out, int64_t i0, int64_t len,
                            const dk_format *f, int mode, uint64_t seed, int64_t c[4])
{
    const int width = dk_code_width(f);
    for (int64_t i = i0; i < i0 + len; i++) {
        unsigned fl = 0;
        uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)i) : 0u;
        uint32_t code;
        if (xkind == DK_F64) code = dk_round_f64(((const double *)x)[i], f, mode, r, &fl);
        else if (xkind == DK_F32) code = dk_round_f32(((const float *)x)[i], f, mode, r, &fl);
        else code = dk_round_f32(bf16_to_f32(((const uint16_t *)x)[i]), f, mode, r, &fl);
        dk_store_code(out, i, code, width);
        count(fl, &c[0], &c[1], &c[2], &c[3]);
    }
}

static void store_flags(dk_flags *flags, int64_t inv, int64_t den, int64_t ovf, int64_t und)
{
    if (!flags) return;
    flags->invalid = inv;
    flags->denormal = den;
    flags->overflow = ovf;
    flags->underflow = und;
}

/* Codes of elements [at, at + m) (m <= DK_CHUNK) into codes[0 .. m), by the tier kernel;
 * a float64 source takes the scalar semantics. Random numbers follow the global index. */
static void quantize_chunk(dk_q_fn q, const void *x, int xkind, void *codes, int64_t at, int64_t m,
                           const dk_format *f, int mode, uint64_t seed)
{
    if (xkind == DK_F32) {
        q((const float *)x + at, codes, m, f, mode, seed, at);
    } else if (xkind == DK_BF16IN) {
        float tmp[DK_CHUNK];
        for (int64_t j = 0; j < m; j++) tmp[j] = bf16_to_f32(((const uint16_t *)x)[at + j]);
        q(tmp, codes, m, f, mode, seed, at);
    } else {
        const int width = dk_code_width(f);
        for (int64_t j = 0; j < m; j++) {
            unsigned fl = 0;
            uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)(at + j)) : 0u;
            dk_store_code(codes, j, dk_round_f64(((const double *)x)[at + j], f, mode, r, &fl), width);
        }
    }
}

/* The arguments of one call, shared by its blocks. */
typedef struct {
    const void *x, *b, *c;
    void *out;
    int xkind, okind, op, mode, width, scalar;
    int counted; /* arith: the flags are wanted (the kernels count them) */
    int64_t n;
    const dk_format *f;
    uint64_t seed;
    dk_q_fn q;
    dk_d_fn d;
    dk_fq_fn fq;
    void (*a)(int, const void *, const void *, const void *, void *, int64_t, int64_t,
              const dk_format *, int, uint64_t, int64_t *);
    flag_sums sums;
} call_args;

static int64_t nblocks_of(int64_t n) { return (n + DK_BLOCK - 1) / DK_BLOCK; }

static void quantize_block(void *arg, int64_t b, int slot)
{
    call_args *A = arg;
    (void)slot;
    const void *x = A->x;
    void *out = A->out;
    const int64_t n = A->n;
    const int xkind = A->xkind, mode = A->mode, width = A->width;
    const dk_format *f = A->f;
    const uint64_t seed = A->seed;
    int64_t i0 = b * DK_BLOCK, len = n - i0 < DK_BLOCK ? n - i0 : DK_BLOCK;
    if (A->scalar) {
        int64_t c[4] = {0, 0, 0, 0};
        quantize_scalar(x, xkind, out, i0, len, f, mode, seed, c);
        add_counts(&A->sums, c[0], c[1], c[2], c[3]);
    } else {
        for (int64_t s = 0; s < len; s += DK_CHUNK) {
            int64_t m = len - s < DK_CHUNK ? len - s : DK_CHUNK;
            quantize_chunk(A->q, x, xkind, (char *)out + (i0 + s) * width, i0 + s, m, f, mode, seed);
        }
    }
}

static void store_sums(dk_flags *flags, flag_sums *s)
{
    store_flags(flags, (int64_t)atomic_load(&s->inv), (int64_t)atomic_load(&s->den),
                (int64_t)atomic_load(&s->ovf), (int64_t)atomic_load(&s->und));
}

int dk_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                uint64_t seed, dk_flags *flags, int isa, int nthreads)
{
    call_args A = {.x = x, .out = out, .xkind = xkind, .mode = mode, .width = dk_code_width(f),
                   .scalar = flags != NULL || xkind == DK_F64, .n = n, .f = f, .seed = seed,
                   .q = pick_q(isa)};
    dk_pool_run(threads_for(n, nthreads), nblocks_of(n), quantize_block, &A);
    store_sums(flags, &A.sums);
    return DK_OK;
}

static void dequantize_block(void *arg, int64_t b, int slot)
{
    call_args *A = arg;
    (void)slot;
    const int64_t n = A->n;
    const int width = A->width;
    const dk_format *f = A->f;
    const dk_d_fn d = A->d;
    void *out = A->out;
    int64_t i0 = b * DK_BLOCK, len = n - i0 < DK_BLOCK ? n - i0 : DK_BLOCK;
    const char *src = (const char *)A->x + i0 * width;
    if (A->okind == DK_F32) {
        d(src, (float *)out + i0, len, f);
    } else { /* float64: decode a chunk to FP32 (exact), then widen */
        float tmp[DK_CHUNK];
        for (int64_t s = 0; s < len; s += DK_CHUNK) {
            int64_t m = len - s < DK_CHUNK ? len - s : DK_CHUNK;
            d(src + s * width, tmp, m, f);
            for (int64_t j = 0; j < m; j++) ((double *)out)[i0 + s + j] = (double)tmp[j];
        }
    }
}

int dk_dequantize(const void *codes, void *out, int okind, int64_t n, const dk_format *f, int isa,
                  int nthreads)
{
    call_args A = {.x = codes, .out = out, .okind = okind, .width = dk_code_width(f), .n = n,
                   .f = f, .d = pick_d(isa)};
    dk_pool_run(threads_for(n, nthreads), nblocks_of(n), dequantize_block, &A);
    return DK_OK;
}

static void fake_quantize_block(void *arg, int64_t b, int slot)
{
    call_args *A = arg;
    (void)slot;
    const void *x = A->x;
    void *out = A->out;
    const int64_t n = A->n;
    const int xkind = A->xkind, mode = A->mode, width = A->width;
    const dk_format *f = A->f;
    const uint64_t seed = A->seed;
    const dk_q_fn q = A->q;
    const dk_d_fn d = A->d;
    int64_t i0 = b * DK_BLOCK, len = n - i0 < DK_BLOCK ? n - i0 : DK_BLOCK;
    if (xkind == DK_F32) { /* one pass: quantize and decode in registers */
        A->fq((const float *)x + i0, (float *)out + i0, len, f, mode, seed, i0);
        return;
    }
    uint32_t codes[DK_CHUNK];
    float vals[DK_CHUNK];
    for (int64_t s = 0; s < len; s += DK_CHUNK) {
        int64_t m = len - s < DK_CHUNK ? len - s : DK_CHUNK, at = i0 + s;
        quantize_chunk(q, x, xkind, codes, at, m, f, mode, seed);
        if (xkind == DK_F64) {
            for (int64_t j = 0; j < m; j++)
                ((double *)out)[at + j] = dk_decode(dk_load_code(codes, j, width), f);
        } else { /* BF16 out: exact, the caller admits only formats inside BF16 */
            d(codes, vals, m, f);
            for (int64_t j = 0; j < m; j++) {
                uint32_t bits;
                memcpy(&bits, &vals[j], 4);
                ((uint16_t *)out)[at + j] = (uint16_t)(bits >> 16);
            }
        }
    }
}

int dk_fake_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                     uint64_t seed, int isa, int nthreads)
{
    call_args A = {.x = x, .out = out, .xkind = xkind, .mode = mode, .width = dk_code_width(f),
                   .n = n, .f = f, .seed = seed, .q = pick_q(isa), .d = pick_d(isa),
                   .fq = pick_fq(isa)};
    dk_pool_run(threads_for(n, nthreads), nblocks_of(n), fake_quantize_block, &A);
    return DK_OK;
}

typedef void (*dk_a_fn)(int, const void *, const void *, const void *, void *, int64_t, int64_t,
                        const dk_format *, int, uint64_t, int64_t *);

static dk_a_fn pick_a(int isa)
{
    return isa >= DK_ISA_AVX512BF16 ? dk_arith_block_avx512bf16
           : isa == DK_ISA_AVX2     ? dk_arith_block_avx2
                                    : dk_arith_block_generic;
}

/* One block of an arithmetic call: the tier kernel under the default MXCSR (its TwoSum
 * needs round to nearest; FTZ/DAZ would flush the scalar lanes' subnormals), the running
 * thread's MXCSR restored after; flags summed into the call's counters. */
static void arith_block(void *arg, int64_t blk, int slot)
{
    call_args *A = arg;
    (void)slot;
    int64_t i0 = blk * DK_BLOCK, len = A->n - i0 < DK_BLOCK ? A->n - i0 : DK_BLOCK;
    int64_t cnt[4] = {0, 0, 0, 0};
    unsigned csr = dk_fpenv_enter();
    A->a(A->op, A->x, A->b, A->c, A->out, i0, len, A->f, A->mode, A->seed, A->counted ? cnt : NULL);
    dk_fpenv_leave(csr);
    if (A->counted)
        add_counts(&A->sums, cnt[0], cnt[1], cnt[2], cnt[3]);
}

int dk_arith(int op, const void *a, const void *b, const void *c, void *out, int64_t n,
             const dk_format *f, int mode, uint64_t seed, dk_flags *flags, int isa, int nthreads)
{
    call_args A = {.x = a, .b = b, .c = c, .out = out, .op = op, .mode = mode,
                   .width = dk_code_width(f), .counted = flags != NULL, .n = n, .f = f,
                   .seed = seed, .a = pick_a(isa)};
    dk_pool_run(threads_for(n, nthreads), nblocks_of(n), arith_block, &A);
    store_sums(flags, &A.sums);
    return DK_OK;
}

int dk_arith_test_under_mxcsr(unsigned csr, int op, const void *a, const void *b, const void *c,
                              void *out, int64_t n, const dk_format *f, int mode, uint64_t seed,
                              dk_flags *flags, int isa, unsigned *csr_after)
{
#ifdef DK_HAVE_MXCSR
    unsigned saved = _mm_getcsr();
    _mm_setcsr(csr);
    int rc = dk_arith(op, a, b, c, out, n, f, mode, seed, flags, isa, 1);
    *csr_after = _mm_getcsr();
    _mm_setcsr(saved);
    return rc;
#else
    (void)csr; (void)op; (void)a; (void)b; (void)c; (void)out; (void)n; (void)f; (void)mode;
    (void)seed; (void)flags; (void)isa; (void)csr_after;
    return -1;
#endif
}

/* max of the magnitude bits of elements [i0, i0 + len): integer compares order the
 * magnitudes of IEEE values (NaN above Inf above every finite value). Signed lanes (the
 * magnitudes are below the sign bit) so that the baseline build vectorizes the loops. */
static uint64_t maxabs_block(const void *x, int xkind, int64_t i0, int64_t len)
{
    if (xkind == DK_F64) {
        const int64_t *p = (const int64_t *)x + i0;
        int64_t m = 0;
        for (int64_t i = 0; i < len; i++) {
            int64_t v = p[i] & 0x7FFFFFFFFFFFFFFFll;
            m = v > m ? v : m;
        }
        return (uint64_t)m;
    }
    if (xkind == DK_F32) {
        const int32_t *p = (const int32_t *)x + i0;
        int32_t m = 0;
        for (int64_t i = 0; i < len; i++) {
            int32_t v = p[i] & 0x7FFFFFFF;
            m = v > m ? v : m;
        }
        return (uint64_t)m;
    }
    const int16_t *p = (const int16_t *)x + i0;
    int16_t m = 0;
    for (int64_t i = 0; i < len; i++) {
        int16_t v = (int16_t)(p[i] & 0x7FFF);
        m = v > m ? v : m;
    }
    return (uint64_t)m;
}

typedef struct {
    const void *x;
    int xkind;
    int64_t n;
    _Atomic uint64_t top;
} maxabs_args;

static void maxabs_item(void *arg, int64_t b, int slot)
{
    maxabs_args *M = arg;
    (void)slot;
    int64_t i0 = b * DK_BLOCK, len = M->n - i0 < DK_BLOCK ? M->n - i0 : DK_BLOCK;
    uint64_t m = maxabs_block(M->x, M->xkind, i0, len);
    uint64_t cur = atomic_load_explicit(&M->top, memory_order_relaxed);
    while (m > cur && !atomic_compare_exchange_weak(&M->top, &cur, m)) {
    }
}

/* out[i] = table[a[i] << 8 | b[i]]: 8-bit arithmetic from a table of every pair's result. */
typedef struct {
    const uint8_t *t, *a, *b;
    uint8_t *out;
    int64_t n;
} lut2_args;

static void lut2_block(void *arg, int64_t blk, int slot)
{
    const lut2_args *L = arg;
    (void)slot;
    const uint8_t *t = L->t, *a = L->a, *b = L->b;
    uint8_t *o = L->out; /* may be a or b (in place): each element is read before it is written */
    const int64_t i0 = blk * DK_BLOCK, end = L->n - i0 < DK_BLOCK ? L->n : i0 + DK_BLOCK;
    for (int64_t i = i0; i < end; i++)
        o[i] = t[(unsigned)a[i] << 8 | b[i]];
}

int dk_lut2(const void *table, const void *a, const void *b, void *out, int64_t n, int nthreads)
{
    lut2_args L = {.t = table, .a = a, .b = b, .out = out, .n = n};
    dk_pool_run(threads_for(n, nthreads), nblocks_of(n), lut2_block, &L);
    return DK_OK;
}

double dk_maxabs(const void *x, int xkind, int64_t n, int nthreads)
{
    uint64_t top;
    if (threads_for(n, nthreads) <= 1) { /* small: the calling thread, no pool call */
        top = maxabs_block(x, xkind, 0, n);
    } else {
        maxabs_args M = {.x = x, .xkind = xkind, .n = n};
        atomic_init(&M.top, 0);
        dk_pool_run(nthreads, nblocks_of(n), maxabs_item, &M);
        top = atomic_load(&M.top);
    }
    if (xkind == DK_F64) {
        double d;
        memcpy(&d, &top, 8);
        return d;
    }
    uint32_t u = xkind == DK_F32 ? (uint32_t)top : (uint32_t)top << 16;
    return dk_f32_to_f64(dk_bitsf(u)); /* exact, whatever the MXCSR */
}
