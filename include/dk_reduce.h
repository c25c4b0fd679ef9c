/* dk_reduce.h - the additions of the mesh all-reduce (dojo_kernels.allreduce, .mpi).
 *
 * Elementwise float32 additions (a + b, correctly rounded: every tier gives the same bits),
 * optionally rounded to BF16 (nearest-even, as dk_bf16_from_f32_bits) after every add, and
 * the BF16 <-> FP32 conversions. dk_reduce_run evaluates a compiled all-reduce program:
 * for every segment of the buffer, a list of additions over the nodes' inputs and scratch
 * slots, then the value each node ends with. */
#ifndef DK_REDUCE_H
#define DK_REDUCE_H

#include "dk_common.h"

enum { DK_REDUCE_F32 = 0, DK_REDUCE_BF16 = 1 };

typedef struct {
    int64_t nodes;          /* P: input rows */
    int64_t out_rows;       /* output rows: P, or 1 when every node ends with the same bits */
    int64_t nseg;           /* segments of the buffer */
    int64_t nslots;         /* scratch slots needed by the largest segment */
    const int64_t *seg_lo;  /* nseg + 1 element boundaries, increasing */
    const int64_t *add_off; /* nseg + 1 offsets into the add arrays */
    const int32_t *add_out; /* slot written by each add */
    const int32_t *add_a;   /* operands: >= 0 scratch slot, < 0 input row (-v - 1) */
    const int32_t *add_b;
    const int32_t *out_op;  /* nseg * out_rows operands: what row i holds in segment s */
} dk_reduce_program;

/* dst[i] = dst[i] + src[i]; with round_bf16 the sum is rounded to BF16 precision (the
 * result is still an FP32 value). Returns DK_OK or DK_EINVAL. */
int dk_reduce_accumulate(int isa, int threads, float *dst, const float *src, int64_t n,
                         int round_bf16);
/* BF16 codes -> FP32 (exact) and FP32 -> BF16 codes (nearest even, NaN -> quiet). */
int dk_reduce_bf16_to_f32(int isa, int threads, float *dst, const uint16_t *src, int64_t n);
int dk_reduce_f32_to_bf16(int isa, int threads, uint16_t *dst, const float *src, int64_t n);

/* Evaluate a program. fmt: DK_REDUCE_F32 (in/out float rows) or DK_REDUCE_BF16 (uint16 rows,
 * FP32 partials, rounded once at the output unless round_each). Strides in elements.
 * Returns DK_OK, DK_EINVAL (bad program) or DK_ENOMEM. */
int dk_reduce_run(int isa, int threads, const dk_reduce_program *prog, int fmt, int round_each,
                  const void *in, int64_t in_stride, void *out, int64_t out_stride);

/* Test only (tests/test_reduce_kernel.py): out = in[0:n] + in[n:2n] on one thread, by
 * dk_reduce_accumulate (which = 0) or dk_reduce_run (which = 1), with the calling thread's
 * MXCSR set to csr for the call; *csr_after is the MXCSR seen after it, then the caller's is
 * restored. Returns -1 where there is no MXCSR (not x86). */
int dk_reduce_test_under_mxcsr(int isa, unsigned csr, int which, const float *in, int64_t n,
                               float *out, unsigned *csr_after);

/* Per-tier bodies (csrc/<tier>/reduce.c from include/dk_reduce_body.h). */
#define DK_REDUCE_DECLARE(sfx)                                                                  \
    void dk_reduce_add_f32_##sfx(float *out, const float *a, const float *b, int64_t n);       \
    void dk_reduce_add_bf16r_##sfx(float *out, const float *a, const float *b, int64_t n);     \
    void dk_reduce_widen_##sfx(float *out, const uint16_t *in, int64_t n);                     \
    void dk_reduce_narrow_##sfx(uint16_t *out, const float *in, int64_t n);
DK_REDUCE_DECLARE(generic)
DK_REDUCE_DECLARE(avx2)
DK_REDUCE_DECLARE(avx512bf16)

#endif
