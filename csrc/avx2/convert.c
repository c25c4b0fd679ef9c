/* FP32 <-> format conversions and arithmetic on codes, AVX2 + FMA + F16C tier (8 lanes). */
#define DK_TIER avx2
#define DK_VL 8
#include "dk_convert_body.h"
#include "dk_arith_body.h"
