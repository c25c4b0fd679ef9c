"""Edges a code review found: Format validation, out= overlapping an input, byte-swapped
inputs, argument errors, and stochastic rounding of wide-mantissa arithmetic where the
exact value sits a few 2^-32 quanta below a grid point."""
import numpy as np
import pytest

import dojo_kernels as dk
import spec_ref as R

M64 = (1 << 64) - 1


@pytest.mark.parametrize("args, match", [
    (("custom", 8, 23, True, 127, "ieee", True), "name"),
    (("uhp", 6, 10, True, 31, "flush", True), "signed"),
    (("fp32", 8, 23, True, 127, "ieee", False), "has_inf_nan"),
    (("bf16", 8, 7, True, 100, "ieee", True), "fixed"),
    (("cfloat8_143", 4, 3, True, -5, "tesla", False), "bias"),
    (("cfloat8_143", 4, 3, True, 64, "tesla", False), "bias"),
    (("cfloat8_152", 5, 2, True, 15, "bogus", False), "subnormals"),
    (("shp", 5, 9, True, 15, "tesla", False), "mantissa_bits"),
])
def test_format_constructor_validates(args, match):
    with pytest.raises(ValueError, match=match):
        dk.Format(*args)


def test_format_equal_to_constant_behaves_like_it():
    # A Format built by hand equal to UHP must quantize like UHP (no stale cached layout).
    mine = dk.Format("uhp", 6, 10, False, 31, "flush", True)
    assert mine == dk.UHP and hash(mine) == hash(dk.UHP) and mine.nan_code == 0xFE00
    x = np.float32([np.nan, -1.0, 1.0])
    np.testing.assert_array_equal(dk.quantize(x, mine), dk.quantize(x, dk.UHP))
    np.testing.assert_array_equal(dk.quantize(x, dk.UHP), [0xFE00, 0xFE00, 31 << 10])


def test_bias_is_required():
    with pytest.raises(TypeError):
        dk.cfloat8_143()  # type: ignore[call-arg]


@pytest.mark.parametrize("shift", [1, 7, 1 << 12])
def test_out_overlapping_the_input(shift):
    x = np.linspace(1, 2, 1 << 14, dtype=np.float32)
    want = dk.quantize(x, dk.BF16)
    buf = np.concatenate([x, np.zeros(shift, np.float32)])
    # out starts inside x's own bytes: writes would clobber inputs not yet read
    out = buf.view(np.uint16)[shift:shift + x.size]
    got = dk.quantize(buf[:x.size], dk.BF16, out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)
    codes = want.copy()
    vals = np.empty(codes.size * 2 + 8, np.uint16)
    vals[: codes.size] = codes
    out_f = vals[4:].view(np.float32)[: codes.size]  # overlaps the codes it decodes
    dk.dequantize(vals[: codes.size], dk.BF16, out=out_f)
    np.testing.assert_array_equal(out_f, (want.astype(np.uint32) << 16).view(np.float32))


def test_arith_out_aliasing_an_operand():
    f = dk.cfloat8_143(7)
    a = np.arange(256, dtype=np.uint8)
    b = a[::-1].copy()
    want = dk.add(a, b, f)
    dk.add(a, b, f, out=a)  # in place, as NumPy ufuncs allow
    np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("fmt", [dk.BF16, dk.cfloat8_143(7)], ids=["bf16", "cf8"])
@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("shift", [-3, -1, 1, 5])
def test_arith_out_partly_overlapping_an_operand(fmt, which, shift):
    """out starting a few codes before or after one operand, inside its memory (not the
    element-for-element aliasing of in place): the glue refuses to write there and the call
    computes into a new array, then copies into out; out holds what a separate out gets.
    (Ahead of the operand, shifts 1 and 5, a kernel writing there would clobber codes it
    has not read yet.)"""
    n = 1000
    dt = np.dtype(fmt.storage_dtype)
    rng = np.random.default_rng(which + 10 * (shift + 3))
    ops = [dk.quantize(rng.standard_normal(n).astype(np.float32), fmt) for _ in range(3)]
    want = dk.fma(*ops, fmt)
    buf = np.zeros(n + 16, dt)
    buf[8:8 + n] = ops[which]
    ops[which] = buf[8:8 + n]
    out = buf[8 + shift:8 + shift + n]
    got = dk.fma(*ops, fmt, out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)


