"""Fuzz every public entry point (issue 7): random dtypes, shapes (0-size, large odd, across
the C drivers' 2048/32768-element chunk and block edges), strides (negative, zero-stride
broadcasts, steps), unaligned offsets, byte orders, read-only inputs, read-only /
mis-shaped / mis-typed / overlapping ``out``, formats and biases, NaN/Inf payloads and wrong
argument types.

Each call must either return the right result or raise ValueError/TypeError -- and a call
whose arguments are all valid must succeed. "Right" is checked against independent facts:
the result of a layout-scrambled input equals the result of its contiguous native copy
(the kernels' contract: results depend on values only), ml_dtypes' float32 -> bfloat16
cast, exact float64 arithmetic for the all-reduce, and the docstring properties of
choose_bias. The cases come from a seeded numpy generator (deterministic; the failing case
is printed with its seed). DOJO_FUZZ_CASES scales the budget (.ci/sanitize.sh lowers it).
"""
from __future__ import annotations

import faulthandler
import math
import os

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _config
from dojo_kernels.formats import FAMILIES

CASES = int(os.environ.get("DOJO_FUZZ_CASES", "300"))
BF16_DT = np.dtype(ml_dtypes.bfloat16)
# Sizes around the drivers' chunk (2048) and block (32768) edges, and odd ones.
SIZES = (0, 1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 127, 2047, 2049, 4097, 32767, 32769, 65537)


