"""Leaks (issue 7): repeated calls of every kernel, including the error paths, keep the
process's memory flat.

Three meters, read after a warm-up and again after ``CALLS`` more calls:

* tracemalloc -- Python objects and NumPy array data (NumPy reports its allocations);
* glibc ``mallinfo2()`` -- bytes in use in the C heap (malloc arenas + mmapped chunks), which
  sees a C ``malloc`` the kernels forget to ``free`` even if its pages are never touched;
* RSS from /proc/self/statm -- everything else (thread stacks, pymalloc arenas).

The tolerances are far below what a leak of 1 KiB per call over CALLS = 2000 calls (2 MiB)
would add (the C-heap meter sees 32 B/call), and ``test_meters_see_a_leak`` proves each meter fails on such a leak.
Skipped under ASan (its allocator replaces glibc's and quarantines freed memory); run them
with the normal build.
"""
from __future__ import annotations

import ctypes
import gc
import mmap
import os
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _config, _reduce
from dk_helpers import UNDER_ASAN

CALLS = 2000
LEAK_PER_CALL = 1024
# Bytes over CALLS calls. Measured noise on a leak-free kernel: traced < 1 KiB, heap 0 (with
# tracemalloc off: see growth), RSS < 32 KiB. So a leak of >= 32 B/call shows in the heap,
# and 1 KiB/call (2 MiB) anywhere.
TOL_TRACED = 64 * 1024
TOL_HEAP = 64 * 1024
TOL_RSS = 512 * 1024

pytestmark = pytest.mark.skipif(UNDER_ASAN, reason="ASan replaces malloc; leaks are checked by the "
                                "normal build (this file) and by .ci/valgrind.sh")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


try:
    _libc = ctypes.CDLL(None)
    _mallinfo2 = _libc.mallinfo2
    _mallinfo2.restype = _Mallinfo2
except (OSError, AttributeError):  # pragma: no cover - not glibc >= 2.33
    _mallinfo2 = None


def heap_in_use() -> int:
    """Bytes the C heap has handed out and not got back (glibc)."""
    if _mallinfo2 is None:  # pragma: no cover
        return 0
    m = _mallinfo2()
    return m.uordblks + m.hblkhd


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settle():
    gc.collect()
    if _mallinfo2 is not None:
        _libc.malloc_trim(0)   # give free heap pages back: freed-but-cached heap is no leak,
        # and reuse of it cannot hide growth


def growth(fn, calls=CALLS, warmup=200):
    """(traced, heap, rss) growth in bytes over `calls` calls of fn, after `warmup` calls.
    Two passes of `calls` calls: the C heap and RSS with tracemalloc off (its own tables are
    C heap: with it on, a leak-free kernel's heap grew 8-75 KiB over 2,000 calls, and once
    past TOL_HEAP in CI), then the traced Python memory with it on."""
    for _ in range(warmup):
        fn()
    _settle()
    h0, r0 = heap_in_use(), rss()
    for _ in range(calls):
        fn()
    _settle()
    h1, r1 = heap_in_use(), rss()
    tracemalloc.start()
    try:
        t0 = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            fn()
        gc.collect()
        t1 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return t1 - t0, h1 - h0, r1 - r0


def assert_flat(name, fn, calls=CALLS):
    traced, heap, res = growth(fn, calls)
    assert traced < TOL_TRACED, f"{name}: Python/NumPy memory grew {traced} B over {calls} calls"
    assert heap < TOL_HEAP, f"{name}: C heap grew {heap} B over {calls} calls"
    assert res < TOL_RSS, f"{name}: RSS grew {res} B over {calls} calls"


def raises(fn, exc=(ValueError, TypeError)):
    def call():
        try:
            fn()
        except exc:
            return
        raise AssertionError("expected an error")
    return call


# --- the calls ------------------------------------------------------------------------------

rng = np.random.default_rng(5)
X32 = rng.standard_normal(5000).astype(np.float32)
X64 = rng.standard_normal(3001)
XBF = X32[:777].astype(ml_dtypes.bfloat16)
C8 = rng.integers(0, 256, 4099, dtype=np.uint8)
C16 = rng.integers(0, 1 << 16, 2049, dtype=np.uint16)
F8 = dk.cfloat8_143(9)
OUT8 = np.empty(5000, np.uint8)
RO = np.empty(5000, np.uint8)
RO.flags.writeable = False
BIG = rng.standard_normal(70000).astype(np.float32)   # > 2 blocks: the OpenMP path
MESH = dk.mesh.Mesh2D(2, 3, link_bandwidth=1e10, link_latency=1e-7)
BUFS = rng.standard_normal((6, 3000)).astype(np.float32)
BUFS16 = BUFS.astype(ml_dtypes.bfloat16).view(np.uint16)

