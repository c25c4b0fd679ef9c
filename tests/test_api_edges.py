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


def _bytes(v):
    """The bytes of an array, flat (NaN codes compare equal bit for bit)."""
    return np.asarray(v).reshape(-1).view(np.uint8)


def _plain(op, ops, out, fmt, mode=0, seed=0, want=True, threads=1, max_n=1 << 62):
    from dojo_kernels import _config, _numerics
    from dojo_kernels._cformat import ctuple
    return _numerics.arith_plain(op, tuple(ops), out, ctuple(fmt), np.dtype(fmt.storage_dtype),
                                 mode, seed, want, _config.isa(), threads, max_n)


@pytest.mark.parametrize("fmt", [dk.BF16, dk.cfloat8_143(7), dk.FP32, dk.UHP],
                         ids=["bf16", "cf8", "fp32", "uhp"])
@pytest.mark.parametrize("shape", [(0,), (1,), (37,), (3, 5, 7), ()])
def test_arith_plain_takes_the_common_call(fmt, shape):
    """The glue's one-step entry (arith_plain) takes plain arrays of the storage type and of
    one shape, for out given, new and in place, and writes what the general entry writes
    (both run the same driver: this test is about the buffers, not the arithmetic)."""
    from dojo_kernels import _config, _numerics
    from dojo_kernels._cformat import ctuple
    dt = np.dtype(fmt.storage_dtype)
    rng = np.random.default_rng(len(shape))
    ops = [dk.quantize(rng.standard_normal(shape).astype(np.float32) * 3, fmt) for _ in range(3)]
    for op, k in ((0, 2), (1, 2), (2, 2), (3, 3)):
        for mode in (0, 1):
            want = np.empty(shape, dt)
            flags = _numerics.arith(op, ops[0], ops[1], ops[2], want, want.size, ctuple(fmt),
                                    mode, 7, True, _config.isa(), 1)
            out = np.full(shape, 0x55, dt)
            got = _plain(op, ops[:k], out, fmt, mode, 7)
            assert got is not None and got[0] is out and got[1] == flags
            np.testing.assert_array_equal(_bytes(out), _bytes(want))
            new, _ = _plain(op, ops[:k], None, fmt, mode, 7)
            assert new.shape == shape and new.dtype == dt and new.flags.c_contiguous
            np.testing.assert_array_equal(_bytes(new), _bytes(want))
            inplace = ops[1].copy()
            args = ops[:k]
            args[1] = inplace
            got = _plain(op, args, inplace, fmt, mode, 7)
            assert got is not None and got[0] is inplace
            np.testing.assert_array_equal(_bytes(inplace), _bytes(want))


class _Sub(np.ndarray):
    pass


def _refused_calls():
    """Calls the one-step entry must leave to the general path (each: operands, out,
    max_n), with what the public call gives for them (None: an error)."""
    f = dk.BF16
    n = 64
    rng = np.random.default_rng(5)
    a = dk.quantize(rng.standard_normal(n).astype(np.float32), f)
    b = dk.quantize(rng.standard_normal(n).astype(np.float32), f)
    o = lambda: np.full(n, 0x1234, np.uint16)  # noqa: E731
    wide = np.zeros(2 * n, np.uint16)
    wide[::2] = a
    odd = np.zeros(2 * n + 1, np.uint8)[1:].view(np.uint16)  # misaligned
    odd[:] = a
    ro = o()
    ro.setflags(write=False)
    buf = np.zeros(n + 1, np.uint16)
    buf[1:] = a
    yield "subclass operand", (a.view(_Sub), b), o(), None
    yield "subclass out", (a, b), o().view(_Sub), None
    yield "list operand", (a.tolist(), b), o(), "error"  # (Python ints: int64)
    yield "int16 operand", (a.view(np.int16), b), o(), "error"
    yield "byte-swapped operand", (a.astype(">u2"), b), o(), None
    yield "byte-swapped out", (a, b), o().astype(">u2"), "error"
    yield "strided operand", (wide[::2], b), o(), None
    yield "strided out", (a, b), np.full(2 * n, 0x1234, np.uint16)[::2], None
    yield "misaligned operand", (odd, b), o(), None
    yield "misaligned out", (a, b), np.zeros(2 * n + 1, np.uint8)[1:].view(np.uint16), None
    yield "read-only out", (a, b), ro, "error"
    yield "out of another shape", (a, b), o().reshape(8, 8), "error"
    yield "operands of other shapes", (a[:1], b), o(), None  # (broadcasting)
    yield "out partly over an operand", (buf[1:], b), buf[:n], None
    yield "more than max_n", (a, b), o(), None
    if R.BF16_DTYPE is not None:
        yield "bfloat16 operand", (a.view(R.BF16_DTYPE), b), o(), None


