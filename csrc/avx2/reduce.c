/* avx2 tier of the all-reduce kernels (body: include/dk_reduce_body.h). */
#define DK_SFX avx2
#include "dk_reduce_body.h"
