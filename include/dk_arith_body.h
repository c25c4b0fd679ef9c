/* dk_arith_body.h - add/sub/mul/fma on codes (SPEC section 4) in SIMD, written once with GCC
 * vector extensions and compiled once per tier: include it after dk_convert_body.h (whose
 * types and helpers it shares) with DK_TIER and DK_VL defined.
 *
 * Method, for a format with p <= 11 significant bits (every format but FP32):
 *  1. Decode each operand to FP32, scaled by an exact power of two 2^K (K = bias; BF16: K = 0;
 *     fma's addend by 2^2K) so that every normal value, every product and every sum of them
 *     is a normal FP32 number: products of two p-bit significands (<= 22 bits) are then
 *     exact, and a sum comes as an FP32 value s plus its exact error t (TwoSum).
 *     Round to nearest of a sum, difference or product needs no error term: the FP32 result
 *     rounded once more into the format is the correctly rounded result, as double rounding
 *     is innocuous when 24 >= 2p + 2 (Figueroa 1995), for p <= 11 (values in the Tesla gap
 *     are multiples of the smallest quantum with at most m + 2 bits, so exact in FP32).
 *  2. Otherwise (fma, toward zero) round to odd: if t != 0 and s's last bit is 0, step s by one FP32 ulp towards s + t.
 *     Every grid point and midpoint of the format (and the Tesla gap's midpoint) has at most
 *     p + 2 <= 13 significant bits, so it is an FP32 value with an even last bit: the
 *     rounded-to-odd value lies strictly on the same side of each as the exact s + t, and
 *     rounding it to nearest or toward zero (on the format moved by the same scale: on the
 *     AVX2 and AVX-512 tiers dk_quant_plain for results in the normal range and zeros, then
 *     dk_quant_rest for the others, as quantize does; dk_quant_vec on the portable tier)
 *     gives the correctly rounded result. Stochastic rounding needs the exact value:
 *     lanes with t == 0 are rounded from s exactly; lanes with t != 0 take the scalar path
 *     here, but for the signed narrow formats with subnormals (CFloat8, SHP; not "flush")
 *     those whose s lies on the subnormal grid (below the largest subnormal with the Tesla
 *     gap, below the smallest normal with IEEE subnormals; not more than 9 binades below
 *     the quantum), which dk_stoch_tiny rounds from s + t (the fast paths below round
 *     s + t in the normal range: dk_stoch_sum).
 *  3. Zeros and subnormals are decoded exactly (scaled, they are normal FP32 numbers, BF16's
 *     are FP32 subnormals, exact without DAZ); the denormal flag counts subnormal operands,
 *     the underflow flag zero or subnormal results that differ from s + t.
 *  4. Rare lanes go through the scalar semantics (dk_arith_elem): an Inf or NaN operand; a
 *     result code in the top binade or Inf/NaN (overflow and invalid live there, and UHP's
 *     negative results); BF16 products at or below 2^-126 (FP32 may have rounded them);
 *     stochastic lanes with t != 0 but those of dk_stoch_tiny, and on the portable tier
 *     those inside the Tesla gap (the vector tiers round them with dk_quant_rest:
 *     dk_gap_stoch).
 *  5. The narrow formats (all but BF16 and FP32) have a fast path for add, sub, mul and fma
 *     to nearest or stochastically, as BF16 has: dk_narrow_fast, below.
 * Hardware FP operations run under the default MXCSR, which the driver sets (round to
 * nearest, no FTZ/DAZ); nothing here depends on the caller's. */
#ifndef DK_TIER
#error "include dk_convert_body.h (with DK_TIER and DK_VL) first"
#endif

typedef struct {
    int ebits, m, bf16, is_signed, inf_nan, sub, emaxf;
    int32_t dab, dc;  /* FP32 exponent offsets of the decode: a and b, fma's c */
    vf subab, subc;   /* value of a subnormal mantissa's unit, scaled as a and b, as fma's c */
    vf subres;        /* the same for the result's scale */
    dk_qconst k;      /* rounding constants of the format moved by the result's scale */
    dk_format moved;  /* that format: the bias less the result's scale */
} dk_aconst;

static inline dk_aconst dk_aconst_of(const dk_format *f, int op)
{
    dk_aconst a;
    a.ebits = f->ebits;
    a.m = f->mbits;
    a.bf16 = f->ebits == 8 && f->mbits == 7;
    a.is_signed = f->is_signed;
    a.inf_nan = f->has_inf_nan;
    a.sub = f->sub;
    a.emaxf = (int)dk_emax_field(f);
    const int K = a.bf16 ? 0 : f->bias;
    const int Kres = op == DK_OP_MUL || op == DK_OP_FMA ? 2 * K : K;
    a.dab = 127 + K - f->bias;
    a.dc = 127 + 2 * K - f->bias;
    /* 2^(qmin + scale): normal FP32 numbers for every format but BF16 (which decodes by a
     * shift and never uses them) */
    a.subab = (vf){} + (a.bf16 ? 1.0f : (float)dk_pow2(dk_qmin(f) + K));
    a.subc = (vf){} + (a.bf16 ? 1.0f : (float)dk_pow2(dk_qmin(f) + 2 * K));
    a.subres = (vf){} + (a.bf16 ? 1.0f : (float)dk_pow2(dk_qmin(f) + Kres));
    a.moved = *f;
    a.moved.bias = f->bias - Kres;
    a.k = dk_qconst_of(&a.moved);
    return a;
}

/* FP32 bits of DK_VL codes' values times the operand's scale 2^(off - 127 + bias); zeros and
 * subnormals exact too (subnormal units `sub`; flushed to zero in the "flush" mode and UHP).
 * Inf/NaN codes give garbage: those lanes take the scalar path. */
__attribute__((always_inline)) static inline vi dk_arith_decode(vi c, const dk_aconst *q, int32_t off,
                                                               vf sub, int bf16)
{
    if (bf16) return c << 16;
    const int m = q->m;
    vi E = (c >> m) & ((1 << q->ebits) - 1), M = c & ((1 << m) - 1);
    vi bits = ((E + off) << 23) | (M << (23 - m));
    vi subv = q->sub == DK_SUB_FLUSH ? (vi){} : (vi)(__builtin_convertvector(M, vf) * sub);
    bits = VSEL(E == 0, subv, bits);
    if (q->is_signed) bits |= ((c >> (q->ebits + m)) & 1) << 31;
    return bits;
}

