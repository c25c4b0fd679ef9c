/* dk_format.h - the number formats and their scalar semantics (SPEC sections 1-4).
 *
 * These static inline functions ARE the semantics: every SIMD tier must agree with them
 * bit for bit. They favour clarity over speed; the tiers carry the fast paths.
 *
 * A value to be rounded is given as an exact pair (s, t): the exact value is s + t, where
 * s is the double nearest to it and |t| <= ulp(s)/2 (t = 0 when the value is itself a
 * double, as for float32/float64 inputs; arithmetic gets t from an error-free TwoSum).
 * Only the sign of t matters ("sticky"), which is why one double rounding step suffices.
 */
#ifndef DK_FORMAT_H
#define DK_FORMAT_H

#include <math.h>
#include <string.h>

#include "dk_common.h"

enum dk_sub { DK_SUB_TESLA = 0, DK_SUB_IEEE = 1, DK_SUB_FLUSH = 2 };
enum dk_round { DK_NEAREST = 0, DK_STOCHASTIC = 1, DK_TOWARD_ZERO = 2 };
enum { DK_FL_INVALID = 1, DK_FL_OVERFLOW = 2, DK_FL_UNDERFLOW = 4, DK_FL_DENORMAL = 8 };

/* A format: bit layout, bias, subnormal rule. nbits = signed + ebits + mbits <= 32. */
typedef struct {
    int ebits, mbits, bias;
    int is_signed;     /* a sign bit above the exponent field */
    int sub;           /* enum dk_sub */
    int has_inf_nan;   /* the all-ones exponent encodes Inf (M == 0) and NaN */
    uint32_t nan_code; /* canonical positive quiet NaN (formats with NaN) */
} dk_format;

DK_INLINE uint32_t dk_emax_field(const dk_format *f)
{
    uint32_t top = (1u << f->ebits) - 1u;
    return f->has_inf_nan ? top - 1u : top;
}
DK_INLINE uint32_t dk_max_code(const dk_format *f)
{
    return (dk_emax_field(f) << f->mbits) | ((1u << f->mbits) - 1u);
}
DK_INLINE uint32_t dk_sign_bit(const dk_format *f)
{
    return f->is_signed ? 1u << (f->ebits + f->mbits) : 0u;
}
/* Exponent (power of two) of the quantum of the subnormal grid. */
DK_INLINE int dk_qmin(const dk_format *f)
{
    return (f->sub == DK_SUB_TESLA ? -f->bias : 1 - f->bias) - f->mbits;
}

