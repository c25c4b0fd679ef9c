/* dk_convert_body.h - FP32 <-> format conversion kernels, written once with GCC vector
 * extensions and compiled once per SIMD tier (csrc/<tier>/convert.c sets DK_TIER and
 * DK_VL, the number of 32-bit lanes: 8 for avx2, 16 for avx512bf16).
 *
 * The algorithm works on FP32 bit patterns with integer operations only (so it never
 * depends on MXCSR's FTZ/DAZ or rounding mode) and must agree bit for bit with the scalar
 * semantics of dk_format.h, which also handles the tails and the rare lanes (stochastic
 * rounding inside the Tesla subnormal gap of an unsigned format: a signed one's is
 * dk_gap_stoch). DK_VL 4 (the baseline tier, SSE2) builds only the
 * helpers that the arithmetic body (dk_arith_body.h) shares: define DK_ARITH_ONLY. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
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
typedef int32_t vih __attribute__((vector_size(DK_VL * 2)));           /* DK_VL/2 lanes */
typedef double vd __attribute__((vector_size(DK_VL * 4)));             /* DK_VL/2 lanes */

/* Elements to prefetch ahead: the loop bodies are long, so without it too few cache
 * misses are in flight to stream from DRAM (measured: 4x slower on 64 MiB inputs). */
#define DK_PREFETCH 1024

#define VSEL(mask, a, b) (((a) & (vi)(mask)) | ((b) & ~(vi)(mask)))
#define VMAX(a, b) VSEL((a) > (b), a, b)
#define VMIN(a, b) VSEL((a) < (b), a, b)

/* SplitMix64 states (SPEC section 2) of DK_VL consecutive elements, in two halves. */
typedef struct { vq lo, hi; } dk_rng;

static inline dk_rng dk_rng_at(uint64_t seed, uint64_t i0)
{
    dk_rng g;
    for (int j = 0; j < DK_VL / 2; j++) {
        g.lo[j] = dk_splitmix_state(seed, i0 + (uint64_t)j);
        g.hi[j] = dk_splitmix_state(seed, i0 + (uint64_t)(j + DK_VL / 2));
    }
    return g;
}

/* The top halves h of the last SplitMix64 step's z for DK_VL elements whose states are lo
 * (first half) and hi (second half), then advances both by `step`. The random number is
 * r = (z ^ (z >> 31)) >> 32 = h ^ (h >> 31) (dk_splitmix_r), so r >> s == h >> s for any
 * s >= 1: a rounding that uses only r's top bits can skip the last xorshift. One
 * two-source permute gathers the top halves, so that xorshift runs once on the DK_VL
 * 32-bit lanes (not on both 64-bit halves: AVX-512 shifts have a single port). */
__attribute__((always_inline)) static inline vu dk_splitmix_hi(vq *state_lo, vq *state_hi, uint64_t step)
{
    vq lo = *state_lo, hi = *state_hi;
    *state_lo += step;
    *state_hi += step;
    lo = (lo ^ (lo >> 30)) * 0xBF58476D1CE4E5B9ull;
    hi = (hi ^ (hi >> 30)) * 0xBF58476D1CE4E5B9ull;
    lo = (lo ^ (lo >> 27)) * 0x94D049BB133111EBull;
    hi = (hi ^ (hi >> 27)) * 0x94D049BB133111EBull;
    const vu l = (vu)lo, h = (vu)hi;
#if DK_VL == 16
    return __builtin_shufflevector(l, h, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#elif DK_VL == 8
    return __builtin_shufflevector(l, h, 1, 3, 5, 7, 9, 11, 13, 15);
#else
    return __builtin_shufflevector(l, h, 1, 3, 5, 7);
#endif
}

/* The random numbers r of the lanes whose top halves are h (dk_splitmix_hi). */
__attribute__((always_inline)) static inline vu dk_splitmix_r(vu h) { return h ^ (h >> 31); }

/* The random numbers of DK_VL elements (dk_splitmix_hi, then the last xorshift). */
__attribute__((always_inline)) static inline vu dk_splitmix_top(vq *state_lo, vq *state_hi, uint64_t step)
{
    return dk_splitmix_r(dk_splitmix_hi(state_lo, state_hi, step));
}

/* The random numbers of the current DK_VL elements; advances the states by DK_VL. */
__attribute__((always_inline)) static inline vu dk_rng_next(vq *state_lo, vq *state_hi)
{
    return dk_splitmix_top(state_lo, state_hi, (uint64_t)DK_VL * DK_SPLITMIX_GAMMA);
}

/* dk_rng_next without the last xorshift (see dk_splitmix_hi). */
__attribute__((always_inline)) static inline vu dk_rng_next_hi(vq *state_lo, vq *state_hi)
{
    return dk_splitmix_hi(state_lo, state_hi, (uint64_t)DK_VL * DK_SPLITMIX_GAMMA);
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
__attribute__((always_inline)) static inline vi dk_quant_vec(vi u, vu r, const dk_qconst *k, int mode,
                                                            int tesla, int flush, int inf_nan,
                                                            int is_signed)
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
    if (tesla) {
        vi ingap = (code >= one) & (code < (one << 1));
        vi gapval = (mode == DK_NEAREST) ? VSEL(a >= k->mid_bits, one, one - 1) : one - 1;
        code = VSEL(code >= (one << 1), code - one, code);
        code = VSEL(ingap, gapval, code);
    } else if (flush) {
        code = VSEL(code < one, (vi){}, code);
    }
    vi ovf = code > k->maxc;
    if (inf_nan && mode != DK_TOWARD_ZERO)
        code = VSEL(ovf, (vi){} + k->infc, code);
    else
        code = VSEL(ovf, (vi){} + k->maxc, code);
    vi isinf = a == 0x7F800000;
    code = VSEL(isinf, (vi){} + (inf_nan ? k->infc : k->maxc), code);
    vi sgn = (vi)((vu)u >> 31);
    if (is_signed) code |= sgn << k->signpos;
    vi isnan = a > 0x7F800000;
    if (inf_nan) {
        vi nanv = (vi){} + k->nanc;
        if (is_signed) nanv |= sgn << k->signpos;
        code = VSEL(isnan, nanv, code);
    } else {
        code = VSEL(isnan, (vi){} + k->maxc, code);
    }
    if (!is_signed) /* negative non-zero -> NaN (invalid); -0 -> +0 */
        code = VSEL((sgn != 0) & (a != 0) & ~isnan, (vi){} + k->nanc, code);
    return code;
}

/* BF16 codes of DK_VL FP32 values under stochastic rounding with random numbers r: up one
 * step where f + r >= 2^32, f = u's low half times 2^16, that is where low + (r >> 16) >= 2^16
 * (low an integer), which is the carry of the 32-bit add u + (r >> 16) into the top half
 * (finite u: at most 0xFF80xxxx, so the add never wraps). */
__attribute__((always_inline)) static inline vi dk_bf16_stoch_vec(vi u, vu r)
{
    vi code = (vi)(((vu)u + (r >> 16)) >> 16);
    vi nanv = (vi)(((vu)u >> 16) & 0x8000u) | 0x7FC0;
    return VSEL((u & 0x7FFFFFFF) > 0x7F800000, nanv, code);
}

/* Is any lane of the mask set? */
static inline int dk_any(vi mask)
{
#if DK_VL == 16
    return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask) != 0;
#elif DK_VL == 8
    return !_mm256_testz_si256((__m256i)mask, (__m256i)mask);
#elif defined(__SSE2__)
    return _mm_movemask_epi8((__m128i)mask) != 0;
#else
    int any = 0;
    for (int j = 0; j < DK_VL; j++) any |= mask[j];
    return any != 0;
#endif
}

