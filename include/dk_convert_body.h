/* dk_convert_body.h - FP32 <-> format conversion kernels, written once with GCC vector
 * extensions and compiled once per SIMD tier (csrc/<tier>/convert.c sets DK_TIER and
 * DK_VL, the number of 32-bit lanes: 8 for avx2, 16 for avx512bf16).
 *
 * The algorithm works on FP32 bit patterns with integer operations only (so it never
 * depends on MXCSR's FTZ/DAZ or rounding mode) and must agree bit for bit with the scalar
 * semantics of dk_format.h, which also handles the tails and the rare lanes (stochastic
 * rounding inside the Tesla subnormal gap). */
#include <string.h>

#include "dk_convert.h"
#include "dk_format.h"

#ifndef DK_TIER
#error "define DK_TIER (the function-name suffix) and DK_VL before including this body"
#endif

#define DK_CAT_(a, b) a##_##b
#define DK_CAT(a, b) DK_CAT_(a, b)
#define DK_FN(name) DK_CAT(name, DK_TIER)

typedef int32_t vi __attribute__((vector_size(DK_VL * 4)));
typedef uint32_t vu __attribute__((vector_size(DK_VL * 4)));
typedef float vf __attribute__((vector_size(DK_VL * 4)));
typedef uint64_t vq __attribute__((vector_size(DK_VL * 4)));           /* DK_VL/2 lanes */
typedef uint32_t vh __attribute__((vector_size(DK_VL * 2)));           /* DK_VL/2 lanes */
typedef uint8_t vb __attribute__((vector_size(DK_VL), aligned(1)));
typedef uint16_t vw __attribute__((vector_size(DK_VL * 2), aligned(2)));

#define VSEL(mask, a, b) (((a) & (vi)(mask)) | ((b) & ~(vi)(mask)))
#define VMAX(a, b) VSEL((a) > (b), a, b)
#define VMIN(a, b) VSEL((a) < (b), a, b)

