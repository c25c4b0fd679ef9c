/* dk_convert.h - conversion kernels (per tier) and their baseline drivers. */
#ifndef DK_CONVERT_H
#define DK_CONVERT_H

#include "dk_common.h"
#include "dk_format.h"

/* Bytes per code: 1 (8-bit formats), 2 (16-bit), 4 (FP32, stored as float32). */
DK_INLINE int dk_code_width(const dk_format *f)
{
    int nbits = f->is_signed + f->ebits + f->mbits;
    return nbits <= 8 ? 1 : nbits <= 16 ? 2 : 4;
}

/* Code i of a buffer of codes `width` bytes wide. */
DK_INLINE uint32_t dk_load_code(const void *p, int64_t i, int width)
{
    if (width == 1) return ((const uint8_t *)p)[i];
    if (width == 2) return ((const uint16_t *)p)[i];
    return ((const uint32_t *)p)[i];
}
DK_INLINE void dk_store_code(void *p, int64_t i, uint32_t c, int width)
{
    if (width == 1) ((uint8_t *)p)[i] = (uint8_t)c;
    else if (width == 2) ((uint16_t *)p)[i] = (uint16_t)c;
    else ((uint32_t *)p)[i] = c;
}

/* Element i of op on code arrays (the scalar semantics of SPEC section 4, dk_format.h):
 * decode, exact result as (s, t), one rounding; ORs DK_FL_* bits into *fl. */
DK_INLINE uint32_t dk_arith_elem(int op, const void *a, const void *b, const void *c, int64_t i,
                                 const dk_format *f, int mode, uint64_t seed, unsigned *fl)
{
    const int width = dk_code_width(f);
    uint32_t ca = dk_load_code(a, i, width), cb = dk_load_code(b, i, width);
    uint32_t cc = op == DK_OP_FMA ? dk_load_code(c, i, width) : 0u;
    if (dk_is_subnormal_code(ca, f) || dk_is_subnormal_code(cb, f) ||
        (op == DK_OP_FMA && dk_is_subnormal_code(cc, f)))
        *fl |= DK_FL_DENORMAL;
    double s, t;
    dk_exact_op(op, dk_decode(ca, f), dk_decode(cb, f), op == DK_OP_FMA ? dk_decode(cc, f) : 0.0,
                &s, &t);
    uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)i) : 0u;
    return dk_round(s, t, f, mode, r, fl);
}

/* Tier kernels over one contiguous block. index0 is the flat index of x[0] (it selects
 * the random numbers of stochastic rounding). They compute no flags. */
#define DK_DECLARE_CONVERT(tier)                                                               \
    void dk_quantize_f32_##tier(const float *x, void *out, int64_t n, const dk_format *f,     \
                                int mode, uint64_t seed, int64_t index0);                       \
    void dk_dequantize_f32_##tier(const void *codes, float *out, int64_t n, const dk_format *f); \
    void dk_fake_quantize_f32_##tier(const float *x, float *out, int64_t n, const dk_format *f,  \
                                     int mode, uint64_t seed, int64_t index0);
DK_DECLARE_CONVERT(generic)
DK_DECLARE_CONVERT(avx2)
DK_DECLARE_CONVERT(avx512bf16)

/* Arithmetic tier kernels (include/dk_arith_body.h) over elements [i0, i0 + n) of the code
 * arrays (global indices: they select the random numbers); add the flag counts of these
 * elements to cnt (invalid, denormal, overflow, underflow; cnt NULL: not counted). Formats
 * with more than 11 significant bits (FP32) take the scalar semantics. The caller sets the
 * MXCSR default. */
#define DK_DECLARE_ARITH(tier)                                                                 \
    void dk_arith_block_##tier(int op, const void *a, const void *b, const void *c, void *out,  \
                               int64_t i0, int64_t n, const dk_format *f, int mode,             \
                               uint64_t seed, int64_t cnt[4]);
DK_DECLARE_ARITH(generic)
DK_DECLARE_ARITH(avx2)
DK_DECLARE_ARITH(avx512bf16)

/* Source/destination element kinds of the drivers. */
enum dk_kind { DK_F32 = 0, DK_F64 = 1, DK_BF16IN = 2 };

/* Drivers (csrc/convert_driver.c): contiguous arrays of n elements, OpenMP over blocks,
 * bit-identical for any nthreads. flags may be NULL (then the SIMD tier runs). */
int dk_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                uint64_t seed, dk_flags *flags, int isa, int nthreads);
int dk_dequantize(const void *codes, void *out, int okind, int64_t n, const dk_format *f, int isa,
                  int nthreads);
/* dequantize(quantize(x)) into out, of x's kind (DK_BF16IN: BF16 bits out). */
int dk_fake_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                     uint64_t seed, int isa, int nthreads);
/* Elementwise op (enum dk_op) on code arrays of format f (c only for FMA), by the SIMD
 * kernel of tier isa (lanes it cannot take exactly go through the scalar semantics). Runs
 * under the default MXCSR (round to nearest, no FTZ/DAZ), the caller's restored after.
 * flags may be NULL: then no flag is counted, and nearest BF16 skips the operand tests
 * that only the flags need (the codes are the same). */
int dk_arith(int op, const void *a, const void *b, const void *c, void *out, int64_t n,
             const dk_format *f, int mode, uint64_t seed, dk_flags *flags, int isa, int nthreads);
/* Test only (tests/test_arith_simd.py): dk_arith on one thread with the calling thread's
 * MXCSR set to csr for the call; *csr_after is the MXCSR seen right after it, then the
 * caller's is restored. Returns -1 where there is no MXCSR (not x86). */
int dk_arith_test_under_mxcsr(unsigned csr, int op, const void *a, const void *b, const void *c,
                              void *out, int64_t n, const dk_format *f, int mode, uint64_t seed,
                              dk_flags *flags, int isa, unsigned *csr_after);
/* out[i] = table[a[i] << 8 | b[i]] for n 8-bit codes (table: 65,536 codes, the result of an
 * operation on every pair); out may be a or b (in place). */
int dk_lut2(const void *table, const void *a, const void *b, void *out, int64_t n, int nthreads);
/* max |x| over n elements of kind xkind (DK_F32, DK_F64, DK_BF16IN) as a double, exact;
 * NaN if any element is NaN (Inf if the largest is infinite). One pass, integer compares. */
double dk_maxabs(const void *x, int xkind, int64_t n, int nthreads);

#endif
