/* cpu.c - which ISA tier this CPU can run, from cpuid and xgetbv, and the Linux
 * permission request for the AMX tile-data state. Baseline code: no SIMD flags. */
#define _GNU_SOURCE
#include "dk_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <stdlib.h>
#if defined(__linux__)
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* The features cpuid reports and the OS enables (not the AMX permission). */
static unsigned raw_features(void)
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
        if ((xcr0 & 0x60000) == 0x60000) f |= DK_CPU_OS_AMX;  /* XTILECFG, XTILEDATA */
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
        if (d & (1u << 22)) f |= DK_CPU_AMX_BF16;
        if (d & (1u << 24)) f |= DK_CPU_AMX_TILE;
        if (max7 >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (a & (1u << 5)) f |= DK_CPU_AVX512BF16;
        }
    }
    return f;
}

#if defined(__linux__)
#define DK_ARCH_GET_XCOMP_PERM 0x1022
#define DK_ARCH_REQ_XCOMP_PERM 0x1023
#define DK_XFEATURE_XTILEDATA 18

static int amx_granted;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_request_once(void)
{
    const unsigned need = DK_CPU_AMX_TILE | DK_CPU_AMX_BF16 | DK_CPU_OS_AMX;
    if ((raw_features() & need) != need) return;
    if (getenv("DOJO_KERNELS_NO_AMX_REQUEST")) return; /* tests: behave as if refused */
    if (syscall(SYS_arch_prctl, DK_ARCH_REQ_XCOMP_PERM, DK_XFEATURE_XTILEDATA) != 0) return;
    unsigned long bits = 0;
    if (syscall(SYS_arch_prctl, DK_ARCH_GET_XCOMP_PERM, &bits) != 0) return;
    amx_granted = (bits >> DK_XFEATURE_XTILEDATA) & 1u;
}

int dk_cpu_amx_request(void)
{
    pthread_once(&amx_once, amx_request_once);
    return amx_granted;
}
#else
int dk_cpu_amx_request(void) { return 0; }
#endif

unsigned dk_cpu_features(void)
{
    unsigned f = raw_features();
    if (dk_cpu_amx_request()) f |= DK_CPU_AMX_GRANTED;
    return f;
}
#else
unsigned dk_cpu_features(void) { return 0; }
int dk_cpu_amx_request(void) { return 0; }
#endif

int dk_cpu_best_isa(void)
{
    unsigned f = dk_cpu_features();
    const unsigned avx2 = DK_CPU_AVX | DK_CPU_AVX2 | DK_CPU_FMA | DK_CPU_F16C | DK_CPU_OS_YMM;
    const unsigned avx512 = avx2 | DK_CPU_AVX512F | DK_CPU_AVX512DQ | DK_CPU_AVX512BW |
                            DK_CPU_AVX512VL | DK_CPU_AVX512VNNI | DK_CPU_AVX512BF16 | DK_CPU_OS_ZMM;
    const unsigned amx = avx512 | DK_CPU_AMX_TILE | DK_CPU_AMX_BF16 | DK_CPU_OS_AMX |
                         DK_CPU_AMX_GRANTED;
    if ((f & amx) == amx) return DK_ISA_AMX;
    if ((f & avx512) == avx512) return DK_ISA_AVX512BF16;
    if ((f & avx2) == avx2) return DK_ISA_AVX2;
    return DK_ISA_GENERIC;
}
