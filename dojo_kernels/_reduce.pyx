# Thin glue for the all-reduce additions (csrc/reduce_driver.c). Validation lives in
# dojo_kernels/collectives.py and dojo_kernels/mpi.py.
from libc.stdint cimport int32_t, int64_t, uint16_t

cdef extern from "dk_reduce.h":
    ctypedef struct dk_reduce_program:
        int64_t nodes
        int64_t out_rows
        int64_t nseg
        int64_t nslots
        const int64_t *seg_lo
        const int64_t *add_off
        const int32_t *add_out
        const int32_t *add_a
        const int32_t *add_b
        const int32_t *out_op
    int dk_reduce_accumulate(int isa, int threads, float *dst, const float *src, int64_t n,
                             int round_bf16) nogil
    int dk_reduce_bf16_to_f32(int isa, int threads, float *dst, const uint16_t *src,
                              int64_t n) nogil
    int dk_reduce_f32_to_bf16(int isa, int threads, uint16_t *dst, const float *src,
                              int64_t n) nogil
    int dk_reduce_run(int isa, int threads, const dk_reduce_program *prog, int fmt,
                      int round_each, const void *inp, int64_t in_stride, void *out,
                      int64_t out_stride) nogil
    int dk_reduce_test_under_mxcsr(int isa, unsigned csr, int which, const float *inp,
                                   int64_t n, float *out, unsigned *csr_after) nogil


cdef int _check(int rc) except -1:
    if rc == 1:
        raise MemoryError("dojo_kernels: out of memory in the all-reduce kernel")
    if rc != 0:
        raise ValueError("dojo_kernels: the all-reduce kernel rejected its arguments")
    return 0


def accumulate(int isa, int threads, float[::1] dst, const float[::1] src, bint round_bf16):
    """dst += src (rounded to BF16 precision after the add if round_bf16)."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError("dst, src: lengths differ")
    cdef int rc
    with nogil:
        rc = dk_reduce_accumulate(isa, threads, &dst[0] if dst.shape[0] else NULL,
                                  &src[0] if src.shape[0] else NULL, dst.shape[0], round_bf16)
    _check(rc)


def bf16_to_f32(int isa, int threads, float[::1] dst, const uint16_t[::1] src):
    if dst.shape[0] != src.shape[0]:
        raise ValueError("dst, src: lengths differ")
    cdef int rc
    with nogil:
        rc = dk_reduce_bf16_to_f32(isa, threads, &dst[0] if dst.shape[0] else NULL,
                                   &src[0] if src.shape[0] else NULL, dst.shape[0])
    _check(rc)


def f32_to_bf16(int isa, int threads, uint16_t[::1] dst, const float[::1] src):
    if dst.shape[0] != src.shape[0]:
        raise ValueError("dst, src: lengths differ")
    cdef int rc
    with nogil:
        rc = dk_reduce_f32_to_bf16(isa, threads, &dst[0] if dst.shape[0] else NULL,
                                   &src[0] if src.shape[0] else NULL, dst.shape[0])
    _check(rc)


cdef int _run(int isa, int threads, const int64_t[::1] seg_lo, const int64_t[::1] add_off,
              const int32_t[::1] add_out, const int32_t[::1] add_a, const int32_t[::1] add_b,
              const int32_t[::1] out_op, int64_t nodes, int64_t out_rows, int64_t nslots,
              int fmt, int round_each,
              const void *inp, int64_t in_stride, void *out, int64_t out_stride) except -1:
    cdef dk_reduce_program p
    cdef int32_t dummy = 0
    if seg_lo.shape[0] < 1 or add_off.shape[0] != seg_lo.shape[0]:
        raise ValueError("program: segment arrays disagree")
    p.nodes = nodes
    p.out_rows = out_rows
    p.nseg = seg_lo.shape[0] - 1
    p.nslots = nslots
    p.seg_lo = &seg_lo[0]
    p.add_off = &add_off[0]
    n_add = add_out.shape[0]
    if add_a.shape[0] != n_add or add_b.shape[0] != n_add or add_off[p.nseg] != n_add:
        raise ValueError("program: add arrays disagree")
    if out_rows < 1 or out_op.shape[0] != p.nseg * out_rows:
        raise ValueError("program: output table has the wrong size")
    p.add_out = &add_out[0] if n_add else &dummy
    p.add_a = &add_a[0] if n_add else &dummy
    p.add_b = &add_b[0] if n_add else &dummy
    p.out_op = &out_op[0] if out_op.shape[0] else &dummy
    cdef int rc
    with nogil:
        rc = dk_reduce_run(isa, threads, &p, fmt, round_each, inp, in_stride, out, out_stride)
    return _check(rc)


def run_f32(int isa, int threads, seg_lo, add_off, add_out, add_a, add_b, out_op,
            int64_t nslots, const float[:, ::1] inp, float[:, ::1] out):
    if out.shape[0] > inp.shape[0] or inp.shape[1] != out.shape[1] or inp.shape[1] == 0:
        raise ValueError("inp, out: shapes disagree or are empty")
    _run(isa, threads, seg_lo, add_off, add_out, add_a, add_b, out_op, inp.shape[0],
         out.shape[0], nslots, 0, 0, &inp[0, 0], inp.shape[1], &out[0, 0], out.shape[1])


def run_bf16(int isa, int threads, seg_lo, add_off, add_out, add_a, add_b, out_op,
             int64_t nslots, bint round_each, const uint16_t[:, ::1] inp,
             uint16_t[:, ::1] out):
    if out.shape[0] > inp.shape[0] or inp.shape[1] != out.shape[1] or inp.shape[1] == 0:
        raise ValueError("inp, out: shapes disagree or are empty")
    _run(isa, threads, seg_lo, add_off, add_out, add_a, add_b, out_op, inp.shape[0],
         out.shape[0], nslots, 1, round_each, &inp[0, 0], inp.shape[1], &out[0, 0], out.shape[1])


def _test_under_mxcsr(int isa, unsigned csr, int which, const float[:, ::1] inp,
                      float[::1] out):
    """Test only: out = inp[0] + inp[1] with this thread's MXCSR set to csr for the call
    (which: 0 accumulate, 1 program runner). Returns the MXCSR seen right after the call,
    or None where there is no MXCSR."""
    if inp.shape[0] != 2 or inp.shape[1] != out.shape[0] or out.shape[0] == 0:
        raise ValueError("inp, out: expected shapes (2, n) and (n,), n >= 1")
    cdef unsigned after = 0
    cdef int rc
    with nogil:
        rc = dk_reduce_test_under_mxcsr(isa, csr, which, &inp[0, 0], out.shape[0], &out[0],
                                        &after)
    if rc == -1:
        return None
    _check(rc)
    return after


# One pool per process: forward parallel calls to the pool of dojo_kernels._cpu.
from cpython.pycapsule cimport PyCapsule_GetPointer
from dojo_kernels import _cpu as _cpu_mod

cdef extern from "dk_pool.h":
    void dk_pool_forward_to(const void *entry)

dk_pool_forward_to(PyCapsule_GetPointer(_cpu_mod._pool_capsule(), b"dojo_kernels.pool"))
