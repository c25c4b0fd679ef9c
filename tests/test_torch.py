"""dojo_kernels.torch: tensors in and out (bit identity with the NumPy API), autograd against
an independent computation (dequantized operands from spec_ref, float64 products, biases
from the documented rule), the straight-through estimator at the range edges, delayed
scaling's history, convert, and SROptimizer's documented seed rule.

Needs the [torch] extra; skipped (with the reason) in a plain ``pip install ".[test]"``.
"""
from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: these tests need pip install '.[torch]' "
                    "(CI installs it in its own step)")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="the [torch] extra installs ml_dtypes")
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402

import dojo_kernels as dk  # noqa: E402
from dojo_kernels import torch as dt  # noqa: E402
from spec_ref import RefFormat, dequantize_ref, max_value, quantize_ref  # noqa: E402

U = 2.0 ** -24
MASK64 = (1 << 64) - 1


def gamma(k):
    return k * U / (1 - k * U)


def bits(t):
    """Raw bits of a tensor, as a NumPy array (compares -0, NaN and codes exactly)."""
    t = t.detach().contiguous()
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    a = t.view(view).numpy().copy()
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def np_bits(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def ref_bias(family, amax, margin=0):
    """The documented bias rule, from SPEC's max: the largest bias whose max holds amax."""
    need = amax * 2.0 ** margin
    for b in range(63, -1, -1):
        if max_value(family, b) >= need:
            return b
    raise AssertionError("no bias")


def ref_values(x64, family, bias):
    """float64 values of x rounded to nearest into family(bias), from spec_ref."""
    rf = RefFormat(family, bias, "tesla") if family != "bf16" else RefFormat("bf16", 127, "ieee")
    codes, _ = quantize_ref(np.asarray(x64, np.float64), rf)
    return dequantize_ref(codes, rf)


FORMATS = [dk.BF16, dk.cfloat8_143(7), dk.cfloat8_152(20), dk.shp(15), dk.UHP,
           dk.cfloat8_143(30, subnormals="ieee")]


def sample(shape, seed=0, scale=4.0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)
                            .astype(np.float32) * np.float32(scale))


# --- tensors in and out: bit identity with the NumPy API ----------------------------------
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantize_float32_float64_bits_match_numpy(fmt, rounding):
    seed = 7 if rounding == "stochastic" else None
    for dtype in (torch.float32, torch.float64):
        x = sample((33, 17), 1).to(dtype)
        x[0, 0], x[1, 1], x[2, 2] = float("inf"), float("nan"), -0.0
        for view in (x, x.t(), x[::3, 1::2]):     # any strides; stochastic follows the shape
            got = dt.quantize(view, fmt, rounding=rounding, seed=seed)
            want = dk.quantize(np.array(view.numpy()), fmt, rounding=rounding, seed=seed)
            assert got.shape == view.shape
            assert np.array_equal(bits(got), np_bits(want))


@pytest.mark.parametrize("fmt", [dk.BF16, dk.cfloat8_143(9), dk.cfloat8_152(17)], ids=repr)
def test_quantize_bfloat16_half_float8_inputs(fmt):
    x = sample((40, 24), 2)
    xb = x.bfloat16()
    want = dk.quantize(x.numpy().astype(ml_dtypes.bfloat16), fmt, rounding="stochastic", seed=3)
    got = dt.quantize(xb, fmt, rounding="stochastic", seed=3)
    assert np.array_equal(bits(got), np_bits(want))
    got_t = dt.quantize(xb.t(), fmt)
    assert np.array_equal(bits(got_t), np_bits(dk.quantize(
        x.numpy().astype(ml_dtypes.bfloat16).T, fmt)))
    # float16 and float8 are values (their own meaning), widened exactly
    for tdt, mdt in ((torch.float16, np.float16), (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn),
                     (torch.float8_e5m2, ml_dtypes.float8_e5m2)):
        xs = (x / 8).to(tdt)
        vals = xs.view(torch.uint8 if xs.element_size() == 1 else torch.int16).numpy().view(mdt)
        want = dk.quantize(vals.astype(np.float32), fmt)
        assert np.array_equal(bits(dt.quantize(xs, fmt)), np_bits(want)), tdt


def test_quantize_code_dtypes_out_and_flags():
    x = sample((6, 10), 3)
    c = dt.quantize(x, dk.BF16)
    assert c.dtype == torch.uint16
    assert torch.equal(c.view(torch.bfloat16), x.bfloat16())    # RNE, as torch rounds
    assert dt.quantize(x, dk.cfloat8_143(7)).dtype == torch.uint8
    assert dt.quantize(x, dk.FP32).dtype == torch.float32
    # out= tensors: uint8, int8; int16 / bfloat16 for 16-bit codes; strided outs too
    f = dk.cfloat8_143(7)
    want = np_bits(dk.quantize(x.numpy() * 100, f))
    for odt in (torch.uint8, torch.int8):
        out = torch.empty(6, 10, dtype=odt)
        r, flags = dt.quantize(x * 100, f, out=out, return_flags=True)
        assert r is out and np.array_equal(bits(out), want.view(bits(out).dtype))
        assert flags == dk.quantize(x.numpy() * 100, f, return_flags=True)[1]
    big = torch.zeros(10, 6, dtype=torch.int16)
    r = dt.quantize(x, dk.BF16, out=big.t())
    assert np.array_equal(bits(big.t()), np_bits(dk.quantize(x.numpy(), dk.BF16)))
    ob = torch.empty(6, 10, dtype=torch.bfloat16)
    dt.quantize(x, dk.BF16, out=ob)
    assert torch.equal(ob, x.bfloat16())