@pytest.mark.parametrize("case", [c[0] for c in _refused_calls()])
def test_arith_plain_refuses_the_rest(case):
    """Anything but the common call: arith_plain computes nothing (out untouched) and
    returns None, and the public call (its general path) gives the right codes or the
    error the general path gives."""
    ops, out, public = next((c[1], c[2], c[3]) for c in _refused_calls() if c[0] == case)
    before = out.copy()
    assert _plain(0, ops, out, dk.BF16, max_n=63 if case == "more than max_n" else 1 << 62) is None
    np.testing.assert_array_equal(out, before)
    if public == "error":
        with pytest.raises((TypeError, ValueError), match="^(a|b|out): "):
            dk.add(*ops, dk.BF16, out=out)
        return
    plain = [np.ascontiguousarray(v.view(np.uint16) if v.dtype == R.BF16_DTYPE else v,
                                  dtype=np.uint16) for v in ops]
    want = dk.add(*np.broadcast_arrays(*plain), dk.BF16)
    got = dk.add(*ops, dk.BF16, out=out)
    assert got is out
    np.testing.assert_array_equal(np.asarray(out).astype(np.uint16), want)


def test_arith_plain_releases_every_buffer():
    """arith_plain gives back each buffer it took, when it runs and when it refuses at each
    step (an operand, the shape, out, an overlap): arrays over bytearrays, dropped after
    the call, leave the bytearrays resizable (not while an array, or a buffer of it, lives)."""
    import gc
    n = 32
    store = [bytearray(2 * n) for _ in range(3)]
    big = bytearray(2 * n + 8)
    views = lambda: [np.frombuffer(s, np.uint16) for s in store]  # noqa: E731
    whole = lambda: np.frombuffer(big, np.uint16)  # noqa: E731
    over = lambda: (whole()[:n], whole()[2:2 + n])  # noqa: E731
    attempts = [
        lambda: (lambda a, b, o: ((a, b), o))(*views()),               # runs
        lambda: (lambda a, b, o: ((a, b[:3]), o))(*views()),           # shapes differ
        lambda: (lambda a, b, o: ((a, b), o[:3]))(*views()),           # out's shape
        lambda: (lambda a, b, o: ((a, b, a.view(np.int16)), o))(*views()),  # c's type
        lambda: (lambda a, b, o: ((a, b), o.view(_Sub)))(*views()),    # out's type
        lambda: (lambda a, b, o: ((over()[0], b), over()[1]))(*views()),  # overlap
    ]
    for make in attempts:
        ops, out = make()
        ran = _plain(0, ops, out, dk.BF16, want=False)
        assert (ran is not None) == (make is attempts[0])
        del ops, out, ran
        gc.collect()
        for ba in (*store, big):
            ba.append(0)  # BufferError if an array over it, or a buffer of one, were held
            del ba[-1]


def _convert_plain(entry, x, out, fmt, okind=0, mode=0, seed=0, want=True):
    from dojo_kernels import _config, _numerics
    from dojo_kernels._cformat import ctuple
    dtype = (np.dtype(fmt.storage_dtype) if entry == 0 else np.dtype(np.float32) if okind == 0
             else np.dtype(np.float64))
    return _numerics.convert_plain(entry, x, out, ctuple(fmt), dtype, okind, mode, seed, want,
                                   _config.isa(), 1)


@pytest.mark.parametrize("fmt", [dk.BF16, dk.cfloat8_152(15), dk.FP32, dk.shp(5)],
                         ids=["bf16", "cf8", "fp32", "shp"])