/* Lanes whose code is a subnormal encoding (the denormal flag). */
__attribute__((always_inline)) static inline vi dk_arith_subnormal(vi c, const dk_aconst *q)
{
    vi mag = c & ((1 << (q->ebits + q->m)) - 1);
    return (mag != 0) & ((mag >> q->m) == 0);
}

/* Lanes whose code is Inf or NaN (formats that have them). */
__attribute__((always_inline)) static inline vi dk_arith_infnan(vi c, const dk_aconst *q)
{
    if (!q->inf_nan) return (vi){};
    return ((c >> q->m) & ((1 << q->ebits) - 1)) == ((1 << q->ebits) - 1);
}

#define DK_BITS(v) ((vi)(v))
#define DK_FLT(v) ((vf)(v))

/* TwoSum (Knuth): the error t of s = u + v rounded to nearest, s + t == u + v exactly (no
 * overflow). */
__attribute__((always_inline)) static inline vf dk_two_sum_err(vf u, vf v, vf s)
{
    const vf vv = s - u, uu = s - vv;
    return (u - uu) + (v - vv);
}

/* Round to odd (see the top of the file): where t != 0 and s's last bit is 0, one FP32
 * step of s towards s + t. Bits in, bits out. */
__attribute__((always_inline)) static inline vi dk_round_odd(vi sb, vi tb)
{
    const vi step = VSEL((tb ^ sb) < 0, (vi){} - 1, (vi){} + 1);
    return VSEL(((tb & 0x7FFFFFFF) != 0) & ((sb & 1) == 0), sb + step, sb);
}

static inline int64_t dk_lanes_sum(vi v)
{
    int64_t s = 0;
    for (int j = 0; j < DK_VL; j++) s += v[j];
    return s;
}

/* floor(t' 2^k / u) for TwoSum errors t (bits tb) of sums s, t' = t signed towards |s|, where
 * `above` - e(t) is the right shift that scales t's 24-bit significand to those units
 * (biased exponents; subnormal t too). Exact: a right shift, its remainder rounding a
 * negative t' down (a shift past 31 leaves 0 or -1). *tneg: the lanes with t' < 0. Shared
 * by dk_stoch_sum (the 8-lane form) and dk_stoch_tiny. */
__attribute__((always_inline)) static inline vu dk_floor_tail(vu s, vu tb, vi above, vi *tneg)
{
    const vu ta = tb & 0x7FFFFFFFu;
    const vi et = VMAX((vi)(ta >> 23), (vi){} + 1);
    const vu sig = (ta & 0x7FFFFFu) | (vu)VSEL((ta >> 23) != 0, (vi){} + 0x800000, (vi){});
    const vu sh = (vu)VMIN(VMAX(above - et, (vi){}), (vi){} + 31);
    const vu q = sig >> sh, rem = sig & ((((vu){} + 1u) << sh) - 1u);
    *tneg = ((vi)(tb ^ s) < 0) & (ta != 0);
    return (vu)VSEL(*tneg, (vi){} - (vi)(q - (vu)(rem != 0)), (vi)q); /* (rem != 0 is -1) */
}

/* Stochastic rounding of the exact sum s + t (TwoSum: |t| <= half an ulp of s; t == 0 when s
 * is exact) onto a signed narrow format's subnormal grid, in the moved format's units: the
 * grid's quantum is Q = 2^qmin (q->subres), and the lanes taken (*ok) are those whose |s| lies
 * below `top`, the FP32 bits of the grid's top (the largest subnormal with the Tesla gap,
 * whose rule stays with the other paths; the smallest normal with IEEE subnormals; the
 * caller tests for such lanes before calling), so that |s + t| does too and its
 * neighbours are the multiples of Q around it. With |s| = sig 2^(e - 150) (biased exponent e,
 * 24-bit sig) and D = qmin + 127 + 23 - e (>= 24 - m there), floor(|s| / Q) = sig >> D and the
 * fraction below Q, scaled to 32 bits, is sig << (32 - D) when D <= 32 (lanes further below,
 * |s| < Q 2^-9, zeros among them, are not taken: the fraction would need more than 32 bits).
 * t' = t signed towards |s| adds floor(t' / Q 2^32) = floor(sig(t) 2^(e(t) + 9 - qmin - 127)),
 * a right shift (e(t) <= e - 24), rounded down as in dk_stoch_sum. A negative t' may borrow
 * from floor(|s| / Q) (never below zero: |t'| < |s|); the carry of f + r adds one quantum
 * (SPEC section 2). Returns the FP32 bits of the rounded value n Q (with s's sign: zero as
 * +-0) and in *code its code (n and the sign bit: n = 2^m, IEEE's smallest normal, is that
 * code too), right in the lanes of *ok. */
__attribute__((always_inline)) static inline vi dk_stoch_tiny(vi sb, vf t, vu r, const dk_aconst *q, int32_t top,
                                                             vi *ok, vi *code)
{
    const int32_t qb = q->k.qmin + 127; /* biased exponent of Q */
    const vu S = (vu)sb & 0x7FFFFFFFu;
    const vi es = VMAX((vi)(S >> 23), (vi){} + 1);
    const vu sigs = (S & 0x7FFFFFu) | (vu)VSEL((S >> 23) != 0, (vi){} + 0x800000, (vi){});
    const vi D = qb + 23 - es;
    *ok = ((vi)S < top) & (D <= 32);
    const vi Dc = VMIN(VMAX(D, (vi){} + 1), (vi){} + 32); /* in range for the shifts below */
    const vu whole = sigs >> (vu)VMIN(Dc, (vi){} + 31), low = sigs << (vu)(32 - Dc);
    vi tneg;
    const vu X = dk_floor_tail((vu)sb, (vu)DK_BITS(t), (vi){} + (qb - 9), &tneg); /* floor(t' / Q 2^32) */
    const vu f = low + X;
    const vi borrow = tneg & (vi)(f > low); /* wrapped below zero */
    const vi up = (vi)((f + r) < f);
    const vi n = (vi)whole + borrow - up; /* (true lanes are -1) */
    *code = n | ((vi)((vu)sb >> 31) << q->k.signpos);
    return DK_BITS(__builtin_convertvector(n, vf) * q->subres) | (sb & (int32_t)0x80000000);
}