GA = rng.integers(0, 1 << 16, (67, 130), dtype=np.uint16) & 0xBFFF   # finite BF16
GB = rng.integers(0, 1 << 16, (130, 45), dtype=np.uint16) & 0xBFFF
GA8 = rng.integers(0, 256, (3, 33, 64), dtype=np.uint8)
GB8 = rng.integers(0, 256, (64, 70), dtype=np.uint8)
GC = rng.standard_normal(70).astype(np.float32)
GOUT = np.empty((3, 33, 70), np.float32)
GF = rng.standard_normal((80, 40))

KERNELS = {
    "quantize f32->bf16": lambda: dk.quantize(X32, dk.BF16),
    "quantize f64->cf8 flags": lambda: dk.quantize(X64, F8, return_flags=True),
    "quantize stochastic out": lambda: dk.quantize(X32, F8, rounding="stochastic", seed=3,
                                                   out=OUT8),
    "quantize bf16->shp strided": lambda: dk.quantize(XBF[::-2], dk.shp(20)),
    "quantize big (threads)": lambda: dk.quantize(BIG, dk.cfloat8_152(15), rounding="stochastic",
                                                  seed=1),
    "dequantize u8": lambda: dk.dequantize(C8, F8),
    "dequantize u16 f64": lambda: dk.dequantize(C16, dk.UHP, dtype=np.float64),
    "fake_quantize": lambda: dk.fake_quantize(X32, F8),
    "fake_quantize bf16": lambda: dk.fake_quantize(XBF, dk.BF16),
    "add": lambda: dk.add(C8, C8[::-1], F8, return_flags=True),
    "sub bcast": lambda: dk.sub(C16, C16[:1], dk.shp(15)),
    "mul": lambda: dk.mul(C8, C8, F8, rounding="stochastic", seed=9),
    "fma": lambda: dk.fma(C16, C16, C16, dk.BF16),
    "choose_bias": lambda: dk.choose_bias(X32, "cfloat8_143", margin=2),
    "allreduce f32": lambda: dk.allreduce(BUFS, MESH, algorithm="ring"),
    "allreduce bf16 tree": lambda: dk.allreduce(BUFS16, MESH, algorithm="tree", fmt=dk.BF16,
                                                accumulate="bf16"),
    "allreduce chain": lambda: dk.allreduce(BUFS, MESH, algorithm="chain"),
    "estimate_allreduce": lambda: dk.estimate_allreduce(1e6, MESH),
    "gemm bf16": lambda: dk.gemm(GA, GB),
    "gemm cfloat8 batched beta out": lambda: dk.gemm(GA8, GB8, a_format=dk.cfloat8_143(5),
                                                     b_format=dk.cfloat8_152(20), c=GC, beta=2.0,
                                                     out=GOUT),
    "gemm floats strided": lambda: dk.gemm(GF[::2].T, GF[::2], b_format=dk.cfloat8_143(7)),
    "plan_gemm": lambda: dk.plan_gemm(4096, 2**31 + 1, 77, a_format=dk.BF16,
                                      b_format=dk.BF16),
    "_reduce.accumulate": lambda: _reduce.accumulate(_config.isa(), 2, BUFS[0].copy(),
                                                     BUFS[1], True),
    "_reduce.bf16_to_f32": lambda: _reduce.bf16_to_f32(_config.isa(), 2,
                                                      np.empty(3000, np.float32), BUFS16[0]),
    "_reduce.f32_to_bf16": lambda: _reduce.f32_to_bf16(_config.isa(), 2,
                                                      np.empty(3000, np.uint16), BUFS[0]),
}