def test_results_share_memory_with_the_kernel_output():
    x = sample((5, 5), 4)
    c = dt.quantize(x, dk.cfloat8_143(7))
    arr = c.numpy()                       # no copy either way: the same buffer
    arr[0, 0] = 0x7F
    assert int(c[0, 0]) == 0x7F
    v = dt.dequantize(c, dk.cfloat8_143(7))
    assert v.numpy().ctypes.data == v.data_ptr()
    y = dt.gemm(x, x)
    assert y.numpy().ctypes.data == y.data_ptr()


@pytest.mark.parametrize("fmt", FORMATS[:5], ids=repr)
def test_dequantize_code_tensors(fmt):
    n = 1 << fmt.nbits
    raw = np.arange(n, dtype=fmt.storage_dtype).reshape(-1, 16)
    want = dk.dequantize(raw, fmt)
    signed = torch.from_numpy(raw.view(np.int8 if fmt.nbits == 8 else np.int16))
    for codes in (torch.from_numpy(raw), signed):
        got = dt.dequantize(codes, fmt)
        assert got.dtype == torch.float32 and np.array_equal(bits(got), np_bits(want))
        got_t = dt.dequantize(codes.t(), fmt, dtype=torch.float64)
        assert np.array_equal(bits(got_t), np_bits(dk.dequantize(raw.T, fmt, dtype=np.float64)))
    if fmt is dk.BF16:
        got = dt.dequantize(signed.view(torch.bfloat16), fmt)
        assert np.array_equal(bits(got), np_bits(want))
    out = torch.empty(16, raw.shape[0]).t()
    assert dt.dequantize(torch.from_numpy(raw), fmt, out=out) is out
    assert np.array_equal(bits(out), np_bits(want))


@pytest.mark.parametrize("fmt", [dk.BF16, dk.cfloat8_143(7), dk.shp(15)], ids=repr)
def test_fake_quantize_matches_numpy(fmt):
    x = sample((30, 7), 5)
    got = dt.fake_quantize(x.t(), fmt, rounding="stochastic", seed=11)
    want = dk.fake_quantize(np.array(x.numpy().T), fmt, rounding="stochastic", seed=11)
    assert got.dtype == torch.float32 and np.array_equal(bits(got), np_bits(want))
    x64 = x.double()
    assert np.array_equal(bits(dt.fake_quantize(x64, fmt)), np_bits(dk.fake_quantize(x64.numpy(), fmt)))
    if fmt.nbits <= 8 or fmt is dk.BF16:
        gb = dt.fake_quantize(x.bfloat16(), fmt)
        wb = dk.fake_quantize(x.numpy().astype(ml_dtypes.bfloat16), fmt)
        assert gb.dtype == torch.bfloat16 and np.array_equal(bits(gb), np_bits(wb))
    gh = dt.fake_quantize(x.half(), fmt)
    assert gh.dtype == torch.float32
    assert np.array_equal(bits(gh), np_bits(dk.fake_quantize(x.half().numpy().astype(np.float32), fmt)))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "fma"])
def test_arithmetic_matches_numpy(op):
    fmt = dk.cfloat8_152(15)
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (8, 5), dtype=np.uint8)
    b = rng.integers(0, 256, (5,), dtype=np.uint8)
    c = rng.integers(0, 256, (8, 1), dtype=np.uint8)
    args = (a, b, c) if op == "fma" else (a, b)
    want, wflags = getattr(dk, op)(*args, fmt, rounding="stochastic", seed=5, return_flags=True)
    targs = [torch.from_numpy(v) for v in args]
    got, gflags = getattr(dt, op)(*targs, fmt, rounding="stochastic", seed=5, return_flags=True)
    assert np.array_equal(bits(got), np_bits(want)) and gflags == wflags
    out = torch.empty(8, 5, dtype=torch.int8)
    assert getattr(dt, op)(*[t.view(torch.int8) for t in targs], fmt, rounding="stochastic",
                           seed=5, out=out) is out
    assert np.array_equal(bits(out), np_bits(want).view(np.uint8))
    a16 = torch.from_numpy(dk.quantize(rng.standard_normal((4, 4)).astype(np.float32), dk.BF16))
    r = dt.add(a16.view(torch.bfloat16), a16, dk.BF16)
    assert np.array_equal(bits(r), np_bits(dk.add(a16.numpy(), a16.numpy(), dk.BF16)))


def test_gemm_tensors_match_numpy():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((3, 20, 36)).astype(np.float32)
    b = rng.standard_normal((36, 12)).astype(np.float32)
    fa, fb = dk.cfloat8_143(8), dk.cfloat8_152(16)
    want = dk.gemm(a, b, a_format=fa, b_format=fb)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    got = dt.gemm(at, bt, a_format=fa, b_format=fb)
    assert got.dtype == torch.float32 and np.array_equal(bits(got), np_bits(want))
    # code tensors, transposed views, an addend, out=, the plan
    ca = dt.quantize(torch.from_numpy(np.ascontiguousarray(a[0].T)), fa).t()
    cb = dt.quantize(bt, fb)
    c0 = torch.ones(20, 12)
    out = torch.empty(12, 20).t()
    r, plan = dt.gemm(ca, cb, a_format=fa, b_format=fb, c=c0, beta=0.5, out=out,
                      return_plan=True)
    assert r is out
    w2 = dk.gemm(a[0], b, a_format=fa, b_format=fb, c=np.ones((20, 12), np.float32), beta=0.5)
    assert np.array_equal(bits(out), np_bits(w2))
    assert plan == dk.plan_gemm(20, 12, 36, a_format=fa, b_format=fb)
    # BF16 operands as bfloat16 tensors (codes), and a family name: bias from choose_bias
    g16 = dt.gemm(at[0].bfloat16(), bt.bfloat16())
    assert np.array_equal(bits(g16), np_bits(dk.gemm(a[0].astype(ml_dtypes.bfloat16),
                                                     b.astype(ml_dtypes.bfloat16))))
    gf = dt.gemm(at[0], bt, a_format="cfloat8_143")
    ba = ref_bias("cfloat8_143", float(np.abs(a[0]).max()))
    bb = ref_bias("cfloat8_143", float(np.abs(b).max()))
    assert np.array_equal(bits(gf), np_bits(dk.gemm(a[0], b, a_format=dk.cfloat8_143(ba),
                                                    b_format=dk.cfloat8_143(bb))))