__attribute__((always_inline)) static inline void
dk_arith_loop(int op, const void *a, const void *b, const void *c, void *out, int64_t i0, int64_t n,
              const dk_format *f, const dk_aconst *q, int mode, uint64_t seed, int64_t cnt[4],
              int width, int bf16, int64_t *done)
{
    int64_t i = 0;
    dk_rng g = dk_rng_at(seed, (uint64_t)i0);
    vq lo = g.lo, hi = g.hi;
    const int m = q->m;
    const int32_t emask = (1 << q->ebits) - 1;
    vi nden = {}, nund = {}; /* minus the flag counts of the vector lanes */
#ifndef DK_ARITH_ONLY
    const dk_qloop qc = dk_qloop_of(&q->moved, &q->k);
#endif
    for (; i + DK_VL <= n; i += DK_VL) {
        const int64_t at = i0 + i;
        __builtin_prefetch((const char *)a + (at + DK_PREFETCH) * width);
        __builtin_prefetch((const char *)b + (at + DK_PREFETCH) * width);
        vi ca = dk_load_codes(a, at, width), cb = dk_load_codes(b, at, width), cc = {};
        vi odd = dk_arith_infnan(ca, q) | dk_arith_infnan(cb, q);
        vi den = dk_arith_subnormal(ca, q) | dk_arith_subnormal(cb, q);
        vf x = DK_FLT(dk_arith_decode(ca, q, q->dab, q->subab, bf16));
        vf y = DK_FLT(dk_arith_decode(cb, q, q->dab, q->subab, bf16));
        vf s, t = (vf){};
        if (op == DK_OP_MUL) {
            s = x * y;
            /* BF16: a product at or below 2^-126 may have been rounded by FP32 */
            if (bf16) odd |= ((DK_BITS(s) & 0x7FFFFFFF) <= 0x00800000) & ((ca & 0x7FFF) != 0) & ((cb & 0x7FFF) != 0);
        } else {
            vf u = x, v = y;
            if (op == DK_OP_SUB) v = DK_FLT(DK_BITS(y) ^ (int32_t)0x80000000);
            if (op == DK_OP_FMA) {
                cc = dk_load_codes(c, at, width);
                odd |= dk_arith_infnan(cc, q);
                den |= dk_arith_subnormal(cc, q);
                u = x * y;
                if (bf16) odd |= ((DK_BITS(u) & 0x7FFFFFFF) <= 0x00800000) & ((ca & 0x7FFF) != 0) & ((cb & 0x7FFF) != 0);
                v = DK_FLT(dk_arith_decode(cc, q, q->dc, q->subc, bf16));
            }
            s = u + v;
            if (op == DK_OP_FMA || mode != DK_NEAREST) {
                t = dk_two_sum_err(u, v, s);
            }
        }
        vi sb = DK_BITS(s), tb = DK_BITS(t);
        vi inexact = (tb & 0x7FFFFFFF) != 0;
        vu r = {};
        vi tok = {}, tcode = {}; /* lanes rounded onto the subnormal grid, and their codes */
        if (mode == DK_STOCHASTIC) {
            r = dk_rng_next(&lo, &hi);
            vi sent = inexact; /* inexact sums: the scalar semantics, but those that round */
            /* onto the subnormal grid, for a vector with an inexact lane there (its exact
             * lanes there too; vectors with exact ones only round as before, as cheaply) */
            const int32_t top = q->k.tesla ? q->k.maxsub_bits : q->k.minnorm_bits;
            if (!bf16 && q->is_signed && !q->k.flush && dk_any(inexact & ((sb & 0x7FFFFFFF) < top))) {
                const vi tiny_sb = dk_stoch_tiny(sb, t, r, q, top, &tok, &tcode);
                sb = VSEL(tok, tiny_sb, sb);
                sent &= ~tok;
            }
            odd |= sent;
#ifdef DK_ARITH_ONLY
            if (q->k.tesla) { /* inside the Tesla gap: the scalar semantics */
                vi mag = sb & 0x7FFFFFFF;
                odd |= (mag > q->k.maxsub_bits) & (mag < q->k.minnorm_bits);
            }
#endif
        } else if (op == DK_OP_FMA || mode != DK_NEAREST) {
            sb = dk_round_odd(sb, tb);
        }
        vi code;
        if (bf16 && mode == DK_NEAREST) /* FP32 -> BF16 nearest even (s is finite, not NaN) */
            code = (vi)(((vu)sb + 0x7FFFu + (((vu)sb >> 16) & 1u)) >> 16);
        else if (bf16 && mode == DK_STOCHASTIC) /* s exact (t != 0 went scalar) */
            code = dk_bf16_stoch_vec(sb, r);
        else if (mode == DK_STOCHASTIC && dk_all(tok)) /* every lane on the subnormal grid */
            code = tcode;
        else {
#ifdef DK_ARITH_ONLY
            code = dk_quant_vec(sb, r, &q->k, mode, q->k.tesla, q->k.flush, q->inf_nan, q->is_signed);
#else
            /* the plain lanes (normal results, zeros) on FP32's own bits, the rest (tiny,
             * Tesla gap, past max) in a second step only for a vector that has one, as
             * quantize does (r serves as the top halves: r >> (9 + m) == h >> (9 + m)) */
            vi plain;
            unsigned notmask;
            code = dk_quant_plain(sb, r, &qc, &q->k, mode, q->is_signed, 0, &plain, &notmask);
            if (__builtin_expect(notmask != 0, 0))
                code = dk_quant_rest(sb, r, code, plain, &q->moved, &qc, &q->k, mode, q->k.tesla,
                                     q->k.flush, q->inf_nan, q->is_signed, 0);
#endif
        }
        vi E = (code >> m) & emask;
        /* the top binade, Inf and NaN (overflow, invalid) and UHP's negative results */
        odd |= E >= q->emaxf;
        vi tiny = E == 0;
        if (dk_any(tiny)) {
            /* underflow: a zero or subnormal result that differs from the exact value, which
             * is s + t (s holds it exactly when t was not formed: tiny sums and products
             * of scaled operands, and BF16 sums, are exact in FP32; BF16 products here went
             * to the scalar path above). The value of the result code, scaled: */
            vi M = code & ((1 << m) - 1);
            vi val = bf16 ? M << 16
                   : q->sub == DK_SUB_FLUSH ? (vi){} : (vi)(__builtin_convertvector(M, vf) * q->subres);
            vi differs = ((DK_BITS(s) & 0x7FFFFFFF) != val) | inexact;
            nund += tiny & differs & ~odd;
        }
        nden += den & ~odd;
        /* the scalar lanes before the store: out may be an operand (in place) */
        if (dk_any(odd))
            for (int j = 0; j < DK_VL; j++)
                if (odd[j]) {
                    unsigned fl = 0;
                    code[j] = (int32_t)dk_arith_elem(op, a, b, c, at + j, f, mode, seed, &fl);
                    cnt[0] += (fl & DK_FL_INVALID) != 0;
                    cnt[1] += (fl & DK_FL_DENORMAL) != 0;
                    cnt[2] += (fl & DK_FL_OVERFLOW) != 0;
                    cnt[3] += (fl & DK_FL_UNDERFLOW) != 0;
                }
        dk_store_codes(out, at, code, width);
    }
    cnt[1] -= dk_lanes_sum(nden);
    cnt[3] -= dk_lanes_sum(nund);
    *done = i;
}

