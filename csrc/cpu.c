/* cpu.c - which ISA tier this CPU can run, from cpuid and xgetbv.
 * Baseline code: compiled without any SIMD flags. */
#include "dk_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

unsigned dk_cpu_features(void)
{
    unsigned a, b, c, d, f = 0, max_leaf = __get_cpuid_max(0, 0);
    if (max_leaf < 1) return 0;
    __cpuid(1, a, b, c, d);
    if (d & (1u << 26)) f |= DK_CPU_SSE2;
    int osxsave = (c >> 27) & 1;
    if (c & (1u << 12)) f |= DK_CPU_FMA;
    if (c & (1u << 28)) f |= DK_CPU_AVX;
    if (c & (1u << 29)) f |= DK_CPU_F16C;
    if (osxsave) {
        uint64_t xcr0 = xgetbv0();
        if ((xcr0 & 0x6) == 0x6) f |= DK_CPU_OS_YMM;
        if ((xcr0 & 0xE6) == 0xE6) f |= DK_CPU_OS_ZMM;  /* opmask, ZMM_Hi256, Hi16_ZMM */
    }
    if (max_leaf >= 7) {
        unsigned max7;
        __cpuid_count(7, 0, max7, b, c, d);
        if (b & (1u << 5)) f |= DK_CPU_AVX2;
        if (b & (1u << 16)) f |= DK_CPU_AVX512F;
        if (b & (1u << 17)) f |= DK_CPU_AVX512DQ;
        if (b & (1u << 30)) f |= DK_CPU_AVX512BW;
        if (b & (1u << 31)) f |= DK_CPU_AVX512VL;
        if (c & (1u << 11)) f |= DK_CPU_AVX512VNNI;
        if (max7 >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (a & (1u << 5)) f |= DK_CPU_AVX512BF16;
        }
    }
    return f;
}
#else
unsigned dk_cpu_features(void) { return 0; }
#endif

int dk_cpu_best_isa(void)
{
    unsigned f = dk_cpu_features();
    const unsigned avx2 = DK_CPU_AVX | DK_CPU_AVX2 | DK_CPU_FMA | DK_CPU_F16C | DK_CPU_OS_YMM;
    const unsigned avx512 = avx2 | DK_CPU_AVX512F | DK_CPU_AVX512DQ | DK_CPU_AVX512BW |
                            DK_CPU_AVX512VL | DK_CPU_AVX512VNNI | DK_CPU_AVX512BF16 | DK_CPU_OS_ZMM;
    if ((f & avx512) == avx512) return DK_ISA_AVX512BF16;
    if ((f & avx2) == avx2) return DK_ISA_AVX2;
    return DK_ISA_GENERIC;
}