def test_argument_errors_name_the_argument():
    x = sample((4, 4), 9)
    meta = torch.empty(4, 4, device="meta")
    with pytest.raises(ValueError, match="x: expected a CPU tensor"):
        dt.quantize(meta, dk.BF16)
    with pytest.raises(ValueError, match="b: expected a CPU tensor"):
        dt.gemm(x, meta)
    with pytest.raises(ValueError, match="codes: expected a CPU tensor"):
        dt.dequantize(meta.to(torch.uint8), dk.cfloat8_143(7))
    with pytest.raises(TypeError, match="codes: a torch.float8_e4m3fn tensor holds OCP"):
        dt.dequantize(x.to(torch.float8_e4m3fn), dk.cfloat8_143(7))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        dt.quantize(x.to(torch.int32), dk.BF16)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        dt.quantize(x.numpy(), dk.BF16)
    with pytest.raises(TypeError, match="codes"):
        dt.dequantize(torch.zeros(3, dtype=torch.uint8), dk.BF16)   # NumPy API's check
    with pytest.raises(ValueError, match="out: a tensor that requires grad"):
        dt.quantize(x, dk.FP32, out=torch.zeros(4, 4, requires_grad=True))
    with pytest.raises(ValueError, match="a_format: give the formats either"):
        dt.gemm(x, x, recipe=dt.Recipe(), a_format=dk.BF16)
    with pytest.raises(ValueError, match="scaling: a recipe with bias_policy='delayed'"):
        dt.gemm(x, x, recipe=dt.Recipe(bias_policy="delayed"))
    with pytest.raises(ValueError, match="ste"):
        dt.fake_quantize(x, dk.BF16, ste="nope")
    with pytest.raises(ValueError, match="bias_policy"):
        dt.Recipe(bias_policy="later")
    with pytest.raises(ValueError, match="forward"):
        dt.Recipe(forward=dk.shp(3))
    with pytest.raises(ValueError, match="out: gemm with tensors that require grad"):
        dt.gemm(x.requires_grad_(), x, out=torch.empty(4, 4))
    x.requires_grad_(False)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="b: contains NaN or Inf"):
        dt.gemm(x, bad, a_format="cfloat8_143")
    # quantize of a tensor that requires grad works (detached), unlike x.numpy()
    assert dt.quantize(x.clone().requires_grad_(), dk.BF16).shape == (4, 4)


# --- autograd against an independent computation -----------------------------------------
def _family_values(t, family):
    x64 = t.detach().double().numpy()
    b = ref_bias(family, float(np.abs(x64).max()))
    return ref_values(x64, family, b)


def test_gemm_gradients_against_float64_reference():
    torch.manual_seed(0)
    a = (torch.randn(24, 40) * 3).requires_grad_()
    b = (torch.randn(40, 16) * 0.05).requires_grad_()
    g = torch.randn(24, 16) * 1e-3
    y = dt.gemm(a, b, recipe=dt.Recipe())
    y.backward(g)
    A = _family_values(a, "cfloat8_143")
    B = _family_values(b, "cfloat8_143")
    G = _family_values(g, "cfloat8_152")
    checks = [(y.detach(), A, B), (a.grad, G, B.T), (b.grad, A.T, G)]
    for got, L, R in checks:
        exact = L @ R
        err = np.abs(got.double().numpy() - exact)
        assert np.all(err <= gamma(L.shape[1]) * (np.abs(L) @ np.abs(R)))
        assert np.abs(exact).max() > 0
    # and bit for bit the NumPy API on the same codes
    fa = dk.cfloat8_143(ref_bias("cfloat8_143", float(a.detach().abs().max())))
    fb = dk.cfloat8_143(ref_bias("cfloat8_143", float(b.detach().abs().max())))
    fg = dk.cfloat8_152(ref_bias("cfloat8_152", float(g.abs().max())))
    ca, cb, cg = (dk.quantize(v.detach().numpy(), f) for v, f in ((a, fa), (b, fb), (g, fg)))
    assert np.array_equal(bits(a.grad), np_bits(dk.gemm(cg, cb.T, a_format=fg, b_format=fb)))
    assert np.array_equal(bits(b.grad), np_bits(dk.gemm(ca.T, cg, a_format=fa, b_format=fg)))