def test_format_pickles_its_fields_only():
    """The package memoizes derived values on a format object (numerics._fmt_info); a pickle
    or copy of the format carries its fields only, the same before and after use. Fresh
    objects (dataclasses.replace), so that no earlier test has used them."""
    import copy
    import dataclasses
    import pickle
    for f in (dataclasses.replace(g) for g in (dk.cfloat8_143(7), dk.BF16, dk.shp(5))):
        fields = {fl.name: getattr(f, fl.name) for fl in dataclasses.fields(f)}
        assert vars(f) == fields  # unused: nothing memoized yet
        before = pickle.dumps(f)
        dk.add(np.zeros(4, f.storage_dtype), np.zeros(4, f.storage_dtype), f)
        assert vars(f) != fields  # used: the memo is there (what the test is about)
        assert pickle.dumps(f) == before
        for g in (pickle.loads(before), copy.copy(f), copy.deepcopy(f)):
            assert g == f and hash(g) == hash(f) and vars(g) == fields
            np.testing.assert_array_equal(dk.quantize(np.float32([1.5, -3.0]), g),
                                          dk.quantize(np.float32([1.5, -3.0]), f))


def test_arith_glue_checks_its_buffers():
    """The compiled glue of add/sub/mul/fma reads and writes n codes through raw buffers: it
    refuses any buffer that does not hold exactly n codes, a misaligned one, a
    non-contiguous one and a read-only out, before the kernel runs."""
    from dojo_kernels import _config, _numerics
    from dojo_kernels._cformat import ctuple
    f = ctuple(dk.BF16)
    n = 64
    a = np.zeros(n, np.uint16)
    o = np.empty(n, np.uint16)
    run = lambda a_, b_, c_, o_: _numerics.arith(0, a_, b_, c_, o_, n, f, 0, 0,  # noqa: E731
                                                 True, _config.isa(), 1)
    assert run(a, a, a, o) == (0, 0, 0, 0)
    for pos, name in enumerate(["a", "b", "c", "out"]):
        for bad in (np.zeros(n - 1, np.uint16), np.zeros(n + 1, np.uint16),
                    np.zeros(2 * n + 1, np.uint8)[1:].view(np.uint16)):  # misaligned
            args = [a, a, a, np.empty(n, np.uint16)]
            args[pos] = bad
            with pytest.raises(ValueError, match=f"^{name}: "):
                run(*args)
        args = [a, a, a, o]
        args[pos] = np.zeros(2 * n, np.uint16)[::2]
        with pytest.raises(ValueError, match="not C-contiguous"):  # NumPy's buffer export
            run(*args)
    ro = np.zeros(n, np.uint16)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        run(a, a, a, ro)
    assert run(a, a, a, a) is not None  # in place: element for element
    one = np.full(n, 0x3F80, np.uint16)  # BF16 1.0
    buf = np.full(n + 1, 0x3F80, np.uint16)
    assert run(buf[1:], one, one, buf[:n]) is None  # partly overlapping: nothing written
    assert (buf == 0x3F80).all()  # (1 + 1 would have written 2.0)
    assert run(one, one, one, o) is not None and (o == 0x4000).all()


def _conversion_glue():
    """Each conversion entry of the compiled glue as run(x, out, n) -> its return value,
    with the element dtypes of its input and output (float32 in, BF16 codes or float32 out)."""
    from dojo_kernels import _config, _numerics
    from dojo_kernels._cformat import ctuple
    isa = _config.isa()
    bf, fp = ctuple(dk.BF16), ctuple(dk.FP32)
    return {
        "quantize": (lambda x, o, n: _numerics.quantize(x, 0, o, n, bf, 0, 0, True, isa, 1),
                     np.float32, np.uint16),
        "quantize_fp32": (lambda x, o, n: _numerics.quantize(x, 0, o, n, fp, 0, 0, True, isa, 1),
                          np.float32, np.float32),
        "dequantize": (lambda x, o, n: _numerics.dequantize(x, o, 0, n, bf, isa, 1),
                       np.uint16, np.float32),
        "dequantize_fp32": (lambda x, o, n: _numerics.dequantize(x, o, 0, n, fp, isa, 1),
                            np.float32, np.float32),
        "fake_quantize": (lambda x, o, n: _numerics.fake_quantize(x, 0, o, n, bf, 0, 0, isa, 1),
                          np.float32, np.float32),
    }


@pytest.mark.parametrize("entry", ["quantize", "quantize_fp32", "dequantize", "dequantize_fp32",
                                   "fake_quantize"])
