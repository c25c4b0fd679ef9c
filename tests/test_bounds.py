"""The kernels never touch memory outside their operands. The GEMM packers and kernels: Each operand is
placed against an inaccessible page (PROT_NONE) at its end and at its start, so that a read
one byte past either edge faults; the products cover the edges the packers handle apart
(rows past m, columns past n, the half pair of an odd k, the padding pairs, partial blocks
of 32 k, batches, reversed and transposed views, BF16 and CFloat8 codes) on every tier and
both orders, the result against such a page too. The elementwise kernels (quantize, dequantize, fake_quantize, add, sub, mul,
fma, choose_bias): inputs and outputs against such pages, lengths around the vector widths
and the thread threshold, every format kind and tier, both roundings. The work runs in a
child process, so that a fault fails the test instead of ending the run; its results must
equal the same calls on ordinary arrays."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

GEMM_CHILD = textwrap.dedent("""
    import itertools, sys
    import numpy as np
    import dojo_kernels as dk
    from dojo_kernels import _config, _gemm
    from dk_helpers import GuardedPages, bits

    pages = GuardedPages()
    rng = np.random.default_rng(5)
    c8 = dk.cfloat8_143(7)
    # k = 2101: blocks of k after the first, across the amx tier's KC (512 for these C blocks)
    shapes = [(16, 16, 16), (5, 7, 45), (33, 20, 67), (1, 50, 33), (40, 70, 31), (9, 3, 1),
              (33, 70, 2101)]
    _gemm._set_par_min(1 << 10)  # as tests/conftest.py does: 2 threads really use the pool
    checked = 0
    for tier in _config.supported_isas():
        for order, fmt, (m, n, k), at_end, threads in itertools.product(
                ("amx", "vdpbf16ps"), (dk.BF16, c8), shapes, (True, False), (1, 2)):
            dk.set_num_threads(threads)
            kw = {} if fmt is dk.BF16 else dict(a_format=c8, b_format=c8)
            x = rng.standard_normal((3, m, k)).astype(np.float32)
            y = rng.standard_normal((3, k, n)).astype(np.float32)
            a, b = dk.quantize(x, fmt), dk.quantize(y, fmt)
            ga, gb = pages.place(a, at_end), pages.place(b, at_end)
            views = [(a, b, ga, gb),                                    # batches
                     (a[1], b[1], pages.place(a[1], at_end), pages.place(b[1], at_end)),
                     (a[:, :, ::-1], b[:, ::-1], ga[:, :, ::-1], gb[:, ::-1]),  # reversed k
                     (b.transpose(0, 2, 1), a.transpose(0, 2, 1),       # transposed
                      gb.transpose(0, 2, 1), ga.transpose(0, 2, 1))]
            for i, (pa, pb, qa, qb) in enumerate(views):
                with _config.use_isa(tier):
                    want = dk.gemm(pa, pb, order=order, **kw)
                    out = pages.place(np.zeros(want.shape, np.float32), at_end)
                    got = dk.gemm(qa, qb, order=order, out=out, **kw)
                if not np.array_equal(bits(got), bits(want)):
                    raise SystemExit(f"bits differ: {tier} {order} {fmt} {(m, n, k)} view {i}")
                checked += 1
    # A result large enough to be streamed on the amx tier, into an out= 16 and 48 bytes past
    # a 64-byte line, 16 bytes from the guard pages (a C-contiguous out of n % 16 == 0 past
    # a line cannot touch a page edge): the columns up to the first line are the extra
    # narrow sliver of stream_lead (gemm_driver.c), written inside `out` only.
    m, n, k = 1040, 2048, 40
    a = dk.quantize(rng.standard_normal((m, k)).astype(np.float32), dk.BF16)
    b = dk.quantize(rng.standard_normal((k, n)).astype(np.float32), dk.BF16)
    for tier in _config.supported_isas():
        for at_end, threads in itertools.product((True, False), (1, 2)):
            dk.set_num_threads(threads)
            flat = pages.place(np.zeros(m * n + 4, np.float32), at_end)
            out = (flat[:m * n] if at_end else flat[4:]).reshape(m, n)
            assert out.ctypes.data % 64 in (16, 48)
            with _config.use_isa(tier):
                want = dk.gemm(a, b)
                got = dk.gemm(pages.place(a, at_end), pages.place(b, at_end), out=out)
            if got is not out or not np.array_equal(bits(got), bits(want)):
                raise SystemExit(f"bits differ: {tier} streamed result past a line")
            checked += 1
    print("checked", checked)