def test_gemm_gradients_batched_and_addend():
    torch.manual_seed(1)
    a = torch.randn(3, 8, 12, requires_grad=True)
    b = torch.randn(12, 5, requires_grad=True)
    c = torch.randn(5, requires_grad=True)
    g = torch.randn(3, 8, 5)
    y = dt.gemm(a, b, a_format=dk.BF16, grad_format=dk.BF16, c=c, beta=2.0)
    y.backward(g)
    A = ref_values(a.detach().double().numpy(), "bf16", 127)
    B = ref_values(b.detach().double().numpy(), "bf16", 127)
    G = ref_values(g.double().numpy(), "bf16", 127)
    da = G @ B.T
    assert np.all(np.abs(a.grad.double().numpy() - da) <= gamma(5) * (np.abs(G) @ np.abs(B.T)))
    Af, Gf = A.reshape(-1, 12), G.reshape(-1, 5)     # dB sums over the batch: one GEMM
    db = Af.T @ Gf
    assert np.all(np.abs(b.grad.double().numpy() - db) <= gamma(24) * (np.abs(Af.T) @ np.abs(Gf)))
    assert torch.allclose(c.grad, 2 * g.sum(dim=(0, 1)), rtol=1e-6)
    # 3-D @ 3-D
    b3 = torch.randn(3, 12, 5, requires_grad=True)
    dt.gemm(a, b3).backward(g)
    B3 = ref_values(b3.detach().double().numpy(), "bf16", 127)
    want = np.einsum("bmk,bmn->bkn", A, G)
    bound = gamma(8) * np.einsum("bmk,bmn->bkn", np.abs(A), np.abs(G))
    assert np.all(np.abs(b3.grad.double().numpy() - want) <= bound)
    assert B3.shape == (3, 12, 5)


