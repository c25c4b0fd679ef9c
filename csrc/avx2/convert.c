/* FP32 <-> format conversions, AVX2 + FMA + F16C tier (8 lanes). */
#define DK_TIER avx2
#define DK_VL 8
#include "dk_convert_body.h"