/* The DK_VL random numbers of elements i0 .. i0 + DK_VL - 1 (SPEC's SplitMix64). */
static inline vu dk_random_block(uint64_t seed, uint64_t i0)
{
    vq lo, hi;
    for (int j = 0; j < DK_VL / 2; j++) {
        lo[j] = seed + (i0 + (uint64_t)j + 1u) * 0x9E3779B97F4A7C15ull;
        hi[j] = seed + (i0 + (uint64_t)(j + DK_VL / 2) + 1u) * 0x9E3779B97F4A7C15ull;
    }
    lo = (lo ^ (lo >> 30)) * 0xBF58476D1CE4E5B9ull;
    hi = (hi ^ (hi >> 30)) * 0xBF58476D1CE4E5B9ull;
    lo = (lo ^ (lo >> 27)) * 0x94D049BB133111EBull;
    hi = (hi ^ (hi >> 27)) * 0x94D049BB133111EBull;
    lo ^= lo >> 31;
    hi ^= hi >> 31;
    vh l = __builtin_convertvector(lo >> 32, vh), h = __builtin_convertvector(hi >> 32, vh);
#if DK_VL == 16
    return (vu)__builtin_shufflevector(l, h, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    return (vu)__builtin_shufflevector(l, h, 0, 1, 2, 3, 4, 5, 6, 7);
#endif
}

/* Constants of one (format, mode) pair, hoisted out of the loop. */
typedef struct {
    int m, qmin, tesla, flush, inf_nan, is_signed, signpos;
    int32_t maxc, infc, nanc, mid_bits, maxsub_bits, minnorm_bits;
} dk_qconst;

static inline dk_qconst dk_qconst_of(const dk_format *f)
{
    dk_qconst k;
    k.m = f->mbits;
    k.qmin = dk_qmin(f);
    k.tesla = f->sub == DK_SUB_TESLA;
    k.flush = f->sub == DK_SUB_FLUSH;
    k.inf_nan = f->has_inf_nan;
    k.is_signed = f->is_signed;
    k.signpos = f->ebits + f->mbits;
    k.maxc = (int32_t)dk_max_code(f);
    k.infc = (int32_t)((dk_emax_field(f) + 1u) << f->mbits);
    k.nanc = (int32_t)f->nan_code;
    /* Tesla gap edges as FP32 bits (all are normal FP32 values for bias <= 63). */
    double maxsub = (double)((1u << k.m) - 1u) * dk_pow2(-f->bias - k.m);
    double minnorm = dk_pow2(1 - f->bias);
    k.maxsub_bits = (int32_t)dk_fbits((float)maxsub);
    k.minnorm_bits = (int32_t)dk_fbits((float)minnorm);
    k.mid_bits = (int32_t)dk_fbits((float)(0.5 * (maxsub + minnorm)));
    return k;
}

/* Codes (as 32-bit lanes) of DK_VL FP32 values u; r: random numbers (stochastic only). */
static inline vi dk_quant_vec(vi u, vu r, const dk_qconst *k, int mode)
{
    const int m = k->m;
    vi a = u & 0x7FFFFFFF;
    vi ex = a >> 23;
    vi sig = (a & 0x7FFFFF) | VSEL(ex != 0, (vi){} + 0x800000, (vi){});
    vi exu = VMAX(ex, (vi){} + 1);
    vi qe = VMAX(exu - (127 + m), (vi){} + k->qmin);
    vi shift = qe - exu + 150;                 /* >= 23 - m */
    vi sh = VMIN(shift, (vi){} + 31);
    vi n;
    if (mode == DK_NEAREST) {
        vi half = ((vi){} + 1) << (sh - 1);
        n = (sig + half - 1 + ((sig >> sh) & 1)) >> sh;
    } else if (mode == DK_TOWARD_ZERO) {
        n = sig >> sh;
    } else {
        vu rem = (vu)(sig & ((((vi){} + 1) << sh) - 1));
        vu fl = (vu)VSEL(shift <= 32, (vi)(rem << (vu)VMAX(32 - shift, (vi){})),
                     (vi)((vu)sig >> (vu)VMIN(VMAX(shift - 32, (vi){}), (vi){} + 31)));
        vu sum = fl + r;
        vi carry = (vi)(sum < fl);              /* -1 where f + r >= 2^32 */
        n = (sig >> sh) - carry;
    }
    vi code = ((qe - k->qmin) << m) + n;
    vi one = (vi){} + (1 << m);
    if (k->tesla) {
        vi ingap = (code >= one) & (code < (one << 1));
        vi gapval = (mode == DK_NEAREST) ? VSEL(a >= k->mid_bits, one, one - 1) : one - 1;
        code = VSEL(code >= (one << 1), code - one, code);
        code = VSEL(ingap, gapval, code);
    } else if (k->flush) {
        code = VSEL(code < one, (vi){}, code);
    }
    vi ovf = code > k->maxc;
    if (k->inf_nan && mode != DK_TOWARD_ZERO)
        code = VSEL(ovf, (vi){} + k->infc, code);
    else
        code = VSEL(ovf, (vi){} + k->maxc, code);
    vi isinf = a == 0x7F800000;
    code = VSEL(isinf, (vi){} + (k->inf_nan ? k->infc : k->maxc), code);
    vi sgn = (vi)((vu)u >> 31);
    if (k->is_signed) code |= sgn << k->signpos;
    vi isnan = a > 0x7F800000;
    if (k->inf_nan) {
        vi nanv = (vi){} + k->nanc;
        if (k->is_signed) nanv |= sgn << k->signpos;
        code = VSEL(isnan, nanv, code);
    } else {
        code = VSEL(isnan, (vi){} + k->maxc, code);
    }
    if (!k->is_signed) /* negative non-zero -> NaN (invalid); -0 -> +0 */
        code = VSEL((sgn != 0) & (a != 0) & ~isnan, (vi){} + k->nanc, code);
    return code;
}

static inline void dk_store_codes(void *out, int64_t i, vi code, int width)
{
    if (width == 1) {
        vb c = __builtin_convertvector(code, vb);
        memcpy((uint8_t *)out + i, &c, sizeof c);
    } else if (width == 2) {
        vw c = __builtin_convertvector(code, vw);
        memcpy((uint16_t *)out + i, &c, sizeof c);
    } else {
        memcpy((uint32_t *)out + i, &code, sizeof code);
    }
}

static inline void dk_store_scalar(void *out, int64_t i, uint32_t code, int width)
{
    if (width == 1) ((uint8_t *)out)[i] = (uint8_t)code;
    else if (width == 2) ((uint16_t *)out)[i] = (uint16_t)code;
    else ((uint32_t *)out)[i] = code;
}

void DK_FN(dk_quantize_f32)(const float *x, void *out, int64_t n, const dk_format *f, int mode,
                            uint64_t seed, int64_t index0)
{
    const int width = dk_code_width(f);
    const int bf16 = f->ebits == 8 && f->mbits == 7;
    dk_qconst k = dk_qconst_of(f);
    int64_t i = 0;
    if (bf16 && mode == DK_NEAREST) {
        for (; i + DK_VL <= n; i += DK_VL) {
            vi u;
            memcpy(&u, x + i, sizeof u);
            vi a = u & 0x7FFFFFFF;
            vi rne = (vi)(((vu)u + 0x7FFFu + (((vu)u >> 16) & 1u)) >> 16);
            vi nanv = (vi)(((vu)u >> 16) & 0x8000u) | 0x7FC0;
            dk_store_codes(out, i, VSEL(a > 0x7F800000, nanv, rne), 2);
        }
    } else if (mode == DK_STOCHASTIC) {
        for (; i + DK_VL <= n; i += DK_VL) {
            vi u;
            memcpy(&u, x + i, sizeof u);
            vu r = dk_random_block(seed, (uint64_t)(index0 + i));
            vi code = dk_quant_vec(u, r, &k, mode);
            dk_store_codes(out, i, code, width);
            if (k.tesla) { /* lanes inside the subnormal gap: scalar semantics */
                vi a = u & 0x7FFFFFFF;
                vi gap = (a > k.maxsub_bits) & (a < k.minnorm_bits);
                for (int j = 0; j < DK_VL; j++)
                    if (gap[j]) {
                        unsigned fl = 0;
                        dk_store_scalar(out, i + j, dk_round((double)x[i + j], 0.0, f, mode, r[j], &fl), width);
                    }
            }
        }
    } else {
        for (; i + DK_VL <= n; i += DK_VL) {
            vi u;
            memcpy(&u, x + i, sizeof u);
            dk_store_codes(out, i, dk_quant_vec(u, (vu){}, &k, mode), width);
        }
    }
    for (; i < n; i++) {
        unsigned fl = 0;
        uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)(index0 + i)) : 0u;
        dk_store_scalar(out, i, dk_round((double)x[i], 0.0, f, mode, r, &fl), width);
    }
}