def test_conversion_glue_checks_its_buffers(entry):
    """The compiled glue of quantize, dequantize and fake_quantize reads and writes n
    elements through raw buffers, as arith's does: it refuses a buffer that does not hold
    exactly n elements, a misaligned or non-contiguous one, a read-only out and an n
    outside the buffers' reach, before the kernel runs; an out that overlaps the input
    other than exactly (in place, where the element widths agree) is refused with None and
    left untouched."""
    run, xt, ot = _conversion_glue()[entry]
    n = 64
    x = np.ones(n, xt) if xt == np.float32 else np.full(n, 0x3F80, xt)
    assert run(x, np.empty(n, ot), n) is not None
    for pos, name in enumerate(["x" if entry != "dequantize" and entry != "dequantize_fp32"
                                else "codes", "out"]):
        t = (xt, ot)[pos]
        w = np.dtype(t).itemsize
        for bad in (np.zeros(n - 1, t), np.zeros(n + 1, t),
                    np.zeros(n * w + 1, np.uint8)[1:].view(t)):  # misaligned
            args = [x, np.empty(n, ot)]
            args[pos] = bad
            with pytest.raises(ValueError, match=f"^{name}: "):
                run(*args, n)
        args = [x, np.empty(n, ot)]
        args[pos] = np.zeros(2 * n, t)[::2]
        with pytest.raises(ValueError, match="not C-contiguous"):  # NumPy's buffer export
            run(*args, n)
    ro = np.zeros(n, ot)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        run(x, ro, n)
    for bad_n in (-1, 1 << 62):
        with pytest.raises(ValueError, match="^n: "):
            run(x, np.empty(n, ot), bad_n)
    # overlaps: bytes of x seen through out, one element further on, and at x's own start
    # where the widths differ (out's element i is not x's element i)
    buf = np.zeros(4 * n + 64, np.uint8)
    xb = buf[:n * np.dtype(xt).itemsize].view(xt)
    xb[...] = x
    before = buf.copy()
    ow = np.dtype(ot).itemsize
    for start in {ow, 0 if ow != np.dtype(xt).itemsize else ow * 2}:
        out = buf[start:start + n * ow].view(ot)
        assert run(xb, out, n) is None
        np.testing.assert_array_equal(buf, before)  # nothing written
    if ot == xt:  # in place, element for element
        want = np.empty(n, ot)
        got = run(x, want, n)
        assert run(xb, xb, n) == got and np.array_equal(xb, want)


def test_glue_releases_every_buffer():
    """Every glue entry gives back each buffer it took: after a call that runs, one refused
    for an overlap and one refused for a wrong size (an exception after some buffers were
    taken), a bytearray passed to it can be resized (it cannot while a view of it lives)."""
    from dojo_kernels import _config, _numerics
    from dojo_kernels._cformat import ctuple
    isa, bf = _config.isa(), ctuple(dk.BF16)
    n = 64
    calls = {  # entry -> run(x, out, n) on byte buffers holding n elements each
        "quantize": (lambda x, o, k: _numerics.quantize(x, 0, o, k, bf, 0, 0, True, isa, 1), 4, 2),
        "dequantize": (lambda x, o, k: _numerics.dequantize(x, o, 0, k, bf, isa, 1), 2, 4),
        "fake_quantize": (lambda x, o, k: _numerics.fake_quantize(x, 0, o, k, bf, 0, 0, isa, 1),
                          4, 4),
        "arith": (lambda x, o, k: _numerics.arith(0, x, x, x, o, k, bf, 0, 0, False, isa, 1),
                  2, 2),
        "lut2": (lambda x, o, k: _numerics.lut2(bytearray(1 << 16), x, x, o, k, 1), 1, 1),
        "maxabs": (lambda x, o, k: _numerics.maxabs(x, 0, k, 1), 4, 0),
    }
    for name, (run, xw, ow) in calls.items():
        x, out = bytearray(n * xw), bytearray(max(n * ow, 1))
        shared = bytearray(n * max(xw, ow) + 64)
        attempts = [lambda: (x, out, n), lambda: (x, out, n + 1)]  # runs; wrong size
        if ow:  # out 8 bytes into x's memory: an overlap
            attempts.append(lambda: (memoryview(shared)[:n * xw],
                                     memoryview(shared)[8:8 + n * ow], n))
        for make in attempts:
            args = make()
            try:
                run(*args)
            except ValueError:
                pass
            for arg in args:
                if isinstance(arg, memoryview):
                    arg.release()
            for ba in (x, out, shared):
                ba.append(0)  # BufferError if a view of it were still held
                del ba[-1]


