/* convert_driver.c - baseline drivers for conversion and arithmetic: split the work into
 * fixed blocks (so results never depend on the thread count), run the blocks on the pool's
 * threads (dk_pool.h), call the tier kernel chosen by the caller, and count exception flags.
 * Calls below DK_PAR_MIN elements run on the calling thread only.
 *
 * Flags, float64 sources and arithmetic take the scalar semantics of dk_format.h on every
 * tier; the FP32/BF16 conversions without flags take the tier's SIMD kernels. */
#include <stdatomic.h>
#include <string.h>

#include "dk_convert.h"
#include "dk_pool.h"

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
    int64_t n;
    const dk_format *f;
    uint64_t seed;
    dk_q_fn q;
    dk_d_fn d;
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
    uint32_t codes[DK_CHUNK];
    float vals[DK_CHUNK];
    for (int64_t s = 0; s < len; s += DK_CHUNK) {
        int64_t m = len - s < DK_CHUNK ? len - s : DK_CHUNK, at = i0 + s;
        quantize_chunk(q, x, xkind, codes, at, m, f, mode, seed);
        if (xkind == DK_F64) {
            for (int64_t j = 0; j < m; j++)
                ((double *)out)[at + j] = dk_decode(dk_load_code(codes, j, width), f);
        } else if (xkind == DK_F32) {
            d(codes, (float *)out + at, m, f);
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
                   .n = n, .f = f, .seed = seed, .q = pick_q(isa), .d = pick_d(isa)};
    dk_pool_run(threads_for(n, nthreads), nblocks_of(n), fake_quantize_block, &A);
    return DK_OK;
}

static void arith_block(void *arg, int64_t blk, int slot)
{
    call_args *A = arg;
    (void)slot;
    const void *a = A->x, *b = A->b, *c = A->c;
    void *out = A->out;
    const int64_t n = A->n;
    const int op = A->op, mode = A->mode, width = A->width;
    const dk_format *f = A->f;
    const uint64_t seed = A->seed;
    int64_t inv = 0, den = 0, ovf = 0, und = 0;
    int64_t i0 = blk * DK_BLOCK, end = n - i0 < DK_BLOCK ? n : i0 + DK_BLOCK;
    for (int64_t i = i0; i < end; i++) {
        uint32_t ca = dk_load_code(a, i, width), cb = dk_load_code(b, i, width);
        uint32_t cc = op == DK_OP_FMA ? dk_load_code(c, i, width) : 0u;
        unsigned fl = 0;
        if (dk_is_subnormal_code(ca, f) || dk_is_subnormal_code(cb, f) ||
            (op == DK_OP_FMA && dk_is_subnormal_code(cc, f)))
            fl |= DK_FL_DENORMAL;
        double s, t;
        dk_exact_op(op, dk_decode(ca, f), dk_decode(cb, f), op == DK_OP_FMA ? dk_decode(cc, f) : 0.0,
                    &s, &t);
        uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)i) : 0u;
        dk_store_code(out, i, dk_round(s, t, f, mode, r, &fl), width);
        count(fl, &inv, &den, &ovf, &und);
    }
    add_counts(&A->sums, inv, den, ovf, und);
}

int dk_arith(int op, const void *a, const void *b, const void *c, void *out, int64_t n,
             const dk_format *f, int mode, uint64_t seed, dk_flags *flags, int nthreads)
{
    call_args A = {.x = a, .b = b, .c = c, .out = out, .op = op, .mode = mode,
                   .width = dk_code_width(f), .n = n, .f = f, .seed = seed};
    dk_pool_run(threads_for(n, nthreads), nblocks_of(n), arith_block, &A);
    store_sums(flags, &A.sums);
    return DK_OK;
}