#define DK_ARITH_MODES(OP, BF, W)                                                                \
    do {                                                                                         \
        if (mode == DK_NEAREST)                                                                  \
            dk_arith_loop(OP, a, b, c, out, i0, n, f, &q, DK_NEAREST, seed, cnt, W, BF, &i);      \
        else if (mode == DK_STOCHASTIC)                                                          \
            dk_arith_loop(OP, a, b, c, out, i0, n, f, &q, DK_STOCHASTIC, seed, cnt, W, BF, &i);   \
        else                                                                                     \
            dk_arith_loop(OP, a, b, c, out, i0, n, f, &q, DK_TOWARD_ZERO, seed, cnt, W, BF, &i);  \
    } while (0)
#define DK_ARITH_OPS(BF, W)                                                                      \
    do {                                                                                         \
        if (op == DK_OP_ADD) DK_ARITH_MODES(DK_OP_ADD, BF, W);                                   \
        else if (op == DK_OP_SUB) DK_ARITH_MODES(DK_OP_SUB, BF, W);                              \
        else if (op == DK_OP_MUL) DK_ARITH_MODES(DK_OP_MUL, BF, W);                              \
        else DK_ARITH_MODES(DK_OP_FMA, BF, W);                                                   \
    } while (0)

/* The general vector path for BF16 over [i0, i0 + n), out of line (so that the fast loop
 * keeps its registers); returns how many elements it did (a multiple of DK_VL). */
static __attribute__((noinline)) int64_t
dk_bf16_general(int op, const void *a, const void *b, const void *c, void *out, int64_t i0, int64_t n,
                const dk_format *f, const dk_aconst *qp, int mode, uint64_t seed, int64_t cnt[4])
{
    const dk_aconst q = *qp;
    int64_t i = 0;
    DK_ARITH_OPS(1, 2);
    return i;
}

/* ---- BF16 fast path ---------------------------------------------------------------------
 * 2 * DK_VL BF16 codes per step, loaded as DK_VL 32-bit words: a word's low half is an even
 * element, whose FP32 value is (word << 16), its high half the next (odd) element, whose
 * value is (word & 0xFFFF0000); both halves are computed in place and packed back, so no
 * shuffles. A step whose operands and results are all plain (no subnormal, Inf or NaN
 * operand; no subnormal, Inf or NaN result; add/sub: zero results are exact; mul/fma: no
 * product at or below 2^-126; fma: no result below 2^-126) raises no flag and is finished
 * here. (When no flags are counted, nearest rounding does not test the operands: see
 * dk_bf16_run.) Nearest rounds FP32 s (fma: s rounded to odd, see the top of the file: on
 * AVX-512 the sum rounded toward zero with its last bit set where inexact, elsewhere by
 * TwoSum's t) to BF16 to nearest even: VCVTNE2PS2BF16 on the avx512bf16 tier (which reads an
 * FP32 subnormal as zero: add/sub send such sums to the general path, see dk_bf16_run), the
 * integer rounding elsewhere; stochastic rounds the exact s + t (dk_stoch_sum;
 * products of two BF16 values are exact; add/sub: TwoSum's t only in a step with an inexact
 * sum, found by two compares). Any other step goes through dk_bf16_general (the
 * general vector path and the scalar semantics), so its codes and flags are that path's. */
typedef uint16_t vw __attribute__((vector_size(DK_VL * 4))); /* 2 * DK_VL 16-bit lanes */

/* Nearest rounding to BF16 by VCVTNE2PS2BF16 where the tier has it (AVX512_BF16). */
#if DK_VL == 16 && defined(__AVX512BF16__)
#define DK_BF16_CVT 1
#else
#define DK_BF16_CVT 0
#endif

#if DK_VL == 16
/* The lanes where the FP32 sum u + v is inexact: rounded up != rounded down (AVX-512's
 * rounding per instruction; the compare into a mask register). */
__attribute__((always_inline)) static inline __mmask16 dk_sum_inexact(vf u, vf v)
{
    const int ru = _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC, rd = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    return _mm512_cmp_ps_mask(_mm512_add_round_ps((__m512)u, (__m512)v, ru),
                              _mm512_add_round_ps((__m512)u, (__m512)v, rd), _CMP_NEQ_UQ);
}
#endif

/* Lanes (16-bit) of BF16 codes whose magnitude bits m satisfy m - d < lo (unsigned) or m > hi:
 * (1, 0x7F, 0x7F7F) the subnormal, Inf and NaN codes; (0, 0x80, 0x7F7F) those and zeros.
 * A lane mask (dk_rare_t): on AVX-512 a mask register, which the compares write directly
 * (as vectors, each compare would cost a masked move more). */
#if DK_VL == 16
typedef __mmask32 dk_rare_t;
__attribute__((always_inline)) static inline dk_rare_t dk_bf16_rare(vw c, int d, int lo, int hi)
{
    const __m512i mag = _mm512_and_si512((__m512i)c, _mm512_set1_epi16(0x7FFF));
    return _mm512_cmplt_epu16_mask(_mm512_sub_epi16(mag, _mm512_set1_epi16((short)d)), _mm512_set1_epi16((short)lo)) |
           _mm512_cmpgt_epu16_mask(mag, _mm512_set1_epi16((short)hi));
}
#define DK_RARE_ANY(r) ((r) != 0)
#define DK_RARE_NONE 0
#else
typedef vw dk_rare_t;
__attribute__((always_inline)) static inline dk_rare_t dk_bf16_rare(vw c, int d, int lo, int hi)
{
    vw mag = c & 0x7FFF;
    return (vw)((vw)(mag - (uint16_t)d) < (uint16_t)lo) | (vw)(mag > (uint16_t)hi);
}
#define DK_RARE_ANY(r) dk_any((vi)(r))
#define DK_RARE_NONE ((vw){})
#endif
#define dk_bf16_rare_in(c) dk_bf16_rare((c), 1, 0x7F, 0x7F7F)

/* FP32 s (exact, or rounded to odd) of the even (lo) or odd (hi) halves to BF16 bits in the
 * top half of the word: round to nearest even, or stochastic with random numbers r (the
 * carry of f + r, f = the low half, as dk_bf16_stoch_vec). Only r >> 16 counts, so r may be
 * the random numbers' top halves (dk_splitmix_hi). */