def test_d1linear_gradients_against_float64_reference():
    torch.manual_seed(2)
    lin = dt.D1Linear(20, 6)
    x = (torch.randn(2, 5, 20) * 2).requires_grad_()
    g = torch.randn(2, 5, 6) * 1e-2
    y = lin(x)
    assert y.shape == (2, 5, 6) and y.dtype == torch.float32
    y.backward(g)
    X = _family_values(x.reshape(10, 20), "cfloat8_143")
    W = _family_values(lin.weight, "cfloat8_143")
    G = _family_values(g.reshape(10, 6), "cfloat8_152")
    b = lin.bias.detach().double().numpy()
    # forward: FP32 product then + bias in FP32 (one more rounding: half an ulp)
    exact = X @ W.T + b
    yv = y.detach().reshape(10, 6).double().numpy()
    bound = gamma(20) * (np.abs(X) @ np.abs(W.T)) + U * np.abs(exact) * 2
    assert np.all(np.abs(yv - exact) <= bound)
    for got, L, R in ((x.grad.reshape(10, 20), G, W), (lin.weight.grad, G.T, X)):
        e = L @ R
        assert np.all(np.abs(got.double().numpy() - e) <= gamma(L.shape[1]) * (np.abs(L) @ np.abs(R)))
    assert torch.allclose(lin.bias.grad, g.reshape(10, 6).sum(0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("c_shape", [(), (5,), (8, 1), (1, 5), (8, 5), (3, 1, 5), (3, 8, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_addend_gradient_sums_to_its_shape(c_shape, dtype):
    """dC = beta dY summed over the axes c was broadcast along, in dY's dtype (float32: the
    GEMM's result is float32 whatever the operands, so autograd hands its backward a float32
    dY), then converted to c's dtype: against the float64 sum of the same values, within the
    error of float32 products and a float32 sum of that many terms."""
    torch.manual_seed(4)
    a = torch.randn(3, 8, 12, dtype=dtype)
    b = torch.randn(12, 5, dtype=dtype)
    c = torch.randn(c_shape, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 8, 5, dtype=dtype) * 3
    dt.gemm(a, b, c=c, beta=0.75).backward(g)
    assert c.grad.shape == c.shape and c.grad.dtype == dtype
    g64 = g.float().double().numpy() * np.float64(np.float32(0.75))
    want = torch.from_numpy(g64).sum_to_size(c_shape).numpy()
    terms = g64.size // max(1, int(np.prod(c_shape)))
    u = 2.0 ** -24
    mag = torch.from_numpy(np.abs(g64)).sum_to_size(c_shape).numpy()
    bound = (terms + 1) * u / (1 - (terms + 1) * u) * mag
    assert np.all(np.abs(c.grad.double().numpy() - want) <= bound)


def test_d1linear_step_runs_no_torch_computation():
    """A float32 D1Linear's forward and backward (bias included) run on dojo_kernels' kernels and
    NumPy only: torch's own operators would wake its OpenMP threads, which then spin for
    milliseconds on the cores the next D1 GEMM wants (docs/threads.md). Only view and
    metadata operators may appear in the profile; aten::to appears as a no-op (a dtype
    change would add aten::_to_copy)."""
    views = {"aten::as_strided", "aten::detach", "aten::lift_fresh", "aten::reshape",
             "aten::_reshape_alias", "aten::resolve_conj", "aten::resolve_neg", "aten::t",
             "aten::to", "aten::transpose", "aten::view", "aten::alias", "aten::expand",
             "aten::squeeze", "aten::unsqueeze", "aten::permute"}
    for name in ("cfloat8", "bf16"):
        layer = dt.D1Linear(64, 32, recipe=dt.RECIPES[name])
        x = torch.randn(3, 16, 64, requires_grad=True)
        g = torch.randn(3, 16, 32)
        layer(x).backward(g)  # warm: the first call may set things up
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.profiler.profile() as prof:
            layer(x).backward(g)
        ops = {e.key for e in prof.key_averages() if e.key.startswith("aten::")}
        assert {"aten::t", "aten::reshape"} <= ops, "the profiler saw the layer's own views"
        assert ops <= views, f"{name}: torch computed {sorted(ops - views)}"
        assert x.grad is not None and layer.bias.grad is not None


def test_d1linear_bias_is_the_fp32_add():
    """The bias fused into the GEMM is the same FP32 add as ``y + bias`` after it."""
    torch.manual_seed(5)
    for recipe in ("cfloat8", "bf16"):
        lin = dt.D1Linear(24, 10, recipe=dt.RECIPES[recipe])
        x = torch.randn(7, 24)
        with torch.no_grad():
            y = lin(x)
        p = dt.gemm(x, lin.weight.t(), recipe=lin.recipe)
        assert torch.equal(bits_t(y), bits_t(p + lin.bias.detach()))
    lin64 = dt.D1Linear(24, 10).double()       # a float64 bias: torch's float64 add
    x64 = torch.randn(7, 24, dtype=torch.float64)
    with torch.no_grad():
        y64 = lin64(x64)
    assert y64.dtype == torch.float64
    assert torch.equal(y64, dt.gemm(x64, lin64.weight.t(), recipe=lin64.recipe) + lin64.bias)


def bits_t(t):
    return torch.from_numpy(bits(t))


def test_d1linear_bfloat16_model():
    torch.manual_seed(3)
    lin = dt.D1Linear(16, 4, recipe=dt.RECIPES["bf16"]).to(torch.bfloat16)
    x = torch.randn(8, 16, dtype=torch.bfloat16, requires_grad=True)
    y = lin(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and lin.weight.grad.dtype == torch.bfloat16
    p = dk.gemm(x.detach().float().numpy().astype(ml_dtypes.bfloat16),
                lin.weight.detach().float().numpy().astype(ml_dtypes.bfloat16).T)
    want = (torch.from_numpy(p) + lin.bias.detach().float()).bfloat16()
    assert torch.equal(y.detach(), want)


# --- cached_weights -----------------------------------------------------------------------
def _layer_ref(lin, x, wbias=None):
    """A D1Linear's forward from the documented rule: x and W rounded with the biases that
    ref_bias picks from their amaxes (``wbias`` overrides W's), the product, + bias in
    FP32."""
    W = lin.weight.detach().numpy()
    fx = dk.cfloat8_143(ref_bias("cfloat8_143", float(np.abs(x.numpy()).max())))
    fw = dk.cfloat8_143(ref_bias("cfloat8_143", float(np.abs(W).max())) if wbias is None
                        else wbias)
    p = dk.gemm(dk.quantize(x.numpy(), fx), dk.quantize(W, fw).T, a_format=fx, b_format=fw)
    return p + lin.bias.detach().numpy()


class _Counts:
    """Counts the amax passes and roundings dojo_kernels.torch asks for, by array size."""

    def __init__(self, monkeypatch):
        self.amax, self.rounds = [], []
        nx = dt._nx
        real_amax, real_quantize = nx._max_abs, nx.quantize

        def amax(a):
            self.amax.append(a.size)
            return real_amax(a)

        def quantize(a, *args, **kw):
            self.rounds.append(np.asarray(a).size)
            return real_quantize(a, *args, **kw)

        monkeypatch.setattr(nx, "_max_abs", amax)
        monkeypatch.setattr(nx, "quantize", quantize)

    def take(self):
        # choose_bias's own pass over the one-element array of an amax is not counted
        out = (sorted(n for n in self.amax if n > 1), sorted(self.rounds))
        self.amax, self.rounds = [], []
        return out


class _Still(torch.optim.Optimizer):
    def step(self, closure=None):
        return None


def test_cached_weights_reuses_the_rounding_until_the_weight_changes(monkeypatch):
    """Inside cached_weights a layer rounds its weight once: later calls measure and round
    only the input, with the bits of the documented rule. Every way torch changes a
    parameter (an in-place op, an optimizer step, SROptimizer, load_state_dict, a new .data
    tensor) rounds it again; the entries go when the context exits."""
    torch.manual_seed(6)
    lin = dt.D1Linear(40, 24)
    x = torch.randn(3, 40)
    nw, nx_ = lin.weight.numel(), x.numel()
    counts = _Counts(monkeypatch)

    def check(tag):
        with torch.no_grad():
            y = lin(x)
        assert np.array_equal(bits(y), np_bits(_layer_ref(lin, x))), tag
        return counts.take()

    assert check("outside") == ([nx_, nw], [nx_, nw])
    assert check("outside again") == ([nx_, nw], [nx_, nw])       # no cache outside
    with dt.cached_weights():
        assert check("first") == ([nx_, nw], [nx_, nw])
        assert check("hit") == ([nx_], [nx_])
        with dt.cached_weights():                                   # nested: the same cache
            assert check("nested hit") == ([nx_], [nx_])
        assert check("hit after the inner exit") == ([nx_], [nx_])
        with torch.no_grad():
            lin.weight.mul_(40.0)                                   # a new amax and bias
        assert check("in-place op") == ([nx_, nw], [nx_, nw])
        opt = torch.optim.SGD(lin.parameters(), lr=0.5)
        lin(x).sum().backward()
        counts.take()
        opt.step()
        assert check("SGD step") == ([nx_, nw], [nx_, nw])
        # SROptimizer rounds the weights into BF16 when built and at every step, through
        # NumPy; the optimizer it wraps here changes nothing itself
        before = lin.weight.detach().clone()
        sro = dt.SROptimizer(_Still(lin.parameters(), {}), dk.BF16, seed=1)
        counts.take()
        assert not torch.equal(before, lin.weight.detach())
        assert check("SROptimizer built") == ([nx_, nw], [nx_, nw])
        lin(x).sum().backward()
        sro.step()
        counts.take()
        assert check("SROptimizer step") == ([nx_, nw], [nx_, nw])
        other = dt.D1Linear(40, 24)
        lin.load_state_dict(other.state_dict())
        assert check("load_state_dict") == ([nx_, nw], [nx_, nw])
        lin.weight.data = torch.randn(24, 40) * 3                   # new storage
        assert check(".data swap") == ([nx_, nw], [nx_, nw])
        assert check("hit again") == ([nx_], [nx_])
        # the cached storage given up by the weight: the entry holds it, so its address
        # cannot come back, with other values in it, in a state equal to the cached one
        given_up = StorageWeakRef(lin.weight.untyped_storage())
        lin.weight.data = torch.randn(24, 40)
        assert not given_up.expired()
        assert check("storage given up") == ([nx_, nw], [nx_, nw])
        lin.half().float()                           # a dtype round trip
        assert check("half and back") == ([nx_, nw], [nx_, nw])
        fused = torch.optim.AdamW(lin.parameters(), lr=0.1, fused=True)
        lin(x).sum().backward()
        fused.step()               # torch 2.13's fused step does not bump the version
        counts.take()
        assert check("fused AdamW step") == ([nx_, nw], [nx_, nw])
        assert check("hit again") == ([nx_], [nx_])
        assert len(dt._cache_entries) == 1
    assert dt._cache_entries is None and dt._cache_depth == 0
    assert given_up.expired()
    assert check("after the context") == ([nx_, nw], [nx_, nw])


def test_cached_weights_shared_weights_and_recipe_changes(monkeypatch):
    """A weight shared by a BF16 layer and a CFloat8 layer, and a recipe changed on a layer:
    one entry per format or family, each rounded once; bits as without the cache (the
    uncached twin of each call, run outside the context right after)."""
    torch.manual_seed(9)
    a = dt.D1Linear(32, 16, recipe=dt.RECIPES["bf16"])
    b = dt.D1Linear(32, 16, recipe=dt.RECIPES["cfloat8"])
    b.weight, b.bias = a.weight, a.bias
    x = torch.randn(4, 32)
    counts = _Counts(monkeypatch)
    nw, nx_ = a.weight.numel(), x.numel()
    with torch.no_grad():
        for step in range(3):
            for layer, fixed in ((a, True), (b, False)):
                with dt.cached_weights():
                    y = layer(x)
                    got = counts.take()         # a fresh context: the first call rounds
                assert got == (([] if fixed else [nx_, nw]), [nx_, nw]), (step, fixed)
                assert np.array_equal(bits(y), bits(layer(x)))
                counts.take()
        with dt.cached_weights():
            ya, yb = a(x), b(x)
            counts.take()
            for _ in range(2):
                assert np.array_equal(bits(a(x)), bits(ya)) and np.array_equal(bits(b(x)), bits(yb))
                assert counts.take() == ([nx_], [nx_, nx_])        # both hit
            a.recipe = dt.RECIPES["cfloat8"]                        # b's entry serves a now
            assert np.array_equal(bits(a(x)), bits(yb))
            assert counts.take() == ([nx_], [nx_])
            b.recipe = dt.Recipe(forward=dk.cfloat8_143(7))        # a fixed CFloat8 format
            yb7 = b(x)
            assert counts.take() == ([], [nx_, nw])
        assert np.array_equal(bits(yb7), bits(b(x)))


def test_cached_weights_skip_what_they_cannot_track(monkeypatch):
    """A weight computed at every call (a parametrization: not a leaf) and a layer built
    under inference mode (no version counter) run uncached inside the context, with the
    uncached bits, and leave no entry behind."""
    torch.manual_seed(10)
    x = torch.randn(2, 24)
    counts = _Counts(monkeypatch)
    wn = torch.nn.utils.parametrizations.weight_norm(dt.D1Linear(24, 8))
    with torch.inference_mode():
        inf = dt.D1Linear(24, 8)
    for layer in (wn, inf):
        with torch.no_grad():
            want = layer(x)
            counts.take()
            with dt.cached_weights():
                for _ in range(3):
                    assert np.array_equal(bits(layer(x)), bits(want))
                    assert counts.take() == ([x.numel(), 192], [x.numel(), 192])
                assert len(dt._cache_entries) == 0


def test_cached_weights_leave_a_delayed_history_as_without_the_cache():
    """A delayed bias still moves with the history while the weight is cached: W's history
    starts with an amax 1000 times its own, so the first calls use that bias and the later
    ones (once it falls out of the history) W's own, and the cached layer rounds again
    then. Bits and histories equal the uncached twin's and the documented rule's."""
    torch.manual_seed(7)
    recipe = dt.Recipe(bias_policy="delayed", history=2)
    lin, twin = dt.D1Linear(32, 16, recipe=recipe), dt.D1Linear(32, 16, recipe=recipe)
    twin.load_state_dict(lin.state_dict())
    wamax = float(np.abs(lin.weight.detach().numpy()).max())
    for layer in (lin, twin):
        layer.scaling["b"].push(wamax * 1000)
    x = torch.randn(5, 32)
    with torch.no_grad():
        with dt.cached_weights():
            ys = [lin(x) for _ in range(4)]
        yts = [twin(x) for _ in range(4)]
    hist = [wamax * 1000]
    for i, (y, yt) in enumerate(zip(ys, yts)):
        wb = ref_bias("cfloat8_143", max(hist[-2:]))
        hist.append(float(np.float32(wamax)))
        assert np.array_equal(bits(y), bits(yt)), i
        assert np.array_equal(bits(y), np_bits(_layer_ref(lin, x, wbias=wb))), i
    assert list(lin.scaling["b"].values) == list(twin.scaling["b"].values) == hist[-2:]
    assert ref_bias("cfloat8_143", wamax * 1000) != ref_bias("cfloat8_143", wamax)


def test_cached_weights_in_training_microbatches(monkeypatch):
    """Gradient accumulation over microbatches inside the context (the weight unchanged
    between them, as Transformer Engine's is_first_microbatch assumes): the weight rounded
    once, the same gradients as without the context, bit for bit, for the CFloat8 and the
    BF16 recipe."""
    torch.manual_seed(8)
    counts = _Counts(monkeypatch)
    for name in ("cfloat8", "bf16"):
        lin = dt.D1Linear(48, 20, recipe=dt.RECIPES[name])
        xs = [torch.randn(6, 48) for _ in range(3)]
        grads = []
        for cache in (False, True):
            lin.zero_grad(set_to_none=True)
            counts.take()
            with (dt.cached_weights() if cache else contextlib.nullcontext()):
                for x in xs:
                    lin(x).square().sum().backward()
            weight_rounds = counts.take()[1].count(lin.weight.numel())
            assert weight_rounds == (1 if cache else 3), (name, cache)
            grads.append((bits(lin.weight.grad), bits(lin.bias.grad)))
        assert all(np.array_equal(a, b) for a, b in zip(*grads)), name


# --- the straight-through estimator at the range edges ------------------------------------
@pytest.mark.parametrize("family, bias", [("cfloat8_143", 7), ("cfloat8_152", 15), ("bf16", 127)])
def test_ste_at_range_edges(family, bias):
    fmt = dk.BF16 if family == "bf16" else getattr(dk, family)(bias)
    mx = float(max_value(family, bias)) if family != "bf16" else float(
        RefFormat("bf16", 127, "ieee").max)
    above = float(np.nextafter(np.float32(mx), np.float32(np.inf)))
    tiny = 2.0 ** -140
    vals = [mx, above, -mx, -above, 0.0, tiny, -tiny, 1.0, math.inf, -math.inf, math.nan]
    inside = [1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0]
    for ste, want in (("clip", inside), ("identity", [1] * len(vals))):
        x = torch.tensor(vals, dtype=torch.float32, requires_grad=True)
        y = dt.fake_quantize(x, fmt, ste=ste)
        y.backward(torch.full_like(x, 3.0))
        assert x.grad.tolist() == [3.0 * w for w in want], ste
    if family != "bf16":   # saturating formats: the forward values at the edges
        y = dt.fake_quantize(torch.tensor([above, -math.inf]), fmt)
        assert y.tolist() == [mx, -mx]
    xb = torch.tensor(vals[:8], dtype=torch.float64, requires_grad=True)
    dt.fake_quantize(xb, fmt).sum().backward()
    assert xb.grad.dtype == torch.float64 and xb.grad.tolist() == [float(v) for v in inside[:8]]


# --- delayed scaling ----------------------------------------------------------------------
def test_amax_history_rule():
    h = dt.AmaxHistory(3)
    assert h.bias("cfloat8_143", 5.0) == ref_bias("cfloat8_143", 5.0)   # empty: own amax
    for v in (1.0, 300.0, 2.0, 3.0):
        h.push(v)
    assert list(h.values) == [300.0, 2.0, 3.0]
    assert h.bias("cfloat8_143", 0.5) == ref_bias("cfloat8_143", 300.0)
    h.push(4.0)
    assert h.bias("cfloat8_152", 0.5, margin=2) == ref_bias("cfloat8_152", 4.0, margin=2)


def test_delayed_scaling_in_a_layer():
    torch.manual_seed(4)
    lin = dt.D1Linear(8, 3, bias=False, recipe=dt.Recipe(bias_policy="delayed", history=2))
    W = lin.weight.detach().numpy()
    wamax = float(np.abs(W).max())
    amaxes = [1.0, 200.0, 2.0, 3.0, 0.25]
    seen = []
    for i, amax in enumerate(amaxes):
        x = torch.rand(4, 8) * 2 - 1
        x = x / x.abs().max() * amax
        with torch.no_grad():
            y = lin(x)
        hist = seen[-2:] if seen else [amax]
        bx = ref_bias("cfloat8_143", max(hist))
        bw = ref_bias("cfloat8_143", wamax)
        fx, fw = dk.cfloat8_143(bx), dk.cfloat8_143(bw)
        want = dk.gemm(dk.quantize(x.numpy(), fx), dk.quantize(W, fw).T, a_format=fx,
                       b_format=fw)
        assert np.array_equal(bits(y), np_bits(want)), i
        seen.append(float(np.float32(amax)))
        assert list(lin.scaling["a"].values) == [float(np.float32(v)) for v in seen[-2:]]
    # call 2 (amax 2) used the history's 200: a smaller bias than its own amax would pick
    assert ref_bias("cfloat8_143", 200.0) < ref_bias("cfloat8_143", 2.0)


def test_delayed_gradient_history_updates_in_backward():
    lin = dt.D1Linear(4, 2, recipe=dt.Recipe(bias_policy="delayed"))
    x = torch.randn(3, 4)
    for scale in (1.0, 10.0):
        lin(x).backward(torch.full((3, 2), scale))
    assert list(lin.scaling["grad"].values) == [1.0, 10.0]


# --- convert ------------------------------------------------------------------------------
def test_convert_sequential():
    torch.manual_seed(5)
    inner = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh())
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), inner,
                                torch.nn.Linear(6, 2))
    params = [p for p in model.parameters()]
    keys = list(model.state_dict())
    x = torch.randn(5, 4)
    recipe = dt.Recipe(forward=dk.BF16, gradient=dk.BF16)
    assert dt.convert(model, recipe, filter=lambda name, m: name != "3") is model
    assert isinstance(model[0], dt.D1Linear) and isinstance(model[2][0], dt.D1Linear)
    assert type(model[3]) is torch.nn.Linear
    assert [p for p in model.parameters()] == params       # the same objects
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert list(model.state_dict()) == keys
    assert model[0].recipe is recipe
    y = model(x)
    h = dk.gemm(x.numpy().astype(ml_dtypes.bfloat16),
                model[0].weight.detach().numpy().astype(ml_dtypes.bfloat16).T)
    h = torch.relu(torch.from_numpy(h) + model[0].bias.detach())
    assert y.shape == (5, 2) and torch.isfinite(y).all()
    assert torch.equal(model[1](model[0](x)).detach(), h)
    lin = torch.nn.Linear(3, 3)
    conv = dt.convert(lin)
    assert isinstance(conv, dt.D1Linear) and conv.weight is lin.weight
    with pytest.raises(TypeError, match="model"):
        dt.convert("not a model")


# --- SROptimizer ----------------------------------------------------------------------------
def ref_step_seed(seed, step, index):
    """The documented rule, written from docs/torch.md."""
    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)
    s = mix((seed + step * 0x9E3779B97F4A7C15) & MASK64)
    return mix((s + index * 0xD1B54A32D192ED03) & MASK64)


def test_step_seed_rule():
    for args in ((0, 1, 0), (123, 7, 3), ((1 << 64) - 1, 2, 9)):
        assert dt.step_seed(*args) == ref_step_seed(*args)


def test_sr_optimizer_step_follows_the_rule():
    torch.manual_seed(6)
    model = torch.nn.Linear(5, 3)
    opt = dt.SROptimizer(torch.optim.SGD(model.parameters(), lr=0.01), seed=42)
    for p in model.parameters():   # rounded to nearest into BF16 at construction
        assert torch.equal(p.detach(), p.detach().bfloat16().float())
    twin = copy.deepcopy(model)                      # the inner step alone, plain SGD
    x = torch.randn(4, 5)
    model(x).sum().backward()
    twin(x).sum().backward()
    torch.optim.SGD(twin.parameters(), lr=0.01).step()
    opt.step()
    for i, (p, q) in enumerate(zip(model.parameters(), twin.parameters())):
        upd = q.detach().numpy()
        want = dk.fake_quantize(upd, dk.BF16, rounding="stochastic", seed=ref_step_seed(42, 1, i))
        assert np.array_equal(bits(p), np_bits(want))
    assert opt.steps == 1


def test_sr_optimizer_keeps_small_updates_in_expectation():
    w = torch.nn.Parameter(torch.ones(20000))
    for rounding, mean in (("stochastic", 1 - 1e-3), ("nearest", 1.0)):
        w.data.fill_(1.0)
        opt = dt.SROptimizer(torch.optim.SGD([w], lr=1e-3), seed=1, rounding=rounding)
        w.grad = torch.ones_like(w)
        opt.step()
        vals = set(w.detach().unique().tolist())
        assert vals <= {1.0, 1.0 - 2.0 ** -8}
        assert abs(float(w.detach().double().mean()) - mean) < 1e-4, rounding


def test_sr_optimizer_reproducible_and_resumable():
    def run(seed, steps=3, split=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        opt = dt.SROptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), seed=seed)
        data = torch.randn(steps, 4, 6)
        for t in range(steps):
            if split == t:
                state = opt.state_dict()
                opt = dt.SROptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), seed=999)
                opt.load_state_dict(state)
            opt.zero_grad()
            model(data[t]).square().sum().backward()
            opt.step()
        return [bits(p) for p in model.parameters()]

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))
    d = run(5, split=2)
    assert all(np.array_equal(u, v) for u, v in zip(a, d))