/* Are all lanes of the mask set? */
static inline int dk_all(vi mask)
{
#if DK_VL == 16
    return _mm512_cmpeq_epi32_mask((__m512i)mask, _mm512_set1_epi32(-1)) == 0xFFFF;
#elif DK_VL == 8
    return _mm256_movemask_epi8((__m256i)mask) == -1;
#elif defined(__SSE2__)
    return _mm_movemask_epi8((__m128i)mask) == 0xFFFF;
#else
    int all = 1;
    for (int j = 0; j < DK_VL; j++) all &= mask[j] != 0;
    return all;
#endif
}

/* Narrowing stores and widening loads of codes. GCC's generic vector conversions turn
 * these into per-lane scalar code, so they are written with the tier's intrinsics. */
static inline void dk_store_codes(void *out, int64_t i, vi code, int width)
{
#if DK_VL == 16
    if (width == 1) _mm_storeu_si128((__m128i *)((uint8_t *)out + i), _mm512_cvtepi32_epi8((__m512i)code));
    else if (width == 2) _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm512_cvtepi32_epi16((__m512i)code));
    else _mm512_storeu_si512((uint32_t *)out + i, (__m512i)code);
#elif DK_VL == 4
    for (int j = 0; j < 4; j++) dk_store_code(out, i + j, (uint32_t)code[j], width);
#else
    /* codes are non-negative and fit the width: saturating packs keep them. */
    __m256i v = (__m256i)code;
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    if (width == 1) _mm_storel_epi64((__m128i *)((uint8_t *)out + i), _mm_packus_epi16(w, w));
    else if (width == 2) _mm_storeu_si128((__m128i *)((uint16_t *)out + i), w);
    else _mm256_storeu_si256((__m256i *)((uint32_t *)out + i), v);
#endif
}

static inline vi dk_load_codes(const void *codes, int64_t i, int width)
{
#if DK_VL == 16
    if (width == 1) return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((const uint8_t *)codes + i)));
    return (vi)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)codes + i)));
#elif DK_VL == 4
    vi c;
    for (int j = 0; j < 4; j++) c[j] = (int32_t)dk_load_code(codes, i + j, width);
    return c;
#else
    if (width == 1) return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)codes + i)));
    return (vi)_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)codes + i)));
#endif
}


/* Decode DK_VL codes (as 32-bit lanes) to FP32 bits. The format's fields arrive as
 * compile-time-foldable arguments from the specialised loops below. */
__attribute__((always_inline)) static inline vi dk_dequant_vec(vi c, int ebits, int m, int bias,
                                                              int sub, int inf_nan, int is_signed,
                                                              vf scale)
{
    const int32_t emask = (1 << ebits) - 1, mmask = (1 << m) - 1;
    vi E = (c >> m) & emask, M = c & mmask;
    vi normal = ((E + (127 - bias)) << 23) | (M << (23 - m));
    vi subv = (sub == DK_SUB_FLUSH) ? (vi){} : (vi)(__builtin_convertvector(M, vf) * scale);
    vi bits = VSEL(E == 0, subv, normal);
    if (inf_nan)
        bits = VSEL(E == emask, VSEL(M != 0, (vi){} + 0x7FC00000, (vi){} + 0x7F800000), bits);
    if (is_signed) bits |= ((c >> (ebits + m)) & 1) << 31;
    return bits;
}