__attribute__((always_inline)) static inline vu dk_bf16_round_half(vu s, vu r, int mode)
{
    if (mode == DK_NEAREST) return s + 0x7FFFu + ((s >> 16) & 1u);
    return s + (r >> 16); /* the carry of low + (r >> 16) into the top half (dk_bf16_stoch_vec) */
}

/* Stochastic rounding of the exact sum s + t (TwoSum: s the FP32 sum rounded to nearest,
 * |t| <= half an ulp u of s, t == 0 when s is exact) to m fraction bits on s's own exponent
 * (BF16: m = 7, the code in the top half of the word; a narrow format moved to FP32's
 * normal range: its normal results): FP32 bits whose top 9 + m bits are the rounded value,
 * the 23 - m dropped bits left for the caller to clear. With S = |s|, t' = t signed towards
 * |s| and k = 9 + m, (|s + t| - lo) / (hi - lo) * 2^32 = (S's dropped bits) * 2^k + (t' / u) * 2^k,
 * and t' / u * 2^k = sig(t) * 2^(e(t) - e(s) + k) with e(t) <= e(s) - 24, so its floor is an
 * integer shift (rounded down: a right shift for t' > 0, minus the rounded-up shift for t' < 0).
 * A negative sum of the two borrows from S's kept part: the lower neighbour is one step
 * 2^(23 - m) below S's truncation, the same step unless S is a power of two, whose lanes (the
 * step below is half) are marked in *bad for the general path. Then the carry of f + r adds
 * one step. */
__attribute__((always_inline)) static inline vu dk_stoch_sum(vu s, vf t, vu r, int m, vi *bad)
{
#if DK_VL == 16
    /* AVX-512: floor(t'/u 2^k) in floating point. For a normal s, u = 2^(e - 23) with
     * e = getexp(s), so t'/u 2^k = t' 2^(23 + k - e): VSCALEFPS rounded down, then converted
     * rounding down. Both round down, so the floor is exact even where the scaled value is
     * not (an integer of at most 2^(k-1) lies below it exactly when it lies below the
     * rounded-down value); a tiny negative t' scales to a negative subnormal, not -0, so its
     * floor is -1. Where t is 0 (s exact, which it is whenever s is zero or subnormal) X is 0
     * by the mask, as getexp(0) is -Inf. An Inf s (a sum that overflowed) has a NaN t and
     * gives X = INT_MIN: a borrow below a power of two, so `bad` sends it to the general path. */
    const int rd = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    const __m512 k = _mm512_sub_ps(_mm512_set1_ps((float)(32 + m)), _mm512_getexp_ps((__m512)s));
    const __m512 tt = (__m512)_mm512_ternarylogic_epi32((__m512i)t, (__m512i)s, _mm512_set1_epi32((int)0x80000000),
                                                        0x78); /* t ^ (s & sign): t' */
    const __mmask16 tnz = _mm512_test_epi32_mask((__m512i)t, _mm512_set1_epi32(0x7FFFFFFF));
    const __m512i X = _mm512_maskz_cvt_roundps_epi32(tnz, _mm512_scalef_round_ps(tt, k, rd), rd);
    const __m512i low = _mm512_sll_epi32((__m512i)s, _mm_cvtsi32_si128(9 + m));
    const __m512i f = _mm512_add_epi32(low, X);
    /* a negative sum wrapped below zero */
    const __mmask16 borrow = _mm512_mask_cmpgt_epu32_mask(_mm512_movepi32_mask(X), f, low);
    const __mmask16 pow2 = _mm512_mask_testn_epi32_mask(borrow, (__m512i)s, _mm512_set1_epi32(0x7FFFFF));
    *bad = (vi)_mm512_mask_mov_epi32((__m512i)*bad, pow2, _mm512_set1_epi32(-1));
    const __mmask16 up = _mm512_cmplt_epu32_mask(_mm512_add_epi32(f, (__m512i)r), f);
    const __m512i step = _mm512_set1_epi32(1 << (23 - m));
    const __m512i down = _mm512_mask_sub_epi32((__m512i)s, borrow, (__m512i)s, step);
    return (vu)_mm512_mask_add_epi32(down, up, down, step);
#else
    const vu S = s & 0x7FFFFFFFu;
    const vi es = VMAX((vi)(S >> 23), (vi){} + 1);
    vi tneg;
    const vu X = dk_floor_tail(s, (vu)t, es - (9 + m), &tneg); /* floor(t'/u 2^k) */
    const vu low = S << (9 + m), f = low + X;
    const vi borrow = tneg & (f > low); /* wrapped below zero */
    *bad |= borrow & ((S & 0x7FFFFFu) == 0);
    const vi up = (vi)((f + r) < f);
    return s + ((vu)(borrow - up) << (23 - m));
#endif
}

/* Random numbers of the even and of the odd elements of the 2 * DK_VL elements of a step:
 * SplitMix64 states in four vectors (even elements' two halves, odd elements' two halves). */
typedef struct { vq el, eh, ol, oh; } dk_rng2;

static inline dk_rng2 dk_rng2_at(uint64_t seed, uint64_t i0)
{
    dk_rng2 g;
    for (int j = 0; j < DK_VL / 2; j++) {
        g.el[j] = dk_splitmix_state(seed, i0 + 2u * (uint64_t)j);
        g.eh[j] = dk_splitmix_state(seed, i0 + 2u * (uint64_t)(j + DK_VL / 2));
        g.ol[j] = dk_splitmix_state(seed, i0 + 2u * (uint64_t)j + 1u);
        g.oh[j] = dk_splitmix_state(seed, i0 + 2u * (uint64_t)(j + DK_VL / 2) + 1u);
    }
    return g;
}