@pytest.mark.parametrize("shape", [(0,), (1,), (37,), (3, 5, 7), ()])
@pytest.mark.parametrize("ftype", [np.float32, np.float64])
def test_convert_plain_takes_the_common_call(fmt, shape, ftype):
    """The glue's one-step conversions (convert_plain: quantize, dequantize, fake_quantize)
    take plain float32/float64 arrays and code arrays, out given, new and in place where the
    widths agree, and write what the general entries write (the same driver: this test is
    about the buffers)."""
    from dojo_kernels import _config, _numerics
    from dojo_kernels._cformat import ctuple
    isa, ct, kind = _config.isa(), ctuple(fmt), 0 if ftype == np.float32 else 1
    cdt = np.dtype(fmt.storage_dtype)
    x = np.asarray(np.random.default_rng(len(shape)).standard_normal(shape) * 3, ftype)
    for mode in (0, 1):
        want = np.empty(shape, cdt)
        flags = _numerics.quantize(x, kind, want, want.size, ct, mode, 9, True, isa, 1)
        out = np.full(shape, 7, cdt)
        got = _convert_plain(0, x, out, fmt, mode=mode, seed=9)
        assert got is not None and got[0] is out and got[1] == flags
        np.testing.assert_array_equal(_bytes(out), _bytes(want))
        new, _ = _convert_plain(0, x, None, fmt, mode=mode, seed=9)
        assert new.shape == shape and new.dtype == cdt
        np.testing.assert_array_equal(_bytes(new), _bytes(want))
        fwant = np.empty(shape, ftype)
        _numerics.fake_quantize(x, kind, fwant, x.size, ct, mode, 9, isa, 1)
        for dst in (np.full(shape, 7, ftype), None, x.copy()):
            src = dst if dst is not None and np.array_equal(dst, x) else x
            got = _convert_plain(2, src, dst, fmt, mode=mode, seed=9)
            assert got is not None and (dst is None or got[0] is dst) and got[0].dtype == ftype
            np.testing.assert_array_equal(_bytes(got[0]), _bytes(fwant))
    codes = want
    dwant = np.empty(shape, ftype)
    _numerics.dequantize(codes, dwant, kind, codes.size, ct, isa, 1)
    for dst in (np.full(shape, 7, ftype), None):
        got = _convert_plain(1, codes, dst, fmt, okind=kind)
        assert got is not None and (dst is None or got[0] is dst) and got[0].dtype == ftype
        np.testing.assert_array_equal(_bytes(got[0]), _bytes(dwant))
    if ftype == np.float32 and fmt is dk.FP32:  # same width: in place
        inplace = codes.copy()
        assert _convert_plain(1, inplace, inplace, fmt, okind=0) is not None
        np.testing.assert_array_equal(_bytes(inplace), _bytes(dwant))


def _refused_conversions():
    """Conversions the one-step entry must leave to the general path: (name, entry, x, out)."""
    n = 64
    x = np.random.default_rng(8).standard_normal(n).astype(np.float32)
    c = dk.quantize(x, dk.BF16)
    f32 = lambda: np.full(n, 7.0, np.float32)  # noqa: E731
    u16 = lambda: np.full(n, 7, np.uint16)  # noqa: E731
    odd = np.zeros(4 * n + 1, np.uint8)[1:].view(np.float32)
    odd[:] = x
    ro = u16()
    ro.setflags(write=False)
    shared = np.zeros(n + 4, np.float32)
    shared[:n] = x
    for entry, src, dst in ((0, x, u16), (2, x, f32), (1, c, f32)):
        name = ("quantize", "dequantize", "fake_quantize")[entry]
        yield f"{name}: subclass input", entry, src.view(_Sub), dst()
        yield f"{name}: subclass out", entry, src, dst().view(_Sub)
        yield f"{name}: list input", entry, src.tolist(), dst()
        yield f"{name}: strided input", entry, np.repeat(src, 2)[::2], dst()
        yield f"{name}: strided out", entry, src, np.repeat(dst(), 2)[::2]
        yield f"{name}: byte-swapped input", entry, src.astype(src.dtype.newbyteorder()), dst()
        yield f"{name}: out of another shape", entry, src, dst().reshape(8, 8)
    yield "quantize: float16 input", 0, x.astype(np.float16), u16()
    yield "quantize: misaligned input", 0, odd, u16()
    yield "quantize: read-only out", 0, x, ro
    yield "quantize: out at the input's address, another width", 0, shared[:n], \
        shared.view(np.uint16)[:n]
    yield "fake_quantize: out partly over the input", 2, shared[:n], shared[1:n + 1]
    yield "dequantize: codes of another type", 1, c.view(np.int16), f32()
    if R.BF16_DTYPE is not None:
        yield "quantize: bfloat16 input", 0, c.view(R.BF16_DTYPE), u16()
        yield "fake_quantize: bfloat16 input", 2, c.view(R.BF16_DTYPE), \
            np.zeros(n, R.BF16_DTYPE)


