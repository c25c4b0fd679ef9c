/* Arithmetic on codes, portable tier: the SIMD body on 4-lane vectors (SSE2 on x86-64). */
#define DK_TIER generic
#define DK_VL 4
#define DK_ARITH_ONLY
#include "dk_convert_body.h"
#include "dk_arith_body.h"
