"""The GEMM packers and kernels never touch memory outside their operands. Each operand is
placed against an inaccessible page (PROT_NONE) at its end and at its start, so that a read
one byte past either edge faults; the products cover the edges the packers handle apart
(rows past m, columns past n, the half pair of an odd k, the padding pairs, partial blocks
of 32 k, batches, reversed and transposed views, BF16 and CFloat8 codes) on every tier and
both orders. The work runs in a child process, so that a fault fails this test instead of
ending the run; its results must equal the same products on ordinary arrays."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import itertools, sys
    import numpy as np
    import dojo_kernels as dk
    from dojo_kernels import _config
    from dk_helpers import GuardedPages, bits

    pages = GuardedPages()
    rng = np.random.default_rng(5)
    c8 = dk.cfloat8_143(7)
    shapes = [(16, 16, 16), (5, 7, 45), (33, 20, 67), (1, 50, 33), (40, 70, 31), (9, 3, 1)]
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
                    got = dk.gemm(qa, qb, order=order, **kw)
                if not np.array_equal(bits(got), bits(want)):
                    raise SystemExit(f"bits differ: {tier} {order} {fmt} {(m, n, k)} view {i}")
                checked += 1
    print("checked", checked)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect guard pages: Linux")
def test_gemm_reads_nothing_past_its_operands():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    assert r.stdout.split()[-2:][0] == "checked" and int(r.stdout.split()[-1]) > 0, r.stdout