__attribute__((always_inline)) static inline int64_t
dk_bf16_run(int op, int mode, int counted, const void *a, const void *b, const void *c, void *out,
            int64_t i0, int64_t n, uint64_t seed)
{
    const int64_t step = 2 * DK_VL;
    const uint64_t G2 = (uint64_t)step * DK_SPLITMIX_GAMMA;
    dk_rng2 g = {};
    if (mode == DK_STOCHASTIC) g = dk_rng2_at(seed, (uint64_t)i0);
    const vu HI = (vu){} + 0xFFFF0000u;
    int64_t i = 0;
    for (; i + step <= n; i += step) {
        const int64_t at = i0 + i;
        __builtin_prefetch((const uint16_t *)a + at + DK_PREFETCH);
        __builtin_prefetch((const uint16_t *)b + at + DK_PREFETCH);
        if (op == DK_OP_FMA) __builtin_prefetch((const uint16_t *)c + at + DK_PREFETCH);
        vu wa, wb, wc = {};
        memcpy(&wa, (const uint16_t *)a + at, sizeof wa);
        memcpy(&wb, (const uint16_t *)b + at, sizeof wb);
        /* operands that are not plain: the general path, for their flags (denormal), or where
         * the fast path may differ (stochastic). Uncounted nearest needs no such test: a
         * subnormal operand is exact in FP32 (the MXCSR is the default: no DAZ) and any step
         * whose result is not plain leaves below, as does any Inf or NaN operand (it makes
         * an Inf or NaN result, or a product at or below 2^-126 that goes there too). */
        const int check_in = counted || mode != DK_NEAREST;
        dk_rare_t rare = DK_RARE_NONE;
        if (check_in) rare = dk_bf16_rare_in((vw)wa) | dk_bf16_rare_in((vw)wb);
        vf xl = (vf)(wa << 16), xh = (vf)(wa & HI), yl = (vf)(wb << 16), yh = (vf)(wb & HI);
        /* the random numbers' top halves (dk_splitmix_hi): r >> 16 == h >> 16, and the full
         * r (dk_splitmix_r) only for an inexact sum */
        vu hl = {}, hh = {};
        if (mode == DK_STOCHASTIC) {
            hl = dk_splitmix_hi(&g.el, &g.eh, G2);
            hh = dk_splitmix_hi(&g.ol, &g.oh, G2);
        }
        vu sl, sh;
        int inexact = 0; /* a lane where s != u + v (stochastic add, sub, fma) */
        vi bad = {}; /* 32-bit lanes: a half needing the general path */
        vf ul = {}, uh = {}, vl = {}, vh2 = {}; /* the addends (add, sub, fma) */
        if (op == DK_OP_MUL) {
            vf pl = xl * yl, ph = xh * yh;
            sl = (vu)pl;
            sh = (vu)ph;
            /* products at or below 2^-126 (FP32 may have rounded them; zero ones too) */
            bad = ((vi)(sl & 0x7FFFFFFFu) <= 0x00800000) | ((vi)(sh & 0x7FFFFFFFu) <= 0x00800000);
        } else {
            ul = xl, uh = xh, vl = yl, vh2 = yh;
            if (op == DK_OP_SUB) {
                vl = (vf)((vu)yl ^ 0x80000000u);
                vh2 = (vf)((vu)yh ^ 0x80000000u);
            }
            if (op == DK_OP_FMA) {
                memcpy(&wc, (const uint16_t *)c + at, sizeof wc);
                if (check_in) rare |= dk_bf16_rare_in((vw)wc);
                ul = xl * yl;
                uh = xh * yh;
                bad = ((vi)((vu)ul & 0x7FFFFFFFu) <= 0x00800000) | ((vi)((vu)uh & 0x7FFFFFFFu) <= 0x00800000);
                vl = (vf)(wc << 16);
                vh2 = (vf)(wc & HI);
            }
            vf s1 = ul + vl, s2 = uh + vh2;
            sl = (vu)s1;
            sh = (vu)s2;
            if (mode == DK_STOCHASTIC) {
#if DK_VL == 16
                inexact = (dk_sum_inexact(ul, vl) | dk_sum_inexact(uh, vh2)) != 0;
#else
                /* s == u + v exactly iff s - u == v and s - v == u: with |u| >= |v| (or the
                 * other way round) s - u is exact (Fast2Sum's lemma; round to nearest, s
                 * finite: an infinite s fails both tests), so it equals v only if s is
                 * exact. */
                inexact = dk_any(((s1 - ul) != vl) | ((s1 - vl) != ul) | ((s2 - uh) != vh2) | ((s2 - vh2) != uh));
#endif
            } else if (op == DK_OP_FMA && DK_VL == 16) {
#if DK_VL == 16
                /* round to odd by AVX-512's rounding per instruction: the sum rounded toward
                 * zero, its last bit set where it is inexact (rounded up != rounded down) */
                const int rz = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
                const __m512i one = _mm512_set1_epi32(1);
                const __m512 z1 = _mm512_add_round_ps((__m512)ul, (__m512)vl, rz);
                const __m512 z2 = _mm512_add_round_ps((__m512)uh, (__m512)vh2, rz);
                sl = (vu)_mm512_mask_or_epi32((__m512i)z1, dk_sum_inexact(ul, vl), (__m512i)z1, one);
                sh = (vu)_mm512_mask_or_epi32((__m512i)z2, dk_sum_inexact(uh, vh2), (__m512i)z2, one);
#endif
            } else if (op == DK_OP_FMA) { /* round to odd by TwoSum: s + t == u + v exactly */
                sl = (vu)dk_round_odd((vi)sl, DK_BITS(dk_two_sum_err(ul, vl, s1)));
                sh = (vu)dk_round_odd((vi)sh, DK_BITS(dk_two_sum_err(uh, vh2, s2)));
            }
        }
        vu code;
#if DK_BF16_CVT
        if (mode == DK_NEAREST) {
            /* FP32 -> BF16 to nearest even in one instruction (two vectors in, the halves of
             * the result out; the permute puts each element back in its 16-bit lane). It
             * reads FP32 subnormals as zero: products and fma results below 2^-126 leave
             * anyway (bad; fma's zero results), and add/sub leave where s is subnormal. */
            const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
            code = (vu)_mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh((__m512)sh, (__m512)sl));
            /* (a 16-lane mask over the 32-bit words, ORed into the 32-lane mask over the
             * 16-bit codes: rare is only ever tested for any lane set, DK_RARE_ANY) */
            if (op == DK_OP_ADD || op == DK_OP_SUB)
                rare |= (dk_rare_t)(_mm512_fpclass_ps_mask((__m512)sl, 0x20) | _mm512_fpclass_ps_mask((__m512)sh, 0x20));
        } else
#endif
        {
            vu wl, wh; /* the codes in the top halves */
            /* (sums of BF16 values are mostly exact: then the plain carry, as for products) */
            if (mode == DK_STOCHASTIC && op != DK_OP_MUL && inexact) {
                /* TwoSum: s + t == u + v exactly */
                const vf tl = dk_two_sum_err(ul, vl, (vf)sl), th = dk_two_sum_err(uh, vh2, (vf)sh);
                wl = dk_stoch_sum(sl, tl, dk_splitmix_r(hl), 7, &bad);
                wh = dk_stoch_sum(sh, th, dk_splitmix_r(hh), 7, &bad);
            } else {
                wl = dk_bf16_round_half(sl, hl, mode);
                wh = dk_bf16_round_half(sh, hh, mode);
            }
            code = (wh & HI) | (wl >> 16);
        }
        /* fma: a zero result may be inexact (underflow): zeros go to the general path too */
        rare |= op == DK_OP_FMA ? dk_bf16_rare((vw)code, 0, 0x80, 0x7F7F) : dk_bf16_rare_in((vw)code);
        if (__builtin_expect(DK_RARE_ANY(rare) | dk_any(bad), 0)) break;
        memcpy((uint16_t *)out + at, &code, sizeof code);
    }
    return i;
}