#ifndef DK_ARITH_ONLY
/* Stochastic rounding inside the Tesla gap (maxsub, minnorm) of a signed format, for the
 * lanes of `a` (magnitude bits of FP32 values) there: the scalar semantics' rule "hi when
 * floor((a - lo) / (hi - lo) * 2^32) + r >= 2^32" with lo = maxsub = (2^m - 1) 2^(-b-m),
 * hi = minnorm = 2^(1-b), hi - lo = K 2^(-b-m), K = 2^m + 1. In units u = 2^(-b-24) (the ulp
 * of lo's binade) a = A u and lo = L u, L = (2^m - 1) 2^(24-m), so with D = A - L (below
 * K 2^(24-m) < 2^25 in the gap) the rule reads
 *     D 2^(m+8) + r K >= 2^32 K,
 * both sides below 2^(m+34): exact in 64-bit integers, from 32 x 32 -> 64-bit multiplies of
 * the even and the odd lanes (no floating point: MXCSR does not matter).
 * Returns the magnitude codes (2^m: minnorm, 2^m - 1: maxsub) of every lane. */
__attribute__((always_inline)) static inline vi dk_gap_stoch(vi a, vu r, const dk_qconst *k, int bias)
{
    const int m = k->m;
    vi ex = a >> 23;
    vi sig = (a & 0x7FFFFF) | 0x800000;
    const int exlow = 127 - bias - 1; /* FP32 exponent field of lo's binade */
    vi A = sig << VMIN(VMAX(ex - exlow, (vi){}), (vi){} + 1); /* 0 or 1 in the gap */
    vi D = A - (((1 << m) - 1) << (24 - m));
    const uint32_t K = (1u << m) + 1u;
    const uint64_t rhs = (uint64_t)K << 32;
#if DK_VL == 16
    const __m512i d = (__m512i)D, rr = (__m512i)r, sc = _mm512_set1_epi64(1ll << (m + 8)),
                  kv = _mm512_set1_epi64(K), rv = _mm512_set1_epi64((long long)rhs);
    const __m512i le = _mm512_add_epi64(_mm512_mul_epu32(d, sc), _mm512_mul_epu32(rr, kv));
    const __m512i lo_ = _mm512_add_epi64(_mm512_mul_epu32(_mm512_srli_epi64(d, 32), sc),
                                         _mm512_mul_epu32(_mm512_srli_epi64(rr, 32), kv));
    const __m512i ue = _mm512_movm_epi64(_mm512_cmpge_epu64_mask(le, rv)),
                  uo = _mm512_movm_epi64(_mm512_cmpge_epu64_mask(lo_, rv));
    const vi up = (vi)_mm512_mask_blend_epi32(0xAAAA, ue, uo);
#else
    const __m256i d = (__m256i)D, rr = (__m256i)r, sc = _mm256_set1_epi64x(1ll << (m + 8)),
                  kv = _mm256_set1_epi64x(K), rv = _mm256_set1_epi64x((long long)rhs - 1);
    const __m256i le = _mm256_add_epi64(_mm256_mul_epu32(d, sc), _mm256_mul_epu32(rr, kv));
    const __m256i lo_ = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(d, 32), sc),
                                         _mm256_mul_epu32(_mm256_srli_epi64(rr, 32), kv));
    /* signed 64-bit compares: both sides are below 2^62 */
    const vi up = (vi)_mm256_blend_epi32(_mm256_cmpgt_epi64(le, rv), _mm256_cmpgt_epi64(lo_, rv), 0xAA);
#endif
    return VSEL(up, (vi){} + (1 << m), (vi){} + ((1 << m) - 1));
}

/* Constants of dk_quant_loop, computed once before it (kept out of the loop: `out` may
 * alias the format as far as the compiler knows). */
typedef struct {
    int m, sh;
    int32_t ebase;     /* FP32 exponent offset, in code units */
    uint32_t maxbits;  /* FP32 bits of the largest finite value */
    int32_t negc, negnanc;     /* unsigned formats: the codes of a negative non-zero value and */
    uint32_t negbits, negnanbits; /* of a negative NaN (invalid), and their FP32 bits */
    vi half, keep;
    vu lo, span;       /* minnorm's bits; max - minnorm */
    vf scale;          /* 2^qmin */
} dk_qloop;

static inline dk_qloop dk_qloop_of(const dk_format *f, const dk_qconst *k)
{
    dk_qloop c;
    c.m = f->mbits;
    c.sh = 23 - c.m;
    c.ebase = (127 - f->bias) << c.m;
    c.maxbits = dk_decode_f32bits((uint32_t)k->maxc, f);
    /* as dk_quant_vec: a negative NaN keeps being NaN (or max without one), any other
     * negative non-zero value is NaN */
    c.negc = k->nanc;
    c.negnanc = k->inf_nan ? k->nanc : k->maxc;
    c.negbits = dk_decode_f32bits((uint32_t)c.negc, f);
    c.negnanbits = dk_decode_f32bits((uint32_t)c.negnanc, f);
    c.half = (vi){} + ((1 << (c.sh - 1)) - 1);
    c.keep = (vi){} + ~((1 << c.sh) - 1);
    c.lo = (vu){} + (uint32_t)k->minnorm_bits;
    c.span = (vu){} + (c.maxbits - (uint32_t)k->minnorm_bits);
    c.scale = (vf){} + (float)dk_pow2(dk_qmin(f));
    return c;
}

/* The plain lanes of one vector of dk_quant_loop: values in the format's normal range
 * [minnorm, max] (and zeros) round on FP32's own bits: the kept part is a >> (23 - m);
 * nearest adds half a quantum minus one plus the kept last bit, stochastic the carry of
 * (dropped bits << (9 + m)) + r (that is "f + r >= 2^32", f the dropped fraction scaled to
 * 32 bits); a carry moves into the exponent, as it should. h: the random numbers' top
 * halves (dk_splitmix_hi): r >> (9 + m) == h >> (9 + m). Returns the results (codes, or
 * FP32 bits if fake), in *plain_out the lanes they are right for and in *notmask a bit
 * per lane that is not among them (lane j: bit j). */
