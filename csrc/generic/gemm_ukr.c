/* gemm_ukr.c (generic tier) - portable scalar micro-kernel, 6 x 16, FP32 split layout.
 *
 * The semantics of every tier (dk_gemm.h): each step is a fused multiply-add with the
 * result flushed to zero below 2^-126 (FTZ; tininess after rounding, as x86), inputs
 * already DAZ'd by the packing. Emulated here without touching MXCSR and without an
 * FMA instruction: the product of two BF16 values is exact in FP32 whenever it is normal,
 * so acc + a*b then rounds once, as a fused step; the rare products that underflow or
 * overflow FP32 go through an exact double-precision path. */
#include "dk_gemm.h"

#include <float.h>
#include <math.h>
#include <string.h>

static uint64_t dbits(double x) { uint64_t u; memcpy(&u, &x, 8); return u; }

/* Exact fused step for finite non-zero a, b whose FP32 product is not exact. */
static float step_slow(float acc, float a, float b)
{
    double p = (double)a * (double)b; /* exact: 8 + 8 significant bits */
    if (acc == 0.0f) {
        if (fabs(p) < (double)FLT_MIN) return copysignf(0.0f, (float)p);
        return (float)p; /* 16 bits: exact, or +-Inf on overflow */
    }
    double x = (double)acc;
    double s = x + p; /* TwoSum: s + e == x + p exactly */
    double bb = s - x;
    double e = (x - (s - bb)) + (p - bb);
    if (e != 0.0 && !(dbits(s) & 1)) s = nextafter(s, e > 0 ? INFINITY : -INFINITY); /* round to odd */
    if (fabs(s) < 0x1p-125) {
        /* round to 24 bits with an unbounded exponent, then flush what is tiny */
        float f = (float)(s * 0x1p100);
        if (fabsf(f) < 0x1p-26f) return (float)copysign(0.0, s);
        return f * 0x1p-100f;
    }
    return (float)s; /* round-to-odd then RNE to 24 bits = correct rounding */
}

static inline float step(float acc, float a, float b)
{
    float p = a * b;
    float ap = fabsf(p);
    if ((ap >= FLT_MIN && ap <= FLT_MAX) || a == 0.0f || b == 0.0f || !isfinite(a) || !isfinite(b)) {
        float r = acc + p;
        if (r != 0.0f && fabsf(r) < FLT_MIN) r = copysignf(0.0f, r);
        return r;
    }
    /* a, b finite and nonzero, their FP32 product tiny or overflowed: the exact product is
     * finite, so an infinite (or NaN) acc is the result (acc + a*b in float would give
     * Inf - Inf = NaN for a product that overflowed FP32 with the other sign) */
    if (!isfinite(acc)) return acc;
    return step_slow(acc, a, b);
}

/* F(x + y) for FP32 values: the sum of two normal (or zero) FP32 values is exact whenever
 * it is below 2^-126 in magnitude (both are multiples of 2^-149), so rounding once with
 * gradual underflow equals rounding with an unbounded exponent; then flush what is tiny.
 * A subnormal input is read as a zero of its sign (DAZ; the kernels never produce one). */
static inline float add_ftz(float x, float y)
{
    if (x != 0.0f && fabsf(x) < FLT_MIN) x = copysignf(0.0f, x);
    if (y != 0.0f && fabsf(y) < FLT_MIN) y = copysignf(0.0f, y);
    float r = x + y;
    if (r != 0.0f && fabsf(r) < FLT_MIN) r = copysignf(0.0f, r);
    return r;
}

float dk_gemm_step_generic(float acc, float a, float b) { return step(acc, a, b); }
float dk_gemm_add_generic(float x, float y) { return add_ftz(x, y); }

#define MR DK_GEMM_SPLIT_MR
#define NR DK_GEMM_SPLIT_NR

void dk_gemm_ukr_generic(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                         int flags, float scale)
{
    const float *a = (const float *)ap, *b = (const float *)bp;
    float acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = (flags & DK_UKR_LOAD) ? c[i * ldc + j] : 0.0f;
    for (int64_t p = 0; p < kp; p++) {
        const float *ao = a + p * 2 * MR, *bo = b + p * 2 * NR;
        for (int h = 0; h < 2; h++) /* h = 0: odd k, h = 1: even k */
            for (int i = 0; i < MR; i++) {
                float av = ao[h * MR + i];
                for (int j = 0; j < NR; j++) acc[i][j] = step(acc[i][j], av, bo[h * NR + j]);
            }
    }
    if (flags & DK_UKR_LAST) {
        const uint32_t qnan = 0x7FC00000u;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) {
                float v = acc[i][j] * scale;
                if (v != v) memcpy(&v, &qnan, 4);
                c[i * ldc + j] = v;
            }
    } else {
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) c[i * ldc + j] = acc[i][j];
    }
}

/* The amx order (dk_gemm.h): per block of 16 pairs an E chain over the even elements and
 * an O chain over the odd ones, each from +0, then T = E + O and C = C + T. A partial last
 * block ends with its padded steps, fma(+0, +0, x) = x + 0, which only turns a -0 into +0:
 * done once on T (T = -0 needs E = O = -0, and a padded O step would have made O +0). */
void dk_gemm_ukr_amx_generic(int64_t kp, const void *ap, const void *bp, float *c, int64_t ldc,
                             int flags, float scale)
{
    const float *a = (const float *)ap, *b = (const float *)bp;
    float acc[MR][NR], e[MR][NR], o[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = (flags & DK_UKR_LOAD) ? c[i * ldc + j] : 0.0f;
    for (int64_t p0 = 0; p0 < kp; p0 += DK_GEMM_AMX_BLOCK_PAIRS) {
        int64_t np = kp - p0 < DK_GEMM_AMX_BLOCK_PAIRS ? kp - p0 : DK_GEMM_AMX_BLOCK_PAIRS;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) e[i][j] = o[i][j] = 0.0f;
        for (int64_t p = p0; p < p0 + np; p++) {
            const float *ao = a + p * 2 * MR, *bo = b + p * 2 * NR; /* odd k, then even k */
            for (int i = 0; i < MR; i++) {
                float aod = ao[i], aev = ao[MR + i];
                for (int j = 0; j < NR; j++) {
                    e[i][j] = step(e[i][j], aev, bo[NR + j]);
                    o[i][j] = step(o[i][j], aod, bo[j]);
                }
            }
        }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) {
                float t = add_ftz(e[i][j], o[i][j]);
                if (np < DK_GEMM_AMX_BLOCK_PAIRS) t = add_ftz(t, 0.0f);
                acc[i][j] = add_ftz(acc[i][j], t);
            }
    }
    if (flags & DK_UKR_LAST) {
        const uint32_t qnan = 0x7FC00000u;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) {
                float v = acc[i][j] * scale;
                if (v != v) memcpy(&v, &qnan, 4);
                c[i * ldc + j] = v;
            }
    } else {
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) c[i * ldc + j] = acc[i][j];
    }
}