void DK_FN(dk_dequantize_f32)(const void *codes, float *out, int64_t n, const dk_format *f)
{
    const int width = dk_code_width(f);
    const int m = f->mbits;
    const int32_t emask = (1 << f->ebits) - 1, mmask = (1 << m) - 1;
    const int bf16 = f->ebits == 8 && m == 7;
    const vf scale = (vf){} + (float)dk_pow2(dk_qmin(f));
    int64_t i = 0;
    if (width == 4) { /* FP32 codes are the values */
        memcpy(out, codes, (size_t)n * 4);
        return;
    }
    for (; i + DK_VL <= n; i += DK_VL) {
        vi c;
        if (width == 1) {
            vb b;
            memcpy(&b, (const uint8_t *)codes + i, sizeof b);
            c = __builtin_convertvector(b, vi);
        } else {
            vw w;
            memcpy(&w, (const uint16_t *)codes + i, sizeof w);
            c = __builtin_convertvector(w, vi);
        }
        vi bits;
        if (bf16) {
            bits = c << 16;
        } else {
            vi E = (c >> m) & emask, M = c & mmask;
            vi normal = ((E + (127 - f->bias)) << 23) | (M << (23 - m));
            vi sub = (f->sub == DK_SUB_FLUSH) ? (vi){} : (vi)(__builtin_convertvector(M, vf) * scale);
            bits = VSEL(E == 0, sub, normal);
            if (f->has_inf_nan)
                bits = VSEL(E == emask, VSEL(M != 0, (vi){} + 0x7FC00000, (vi){} + 0x7F800000), bits);
            if (f->is_signed) bits |= ((c >> (f->ebits + m)) & 1) << 31;
        }
        memcpy(out + i, &bits, sizeof bits);
    }
    for (; i < n; i++) {
        uint32_t c = width == 1 ? ((const uint8_t *)codes)[i] : ((const uint16_t *)codes)[i];
        uint32_t b = dk_decode_f32bits(c, f);
        memcpy(out + i, &b, 4);
    }
}