/* 2^k as a double, for -1022 <= k <= 1023. */
DK_INLINE double dk_pow2(int k)
{
    uint64_t b = (uint64_t)(k + 1023) << 52;
    double d;
    memcpy(&d, &b, 8);
    return d;
}
DK_INLINE uint64_t dk_dbits(double d)
{
    uint64_t b;
    memcpy(&b, &d, 8);
    return b;
}
DK_INLINE uint32_t dk_fbits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}
DK_INLINE float dk_bitsf(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* SplitMix64's step (gamma) and its state after i+1 steps from `seed`: the state of the
 * element with flat index i (SPEC section 2). */
#define DK_SPLITMIX_GAMMA 0x9E3779B97F4A7C15ull
DK_INLINE uint64_t dk_splitmix_state(uint64_t seed, uint64_t i)
{
    return seed + (i + 1u) * DK_SPLITMIX_GAMMA;
}

/* SplitMix64 after i+1 steps from `seed`, top 32 bits (SPEC section 2). */
DK_INLINE uint32_t dk_splitmix32(uint64_t seed, uint64_t i)
{
    uint64_t z = dk_splitmix_state(seed, i);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}

/* ---- decode ------------------------------------------------------------------------- */

/* Is `code` a subnormal encoding (zero exponent field, non-zero mantissa)? */
DK_INLINE int dk_is_subnormal_code(uint32_t code, const dk_format *f)
{
    uint32_t mag = code & ((1u << (f->ebits + f->mbits)) - 1u);
    return mag != 0 && (mag >> f->mbits) == 0;
}

/* The exact value of a code, as double. NaN codes give a quiet NaN with the code's sign. */
DK_INLINE double dk_decode(uint32_t code, const dk_format *f)
{
    const int m = f->mbits;
    const uint32_t emask = (1u << f->ebits) - 1u, mmask = (1u << m) - 1u;
    uint32_t E = (code >> m) & emask, M = code & mmask;
    int neg = f->is_signed && ((code >> (f->ebits + m)) & 1u);
    double v;
    if (f->has_inf_nan && E == emask)
        v = M ? NAN : INFINITY;
    else if (E == 0)
        v = (f->sub == DK_SUB_FLUSH) ? 0.0 : (double)M * dk_pow2(dk_qmin(f));
    else
        v = (double)(M | (1u << m)) * dk_pow2((int)E - f->bias - m);
    return neg ? -v : v;
}

/* The FP32 bits of a code's value (exact: every format here decodes exactly to FP32).
 * BF16 keeps NaN payloads (a plain shift, as ml_dtypes); other NaNs become sign|0x7FC00000. */
DK_INLINE uint32_t dk_decode_f32bits(uint32_t code, const dk_format *f)
{
    if (f->ebits == 8 && f->mbits == 7) return code << 16; /* BF16 */
    if (f->ebits == 8 && f->mbits == 23) return code;      /* FP32 */
    double v = dk_decode(code, f);
    if (v != v) return (f->is_signed && ((code >> (f->ebits + f->mbits)) & 1u)) ? 0xFFC00000u : 0x7FC00000u;
    return dk_fbits((float)v);
}

/* ---- round ------------------------------------------------------------------------- */

/* floor(d * 2^shift / c) for a double d >= 0 given exactly, with c > 0 small; sets *exact to
 * whether the quotient has no remainder. Requires the quotient < 2^63. */
DK_INLINE uint64_t dk_floor_scaled_div(double d, int shift, uint64_t c, int *exact)
{
    if (d == 0.0) { *exact = 1; return 0; }
    int ex;
    double fr = frexp(d, &ex);                   /* d = fr * 2^ex, fr in [0.5, 1) */
    uint64_t N = (uint64_t)ldexp(fr, 53);        /* d = N * 2^(ex - 53), exactly */
    int k = ex - 53 + shift;                     /* d * 2^shift = N * 2^k */
    uint64_t X;
    int low = 0;
    if (k >= 0) {
        X = N << k;                              /* callers keep this below 2^63 */
    } else if (-k < 64) {
        X = N >> -k;
        low = (N & ((1ull << -k) - 1u)) != 0;
    } else {
        X = 0;
        low = 1;
    }
    *exact = !low && (X % c == 0);
    return X / c;
}

/* Round the exact value s + t (see top of file) into format f; returns the code and ORs
 * DK_FL_* bits into *fl. r is the 32-bit random number of stochastic rounding. */
DK_INLINE uint32_t dk_round(double s, double t, const dk_format *f, int mode, uint32_t r, unsigned *fl)
{
    const int m = f->mbits;
    const uint32_t sbit = dk_sign_bit(f);
    const uint32_t maxc = dk_max_code(f);
    const uint32_t inf_code = (dk_emax_field(f) + 1u) << m;

    if (s != s) { /* NaN */
        *fl |= DK_FL_INVALID;
        if (!f->has_inf_nan) return maxc; /* CFloat8/SHP: NaN -> +max (model choice) */
        if (!f->is_signed) return f->nan_code;
        return f->nan_code | (signbit(s) ? sbit : 0u);
    }
    int neg = signbit(s) != 0;
    if (!f->is_signed) {
        if (neg && s != 0.0) { *fl |= DK_FL_INVALID; return f->nan_code; }
        neg = 0; /* -0 -> +0 */
    }
    const uint32_t sign = neg ? sbit : 0u;
    double a = fabs(s), e = neg ? -t : t; /* exact magnitude: a + e */
    if (a == INFINITY) {
        if (f->has_inf_nan) return sign | inf_code;
        *fl |= DK_FL_OVERFLOW;
        return sign | maxc;
    }
    if (a == 0.0) return sign;

    const int qmin = dk_qmin(f);
    const double minnorm = dk_pow2(1 - f->bias);
    const double maxsub = (double)((1u << m) - 1u) * dk_pow2(-f->bias - m);
    double res; /* the chosen magnitude, on the (unbounded-exponent) grid */
    int exact = 0;

    int in_gap = f->sub == DK_SUB_TESLA &&
                 (a > maxsub || (a == maxsub && e > 0)) && (a < minnorm || (a == minnorm && e < 0));
    if (in_gap) {
        /* Between the largest subnormal and the smallest normal (SPEC section 2). */
        const double lo = maxsub, hi = minnorm;
        if (mode == DK_NEAREST) {
            double mid = 0.5 * (lo + hi); /* exact: m + 2 significant bits */
            res = (a > mid || (a == mid && e >= 0)) ? hi : lo;
        } else if (mode == DK_TOWARD_ZERO) {
            res = lo;
        } else {
            /* f = floor((a + e - lo) / (hi - lo) * 2^32), hi - lo = (2^m + 1) 2^(-b-m). */
            int ex_div;
            uint64_t q = dk_floor_scaled_div(a - lo, 32 + f->bias + m, (1ull << m) + 1u, &ex_div);
            if (ex_div && e < 0) q -= 1;
            res = (q + (uint64_t)r >= (1ull << 32)) ? hi : lo;
        }
    } else if (a < dk_pow2(qmin - 40)) {
        /* Far below half the smallest quantum: zero under every mode (stochastic's f is 0). */
        res = 0.0;
    } else {
        int ex;
        frexp(a, &ex);
        int E0 = ex - 1; /* a in [2^E0, 2^(E0+1)) */
        int qe = E0 - m > qmin ? E0 - m : qmin;
        double q = dk_pow2(qe);
        double scaled = a / q; /* exact: power-of-two scaling */
        double n = floor(scaled), frac = scaled - n;
        if (frac == 0.0 && e < 0) {
            /* The value lies just below the grid point a. */
            int qe_lo = qe; /* quantum of the grid just below a */
            if (a == dk_pow2(E0)) qe_lo = E0 - 1 - m > qmin ? E0 - 1 - m : qmin;
            double lo = a - dk_pow2(qe_lo);
            if (mode == DK_NEAREST) {
                res = a;
            } else if (mode == DK_TOWARD_ZERO) {
                res = lo;
            } else {
                /* f = 2^32 + floor(e / q_lo * 2^32): 2^32 - 1 unless the format is as wide as
                 * FP32, where e can reach several units of 2^-32 of the quantum. */
                int64_t down = (int64_t)floor(ldexp(e, 32 - qe_lo)); /* exact: in [-2^32, 0) */
                res = ((int64_t)r + down >= 0) ? a : lo;
            }
        } else {
            double lo = n * q, hi = (n + 1.0) * q;
            if (mode == DK_NEAREST) {
                int up;
                if (frac > 0.5) up = 1;
                else if (frac < 0.5) up = 0;
                else if (e != 0) up = e > 0;
                else up = fmod(n, 2.0) != 0.0;
                res = up ? hi : lo;
            } else if (mode == DK_TOWARD_ZERO) {
                res = lo;
            } else {
                /* f = floor((frac + e / q) * 2^32), exactly: T = frac * 2^32 and E = e / q * 2^32
                 * are exact doubles; T's fractional part is a multiple of 2^(m-20) and |E| is at
                 * most half of that, so floor(fractional part + E) is exact in double. */
                double T = ldexp(frac, 32), E = ldexp(e, 32 - qe), fT = floor(T);
                int64_t fi = (int64_t)fT + (int64_t)floor((T - fT) + E);
                res = (fi + (int64_t)r >= (1ll << 32)) ? hi : lo;
            }
        }
    }

    /* Overflow: the value rounded with an unbounded exponent exceeds max. */
    double maxval = (double)((2u << m) - 1u) * dk_pow2((int)dk_emax_field(f) - f->bias - m);
    if (res > maxval) {
        *fl |= DK_FL_OVERFLOW;
        if (f->has_inf_nan && mode != DK_TOWARD_ZERO) return sign | inf_code;
        return sign | maxc;
    }
    exact = (res == a && e == 0);

    /* Encode the grid value res. */
    uint32_t code;
    if (res < minnorm) {
        if (f->sub == DK_SUB_FLUSH && res != 0.0) {
            res = 0.0;
            exact = 0;
        }
        code = (uint32_t)(res / dk_pow2(qmin)); /* subnormal: M = res / quantum */
        if (!exact) *fl |= DK_FL_UNDERFLOW;
    } else {
        int ex;
        frexp(res, &ex);
        int E0 = ex - 1;
        uint32_t M = (uint32_t)(res / dk_pow2(E0 - m)) - (1u << m);
        code = ((uint32_t)(E0 + f->bias) << m) | M;
    }
    if (code == 0 && !f->is_signed) return 0u;
    return sign | code;
}

/* FP32 (as float) -> code, with the denormal flag of the source. */
/* FP32 -> double, exactly, whatever the caller's MXCSR: a DAZ setting (left by some
 * -ffast-math library) would read subnormal inputs of cvtss2sd as zero, so subnormals
 * are built from their integer mantissa. */
DK_INLINE double dk_f32_to_f64(float x)
{
    uint32_t u = dk_fbits(x);
    if ((u & 0x7F800000u) != 0 || (u & 0x007FFFFFu) == 0) return (double)x;
    double v = (double)(u & 0x007FFFFFu) * 0x1p-149; /* normal double: DAZ/FTZ do not apply */
    return (u >> 31) ? -v : v;
}

DK_INLINE uint32_t dk_round_f32(float x, const dk_format *f, int mode, uint32_t r, unsigned *fl)
{
    uint32_t u = dk_fbits(x);
    if ((u & 0x7F800000u) == 0 && (u & 0x007FFFFFu) != 0) *fl |= DK_FL_DENORMAL;
    return dk_round(dk_f32_to_f64(x), 0.0, f, mode, r, fl);
}

DK_INLINE uint32_t dk_round_f64(double x, const dk_format *f, int mode, uint32_t r, unsigned *fl)
{
    uint64_t u = dk_dbits(x);
    if ((u & 0x7FF0000000000000ull) == 0 && (u & 0x000FFFFFFFFFFFFFull) != 0) *fl |= DK_FL_DENORMAL;
    return dk_round(x, 0.0, f, mode, r, fl);
}

/* ---- arithmetic (SPEC section 4): exact result as (s, t), then one rounding ----------- */

enum dk_op { DK_OP_ADD = 0, DK_OP_SUB = 1, DK_OP_MUL = 2, DK_OP_FMA = 3 };

DK_INLINE void dk_two_sum(double a, double b, double *s, double *t)
{
    double x = a + b, bv = x - a, av = x - bv;
    *s = x;
    *t = (a - av) + (b - bv);
    if (x != x || x == INFINITY || x == -INFINITY) *t = 0.0;
}

/* Exact result of op on decoded operands (products of <= 24-bit significands are exact). */
DK_INLINE void dk_exact_op(int op, double a, double b, double c, double *s, double *t)
{
    switch (op) {
    case DK_OP_ADD: dk_two_sum(a, b, s, t); break;
    case DK_OP_SUB: dk_two_sum(a, -b, s, t); break;
    case DK_OP_MUL: *s = a * b; *t = 0.0; break;
    default: dk_two_sum(a * b, c, s, t); break;
    }
}

#endif