""")


ELEMENTWISE_CHILD = textwrap.dedent("""
    import itertools
    import numpy as np
    import dojo_kernels as dk
    from dojo_kernels import _config
    from dk_helpers import GuardedPages, bits

    pages = GuardedPages()
    rng = np.random.default_rng(6)
    fmts = [dk.BF16, dk.cfloat8_143(7), dk.cfloat8_152(15), dk.shp(15), dk.UHP]
    checked = 0

    def same(got, want, what):
        global checked
        if isinstance(want, np.ndarray):
            ok = np.array_equal(bits(got), bits(want))
        else:
            ok = got == want
        if not ok:
            raise SystemExit("differ: " + what)
        checked += 1

    for tier in _config.supported_isas():
        for fmt, n, at_end, rounding, threads in itertools.product(
                fmts, (1, 15, 16, 17, 33, 257, (1 << 17) + 5), (True, False),
                ("nearest", "stochastic"), (1, 2)):
            dk.set_num_threads(threads)
            what = f"{tier} {fmt} n={n} end={at_end} {rounding} t={threads}"
            place = lambda v: pages.place(v, at_end)
            x = rng.standard_normal((3, n)).astype(np.float32) * 4
            r = dict(rounding=rounding, seed=3)
            with _config.use_isa(tier):
                codes = [dk.quantize(v, fmt, **r) for v in x]
                out = place(np.zeros_like(codes[0]))
                same(dk.quantize(place(x[0]), fmt, out=out, **r), codes[0], "quantize " + what)
                f32 = place(np.zeros(n, np.float32))
                same(dk.dequantize(place(codes[0]), fmt, out=f32), dk.dequantize(codes[0], fmt),
                     "dequantize " + what)
                same(dk.fake_quantize(place(x[0]), fmt, out=f32, **r),
                     dk.fake_quantize(x[0], fmt, **r), "fake_quantize " + what)
                g = [place(c) for c in codes]
                for op in (dk.add, dk.sub, dk.mul):
                    same(op(g[0], g[1], fmt, out=out, **r), op(codes[0], codes[1], fmt, **r),
                         op.__name__ + " " + what)
                same(dk.fma(g[0], g[1], g[2], fmt, out=out, **r),
                     dk.fma(codes[0], codes[1], codes[2], fmt, **r), "fma " + what)
                if rounding == "nearest" and threads == 1:
                    same(dk.choose_bias(place(x[0]), "cfloat8_143"),
                         dk.choose_bias(x[0], "cfloat8_143"), "choose_bias " + what)
    print("checked", checked)
""")


def _run_child(code):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # cwd outside the repository: `python -c` puts the cwd first on sys.path, and the source
    # tree's dojo_kernels (no compiled modules when installed non-editable) would shadow it
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=900, cwd=tempfile.gettempdir())
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    words = r.stdout.split()
    assert words[-2:-1] == ["checked"] and int(words[-1]) > 0, r.stdout


LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="mprotect guard pages: Linux")


@LINUX
def test_gemm_reads_nothing_past_its_operands():
    _run_child(GEMM_CHILD)


@LINUX
def test_elementwise_kernels_touch_nothing_past_their_arrays():
    _run_child(ELEMENTWISE_CHILD)