__attribute__((always_inline)) static inline vi
dk_quant_plain(vi u, vu h, const dk_qloop *c, const dk_qconst *k, int mode, int is_signed, int fake,
               vi *plain_out, unsigned *notmask)
{
    vi a = u & 0x7FFFFFFF;
    /* v: the rounded magnitude's FP32 bits (plain lanes); its dropped bits are cleared only
     * for fake_quantize: codes take v >> (23 - m), which drops them anyway (one operation
     * less per vector) */
    vi v;
    if (mode == DK_NEAREST) v = a + c->half + ((a >> c->sh) & 1);
    else if (mode == DK_STOCHASTIC) /* up where f + r >= 2^32, f = the dropped bits << (9 + m),
                                       * i.e. where they plus r >> (9 + m) carry into the kept part */
        v = (vi)((vu)a + (h >> (9 + c->m)));
    else v = a;
    if (fake) v &= c->keep;
    /* signed formats: |x| in [minnorm, max] or zero; unsigned: x itself in that range, zeros
     * (-0 gives +0), and every negative value (invalid: NaN, below). No mode rounds such a
     * value past max: max's dropped bits are zero, and what a rounding adds to the dropped
     * bits is below one quantum (nearest: half of it; stochastic: r >> (9 + m) < 2^(23 - m)),
     * so for |x| <= max the kept part reaches max at most. One range check on the input serves
     * every mode (a check of v <= max beside it measured 2-3% of stochastic quantize to
     * CFloat8, which is bound by its vector operations). */
    const vi neg = is_signed ? (vi){} : (u < 0) & (a != 0);
#if DK_VL == 16 /* in mask registers (the vector form only where the caller uses it) */
    /* the range check below never admits a zero (minnorm's bits lo are not 0; unsigned
     * formats then add the negative lanes, -0 among them): the non-plain lanes are the
     * non-zero ones outside kp, one kandn (fewer mask operations than with the zeros' mask) */
    const __mmask16 knz = _mm512_test_epi32_mask((__m512i)a, (__m512i)a); /* the non-zeros */
    __mmask16 kp = _mm512_cmple_epu32_mask((__m512i)((is_signed ? a : u) - (vi)c->lo), (__m512i)c->span);
    if (!is_signed) kp |= _mm512_movepi32_mask((__m512i)u);
    const __mmask16 knot = _kandn_mask16(kp, knz);
    *plain_out = (vi)_mm512_movm_epi32(_knot_mask16(knot));
    *notmask = knot;
#else
    vi plain = (vi)((vu)((is_signed ? a : u) - (vi)c->lo) <= c->span) | (a == 0);
    if (!is_signed) plain |= u < 0;
    *plain_out = plain;
    *notmask = ~(unsigned)_mm256_movemask_ps((__m256)plain) & 0xFFu; /* DK_VL 8 */
#endif
    vi res; /* FP32 bits (fake) or codes */
    if (fake) {
        res = is_signed ? v | (u & (int32_t)0x80000000) : v;
    } else {
#if DK_VL == 16 /* zeros give code 0: from the non-zeros' mask above */
        res = (vi)_mm512_maskz_sub_epi32(knz, (__m512i)(v >> c->sh), _mm512_set1_epi32(c->ebase));
#else
        res = VSEL(a == 0, (vi){}, (v >> c->sh) - c->ebase);
#endif
        if (is_signed) res |= (vi)((vu)u >> (31 - k->signpos)) & (1 << k->signpos); /* the sign bit */
    }
    if (!is_signed) {
        const vi nan = a > 0x7F800000;
        const vi w = fake ? VSEL(nan, (vi){} + (int32_t)c->negnanbits, (vi){} + (int32_t)c->negbits)
                          : VSEL(nan, (vi){} + c->negnanc, (vi){} + c->negc);
        res = VSEL(neg, w, res);
    }
    return res;
}

/* The other lanes of a vector whose plain lanes (dk_quant_plain) are res where plain is
 * set: tiny, Tesla gap, beyond max, Inf/NaN, negative into an unsigned format. r: the full
 * random numbers (stochastic only). */
