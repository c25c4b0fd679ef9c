/* dk_cpu.h - run-time CPU feature detection (cpuid + xgetbv, baseline code). */
#ifndef DK_CPU_H
#define DK_CPU_H

#include "dk_common.h"

/* Feature bits reported by dk_cpu_features(). */
enum {
    DK_CPU_SSE2 = 1u << 0, DK_CPU_AVX = 1u << 1, DK_CPU_FMA = 1u << 2, DK_CPU_F16C = 1u << 3,
    DK_CPU_AVX2 = 1u << 4, DK_CPU_AVX512F = 1u << 5, DK_CPU_AVX512DQ = 1u << 6,
    DK_CPU_AVX512BW = 1u << 7, DK_CPU_AVX512VL = 1u << 8, DK_CPU_AVX512VNNI = 1u << 9,
    DK_CPU_AVX512BF16 = 1u << 10, DK_CPU_OS_YMM = 1u << 11, DK_CPU_OS_ZMM = 1u << 12,
    DK_CPU_AMX_TILE = 1u << 13, DK_CPU_AMX_BF16 = 1u << 14,
    DK_CPU_OS_AMX = 1u << 15,     /* XCR0 enables XTILECFG and XTILEDATA (bits 17, 18) */
    DK_CPU_AMX_GRANTED = 1u << 16 /* Linux granted this process the tile-data state */
};

/* Bit set of the DK_CPU_* features the CPU and the OS both support. */
unsigned dk_cpu_features(void);
/* Best tier this CPU can run (an enum dk_isa). */
int dk_cpu_best_isa(void);

/* Ask Linux, once per process, for permission to use the AMX tile-data state
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)). Returns 1 when granted (or
 * already granted), 0 when refused or not applicable (no AMX, not Linux, old kernel,
 * seccomp). Thread-safe; the answer is computed once. dk_cpu_features() reports it as
 * DK_CPU_AMX_GRANTED, and the AMX tier is offered only when it is 1. */
int dk_cpu_amx_request(void);

#endif