def test_maxabs_glue_checks_its_buffer():
    """choose_bias's kernel reads n elements through a raw buffer: a buffer of another size,
    a misaligned or strided one, a bad kind or n are refused before it runs."""
    from dojo_kernels import _numerics
    x = np.arange(8, dtype=np.float32) - 6
    assert _numerics.maxabs(x, 0, 8, 1) == 6.0
    assert _numerics.maxabs(x.view(np.uint8), 0, 8, 1) == 6.0  # its bytes: the same buffer
    for bad, n in ((x[:4], 8), (x, 9), (x, -1), (np.zeros(33, np.uint8)[1:], 8)):
        with pytest.raises(ValueError, match="^(x|n): "):
            _numerics.maxabs(bad, 0, n, 1)
    with pytest.raises(ValueError, match="not C-contiguous"):
        _numerics.maxabs(np.zeros(16, np.float32)[::2], 0, 8, 1)
    with pytest.raises(ValueError, match="^xkind: "):
        _numerics.maxabs(x, 5, 8, 1)


@pytest.mark.parametrize("shift", [-3, -1, 1, 5])
def test_fake_quantize_out_partly_overlapping_the_input(shift):
    """fake_quantize into an out a few elements before or after x, inside its memory: the
    glue refuses it and the call computes into a new array, then copies into out."""
    n = 1000
    x = (np.random.default_rng(shift + 3).standard_normal(n) * 8).astype(np.float32)
    f = dk.cfloat8_143(7)
    want = dk.fake_quantize(x, f)
    buf = np.zeros(n + 16, np.float32)
    buf[8:8 + n] = x
    out = buf[8 + shift:8 + shift + n]
    assert dk.fake_quantize(buf[8:8 + n], f, out=out) is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_byte_swapped_float_input(dtype):
    x = np.random.default_rng(1).standard_normal(1001) * 100
    f = dk.cfloat8_152(12)
    native = x.astype(dtype[1:].replace("f", "float").replace("float4", "float32").replace("float8", "float64"))
    np.testing.assert_array_equal(dk.quantize(x.astype(dtype), f), dk.quantize(native, f))
    np.testing.assert_array_equal(dk.fake_quantize(x.astype(dtype), f), dk.fake_quantize(native, f))


@pytest.mark.parametrize("call, name", [
    (lambda: dk.quantize(np.ones(3, np.float32), dk.BF16, rounding=[]), "rounding"),
    (lambda: dk.choose_bias(np.ones(3, np.float32), ["shp"]), "family"),
    (lambda: dk.set_num_threads(2 ** 31), "n"),
    (lambda: dk.set_num_threads(0), "n"),
])
def test_argument_errors_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}:"):
        call()


def test_set_num_threads_accepts_numpy_ints():
    saved = dk.get_num_threads()
    try:
        dk.set_num_threads(np.int64(1))
        assert dk.get_num_threads() == 1
    finally:
        dk.set_num_threads(saved)


def _unxorshift(z, k):
    x = z
    for _ in range(64 // k + 1):
        x = z ^ (x >> k)
    return x & M64


def _seed_with_first_random(r):
    """A seed whose r(0) is r: SplitMix64's output step inverted (each step is a bijection)."""
    z = (r << 32) | 0x2468
    z = _unxorshift(z, 31)
    z = (z * pow(0x94D049BB133111EB, -1, 1 << 64)) & M64
    z = _unxorshift(z, 27)
    z = (z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & M64
    z = _unxorshift(z, 30)
    return (z - 0x9E3779B97F4A7C15) & M64


@pytest.mark.parametrize("r", [0, 1, 2, 3, 4, 5, (1 << 32) - 1])
@pytest.mark.parametrize("a, b", [(1.0, -2.0 ** -54), (1.0, -3 * 2.0 ** -55), (1.5, 2.0 ** -50 + 2.0 ** -73),
                                  (2.0 ** -126, -2.0 ** -149), (2.0 ** -100, 2.0 ** -149)])
def test_fp32_stochastic_add_decided_by_low_random_bits(a, b, r):
    """FP32 has 23 mantissa bits: the exact sum's distance below a grid point is a few
    2^-32 quanta, so r = 1..4 decide the result (SPEC section 2's f, computed exactly)."""
    seed = _seed_with_first_random(r)
    assert R.splitmix_r(seed, 0) == r
    x, y = np.float32([a]), np.float32([b])
    assert float(x[0]) == a and float(y[0]) == b
    got = dk.add(x, y, dk.FP32, rounding="stochastic", seed=seed)
    want, _ = R.arith_ref("add", (x, y), R.ref_of(dk.FP32), "stochastic", seed)
    assert got.view(np.uint32)[0] == np.asarray(want).reshape(-1).view(np.uint32)[0]