__attribute__((always_inline)) static inline vi
dk_quant_rest(vi u, vu r, vi res, vi plain, const dk_format *f, const dk_qloop *c, const dk_qconst *k,
              int mode, int tesla, int flush, int inf_nan, int is_signed, int fake)
{
    const int m = c->m;
    const vu lo = c->lo;
    const vf scale = c->scale;
    vi a = u & 0x7FFFFFFF;
    if (mode == DK_NEAREST || (mode == DK_STOCHASTIC && (is_signed || !tesla))) {
        /* |x| below minnorm (and x >= 0 for unsigned formats): the grid is the
         * multiples of the quantum 2^qmin; M = |x| / 2^qmin rounded by integer shifts
         * (as dk_quant_vec), then the Tesla gap's rule (nearest: ties to minnorm;
         * stochastic: dk_gap_stoch) or the flush to zero. */
        vi tiny = (vi)((vu)(is_signed ? a : u) < (vu)lo);
        vi ex = a >> 23;
        vi sig = (a & 0x7FFFFF) | VSEL(ex != 0, (vi){} + 0x800000, (vi){});
        vi shraw = (vi){} + (k->qmin + 150) - VMAX(ex, (vi){} + 1); /* >= 23 - m */
        vi shift = VMIN(shraw, (vi){} + 31);
        vi one = (vi){} + 1;
        vi M, done = tiny; /* the lanes finished here */
        if (mode == DK_NEAREST) {
            M = (sig + (one << (shift - 1)) - 1 + ((sig >> shift) & 1)) >> shift;
        } else {
            /* up where f + r >= 2^32, f = the dropped bits << (32 - shift): where the
             * dropped bits plus r >> (32 - shift) carry into the kept part (as above).
             * |x| below 2^(qmin - 8) (a shift past 31): the full path below. */
            M = (vi)(((vu)sig + (r >> (vu)(32 - shift))) >> (vu)shift);
            done &= shraw <= 31;
        }
        if (tesla) {
            vi ingap = a > k->maxsub_bits;
            if (mode == DK_NEAREST)
                M = VSEL(ingap, VSEL(a >= k->mid_bits, (vi){} + (1 << m), (vi){} + ((1 << m) - 1)), M);
            else /* no branch: about half the vectors here have a gap lane */
                M = VSEL(ingap, dk_gap_stoch(a, r, k, f->bias), M);
        } else if (flush) {
            M = VSEL(M >= (1 << m), (vi){} + (1 << m), (vi){});
        }
        vi t;
        if (fake) {
            t = VSEL(M >= (1 << m), (vi)lo, (vi)(__builtin_convertvector(M, vf) * scale));
            if (is_signed) t |= u & (int32_t)0x80000000;
        } else {
            t = M;
            if (is_signed) t |= (vi)((vu)u >> 31) << k->signpos;
        }
        res = VSEL(done, t, res);
        plain |= done;
    }
    if (__builtin_expect(!dk_all(plain), 0)) {
        vi code = dk_quant_vec(u, r, k, mode, tesla, flush, inf_nan, is_signed);
        if (tesla && mode == DK_STOCHASTIC) { /* lanes inside the subnormal gap */
            vi gap = (a > k->maxsub_bits) & (a < k->minnorm_bits);
            if (dk_any(gap)) {
                if (is_signed) {
                    vi gc = dk_gap_stoch(a, r, k, f->bias) | ((vi)((vu)u >> 31) << k->signpos);
                    code = VSEL(gap, gc, code);
                } else {
                    for (int j = 0; j < DK_VL; j++)
                        if (gap[j]) {
                            unsigned fl = 0;
                            code[j] = (int32_t)dk_round(dk_f32_to_f64(dk_bitsf((uint32_t)u[j])), 0.0, f,
                                                        mode, r[j], &fl);
                        }
                }
            }
        }
        vi w = !fake ? code
             : f->ebits == 8 ? code << 16 /* BF16-like: a shift (a multiply could flush) */
             : dk_dequant_vec(code, f->ebits, f->mbits, f->bias, f->sub, inf_nan, is_signed, scale);
        res = VSEL(plain, res, w);
    }
    return res;
}

/* fake_quantize to nearest into a signed format without Inf/NaN (CFloat8, SHP), every lane
 * up to max in FP32 arithmetic, without a branch: the values dk_quant_plain and
 * dk_quant_rest give. (|x| + C) - C rounds |x| to a multiple of C's ulp, ties to an even
 * multiple (the default MXCSR: round to nearest, no FTZ/DAZ; the subtraction is exact):
 * with C = 2^(e + 23 - m) for |x| in the normal binade [2^e, 2^(e+1)) (|x| + C lies in
 * [C, 2C), where the ulp is 2^(e - m), the format's quantum there; a carry reaches 2^(e+1)),
 * and below minnorm C = 2^(qmin + 23) (the subnormal quantum): one maximum of exponent bits.
 * Then the Tesla gap's rule (nearer of the largest subnormal and minnorm, ties to minnorm;
 * its lanes lie in the binade below minnorm, where C is the subnormal one) or the flush
 * (minnorm if reached, else 0). The sign is x's. *notmask: the lanes past max, Inf and NaN
 * (dk_quant_rest's). */
__attribute__((always_inline)) static inline vi dk_fake_nearest(vi u, const dk_qloop *c, const dk_qconst *k,
                                                                int tesla, int flush, unsigned *notmask)
{
    const vi a = u & 0x7FFFFFFF;
    const vi lo = (vi)c->lo; /* minnorm, a power of two */
    const vi emin = tesla ? lo - (1 << 23) : lo; /* the subnormal quantum times 2^(m - 23)... */
    const vi C = VMAX(a & 0x7F800000, emin) + ((23 - c->m) << 23); /* ...times 2^(23 - m) */
    vi g = (vi)(((vf)a + (vf)C) - (vf)C);
#if DK_VL == 16 /* in mask registers */
    if (tesla) { /* the gap: a - maxsub - 1 < lo - maxsub - 1, unsigned */
        const __mmask16 gap = _mm512_cmplt_epu32_mask(_mm512_sub_epi32((__m512i)a, _mm512_set1_epi32(k->maxsub_bits + 1)),
                                                      _mm512_sub_epi32((__m512i)lo, _mm512_set1_epi32(k->maxsub_bits + 1)));
        const __mmask16 up = _mm512_mask_cmpge_epi32_mask(gap, (__m512i)a, _mm512_set1_epi32(k->mid_bits));
        g = (vi)_mm512_mask_mov_epi32((__m512i)g, gap, _mm512_set1_epi32(k->maxsub_bits));
        g = (vi)_mm512_mask_mov_epi32((__m512i)g, up, (__m512i)lo);
    } else if (flush) {
        g = (vi)_mm512_maskz_mov_epi32(_mm512_cmpge_epi32_mask((__m512i)g, (__m512i)lo), (__m512i)g);
    }
    *notmask = (uint16_t)_mm512_cmpgt_epu32_mask((__m512i)a, _mm512_set1_epi32((int)c->maxbits));
#else
    if (tesla) g = VSEL((a > k->maxsub_bits) & (a < lo), VSEL(a >= k->mid_bits, lo, (vi){} + k->maxsub_bits), g);
    else if (flush) g = VSEL(g < lo, (vi){}, g);
    *notmask = (unsigned)_mm256_movemask_ps((__m256)(vi)((vu)a > c->maxbits)); /* DK_VL 8 */
#endif
    return g | (u & (int32_t)0x80000000);
}

