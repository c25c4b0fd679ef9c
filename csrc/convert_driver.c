/* convert_driver.c - baseline drivers for conversion and arithmetic: split the work into
 * fixed blocks (so results never depend on the thread count), run the blocks on OpenMP
 * threads, call the tier kernel chosen by the caller, and count exception flags.
 *
 * Flags, float64 sources and arithmetic take the scalar semantics of dk_format.h on every
 * tier; the FP32/BF16 conversions without flags take the tier's SIMD kernels. */
#include <string.h>

#include "dk_convert.h"

#define DK_BLOCK 32768 /* elements per parallel block */
#define DK_CHUNK 2048  /* elements per stack buffer inside a block */

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

int dk_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                uint64_t seed, dk_flags *flags, int isa, int nthreads)
{
    const int width = dk_code_width(f);
    const int64_t nblocks = (n + DK_BLOCK - 1) / DK_BLOCK;
    const dk_q_fn q = pick_q(isa);
    const int scalar = flags != NULL || xkind == DK_F64;
    int64_t inv = 0, den = 0, ovf = 0, und = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : inv, den, ovf, und) \
    if (nblocks > 1 && nthreads > 1)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t i0 = b * DK_BLOCK, len = n - i0 < DK_BLOCK ? n - i0 : DK_BLOCK;
        if (scalar) {
            int64_t c[4] = {0, 0, 0, 0};
            quantize_scalar(x, xkind, out, i0, len, f, mode, seed, c);
            inv += c[0];
            den += c[1];
            ovf += c[2];
            und += c[3];
        } else {
            for (int64_t s = 0; s < len; s += DK_CHUNK) {
                int64_t m = len - s < DK_CHUNK ? len - s : DK_CHUNK;
                quantize_chunk(q, x, xkind, (char *)out + (i0 + s) * width, i0 + s, m, f, mode, seed);
            }
        }
    }
    store_flags(flags, inv, den, ovf, und);
    return DK_OK;
}

int dk_dequantize(const void *codes, void *out, int okind, int64_t n, const dk_format *f, int isa,
                  int nthreads)
{
    const int width = dk_code_width(f);
    const int64_t nblocks = (n + DK_BLOCK - 1) / DK_BLOCK;
    const dk_d_fn d = pick_d(isa);
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nblocks > 1 && nthreads > 1)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t i0 = b * DK_BLOCK, len = n - i0 < DK_BLOCK ? n - i0 : DK_BLOCK;
        const char *src = (const char *)codes + i0 * width;
        if (okind == DK_F32) {
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
    return DK_OK;
}

int dk_fake_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                     uint64_t seed, int isa, int nthreads)
{
    const int width = dk_code_width(f);
    const int64_t nblocks = (n + DK_BLOCK - 1) / DK_BLOCK;
    const dk_q_fn q = pick_q(isa);
    const dk_d_fn d = pick_d(isa);
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nblocks > 1 && nthreads > 1)
    for (int64_t b = 0; b < nblocks; b++) {
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
    return DK_OK;
}

int dk_arith(int op, const void *a, const void *b, const void *c, void *out, int64_t n,
             const dk_format *f, int mode, uint64_t seed, dk_flags *flags, int nthreads)
{
    const int width = dk_code_width(f);
    const int64_t nblocks = (n + DK_BLOCK - 1) / DK_BLOCK;
    int64_t inv = 0, den = 0, ovf = 0, und = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : inv, den, ovf, und) \
    if (nblocks > 1 && nthreads > 1)
    for (int64_t blk = 0; blk < nblocks; blk++) {
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
    }
    store_flags(flags, inv, den, ovf, und);
    return DK_OK;
}