@pytest.mark.parametrize("case", [c[0] for c in _refused_conversions()])
def test_convert_plain_refuses_the_rest(case):
    """Anything but the common call: convert_plain computes nothing (out untouched) and
    returns None; the public call (its general path) then gives what it gives for the same
    values in plain arrays, or an error naming the argument."""
    entry, x, out = next(c[1:] for c in _refused_conversions() if c[0] == case)
    before = np.array(out, copy=True)
    assert _convert_plain(entry, x, out, dk.BF16) is None
    np.testing.assert_array_equal(np.ascontiguousarray(out).view(np.uint8), before.view(np.uint8))
    call = (lambda v, o: dk.quantize(v, dk.BF16, out=o),
            lambda v, o: dk.dequantize(v, dk.BF16, out=o),
            lambda v, o: dk.fake_quantize(v, dk.BF16, out=o))[entry]
    refused = isinstance(x, list) and entry != 0 or not isinstance(x, list) and x.dtype in (
        np.int16, np.float16)  # (lists of Python floats are float64)
    if refused or "read-only" in case or "another shape" in case:
        with pytest.raises((TypeError, ValueError), match="^(x|codes|out): "):
            call(x, out)
        return
    plain = np.array(x)
    if plain.dtype == R.BF16_DTYPE or entry == 1:
        plain = plain.astype(np.float32) if entry != 1 else plain.astype(np.uint16)
    want = call(plain, None)
    got = call(x, out)
    assert got is out
    np.testing.assert_array_equal(np.ascontiguousarray(out).view(np.uint8),
                                  np.asarray(want, dtype=out.dtype).view(np.uint8))


def test_convert_plain_releases_every_buffer():
    """convert_plain gives back each buffer it took, when it runs and when it refuses after
    taking one (out's type, shape, an overlap): arrays over bytearrays, dropped after the
    call, leave the bytearrays resizable."""
    import gc
    n = 32
    xs, os_ = bytearray(4 * n), bytearray(4 * n)
    attempts = [  # entry, x, out, runs
        lambda: (0, np.frombuffer(xs, np.float32), np.frombuffer(os_, np.uint16)[:n], True),
        lambda: (2, np.frombuffer(xs, np.float32), np.frombuffer(os_, np.float32), True),
        lambda: (0, np.frombuffer(xs, np.float32), np.frombuffer(os_, np.uint16)[:n // 2], False),
        lambda: (0, np.frombuffer(xs, np.float32), np.frombuffer(os_, np.int16)[:n], False),
        lambda: (2, np.frombuffer(xs, np.float32), np.frombuffer(xs, np.float32)[:n].view(_Sub),
                 False),
        lambda: (2, np.frombuffer(xs, np.float32)[:n - 1], np.frombuffer(xs, np.float32)[1:],
                 False),
    ]
    for make in attempts:
        entry, x, out, runs = make()
        assert (_convert_plain(entry, x, out, dk.BF16) is not None) == runs
        del x, out
        gc.collect()
        for ba in (xs, os_):
            ba.append(0)  # BufferError if an array over it, or a buffer of one, were held
            del ba[-1]


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