/* Vectors per pass of dk_quant_loop: one bit each in a 64-bit word. */
#define DK_QPASS_VECS 64

/* SplitMix64 states of the DK_VL elements from index i0 on (as dk_rng_at, without its
 * per-lane multiplies: state i = seed + (i + 1) gamma). */
__attribute__((always_inline)) static inline dk_rng dk_rng_at_fast(uint64_t seed, uint64_t i0)
{
    const uint64_t G = DK_SPLITMIX_GAMMA, base = dk_splitmix_state(seed, i0);
    dk_rng g;
#if DK_VL == 16
    g.lo = (vq){0, G, 2 * G, 3 * G, 4 * G, 5 * G, 6 * G, 7 * G} + base;
    g.hi = (vq){8 * G, 9 * G, 10 * G, 11 * G, 12 * G, 13 * G, 14 * G, 15 * G} + base;
#elif DK_VL == 8
    g.lo = (vq){0, G, 2 * G, 3 * G} + base;
    g.hi = (vq){4 * G, 5 * G, 6 * G, 7 * G} + base;
#else
    g.lo = (vq){0, G} + base;
    g.hi = (vq){2 * G, 3 * G} + base;
#endif
    return g;
}

/* The lanes that the second pass of dk_quant_loop gathers (at most DK_VL): their inputs
 * and their indices in x; and what gives their random numbers (stochastic rounding): the
 * seed, and the flat index of x[0]. */
typedef struct {
    vi u;
    int64_t at[DK_VL];
    int n;
    uint64_t seed, index0;
} dk_qgather;

/* Finishes the gathered lanes (dk_quant_plain, then dk_quant_rest: every lane is rounded on
 * its own, from its input and random number) and stores each lane's result at its index.
 * Lanes past g->n are zeros (plain) and not stored. */
__attribute__((always_inline)) static inline void
dk_qgather_flush(dk_qgather *g, void *out, const dk_format *f, const dk_qloop *c, const dk_qconst *k,
                 int width, int mode, int tesla, int flush, int inf_nan, int is_signed, int fake)
{
    vi plain;
    unsigned notmask;
    vu h = {}; /* the lanes' random numbers' top halves (dk_splitmix_hi), from their states */
    if (mode == DK_STOCHASTIC) {
        vq lo, hi;
        for (int j = 0; j < DK_VL / 2; j++) {
            lo[j] = dk_splitmix_state(g->seed, g->index0 + (uint64_t)g->at[j]);
            hi[j] = dk_splitmix_state(g->seed, g->index0 + (uint64_t)g->at[j + DK_VL / 2]);
        }
        h = dk_splitmix_hi(&lo, &hi, 0);
    }
    vi res = dk_quant_plain(g->u, h, c, k, mode, is_signed, fake, &plain, &notmask);
    res = dk_quant_rest(g->u, dk_splitmix_r(h), res, plain, f, c, k, mode, tesla, flush, inf_nan,
                        is_signed, fake);
    for (int j = 0; j < g->n; j++) {
        const int32_t r = res[j];
        if (fake) memcpy((float *)out + g->at[j], &r, sizeof r); /* FP32 bits into floats */
        else dk_store_code(out, g->at[j], (uint32_t)r, width);
    }
    g->u = (vi){};
    g->n = 0;
}

/* The vector loop for one (mode, format family): every switch is a compile-time constant
 * at the call sites below, so the loop body has no branches. Returns where it stopped.
 *
 * Two passes over each DK_QPASS_VECS vectors: the first rounds every vector's plain lanes
 * (dk_quant_plain), stores the results, and notes (without a branch) which lanes of which
 * vectors are not plain; the second gathers those lanes, DK_VL at a time across vectors and
 * passes, and finishes them (dk_qgather_flush), taking their input again (from x, or from a
 * copy if `out` overlaps `x`) and computing their random numbers again from their indices. A vector
 * with a lane below minnorm is common (about 1 in 5 for a standard normal into CFloat8
 * 1_4_3 bias 7) and unpredictable: a branch per vector mispredicted on most of them, and
 * finishing those vectors whole (about one lane in 80 needs it there) cost about 40% of
 * the first pass under stochastic rounding. Besides the results the first pass stores only
 * a lane mask per vector (a list of the vectors and a copy of every input measured slower:
 * the stores queue behind the results' cache misses; so did a copy of every vector's random
 * numbers, against one SplitMix64 step per DK_VL gathered lanes). fake_quantize to nearest
 * keeps one pass with a branch (see two_pass).
 *
 * Stochastic rounding computes each vector's random numbers two vectors ahead: their chain
 * of two 64-bit multiplies is long, and the loop is bound by its vector operations (the
 * random numbers cost about 40% of it on a Zen 4). */