/* The fast loop up to a step it cannot finish, that step by the general path, and on. The
 * call sits outside the loop: across a call every vector register is lost, so inside it
 * the compiler would keep the loop's state (random states, constants) in memory. */
__attribute__((always_inline)) static inline int64_t
dk_bf16_fast(int op, int mode, int counted, const void *a, const void *b, const void *c, void *out,
             int64_t i0, int64_t n, const dk_format *f, const dk_aconst *q, uint64_t seed,
             int64_t cnt[4])
{
    const int64_t step = 2 * DK_VL;
    int64_t i = 0;
    for (;;) {
        i += dk_bf16_run(op, mode, counted, a, b, c, out, i0 + i, n - i, seed);
        if (i + step > n) return i;
        dk_bf16_general(op, a, b, c, out, i0 + i, step, f, q, mode, seed, cnt);
        i += step;
    }
}

/* The general vector path for the narrow formats (every one but BF16 and FP32) over
 * [i0, i0 + n), out of line (see dk_narrow_fast); returns how many elements it did (a
 * multiple of DK_VL). */
static __attribute__((noinline)) int64_t
dk_narrow_general(int op, const void *a, const void *b, const void *c, void *out, int64_t i0, int64_t n,
                  const dk_format *f, const dk_aconst *qp, int mode, uint64_t seed, int64_t cnt[4],
                  int width)
{
    const dk_aconst q = *qp;
    int64_t i = 0;
    if (width == 1) DK_ARITH_OPS(0, 1);
    else DK_ARITH_OPS(0, 2);
    return i;
}

#ifndef DK_ARITH_ONLY
/* ---- Narrow formats' fast path (CFloat8, SHP, UHP: add, sub, mul, fma; nearest, stochastic)
 * DK_VL codes per step. A step is finished here when its operands are plain (no Inf or NaN;
 * when flags are counted, no subnormal either: the denormal flag), the FP32 result s
 * stands for the exact one or is rounded with its error (products of two scaled operands
 * are exact, see the top of the file; nearest fma: s rounded to odd by TwoSum's t;
 * stochastic add/sub/fma with t != 0 in some lane: the exact s + t rounded by dk_stoch_sum,
 * for a step whose results all lie in the normal range) and no result code lies in the top
 * binade (overflow, Inf, NaN, UHP's negative results). The results round on FP32's own bits
 * (dk_quant_plain: normal results and zeros); a signed format's other lanes (tiny, Tesla
 * gap) by dk_quant_rest, as quantize rounds them, when no flags are counted (the underflow
 * flag is the general path's) and every sum is exact. Any other step goes through
 * dk_narrow_general. No call inside the loop: across a call every vector register is lost. */
__attribute__((always_inline)) static inline int64_t
dk_narrow_run(int op, int mode, int width, int is_signed, int counted, const void *a, const void *b,
              const void *c, void *out, int64_t i0, int64_t n, const dk_aconst *q, const dk_qloop *qc,
              uint64_t seed)
{
    vq lo = {}, hi = {};
    if (mode == DK_STOCHASTIC) {
        const dk_rng g = dk_rng_at_fast(seed, (uint64_t)i0);
        lo = g.lo;
        hi = g.hi;
    }
    const int m = q->m;
    const int32_t emask = (1 << q->ebits) - 1;
    int64_t i = 0;
    for (; i + DK_VL <= n; i += DK_VL) {
        const int64_t at = i0 + i;
        __builtin_prefetch((const char *)a + (at + DK_PREFETCH) * width);
        __builtin_prefetch((const char *)b + (at + DK_PREFETCH) * width);
        if (op == DK_OP_FMA) __builtin_prefetch((const char *)c + (at + DK_PREFETCH) * width);
        const vi ca = dk_load_codes(a, at, width), cb = dk_load_codes(b, at, width);
        vi bad = dk_arith_infnan(ca, q) | dk_arith_infnan(cb, q);
        if (counted) bad |= dk_arith_subnormal(ca, q) | dk_arith_subnormal(cb, q);
        vf x = DK_FLT(dk_arith_decode(ca, q, q->dab, q->subab, 0));
        vf y = DK_FLT(dk_arith_decode(cb, q, q->dab, q->subab, 0));
        vf s, t = {};
        int inexact = 0; /* stochastic: a lane whose FP32 sum is not exact */
        if (op == DK_OP_MUL) {
            s = x * y;
        } else {
            if (op == DK_OP_SUB) y = DK_FLT(DK_BITS(y) ^ (int32_t)0x80000000);
            if (op == DK_OP_FMA) { /* x * y (exact) + c, c scaled as the product */
                const vi cc = dk_load_codes(c, at, width);
                bad |= dk_arith_infnan(cc, q);
                if (counted) bad |= dk_arith_subnormal(cc, q);
                x = x * y;
                y = DK_FLT(dk_arith_decode(cc, q, q->dc, q->subc, 0));
            }
            s = x + y;
            if (mode == DK_STOCHASTIC || op == DK_OP_FMA) {
                t = dk_two_sum_err(x, y, s);
                /* 16-bit formats' fma: products of up to 22 bits make about half the steps
                 * inexact (SHP, normal data), and a branch taken at random cost more than
                 * the exact rounding it saves (0.55 against 0.80 Gelem/s): no test */
                if (mode == DK_STOCHASTIC)
                    inexact = (op == DK_OP_FMA && width == 2) || dk_any((DK_BITS(t) & 0x7FFFFFFF) != 0);
                else s = DK_FLT(dk_round_odd(DK_BITS(s), DK_BITS(t)));
            }
        }
        vu h = {};
        if (mode == DK_STOCHASTIC) h = dk_rng_next_hi(&lo, &hi);
        vi plain, code;
        unsigned notmask;
        if (mode == DK_STOCHASTIC && inexact) {
            /* the exact s + t rounded on the format's grid in the normal range (dk_stoch_sum;
             * for lanes with t == 0 it rounds s as dk_quant_plain would), its dropped bits
             * cleared (else a sum just past max rounded down to max would not be plain: the
             * general path, same codes), then the code of that grid value. Any other lane
             * (tiny, Tesla gap, past max, a borrow below a power of two) sends the step to
             * the general path. */
            const vi v = (vi)dk_stoch_sum((vu)s, t, dk_splitmix_r(h), m, &bad) & qc->keep;
            code = dk_quant_plain(v, h, qc, &q->k, DK_TOWARD_ZERO, is_signed, 0, &plain, &notmask);
            if (notmask != 0) break;
        } else {
            code = dk_quant_plain(DK_BITS(s), h, qc, &q->k, mode, is_signed, 0, &plain, &notmask);
        }
        if (__builtin_expect(notmask != 0, 0)) {
            if (!is_signed || counted) break;
            code = dk_quant_rest(DK_BITS(s), dk_splitmix_r(h), code, plain, &q->moved, qc, &q->k, mode,
                                 q->k.tesla, q->k.flush, q->inf_nan, 1, 0);
        }
        bad |= ((code >> m) & emask) >= q->emaxf;
        if (__builtin_expect(dk_any(bad), 0)) break;
        dk_store_codes(out, at, code, width);
    }
    return i;
}

