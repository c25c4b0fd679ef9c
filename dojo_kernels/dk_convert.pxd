# The declarations of include/dk_convert.h, shared by the Cython glue modules (_numerics and
# _gemm cimport them from here; no module of its own).
from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from "dk_convert.h":
    ctypedef struct dk_format:
        int ebits, mbits, bias, is_signed, sub, has_inf_nan
        uint32_t nan_code
    ctypedef struct dk_flags:
        int64_t invalid, denormal, overflow, underflow
    int dk_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                    uint64_t seed, dk_flags *flags, int isa, int nthreads) nogil
    int dk_dequantize(const void *codes, void *out, int okind, int64_t n, const dk_format *f,
                      int isa, int nthreads) nogil
    int dk_fake_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f,
                         int mode, uint64_t seed, int isa, int nthreads) nogil
    int dk_arith(int op, const void *a, const void *b, const void *c, void *out, int64_t n,
                 const dk_format *f, int mode, uint64_t seed, dk_flags *flags, int isa,
                 int nthreads) nogil
    double dk_maxabs(const void *x, int xkind, int64_t n, int nthreads) nogil
    int dk_lut2(const void *table, const void *a, const void *b, void *out, int64_t n,
                int nthreads) nogil
    int dk_code_width(const dk_format *f) nogil
    int dk_arith_test_under_mxcsr(unsigned csr, int op, const void *a, const void *b,
                                  const void *c, void *out, int64_t n, const dk_format *f,
                                  int mode, uint64_t seed, dk_flags *flags, int isa,
                                  unsigned *csr_after) nogil