__attribute__((always_inline)) static inline int64_t
dk_quant_loop(const float *x, void *out, int64_t n, const dk_format *f, const dk_qconst *k, int width,
              uint64_t seed, int64_t index0, int mode, int tesla, int flush, int inf_nan, int is_signed,
              int fake)
{
    /* fake: store the codes' FP32 values into (float *)out instead of the codes */
    const dk_qloop c = dk_qloop_of(f, k);
    /* fake_quantize to nearest moves 8 bytes per element and is bound by memory: there the
     * second pass's work measured slower than a branch per vector in one pass (it no longer
     * overlaps the first pass's memory traffic; with the lanes gathered too: 8M elements,
     * one thread, 2.64-2.81 against 2.45-2.62 ms for N(0,1) * 4, about equal for N(0,1)). */
    const int two_pass = mode == DK_STOCHASTIC || !fake;
    /* fake_quantize to nearest into CFloat8 or SHP: every lane up to max by dk_fake_nearest
     * (a vector with a lane below minnorm, one in five for a standard normal into CFloat8
     * 1_4_3 bias 7, no longer takes a branch at random) */
    const int fp_near = fake && mode == DK_NEAREST && is_signed && !inf_nan;
    vq rlo = {}, rhi = {};
    vu h1 = {}, h2 = {}; /* the next two vectors' random numbers' top halves */
    if (mode == DK_STOCHASTIC) {
        dk_rng g = dk_rng_at_fast(seed, (uint64_t)index0);
        rlo = g.lo;
        rhi = g.hi;
        h1 = dk_rng_next_hi(&rlo, &rhi);
        h2 = dk_rng_next_hi(&rlo, &rhi);
    }
    const int64_t nv = n - n % DK_VL; /* elements in whole vectors */
    const char *xb = (const char *)x, *ob = (const char *)out;
    const int overlap = ob < xb + nv * 4 && xb < ob + nv * (fake ? 4 : width);
    vi ubuf[DK_QPASS_VECS]; /* the input of the second pass's vectors, if out overlaps x */
    unsigned lanes[DK_QPASS_VECS]; /* per vector, its lanes that are not plain */
    dk_qgather g;
    memset(&g, 0, sizeof g); /* no lane yet; the vectors' lanes zeros (plain) */
    g.seed = seed;
    g.index0 = (uint64_t)index0;
    for (int64_t p0 = 0; p0 < nv; p0 += DK_QPASS_VECS * DK_VL) {
        const int64_t p1 = nv - p0 < DK_QPASS_VECS * DK_VL ? nv : p0 + DK_QPASS_VECS * DK_VL;
        uint64_t rest = 0;
        int v = 0;
        for (int64_t i = p0; i < p1; i += DK_VL, v++) {
            vi u;
            memcpy(&u, x + i, sizeof u);
            __builtin_prefetch(x + i + DK_PREFETCH);
            vu h = {};
            if (mode == DK_STOCHASTIC) {
                h = h1;
                h1 = h2;
                h2 = dk_rng_next_hi(&rlo, &rhi);
            }
            vi plain, res;
            unsigned notmask;
            if (fp_near) res = dk_fake_nearest(u, &c, k, tesla, flush, &notmask);
            else res = dk_quant_plain(u, h, &c, k, mode, is_signed, fake, &plain, &notmask);
            if (!two_pass && __builtin_expect(notmask != 0, 0)) {
                if (fp_near) plain = (vi)((vu)(u & 0x7FFFFFFF) <= c.maxbits);
                res = dk_quant_rest(u, dk_splitmix_r(h), res, plain, f, &c, k, mode, tesla, flush, inf_nan,
                                    is_signed, fake);
            }
            if (two_pass && __builtin_expect(overlap, 0)) ubuf[v] = u;
            if (fake) memcpy((float *)out + i, &res, sizeof res);
            else dk_store_codes(out, i, res, width);
            if (two_pass) {
                lanes[v] = notmask;
                rest |= (uint64_t)(notmask != 0) << v;
            }
        }
        while (rest) {
            const int j = __builtin_ctzll(rest);
            rest &= rest - 1;
            const int64_t at = p0 + (int64_t)j * DK_VL;
            const char *src = overlap ? (const char *)&ubuf[j] : (const char *)(x + at);
            for (unsigned m = lanes[j]; m; m &= m - 1) {
                const int l = __builtin_ctz(m);
                int32_t xl; /* the lane's FP32 bits */
                memcpy(&xl, src + 4 * l, sizeof xl);
                g.u[g.n] = xl;
                g.at[g.n] = at + l;
                if (++g.n == DK_VL)
                    dk_qgather_flush(&g, out, f, &c, k, width, mode, tesla, flush, inf_nan, is_signed, fake);
            }
        }
    }
    if (g.n) dk_qgather_flush(&g, out, f, &c, k, width, mode, tesla, flush, inf_nan, is_signed, fake);
    return nv;
}

#define DK_QFAMILIES(MODE)                                                                      \
    do {                                                                                        \
        if (width == 1 && is_signed && !inf_nan) /* CFloat8 */                                  \
            i = sub == DK_SUB_TESLA ? dk_quant_loop(x, out, n, f, &k, 1, seed, index0, MODE, 1, 0, 0, 1, fake)   \
              : sub == DK_SUB_IEEE  ? dk_quant_loop(x, out, n, f, &k, 1, seed, index0, MODE, 0, 0, 0, 1, fake)   \
                                    : dk_quant_loop(x, out, n, f, &k, 1, seed, index0, MODE, 0, 1, 0, 1, fake);  \
        else if (width == 2 && is_signed && !inf_nan) /* SHP */                                 \
            i = sub == DK_SUB_TESLA ? dk_quant_loop(x, out, n, f, &k, 2, seed, index0, MODE, 1, 0, 0, 1, fake)   \
              : sub == DK_SUB_IEEE  ? dk_quant_loop(x, out, n, f, &k, 2, seed, index0, MODE, 0, 0, 0, 1, fake)   \
                                    : dk_quant_loop(x, out, n, f, &k, 2, seed, index0, MODE, 0, 1, 0, 1, fake);  \
        else if (width == 2 && is_signed && inf_nan && sub == DK_SUB_IEEE) /* BF16 */           \
            i = dk_quant_loop(x, out, n, f, &k, 2, seed, index0, MODE, 0, 0, 1, 1, fake);              \
        else if (width == 2 && !is_signed && inf_nan && sub == DK_SUB_FLUSH) /* UHP */          \
            i = dk_quant_loop(x, out, n, f, &k, 2, seed, index0, MODE, 0, 1, 1, 0, fake);              \
        else                                                                                    \
            i = dk_quant_loop(x, out, n, f, &k, width, seed, index0, MODE, k.tesla, k.flush,     \
                              k.inf_nan, k.is_signed, fake);                                    \
    } while (0)

