/* FP32 <-> format conversions, portable tier: the scalar semantics of dk_format.h. */
#include <string.h>

#include "dk_convert.h"

void dk_quantize_f32_generic(const float *x, void *out, int64_t n, const dk_format *f, int mode,
                             uint64_t seed, int64_t index0)
{
    const int width = dk_code_width(f);
    for (int64_t i = 0; i < n; i++) {
        unsigned fl = 0;
        uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)(index0 + i)) : 0u;
        uint32_t c;
        if (width == 2 && f->ebits == 8 && mode == DK_NEAREST) /* BF16 */
            c = dk_bf16_from_f32_bits(dk_fbits(x[i]));
        else
            c = dk_round(dk_f32_to_f64(x[i]), 0.0, f, mode, r, &fl);
        dk_store_code(out, i, c, width);
    }
}

void dk_dequantize_f32_generic(const void *codes, float *out, int64_t n, const dk_format *f)
{
    const int width = dk_code_width(f);
    if (width == 4) {
        memcpy(out, codes, (size_t)n * 4);
        return;
    }
    float table[256];
    if (width == 1)
        for (uint32_t c = 0; c < 256; c++) {
            uint32_t b = dk_decode_f32bits(c, f);
            memcpy(&table[c], &b, 4);
        }
    for (int64_t i = 0; i < n; i++) {
        if (width == 1) {
            out[i] = table[((const uint8_t *)codes)[i]];
        } else {
            uint32_t b = dk_decode_f32bits(dk_load_code(codes, i, width), f);
            memcpy(out + i, &b, 4);
        }
    }
}

void dk_fake_quantize_f32_generic(const float *x, float *out, int64_t n, const dk_format *f,
                                  int mode, uint64_t seed, int64_t index0)
{
    const int bf16 = f->ebits == 8 && f->mbits == 7;
    for (int64_t i = 0; i < n; i++) {
        unsigned fl = 0;
        uint32_t r = mode == DK_STOCHASTIC ? dk_splitmix32(seed, (uint64_t)(index0 + i)) : 0u;
        uint32_t c = bf16 && mode == DK_NEAREST ? dk_bf16_from_f32_bits(dk_fbits(x[i]))
                                                : dk_round(dk_f32_to_f64(x[i]), 0.0, f, mode, r, &fl);
        uint32_t b = dk_decode_f32bits(c, f);
        memcpy(out + i, &b, 4);
    }
}