/* The fast loop up to a step it cannot finish, that step by the general path, and on (the
 * call outside the loop, as dk_bf16_fast). Where the fast loop keeps stopping within a few
 * steps (many tiny results with flags counted, say), the general path takes twice as many
 * steps each time, up to 64, so that its set-up per call is spread over them. Returns how
 * many elements it did. */
__attribute__((always_inline)) static inline int64_t
dk_narrow_fast(int op, int mode, int width, int is_signed, int counted, const void *a, const void *b,
               const void *c, void *out, int64_t i0, int64_t n, const dk_format *f, const dk_aconst *q, uint64_t seed,
               int64_t cnt[4])
{
    const dk_qloop qc = dk_qloop_of(&q->moved, &q->k);
    int64_t i = 0, span = DK_VL;
    for (;;) {
        const int64_t d = dk_narrow_run(op, mode, width, is_signed, counted, a, b, c, out, i0 + i,
                                        n - i, q, &qc, seed);
        i += d;
        if (i + DK_VL > n) return i;
        span = d >= 4 * DK_VL ? DK_VL : span < 64 * DK_VL ? 2 * span : span;
        i += dk_narrow_general(op, a, b, c, out, i0 + i, n - i < span ? n - i : span, f, q, mode, seed,
                               cnt, width);
    }
}
#endif

void DK_FN(dk_arith_block)(int op, const void *a, const void *b, const void *c, void *out, int64_t i0,
                           int64_t n, const dk_format *f, int mode, uint64_t seed, int64_t cnt[4])
{
    const int width = dk_code_width(f);
    int64_t i = 0;
    int64_t uncounted[4] = {0, 0, 0, 0};
    const int counted = cnt != NULL; /* NULL: the caller wants no flags */
    if (!counted) cnt = uncounted;
    if (f->mbits <= 11 && width <= 2) {
        const dk_aconst q = dk_aconst_of(f, op);
        if (q.bf16 && mode != DK_TOWARD_ZERO) {
            /* the fast path, then the general one for the tail */
            int64_t d;
#define DK_FAST(OP, MODE, C) dk_bf16_fast(OP, MODE, C, a, b, c, out, i0, n, f, &q, seed, cnt)
#define DK_FAST_OPS(MODE, C)                                                                    \
    (op == DK_OP_ADD ? DK_FAST(DK_OP_ADD, MODE, C) : op == DK_OP_SUB ? DK_FAST(DK_OP_SUB, MODE, C) \
     : op == DK_OP_MUL ? DK_FAST(DK_OP_MUL, MODE, C) : DK_FAST(DK_OP_FMA, MODE, C))
            if (mode == DK_NEAREST)
                d = counted ? DK_FAST_OPS(DK_NEAREST, 1) : DK_FAST_OPS(DK_NEAREST, 0);
            else
                d = DK_FAST_OPS(DK_STOCHASTIC, 1);
#undef DK_FAST_OPS
#undef DK_FAST
            i = d + dk_bf16_general(op, a, b, c, out, i0 + d, n - d, f, &q, mode, seed, cnt);
        } else if (q.bf16) {
            DK_ARITH_OPS(1, 2);
        }
        else {
#ifndef DK_ARITH_ONLY
            /* (8-bit formats are all signed; the fast loop is built for signed 8-bit and
             * for 16-bit formats of either kind) */
            if (mode != DK_TOWARD_ZERO && (q.is_signed || width == 2)) {
#define DK_NARROW(OP, MODE, W, SG) dk_narrow_fast(OP, MODE, W, SG, counted, a, b, c, out, i0, n, f, &q, seed, cnt)
#define DK_NARROW_FMT(OP, MODE)                                                                 \
    (width == 1 ? DK_NARROW(OP, MODE, 1, 1)                                                     \
     : q.is_signed ? DK_NARROW(OP, MODE, 2, 1) : DK_NARROW(OP, MODE, 2, 0))
#define DK_NARROW_OPS(MODE)                                                                     \
    (op == DK_OP_ADD ? DK_NARROW_FMT(DK_OP_ADD, MODE)                                           \
     : op == DK_OP_SUB ? DK_NARROW_FMT(DK_OP_SUB, MODE) : op == DK_OP_MUL ? DK_NARROW_FMT(DK_OP_MUL, MODE) \
     : DK_NARROW_FMT(DK_OP_FMA, MODE))
                i = mode == DK_NEAREST ? DK_NARROW_OPS(DK_NEAREST) : DK_NARROW_OPS(DK_STOCHASTIC);
#undef DK_NARROW_OPS
#undef DK_NARROW_FMT
#undef DK_NARROW
            }
#endif
            i += dk_narrow_general(op, a, b, c, out, i0 + i, n - i, f, &q, mode, seed, cnt, width);
        }
    }
    for (; i < n; i++) {
        unsigned fl = 0;
        dk_store_code(out, i0 + i, dk_arith_elem(op, a, b, c, i0 + i, f, mode, seed, &fl), width);
        cnt[0] += (fl & DK_FL_INVALID) != 0;
        cnt[1] += (fl & DK_FL_DENORMAL) != 0;
        cnt[2] += (fl & DK_FL_OVERFLOW) != 0;
        cnt[3] += (fl & DK_FL_UNDERFLOW) != 0;
    }
}
#undef DK_ARITH_OPS
#undef DK_ARITH_MODES