ERRORS = {
    "quantize bad fmt": raises(lambda: dk.quantize(X32, "bf16")),
    "quantize bad dtype": raises(lambda: dk.quantize(C8, F8)),
    "quantize read-only out": raises(lambda: dk.quantize(X32, F8, out=RO)),
    "quantize no seed": raises(lambda: dk.quantize(X32, F8, rounding="stochastic")),
    "dequantize bad codes": raises(lambda: dk.dequantize(C16, F8)),
    "dequantize bad dtype": raises(lambda: dk.dequantize(C8, F8, dtype=np.int32)),
    "fake_quantize bf16 into shp": raises(lambda: dk.fake_quantize(XBF, dk.shp(3))),
    "add shapes": raises(lambda: dk.add(C8, C8[:5], F8)),
    "fma bad out": raises(lambda: dk.fma(C8, C8, C8, F8, out=np.empty(3, np.uint8))),
    "choose_bias NaN": raises(lambda: dk.choose_bias(np.array([np.nan]), "shp")),
    "choose_bias margin": raises(lambda: dk.choose_bias(X32, "shp", margin=5000)),
    "allreduce wrong P": raises(lambda: dk.allreduce(BUFS[:5], MESH)),
    "allreduce bad algorithm": raises(lambda: dk.allreduce(BUFS, MESH, algorithm="x")),
    "Mesh2D bad": raises(lambda: dk.mesh.Mesh2D(0, 3, link_bandwidth=1, link_latency=0)),
    "gemm inner dims": raises(lambda: dk.gemm(GA, GA)),
    "gemm bad format": raises(lambda: dk.gemm(GA, GB, a_format=dk.UHP)),
    "gemm bad out": raises(lambda: dk.gemm(GA, GB, out=np.empty((67, 45), np.float64))),
    "plan_gemm bad": raises(lambda: dk.plan_gemm(0, 3, 3, a_format=dk.BF16, b_format=dk.BF16)),
    "_reduce bad program": raises(lambda: _reduce.run_f32(
        0, 1, np.array([0, 10], np.int64), np.array([0, 1], np.int64),
        np.array([0], np.int32), np.array([-1], np.int32), np.array([-99], np.int32),
        np.array([0], np.int32), 1, np.ones((2, 10), np.float32), np.empty((1, 10), np.float32))),
    # the C driver's ENOMEM path: scratch for 2^40 slots cannot be allocated
    "_reduce out of memory": raises(lambda: _reduce.run_f32(
        0, 1, np.array([0, 10], np.int64), np.array([0, 1], np.int64),
        np.array([0], np.int32), np.array([-1], np.int32), np.array([-2], np.int32),
        np.array([0], np.int32), 1 << 40, np.ones((2, 10), np.float32),
        np.empty((1, 10), np.float32)), MemoryError),
}


# plan_gemm takes ~25 ms a call (NumPy over ~10^5 candidates): fewer calls, still > 64 KiB
# of C heap for a 1 KiB/call leak.
SLOW_CALLS = {"plan_gemm": 300}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_memory_flat(name):
    assert_flat(name, KERNELS[name], calls=SLOW_CALLS.get(name, CALLS))


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_path_memory_flat(name):
    assert_flat(name, ERRORS[name])


def test_meters_see_a_leak():
    """Each meter catches a leak of the kind it is there for: 1 KiB a call, and 40 B a call
    for the C heap.

    RSS is there for memory outside the heap and Python (thread stacks, pymalloc arenas,
    mappings), so its leak is 1 KiB a call written into fresh mapped pages. A 1 KiB malloc is
    the heap meter's case: after the whole suite the heap holds megabytes of free fragments
    whose pages are resident and cannot be trimmed, and 2,000 such mallocs grew RSS 136 KiB in
    CI."""
    span = (200 + 2 * CALLS) * LEAK_PER_CALL          # warm-up and both passes of growth
    region = mmap.mmap(-1, span)                      # anonymous, not yet resident
    at = [0]

    def touch():
        region[at[0]:at[0] + LEAK_PER_CALL] = b"\x01" * LEAK_PER_CALL
        at[0] += LEAK_PER_CALL
    try:
        _, _, res = growth(touch)
    finally:
        region.close()
    assert res >= TOL_RSS, res                        # pages written: RSS sees them
    _libc.malloc.restype = ctypes.c_void_p
    ptrs = []
    kept = []
    traced, _, _ = growth(lambda: kept.append(np.ones(LEAK_PER_CALL, np.uint8)))
    assert traced >= TOL_TRACED, traced        # a Python-side leak (a NumPy array kept)
    for size in (LEAK_PER_CALL, 40):
        ptrs.clear()
        _, heap, _ = growth(lambda: ptrs.append(_libc.malloc(size)))
        assert heap >= TOL_HEAP, (size, heap)  # a C malloc never freed (pages untouched)
        for p in ptrs:
            _libc.free(ctypes.c_void_p(p))