@pytest.fixture(autouse=True)
def watchdog():
    """A hang is a failure: dump every thread's stack and exit after 10 minutes."""
    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def contig(a):
    """A C-contiguous copy keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return np.array(a, order="C", copy=True)


# --- generators ----------------------------------------------------------------------------

def rand_shape(rng, big_ok=True):
    nd = int(rng.integers(0, 4))
    if nd == 0:
        return ()
    if big_ok and rng.random() < 0.15:  # one long odd axis
        shape = [1] * nd
        shape[int(rng.integers(nd))] = int(rng.choice(SIZES[-6:]))
        return tuple(shape)
    return tuple(int(rng.choice((0, 1, 2, 3, 5, 7, 16, 33))) if rng.random() < 0.9 else 0
                 for _ in range(nd))


def rand_bits(rng, dtype, shape):
    """Values of dtype from random bit patterns plus specials (NaN payloads, Inf, -0,
    subnormals, huge/tiny)."""
    n = int(np.prod(shape, dtype=np.int64))
    dtype = np.dtype(dtype)
    kind = rng.integers(3)
    if dtype.kind == "f" or dtype == BF16_DT:
        ub = np.dtype(f"u{dtype.itemsize}")
        if kind == 0:   # any bit pattern: NaN payloads, Inf, subnormals
            bits = rng.integers(0, np.iinfo(ub).max, size=n, dtype=ub, endpoint=True)
            return bits.view(dtype).reshape(shape)
        if kind == 1:   # ordinary magnitudes
            v = rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, size=n)
            return v.astype(dtype).reshape(shape)
        specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3e38, -3e38,
                             65504.0, 1e-300, 1e300, 0.5, 1.0], dtype=np.float64)
        with np.errstate(over="ignore"):
            return rng.choice(specials, size=n).astype(dtype).reshape(shape)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True).reshape(shape)
    return rng.standard_normal(n).astype(dtype).reshape(shape)


def layout(rng, vals, kind=None):
    """An array with vals' logical values in a random memory layout (never the same buffer).
    Returns (array, description)."""
    kinds = ["contig", "reversed", "strided", "unaligned", "fortran", "byteswap", "readonly",
             "transposed"]
    kind = kind or str(rng.choice(kinds))
    dt = vals.dtype
    if kind == "reversed" and vals.ndim:
        ax = int(rng.integers(vals.ndim))
        idx = tuple(slice(None, None, -1) if i == ax else slice(None) for i in range(vals.ndim))
        return contig(vals[idx])[idx], kind
    if kind == "strided" and vals.ndim:
        step = int(rng.integers(2, 4))
        big = np.zeros((vals.shape[0] * step,) + vals.shape[1:], dt)
        big[::step] = vals
        return big[::step], kind
    if kind == "unaligned":
        buf = np.zeros(vals.nbytes + dt.itemsize + 1, np.uint8)
        off = int(rng.integers(1, dt.itemsize)) if dt.itemsize > 1 else 1
        a = np.ndarray(vals.shape, dt, buffer=buf, offset=off)
        a[...] = vals
        return a, kind
    if kind == "fortran":
        return np.array(vals, order="F"), kind
    if kind == "transposed" and vals.ndim >= 2:
        return contig(vals.T).T, kind
    if kind == "byteswap" and dt.kind in "fui" and dt != BF16_DT and dt.itemsize > 1:
        return vals.astype(dt.newbyteorder()), kind
    if kind == "readonly":
        a = vals.copy()
        a.flags.writeable = False
        return a, kind
    return vals.copy(), "contig"


def rand_input(rng, dtypes, shape=None):
    """A random input: (array-like, its logical native contiguous value or None if the value
    is not a valid array of one of `dtypes`, description)."""
    r = rng.random()
    if r < 0.06:
        bad = [None, "x", object(), {1: 2}, [1.0, [2.0, 3.0]], 3 + 4j]
        v = bad[int(rng.integers(len(bad)))]
        return v, None, f"bad {type(v).__name__}"
    shape = rand_shape(rng) if shape is None else shape
    if r < 0.16:   # a wrong dtype
        wrong = [np.int32, np.int8, np.float16, np.complex64, np.bool_, np.uint32, np.int64,
                 np.uint16, np.uint8, np.float32, np.float64]
        dt = np.dtype(wrong[int(rng.integers(len(wrong)))])
        vals = rand_bits(rng, dt, shape)
        a, how = layout(rng, vals)
        native = contig(a.astype(dt.newbyteorder("=")))
        ok = any(dt == np.dtype(d) for d in dtypes)
        return a, (native if ok else None), f"{dt.str}{shape} {how}"
    if r < 0.2 and np.dtype(np.float64) in [np.dtype(d) for d in dtypes]:
        vals = rand_bits(rng, np.float64, (int(rng.integers(0, 6)),))
        return vals.tolist(), vals, f"list[{vals.size}]"
    dt = np.dtype(dtypes[int(rng.integers(len(dtypes)))])
    vals = rand_bits(rng, dt, shape)
    if rng.random() < 0.15 and vals.ndim:   # zero-stride broadcast of a smaller array
        small = vals[tuple(slice(0, 1) if rng.random() < 0.5 else slice(None)
                           for _ in range(vals.ndim))]
        b = np.broadcast_to(layout(rng, small)[0], vals.shape)
        return b, contig(b.astype(dt.newbyteorder("="))), f"{dt.str}{shape} bcast"
    a, how = layout(rng, vals)
    return a, contig(vals), f"{dt.str}{shape} {how}"


def rand_format(rng):
    r = rng.random()
    if r < 0.04:
        bad = ["bf16", None, 8, dk.BF16.name]
        return bad[int(rng.integers(len(bad)))]
    fixed = [dk.FP32, dk.BF16, dk.UHP]
    if r < 0.3:
        return fixed[int(rng.integers(3))]
    fam = list(FAMILIES.values())[int(rng.integers(3))]
    sub = ("tesla", "ieee", "flush")[int(rng.integers(3))]
    return fam(int(rng.integers(0, 64)), sub)


def rand_rounding(rng):
    r = rng.random()
    if r < 0.05:
        return ("up", None)[int(rng.integers(2))], None
    mode = ("nearest", "stochastic", "toward_zero")[int(rng.integers(3))]
    if mode != "stochastic":
        return mode, None
    seeds = [0, 1, 2**64 - 1, int(rng.integers(0, 2**63)), np.uint64(7),
             None, -1, 2**64, 1.5, "3", True]
    return mode, seeds[int(rng.integers(len(seeds)))] if rng.random() < 0.3 else int(
        rng.integers(0, 2**63))


def rounding_ok(mode, seed):
    if mode not in ("nearest", "stochastic", "toward_zero"):
        return False
    if mode != "stochastic":
        return True
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        return False
    return 0 <= int(seed) < 2**64


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype.itemsize != b.dtype.itemsize:
        return False
    u = np.dtype(f"u{a.dtype.itemsize}")
    return np.array_equal(contig(a).view(u), contig(b).view(u))


def rand_out(rng, shape, dtype, inputs=()):
    """A random `out`: (out, valid?, description). Valid outs may be non-contiguous, unaligned
    or overlap an input (then the result must be as if the input were read first)."""
    dtype = np.dtype(dtype)
    r = rng.random()
    if r < 0.4:
        return None, True, "none"
    if r < 0.48:
        return [0] * 3, False, "list"
    if r < 0.55:
        wrong = np.dtype(np.float64 if dtype != np.float64 else np.float32)
        return np.empty(shape, wrong), False, "wrong dtype"
    if r < 0.6:
        return np.empty(shape + (1,), dtype), False, "wrong shape"
    if r < 0.66:
        o = np.empty(shape, dtype)
        o.flags.writeable = False
        return o, False, "read-only"
    if r < 0.7:
        return np.broadcast_to(np.empty((), dtype), shape), False, "broadcast (read-only)"
    if r < 0.74 and dtype.itemsize > 1:
        return np.empty(shape, dtype.newbyteorder()), False, "byteswapped dtype"
    if r < 0.82 and inputs:   # aliasing an input of the same dtype and shape: in-place
        for a in inputs:
            if (isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape
                    and a.flags.writeable):
                return a, True, "aliases an input"
    if r < 0.86 and inputs:   # partly overlapping an input: out = buf[1:], input = buf[:-1]
        for a in inputs:
            if (isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape
                    and a.ndim == 1 and a.size and a.flags.writeable and a.flags.c_contiguous
                    and a.base is None):
                return None, True, "overlap"   # built by the caller (needs the input's values)
    o, how = layout(rng, np.zeros(shape, dtype), kind=str(rng.choice(
        ["contig", "reversed", "strided", "unaligned", "fortran", "transposed"])))
    return o, True, how


def check_error(exc, desc):
    assert isinstance(exc, (ValueError, TypeError)), f"{desc}: raised {type(exc).__name__}: {exc}"
    assert str(exc), f"{desc}: empty error message"


def overlapping(vals, dtype):
    """(input, out) sharing one buffer shifted by one element; input holds vals."""
    buf = np.zeros(vals.size + 1, dtype)
    if rng_bit(vals):
        buf[:-1] = vals
        return buf[:-1], buf[1:]
    buf[1:] = vals
    return buf[1:], buf[:-1]


def rng_bit(vals):
    return int(np.asarray(vals).view(np.uint8).sum() if vals.size else 0) & 1


# --- numerics ---------------------------------------------------------------------------

@pytest.mark.parametrize("block", range(4))
def test_fuzz_quantize(block):
    rng = np.random.default_rng([7, block])
    for case in range(CASES // 4):
        x, xval, xdesc = rand_input(rng, (np.float32, np.float64, BF16_DT))
        fmt = rand_format(rng)
        mode, seed = rand_rounding(rng)
        want_flags = bool(rng.integers(2))
        fmt_ok = isinstance(fmt, dk.Format)
        shape = np.shape(xval) if xval is not None else ()
        sdt = np.dtype(fmt.storage_dtype) if fmt_ok else np.dtype(np.uint8)
        out, out_ok, odesc = rand_out(rng, shape, sdt, (x,))
        if odesc == "overlap" and xval is not None and xval.dtype == sdt:
            x, out = overlapping(xval, sdt)
        desc = (f"case {block}/{case}: quantize(x={xdesc}, fmt={fmt!r}, rounding={mode!r}, "
                f"seed={seed!r}, out={odesc}, return_flags={want_flags})")
        valid = xval is not None and fmt_ok and rounding_ok(mode, seed) and out_ok
        try:
            res = dk.quantize(x, fmt, rounding=mode, seed=seed, out=out,
                              return_flags=want_flags)
        except Exception as exc:  # noqa: BLE001 - the fuzz target decides what it raises
            assert not valid, f"{desc}: valid call raised {type(exc).__name__}: {exc}"
            check_error(exc, desc)
            continue
        assert valid, f"{desc}: invalid call returned"
        codes, flags = res if want_flags else (res, None)
        ref = dk.quantize(xval, fmt, rounding=mode, seed=seed, return_flags=want_flags)
        rcodes, rflags = ref if want_flags else (ref, None)
        assert codes.dtype == sdt and codes.shape == shape, desc
        assert same_bits(codes, rcodes), f"{desc}: differs from the contiguous copy's result"
        assert flags == rflags, desc
        if out is not None:
            assert codes is out, f"{desc}: result is not out"
        if fmt == dk.BF16 and mode == "nearest" and xval.dtype == np.float32:
            assert same_bits(codes, xval.astype(BF16_DT)), f"{desc}: differs from ml_dtypes"


@pytest.mark.parametrize("block", range(4))
def test_fuzz_dequantize(block):
    rng = np.random.default_rng([11, block])
    for case in range(CASES // 4):
        fmt = rand_format(rng)
        fmt_ok = isinstance(fmt, dk.Format)
        sdt = np.dtype(fmt.storage_dtype) if fmt_ok else np.dtype(np.uint8)
        accepted = (sdt, BF16_DT) if fmt_ok and fmt.name == "bf16" else (sdt,)
        codes, cval, cdesc = rand_input(rng, accepted)
        if rng.random() < 0.3 and fmt_ok and cval is not None and fmt.nbits <= 16:
            # mostly valid codes (random bits also give the unused/NaN/Inf codes)
            cval = (rng.integers(0, fmt.max_code + 1, size=cval.shape)
                    .astype(cval.dtype.newbyteorder("=")) if cval.dtype != BF16_DT else cval)
            codes, how = layout(rng, cval)
            cdesc += f" (codes <= max_code) {how}"
        dts = [np.float32, np.float64, "float32", None, np.float16, "bogus", int]
        dt = dts[int(rng.integers(len(dts)))] if rng.random() < 0.3 else np.float32
        try:
            dt_ok = np.dtype(dt) in (np.float32, np.float64)   # None: numpy's float64
        except TypeError:
            dt_ok = False
        odt = np.dtype(dt) if dt_ok else np.dtype(np.float32)
        shape = np.shape(cval) if cval is not None else ()
        out, out_ok, odesc = rand_out(rng, shape, odt, (codes,))
        if odesc == "overlap":
            out = None
        desc = f"case {block}/{case}: dequantize(codes={cdesc}, fmt={fmt!r}, dtype={dt!r}, out={odesc})"
        valid = cval is not None and fmt_ok and dt_ok and out_ok
        try:
            res = dk.dequantize(codes, fmt, dtype=dt, out=out)
        except Exception as exc:  # noqa: BLE001
            assert not valid, f"{desc}: valid call raised {type(exc).__name__}: {exc}"
            check_error(exc, desc)
            continue
        assert valid, f"{desc}: invalid call returned"
        ref = dk.dequantize(cval, fmt, dtype=dt)
        assert res.dtype == odt and res.shape == shape, desc
        assert same_bits(res, ref), f"{desc}: differs from the contiguous copy's result"
        if out is not None:
            assert res is out, desc
        if fmt == dk.BF16:   # independent: bf16 -> float is exact (ml_dtypes)
            want = cval.view(BF16_DT).astype(odt) if cval.dtype != BF16_DT else cval.astype(odt)
            np.testing.assert_array_equal(res, want, err_msg=desc)


@pytest.mark.parametrize("block", range(4))
def test_fuzz_fake_quantize(block):
    rng = np.random.default_rng([13, block])
    for case in range(CASES // 4):
        x, xval, xdesc = rand_input(rng, (np.float32, np.float64, BF16_DT))
        fmt = rand_format(rng)
        mode, seed = rand_rounding(rng)
        fmt_ok = isinstance(fmt, dk.Format)
        bf16_ok = (fmt_ok and (fmt.name == "bf16" or fmt.nbits == 8))
        desc = (f"case {block}/{case}: fake_quantize(x={xdesc}, fmt={fmt!r}, rounding={mode!r},"
                f" seed={seed!r})")
        valid = (xval is not None and fmt_ok and rounding_ok(mode, seed)
                 and (xval.dtype != BF16_DT or bf16_ok))
        try:
            res = dk.fake_quantize(x, fmt, rounding=mode, seed=seed)
        except Exception as exc:  # noqa: BLE001
            assert not valid, f"{desc}: valid call raised {type(exc).__name__}: {exc}"
            check_error(exc, desc)
            continue
        assert valid, f"{desc}: invalid call returned"
        assert res.dtype == xval.dtype and res.shape == xval.shape, desc
        ref = dk.fake_quantize(xval, fmt, rounding=mode, seed=seed)
        assert same_bits(res, ref), f"{desc}: differs from the contiguous copy's result"
        # independent composition: dequantize(quantize(x))
        q = dk.quantize(xval, fmt, rounding=mode, seed=seed)
        wide = dk.dequantize(q, fmt, dtype=np.float64 if xval.dtype == np.float64 else np.float32)
        np.testing.assert_array_equal(res.astype(np.float64), wide.astype(np.float64),
                                      err_msg=desc)


OPS = {"add": (dk.add, 2), "sub": (dk.sub, 2), "mul": (dk.mul, 2), "fma": (dk.fma, 3)}


@pytest.mark.parametrize("op", sorted(OPS))
def test_fuzz_arith(op):
    fn, nargs = OPS[op]
    rng = np.random.default_rng([17, len(op), ord(op[0])])
    for case in range(CASES // 4):
        fmt = rand_format(rng)
        fmt_ok = isinstance(fmt, dk.Format)
        sdt = np.dtype(fmt.storage_dtype) if fmt_ok else np.dtype(np.uint8)
        accepted = (sdt, BF16_DT) if fmt_ok and fmt.name == "bf16" else (sdt,)
        shape = rand_shape(rng, big_ok=rng.random() < 0.3)
        args, vals, descs = [], [], []
        for k in range(nargs):
            # broadcastable operand shapes: drop leading axes / set axes to 1
            sub = shape[int(rng.integers(0, len(shape) + 1)):] if rng.random() < 0.3 else shape
            sub = tuple(1 if rng.random() < 0.2 else s for s in sub)
            if rng.random() < 0.03:
                sub = sub + (4,)   # usually not broadcastable
            a, v, d = rand_input(rng, accepted, shape=sub)
            args.append(a)
            vals.append(v)
            descs.append(d)
        mode, seed = rand_rounding(rng)
        want_flags = bool(rng.integers(2))
        try:
            bshape = np.broadcast_shapes(*[np.shape(v) for v in vals if v is not None])
            shape_ok = all(v is not None for v in vals)
        except ValueError:
            bshape, shape_ok = (), False
        out, out_ok, odesc = rand_out(rng, bshape, sdt, tuple(args))
        if odesc == "overlap":
            i = next(i for i, a in enumerate(args) if isinstance(a, np.ndarray)
                     and a.dtype == sdt and a.shape == bshape and a.ndim == 1
                     and a.flags.writeable and a.flags.c_contiguous and a.base is None)
            args[i], out = overlapping(vals[i], sdt)
        desc = (f"case {case}: {op}({', '.join(descs)}, fmt={fmt!r}, rounding={mode!r}, "
                f"seed={seed!r}, out={odesc})")
        valid = shape_ok and fmt_ok and rounding_ok(mode, seed) and out_ok
        try:
            res = fn(*args, fmt, rounding=mode, seed=seed, out=out, return_flags=want_flags)
        except Exception as exc:  # noqa: BLE001
            assert not valid, f"{desc}: valid call raised {type(exc).__name__}: {exc}"
            check_error(exc, desc)
            continue
        assert valid, f"{desc}: invalid call returned"
        codes, flags = res if want_flags else (res, None)
        cvals = [v.view(sdt) if v.dtype == BF16_DT else v for v in vals]
        ref = fn(*[contig(np.broadcast_to(v, bshape)) for v in cvals], fmt,
                 rounding=mode, seed=seed, return_flags=want_flags)
        rcodes, rflags = ref if want_flags else (ref, None)
        assert codes.shape == bshape and codes.dtype == sdt, desc
        assert same_bits(codes, rcodes), f"{desc}: differs from the contiguous copies' result"
        assert flags == rflags, desc
        if out is not None:
            assert codes is out, desc


def test_fuzz_choose_bias():
    rng = np.random.default_rng(19)
    for case in range(CASES):
        x, xval, xdesc = rand_input(rng, (np.float32, np.float64, BF16_DT))
        fams = list(FAMILIES) + ["cfloat8", None, 3]
        family = fams[int(rng.integers(len(fams)))] if rng.random() < 0.1 else list(FAMILIES)[
            int(rng.integers(3))]
        margins = [0, 1, -3, 40, 2000, -2000, 10**6, 2.5, None, "1", np.int64(2), True]
        margin = margins[int(rng.integers(len(margins)))] if rng.random() < 0.5 else 0
        desc = f"case {case}: choose_bias(x={xdesc}, family={family!r}, margin={margin!r})"
        try:
            bias = dk.choose_bias(x, family, margin=margin)
        except Exception as exc:  # noqa: BLE001
            check_error(exc, desc)
            continue
        assert xval is not None and family in FAMILIES, f"{desc}: invalid call returned"
        assert isinstance(bias, int) and 0 <= bias <= 63, desc
        m = int(margin)
        top = float(np.max(np.abs(xval.astype(np.float64)))) if xval.size else 0.0
        assert math.isfinite(top), f"{desc}: NaN/Inf input accepted"
        need = math.ldexp(top, m) if top else 0.0
        make = FAMILIES[family]
        assert make(bias).max >= need, desc
        assert bias == 63 or make(bias + 1).max < need, f"{desc}: not the largest bias"


# --- all-reduce --------------------------------------------------------------------------

def rand_mesh(rng, small=True):
    rows, cols = (int(rng.integers(1, 5)), int(rng.integers(1, 5))) if small else (
        int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    return dk.mesh.Mesh2D(rows, cols, link_bandwidth=float(rng.uniform(1e9, 1e12)),
                          link_latency=float(rng.uniform(0, 1e-6)),
                          hop_latency=float(rng.uniform(0, 1e-7)),
                          wraparound=bool(rng.integers(2)))


def test_fuzz_allreduce():
    from dojo_kernels.collectives import ALGORITHMS

    rng = np.random.default_rng(23)
    for case in range(max(CASES // 3, 10)):
        topo = rand_mesh(rng)
        P = topo.nodes
        bf16 = bool(rng.integers(2))
        fmt = dk.BF16 if bf16 else dk.FP32
        accumulate = "bf16" if bf16 and rng.random() < 0.5 else "fp32"
        algs = ["auto", *ALGORITHMS]
        algorithm = algs[int(rng.integers(len(algs)))]
        inner = tuple(int(rng.choice((0, 1, 3, 7, 33, 2049))) for _ in range(int(rng.integers(0, 3))))
        shape = (P,) + inner
        n = int(np.prod(shape))
        v = (rng.integers(-64, 64, size=n) * 2.0 ** rng.integers(-4, 4, size=n)).reshape(shape)
        vals = v.astype(BF16_DT).view(np.uint16) if bf16 else v.astype(np.float32)
        r = rng.random()
        bad = None
        if r < 0.1:
            bad = "wrong P"
            vals = vals[:-1] if P > 1 else np.concatenate([vals, vals])
        elif r < 0.15:
            bad = "wrong dtype"
            vals = vals.astype(np.float64)
        elif r < 0.18:
            bad = "topology"
            topo = (P, 1)
        elif r < 0.21:
            bad = "algorithm"
            algorithm = "ring!"
        elif r < 0.24:
            bad = "accumulate"
            accumulate = "fp16"
        elif r < 0.27:
            bad = "fmt"
            fmt = dk.cfloat8_143(7)
        buf, how = layout(rng, vals, kind=str(rng.choice(
            ["contig", "reversed", "strided", "unaligned", "fortran", "readonly", "transposed",
             "byteswap"])))
        if how == "byteswap":
            bad = bad or "byteswapped dtype"
        if bf16 and rng.random() < 0.3 and how != "byteswap":
            buf = buf.view(BF16_DT)
        before = np.array(buf, copy=True)
        desc = (f"case {case}: allreduce({buf.dtype.str}{shape} {how}, {topo!r}, "
                f"algorithm={algorithm!r}, fmt={fmt!r}, accumulate={accumulate!r}) [{bad}]")
        try:
            res, report = dk.allreduce(buf, topo, algorithm=algorithm, fmt=fmt,
                                       accumulate=accumulate)
        except Exception as exc:  # noqa: BLE001
            assert bad, f"{desc}: valid call raised {type(exc).__name__}: {exc}"
            check_error(exc, desc)
            continue
        assert not bad, f"{desc}: invalid call returned"
        assert same_bits(buf, before), f"{desc}: input modified"
        assert res.shape == buf.shape and res.dtype == buf.dtype, desc
        # Inputs are k * 2^e with |k| < 64, |e| <= 4 (exact in BF16): every partial sum of at
        # most 16 of them is exact in FP32, so FP32 results equal the float64 sum and BF16
        # with FP32 partials equals that sum rounded once to BF16 (ml_dtypes).
        if not (bf16 and accumulate == "bf16"):
            exact = v.sum(axis=0)
            want = exact.astype(np.float32)
            if bf16:
                want = want.astype(BF16_DT).view(np.uint16)
            assert same_bits(np.asarray(res).view(want.dtype),
                             np.broadcast_to(want, res.shape)), f"{desc}: wrong sums"
        flat = contig(np.asarray(before).view(np.uint16) if bf16 else before)
        ref, _ = dk.allreduce(flat, topo, algorithm=algorithm, fmt=fmt, accumulate=accumulate)
        assert same_bits(res, ref), f"{desc}: differs from the contiguous copy's result"
        assert math.isfinite(report.time) and report.time >= 0, desc


def test_fuzz_estimate_allreduce_and_mesh():
    from dojo_kernels.collectives import ALGORITHMS

    rng = np.random.default_rng(29)
    weird = [0, -1, 1.5, float("nan"), float("inf"), -float("inf"), None, "3", True, 2**70,
             np.float32(2.0), np.int64(-3), 1e308, 1e-320, [2], 0.0]
    for case in range(max(CASES // 3, 10)):
        kw = {"link_bandwidth": float(rng.uniform(1e6, 1e12)),
              "link_latency": float(rng.uniform(0, 1e-5)), "hop_latency": 0.0,
              "wraparound": bool(rng.integers(2))}
        rows, cols = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        broke = None
        if rng.random() < 0.4:
            key = str(rng.choice(["rows", "cols", "link_bandwidth", "link_latency",
                                  "hop_latency", "wraparound"]))
            val = weird[int(rng.integers(len(weird)))]
            if key == "rows":
                rows = val
            elif key == "cols":
                cols = val
            else:
                kw[key] = val
            broke = f"{key}={val!r}"
        try:
            topo = dk.mesh.Mesh2D(rows, cols, **kw)
        except Exception as exc:  # noqa: BLE001
            assert broke, f"case {case}: valid Mesh2D raised {exc!r}"
            check_error(exc, f"case {case}: Mesh2D({broke})")
            continue
        # whatever was accepted must be a sane mesh
        assert topo.rows >= 1 and topo.cols >= 1 and topo.link_bandwidth > 0
        assert math.isfinite(topo.link_latency) and topo.link_latency >= 0
        assert math.isfinite(topo.hop_latency) and topo.hop_latency >= 0
        if topo.nodes > 64:
            continue
        nbytes = weird[int(rng.integers(len(weird)))] if rng.random() < 0.3 else float(
            rng.choice([0, 1, 3, 4096, 1e6, 1e9, 1e15]))
        algs = ["auto", *ALGORITHMS, "bogus", None]
        algorithm = algs[int(rng.integers(len(algs)))]
        desc = f"case {case}: estimate_allreduce({nbytes!r}, {topo!r}, algorithm={algorithm!r})"
        try:
            rep = dk.estimate_allreduce(nbytes, topo, algorithm=algorithm)
        except Exception as exc:  # noqa: BLE001
            check_error(exc, desc)
            nb_ok = (not isinstance(nbytes, bool) and isinstance(nbytes, (int, float, np.number))
                     and math.isfinite(float(nbytes)) and float(nbytes) >= 0)
            assert not (nb_ok and (algorithm == "auto" or algorithm in ALGORITHMS)), \
                f"{desc}: valid call raised {exc!r}"
            continue
        assert math.isfinite(rep.time) and rep.time >= 0, desc
        assert rep.lower_bound <= rep.time * (1 + 1e-9) + 1e-18, desc


def test_fuzz_mpi_argument_checks():
    mpi4py = pytest.importorskip("mpi4py")  # noqa: F841 - the MPI extra
    from mpi4py import MPI

    from dojo_kernels import mpi

    rng = np.random.default_rng(31)
    comm = MPI.COMM_SELF
    for case in range(max(CASES // 10, 10)):
        x, xval, xdesc = rand_input(rng, (np.float32,))
        algorithm = str(rng.choice(["ring", "tree", "bogus"]))
        shapes = [None, (1, 1), (2, 1), "1x1", (1,)]
        mesh_shape = shapes[int(rng.integers(len(shapes)))]
        desc = f"case {case}: mpi.allreduce(COMM_SELF, {xdesc}, {algorithm!r}, {mesh_shape!r})"
        try:
            res = mpi.allreduce(comm, x, algorithm=algorithm, mesh_shape=mesh_shape)
        except Exception as exc:  # noqa: BLE001
            check_error(exc, desc)
            continue
        assert xval is not None and algorithm != "bogus", f"{desc}: invalid call returned"
        np.testing.assert_array_equal(res, xval, err_msg=desc)   # one rank: the sum is x


def test_fuzz_overlapping_out():
    """out sharing memory with an input (shifted by a random number of bytes either way, or
    exactly: in place) gives the result of the call on copies, as NumPy ufuncs do."""
    rng = np.random.default_rng(37)
    for case in range(max(CASES // 3, 20)):
        n = int(rng.choice((1, 5, 17, 100, 2049, 40000)))
        which = str(rng.choice(["quantize", "dequantize", "add", "fma"]))
        fmt = rand_format(rng)
        if not isinstance(fmt, dk.Format):
            fmt = dk.BF16
        sdt = np.dtype(fmt.storage_dtype)
        if which == "quantize":
            idt = np.dtype(rng.choice([np.float32, np.float64]))
            odt = sdt
        elif which == "dequantize":
            idt, odt = sdt, np.dtype(rng.choice([np.float32, np.float64]))
        else:
            idt = odt = sdt
        vals = rand_bits(rng, idt, (n,))
        shift = int(rng.integers(-3 * odt.itemsize, 3 * odt.itemsize + 1)) if rng.random() < 0.8 else 0
        span = max(n * idt.itemsize, n * odt.itemsize) + 3 * odt.itemsize + 16
        buf = np.zeros(3 * span + 64, np.uint8)
        base = (span // 16 + 1) * 16   # room for out on either side (np.ndarray does not
        assert base + shift // odt.itemsize * odt.itemsize >= 0   # check negative offsets)
        # element-aligned placements: x at base, out at base + shift (rounded to odt's size)
        off_o = base + shift // odt.itemsize * odt.itemsize
        x = np.ndarray((n,), idt, buffer=buf, offset=base)
        x[...] = vals
        out = np.ndarray((n,), odt, buffer=buf, offset=off_o)
        other = rand_bits(rng, sdt, (n,))
        desc = f"case {case}: {which} n={n} {idt}->{odt} fmt={fmt!r} out shifted {off_o - base} B"
        if which == "quantize":
            ref = dk.quantize(vals, fmt)
            res = dk.quantize(x, fmt, out=out)
        elif which == "dequantize":
            ref = dk.dequantize(vals, fmt, dtype=odt)
            res = dk.dequantize(x, fmt, dtype=odt, out=out)
        elif which == "add":
            ref = dk.add(vals, other, fmt)
            res = dk.add(x, other, fmt, out=out)
        else:
            ref = dk.fma(other, vals, vals, fmt)
            res = dk.fma(other, x, x, fmt, out=out)
        assert res is out, desc
        assert same_bits(res, ref), f"{desc}: wrong result"


# --- GEMM -------------------------------------------------------------------------------------

def _gemm_format(rng):
    r = rng.random()
    if r < 0.03:
        return (dk.UHP, "bf16", None)[int(rng.integers(3))]
    if r < 0.4:
        return dk.BF16
    fam = (dk.cfloat8_143, dk.cfloat8_152)[int(rng.integers(2))]
    return fam(int(rng.integers(0, 64)), ("tesla", "ieee", "flush")[int(rng.integers(3))])


def _gemm_operand(rng, fmt, shape):
    """(operand, its codes as a contiguous native array or None if invalid, description)."""
    ok_fmt = isinstance(fmt, dk.Format) and fmt.name in ("bf16", "cfloat8_143", "cfloat8_152")
    sdt = np.dtype(fmt.storage_dtype) if ok_fmt else np.dtype(np.uint16)
    r = rng.random()
    if r < 0.04:
        bad = [None, "a", [[1, 2], [3]], 3.0]
        v = bad[int(rng.integers(len(bad)))]
        return v, None, f"bad {type(v).__name__}"
    if r < 0.08:   # wrong rank or wrong integer type
        v = rng.integers(0, 3, size=shape[-1:] if rng.random() < 0.5 else (1, 2) + shape,
                         dtype=np.int32 if rng.random() < 0.5 else sdt)
        return v, None, f"{v.dtype}{v.shape} bad"
    codes = rand_bits(rng, sdt, shape)
    if ok_fmt and rng.random() < 0.7:   # mostly finite codes
        if fmt.name == "bf16":
            codes = (rng.standard_normal(codes.shape) * 4).astype(BF16_DT).view(np.uint16)
        else:
            codes = rng.integers(0, fmt.max_code + 1, size=codes.shape).astype(np.uint8)
            sign = rng.integers(0, 2, size=codes.shape).astype(np.uint8) << 7
            codes = codes | sign
    if ok_fmt and rng.random() < 0.25:   # a float operand: rounded into the format first
        fdt = np.dtype((np.float32, np.float64, BF16_DT)[int(rng.integers(3))])
        vals = rand_bits(rng, fdt, shape)
        a, how = layout(rng, vals)
        return a, dk.quantize(contig(vals), fmt), f"{fdt.str}{shape} {how}"
    if sdt == np.uint16 and rng.random() < 0.2:
        a, how = layout(rng, codes.view(BF16_DT) if fmt == dk.BF16 else codes)
    else:
        a, how = layout(rng, codes)
    return a, (codes if ok_fmt else None), f"codes {sdt}{shape} {how}"


def test_fuzz_gemm():
    gemm = pytest.importorskip("dojo_kernels.gemm").gemm
    rng = np.random.default_rng(53)
    dims = (0, 1, 2, 3, 5, 8, 17, 33, 70)
    for case in range(max(CASES // 2, 20)):
        m, n, k = (int(rng.choice(dims)) for _ in range(3))
        batch = int(rng.choice((1, 2, 3)))
        sa = (batch, m, k) if rng.random() < 0.3 else (m, k)
        sb = (batch, k, n) if rng.random() < 0.3 else (k, n)
        fa, fb = _gemm_format(rng), (_gemm_format(rng) if rng.random() < 0.6 else None)
        a, ca, da = _gemm_operand(rng, fa, sa)
        b, cb, db = _gemm_operand(rng, fb if fb is not None else fa, sb)
        batched = len(sa) == 3 or len(sb) == 3
        shape = (batch, m, n) if batched else (m, n)
        beta, c = 0.0, None
        if rng.random() < 0.3:
            beta = float(rng.choice([0.0, 1.0, -0.5, 3.0]))
            c = rng.standard_normal(shape[-1:] if rng.random() < 0.5 else shape).astype(
                np.float32)
        out, out_ok, odesc = rand_out(rng, shape, np.float32, (a, b))
        if odesc == "overlap":
            out = None
        desc = (f"case {case}: gemm(a={da}, b={db}, a_format={fa!r}, b_format={fb!r}, "
                f"beta={beta}, c={None if c is None else c.shape}, out={odesc})")
        valid = ca is not None and cb is not None and out_ok
        try:
            res = gemm(a, b, a_format=fa, b_format=fb, c=c, beta=beta, out=out)
        except Exception as exc:  # noqa: BLE001
            assert not valid, f"{desc}: valid call raised {type(exc).__name__}: {exc}"
            check_error(exc, desc)
            continue
        assert valid, f"{desc}: invalid call returned"
        assert res.shape == shape and res.dtype == np.float32, desc
        if out is not None:
            assert res is out, desc
        ref = gemm(ca, cb, a_format=fa, b_format=fb, c=c, beta=beta)
        assert same_bits(res, ref), f"{desc}: differs from the contiguous codes' result"
        fb_ = fb if fb is not None else fa
        if fa.nbits == 8 and fb_.nbits == 8 and k:
            # independent: both CFloat8 -> within gamma(K) |A||B| of the exact product
            A = dk.dequantize(ca, fa, dtype=np.float64)
            B = dk.dequantize(cb, fb_, dtype=np.float64)
            if np.all(np.isfinite(A)) and np.all(np.isfinite(B)):
                exact = A @ B + (float(np.float32(beta)) * c.astype(np.float64) if beta else 0)
                u = 2.0 ** -24
                gam = 2 * k * u / (1 - 2 * k * u)
                bound = gam * (np.abs(A) @ np.abs(B)) + 2.0 ** -120 + (
                    4 * u * np.abs(exact) if beta else 0)
                with np.errstate(invalid="ignore", over="ignore"):
                    err = np.abs(res.astype(np.float64) - exact)
                big = np.abs(exact) > 3.4e38   # rounded to Inf: no bound to check
                assert np.all((err <= bound) | big), f"{desc}: off by {np.max(err - bound)}"


def test_fuzz_plan_gemm():
    gm = pytest.importorskip("dojo_kernels.gemm")
    from dojo_kernels import d1

    rng = np.random.default_rng(59)
    weird = [0, -1, 1.0, None, "8", True, 2**31 - 1, 2**31 + 1, 2**32, 2**63 - 1, 2**63,
             2**100, np.int64(7), np.uint64(2**40)]
    machines = [None, d1.D1Chip(), d1.TrainingTile(), "chip", 3]
    for case in range(max(CASES // 5, 20)):
        mnk = [int(rng.integers(1, 5000)) for _ in range(3)]
        if rng.random() < 0.6:
            mnk[int(rng.integers(3))] = weird[int(rng.integers(len(weird)))]
        fa, fb = _gemm_format(rng), _gemm_format(rng)
        machine = machines[int(rng.integers(len(machines)))] if rng.random() < 0.3 else None
        desc = f"case {case}: plan_gemm({mnk}, {fa!r}, {fb!r}, machine={type(machine).__name__})"
        try:
            plan = gm.plan_gemm(*mnk, a_format=fa, b_format=fb, machine=machine)
        except Exception as exc:  # noqa: BLE001
            check_error(exc, desc)
            valid = (all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1
                         for v in mnk)
                     and all(isinstance(f, dk.Format) and f.name in ("bf16", "cfloat8_143",
                                                                     "cfloat8_152")
                             for f in (fa, fb))
                     and (machine is None or isinstance(machine, (d1.D1Chip, d1.TrainingTile))))
            assert not valid, f"{desc}: valid call raised {exc!r}"
            continue
        assert (plan.m, plan.n, plan.k) == tuple(int(v) for v in mnk), desc
        assert math.isfinite(plan.seconds) and plan.seconds > 0, desc
        assert 0 < plan.utilization <= 1 + 1e-9, desc
        assert plan.flops == pytest.approx(2.0 * mnk[0] * mnk[1] * mnk[2]), desc
