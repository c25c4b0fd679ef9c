/* FP32 <-> format conversions and arithmetic on codes, AVX-512 tier (16 lanes). */
#define DK_TIER avx512bf16
#define DK_VL 16
#include "dk_convert_body.h"
#include "dk_arith_body.h"