__attribute__((always_inline)) static inline void
dk_quant_run(const float *x, void *out, int64_t n, const dk_format *f, int mode, uint64_t seed,
             int64_t index0, int fake)
{
    const int width = dk_code_width(f);
    const int is_signed = f->is_signed, inf_nan = f->has_inf_nan, sub = f->sub;
    const dk_qconst k = dk_qconst_of(f);
    int64_t i = 0;
    if (width == 4 || f->mbits > 20) {
        /* FP32 targets (and anything as wide) keep to the scalar semantics. */
    } else if (f->ebits == 8 && f->mbits == 7 && mode == DK_NEAREST) { /* BF16: RNE bit trick */
        for (; i + DK_VL <= n; i += DK_VL) {
            vi u;
            memcpy(&u, x + i, sizeof u);
            __builtin_prefetch(x + i + DK_PREFETCH);
            vi a = u & 0x7FFFFFFF;
            vi rne = (vi)(((vu)u + 0x7FFFu + (((vu)u >> 16) & 1u)) >> 16);
            vi nanv = (vi)(((vu)u >> 16) & 0x8000u) | 0x7FC0;
            vi code = VSEL(a > 0x7F800000, nanv, rne);
            if (fake) {
                vi v = code << 16;
                memcpy((float *)out + i, &v, sizeof v);
            } else {
                dk_store_codes(out, i, code, 2);
            }
        }
    } else if (f->ebits == 8 && f->mbits == 7 && mode == DK_STOCHASTIC) {
        /* BF16's grid is FP32's with the low 16 bits dropped (subnormals too), so f is the
         * low half times 2^16 and "f + r >= 2^32" is the carry of that 32-bit add; past the
         * largest finite value the carry reaches the Inf code, as SPEC says. */
        dk_rng g = dk_rng_at(seed, (uint64_t)index0);
        vq lo = g.lo, hi = g.hi;
        for (; i + DK_VL <= n; i += DK_VL) {
            vi u;
            memcpy(&u, x + i, sizeof u);
            __builtin_prefetch(x + i + DK_PREFETCH);
            vu h = dk_rng_next_hi(&lo, &hi); /* r >> 16 == h >> 16 */
            vi code = dk_bf16_stoch_vec(u, h);
            if (fake) {
                vi v = code << 16;
                memcpy((float *)out + i, &v, sizeof v);
            } else {
                dk_store_codes(out, i, code, 2);
            }
        }
    } else if (mode == DK_STOCHASTIC) {
        DK_QFAMILIES(DK_STOCHASTIC);
    } else if (mode == DK_NEAREST) {
        DK_QFAMILIES(DK_NEAREST);
    } else {
        DK_QFAMILIES(DK_TOWARD_ZERO);
    }
    for (; i < n; i++) {
        unsigned fl = 0;
        uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)(index0 + i)) : 0u;
        uint32_t code = dk_round(dk_f32_to_f64(x[i]), 0.0, f, mode, r, &fl);
        if (fake) ((uint32_t *)out)[i] = dk_decode_f32bits(code, f);
        else dk_store_code(out, i, code, width);
    }
}

void DK_FN(dk_quantize_f32)(const float *x, void *out, int64_t n, const dk_format *f, int mode,
                            uint64_t seed, int64_t index0)
{
    dk_quant_run(x, out, n, f, mode, seed, index0, 0);
}

/* dequantize(quantize(x)) of n FP32 values into out, in registers (one pass). */
void DK_FN(dk_fake_quantize_f32)(const float *x, float *out, int64_t n, const dk_format *f, int mode,
                                 uint64_t seed, int64_t index0)
{
    dk_quant_run(x, out, n, f, mode, seed, index0, 1);
}
#undef DK_QFAMILIES

void DK_FN(dk_dequantize_f32)(const void *codes, float *out, int64_t n, const dk_format *f)
{
    const int width = dk_code_width(f);
    const int ebits = f->ebits, m = f->mbits, bias = f->bias, sub = f->sub;
    const int inf_nan = f->has_inf_nan, is_signed = f->is_signed;
    const vf scale = (vf){} + (float)dk_pow2(dk_qmin(f));
    int64_t i = 0;
    if (width == 4) { /* FP32 codes are the values */
        memcpy(out, codes, (size_t)n * 4);
        return;
    }
#define DK_DEQUANT_LOOP(W, BODY)                                                   \
    for (; i + DK_VL <= n; i += DK_VL) {                                           \
        __builtin_prefetch((const char *)codes + (i + DK_PREFETCH) * (W));          \
        vi c = dk_load_codes(codes, i, (W));                                       \
        vi bits = (BODY);                                                          \
        memcpy(out + i, &bits, sizeof bits);                                       \
    }
    if (ebits == 8 && m == 7) {
        DK_DEQUANT_LOOP(2, c << 16) /* BF16 */
    } else if (width == 1 && !inf_nan && is_signed) { /* CFloat8 */
        if (sub == DK_SUB_FLUSH)
            DK_DEQUANT_LOOP(1, dk_dequant_vec(c, ebits, m, bias, DK_SUB_FLUSH, 0, 1, scale))
        else
            DK_DEQUANT_LOOP(1, dk_dequant_vec(c, ebits, m, bias, DK_SUB_IEEE, 0, 1, scale))
    } else {
        DK_DEQUANT_LOOP(width, dk_dequant_vec(c, ebits, m, bias, sub, inf_nan, is_signed, scale))
    }
#undef DK_DEQUANT_LOOP
    for (; i < n; i++) {
        uint32_t b = dk_decode_f32bits(dk_load_code(codes, i, width), f);
        memcpy(out + i, &b, 4);
    }
}
#endif /* DK_ARITH_ONLY */