def test_sr_optimizer_refuses_bfloat16_parameters():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="parameter 0 is torch.bfloat16"):
        dt.SROptimizer(torch.optim.SGD([p], lr=0.1))
    with pytest.raises(TypeError, match="optimizer"):
        dt.SROptimizer("sgd")


def test_order_is_passed_only_when_given():
    """Works before and after dojo_kernels.gemm gains order=: None never passes it; a given
    order reaches dojo_kernels.gemm (same bits as calling it directly) or, on a gemm without
    the keyword, is a ValueError naming order."""
    import inspect
    rng = np.random.default_rng(10)
    a = rng.standard_normal((16, 24)).astype(np.float32)
    b = rng.standard_normal((24, 8)).astype(np.float32)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    plain = dt.gemm(at, bt)
    assert np.array_equal(bits(plain), np_bits(dk.gemm(a, b)))
    lin = dt.D1Linear(24, 8, recipe=dt.Recipe(forward=dk.BF16, gradient=dk.BF16,
                                              order="vdpbf16ps"))
    if "order" in inspect.signature(dk.gemm).parameters:
        got = dt.gemm(at, bt, order="vdpbf16ps")
        assert np.array_equal(bits(got), np_bits(dk.gemm(a, b, order="vdpbf16ps")))
        assert lin(at[:, :24] @ torch.ones(24, 24)).shape == (16, 8)
    else:
        with pytest.raises(ValueError, match="order: this dojo_kernels.gemm has no order="):
            dt.gemm(at, bt, order="vdpbf16ps")
        with pytest.raises(ValueError, match="order"):
            lin(torch.randn(4, 24))
