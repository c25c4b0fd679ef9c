/* generic tier of the all-reduce kernels (body: include/dk_reduce_body.h). */
#define DK_SFX generic
#include "dk_reduce_body.h"
