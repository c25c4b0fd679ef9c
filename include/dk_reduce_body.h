/* dk_reduce_body.h - elementwise all-reduce kernels, compiled once per ISA tier.
 * Include with DK_SFX defined (generic, avx2, avx512bf16). GCC vector extensions of 64
 * bytes: one zmm on the AVX-512 tier, two ymm on AVX2, four xmm on the baseline. Every
 * vector is loaded before the store, so out may alias a or b exactly. The scalar tails use
 * the scalar semantics of dk_common.h; all tiers give the same bits. */
#include <string.h>
#include "dk_reduce.h"

#define DK_CAT2(a, b) a##_##b
#define DK_CAT(a, b) DK_CAT2(a, b)
#define DK_FN(name) DK_CAT(name, DK_SFX)

typedef float dk_v16f __attribute__((vector_size(64)));
typedef uint32_t dk_v16u __attribute__((vector_size(64)));
typedef uint16_t dk_v16h __attribute__((vector_size(32)));

static inline dk_v16f dk_ld(const float *p) { dk_v16f v; memcpy(&v, p, 64); return v; }
static inline void dk_st(float *p, dk_v16f v) { memcpy(p, &v, 64); }

static inline float dk_round_bf16_scalar(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u = dk_f32_bits_from_bf16(dk_bf16_from_f32_bits(u));
    memcpy(&x, &u, 4);
    return x;
}

/* FP32 bits -> FP32 bits of the nearest-even BF16 (NaN -> sign | quiet NaN). */
static inline dk_v16u dk_round_bits(dk_v16u u)
{
    const dk_v16u absmask = (dk_v16u){0} + 0x7FFFFFFFu;
    dk_v16u isnan = (u & absmask) > ((dk_v16u){0} + 0x7F800000u); /* all-ones where NaN */
    dk_v16u r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    dk_v16u q = (u & 0x80000000u) | 0x7FC00000u;
    return (isnan & q) | (~isnan & r);
}

void DK_FN(dk_reduce_add_f32)(float *out, const float *a, const float *b, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        dk_v16f x = dk_ld(a + i), y = dk_ld(b + i);
        dk_st(out + i, x + y);
    }
    for (; i < n; i++) out[i] = a[i] + b[i];
}

void DK_FN(dk_reduce_add_bf16r)(float *out, const float *a, const float *b, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        dk_v16f s = dk_ld(a + i) + dk_ld(b + i);
        dk_v16u u;
        memcpy(&u, &s, 64);
        u = dk_round_bits(u);
        memcpy(out + i, &u, 64);
    }
    for (; i < n; i++) out[i] = dk_round_bf16_scalar(a[i] + b[i]);
}

void DK_FN(dk_reduce_widen)(float *out, const uint16_t *in, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        dk_v16h h;
        memcpy(&h, in + i, 32);
        dk_v16u u = __builtin_convertvector(h, dk_v16u) << 16;
        memcpy(out + i, &u, 64);
    }
    for (; i < n; i++) {
        uint32_t u = dk_f32_bits_from_bf16(in[i]);
        memcpy(out + i, &u, 4);
    }
}

void DK_FN(dk_reduce_narrow)(uint16_t *out, const float *in, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        dk_v16u u;
        memcpy(&u, in + i, 64);
        u = dk_round_bits(u) >> 16;
        dk_v16h h = __builtin_convertvector(u, dk_v16h);
        memcpy(out + i, &h, 32);
    }
    for (; i < n; i++) {
        uint32_t u;
        memcpy(&u, in + i, 4);
        out[i] = dk_bf16_from_f32_bits(u);
    }
}
