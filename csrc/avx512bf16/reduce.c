/* avx512bf16 tier of the all-reduce kernels (body: include/dk_reduce_body.h). */
#define DK_SFX avx512bf16
#include "dk_reduce_body.h"
