"""ISA tier dispatch, thread count, and bit-identical results across tiers and thread counts."""
from __future__ import annotations

import os
import subprocess
import tempfile
import sys
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk
import spec_ref as R
from dk_helpers import bits, flags_dict
from dojo_kernels import _config

# NumPy warns when the tests cast NaN/Inf/out-of-range values on purpose (references, inputs)
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]

ALL_TIERS = ("generic", "avx2", "avx512bf16", "amx")
SUPPORTED = tuple(_config.supported_isas())


def _py(code: str, **env_over):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOJO_KERNELS_ISA", "DOJO_KERNELS_NUM_THREADS")}
    env.update(env_over)
    # cwd outside the repository: `python -c` puts the cwd first on sys.path, and the source
    # tree (not built in place by a plain `pip install .`) would shadow the installed package
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tempfile.gettempdir())


def test_supported_isas_shape():
    assert SUPPORTED[0] == "generic"
    assert SUPPORTED == ALL_TIERS[: len(SUPPORTED)]


def test_default_is_best_tier():
    r = _py("import dojo_kernels as d; from dojo_kernels import _config as c;"
            "print(d.get_isa(), c.supported_isas()[-1])")
    assert r.returncode == 0, r.stderr
    got, best = r.stdout.split()
    assert got == best == SUPPORTED[-1]


@pytest.mark.parametrize("tier", SUPPORTED)
def test_env_forces_tier(tier):
    r = _py("import dojo_kernels as d; print(d.get_isa())", DOJO_KERNELS_ISA=tier)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == tier


def test_env_unknown_or_unsupported_tier_fails_clearly():
    bad = ["sse9", "AVX1024"] + [t for t in ALL_TIERS if t not in SUPPORTED]
    for name in bad:
        r = _py("import dojo_kernels", DOJO_KERNELS_ISA=name)
        assert r.returncode != 0 and r.returncode > 0, (name, r.returncode)  # no SIGILL
        assert "DOJO_KERNELS_ISA" in r.stderr and name.lower() in r.stderr.lower(), r.stderr
        assert "Error" in r.stderr


def test_env_threads():
    r = _py("import dojo_kernels as d; print(d.get_num_threads())", DOJO_KERNELS_NUM_THREADS="3")
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stderr
    for bad in ("0", "-2", "many"):
        r = _py("import dojo_kernels", DOJO_KERNELS_NUM_THREADS=bad)
        assert r.returncode != 0 and "DOJO_KERNELS_NUM_THREADS" in r.stderr


def test_set_num_threads(threads_restored):
    dk.set_num_threads(1)
    assert dk.get_num_threads() == 1
    dk.set_num_threads(2)
    assert dk.get_num_threads() == 2
    for bad, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)):
        with pytest.raises(exc, match=r"\bn\b"):
            dk.set_num_threads(bad)
    assert dk.get_num_threads() == 2


def test_use_isa_rejects_unknown():
    with pytest.raises(ValueError):
        _config.use_isa("sse9")
    for t in ALL_TIERS:
        if t not in SUPPORTED:
            with pytest.raises(ValueError):
                _config.use_isa(t)


def test_show_config(capsys):
    dk.show_config()
    out = capsys.readouterr().out
    assert dk.get_isa() in out and dk.__version__ in out and str(dk.get_num_threads()) in out


# ---------------------------------------------------------------------------------------
# Same bits on every tier and thread count, for sizes above any block size
# ---------------------------------------------------------------------------------------
N_BIG = 1_000_003  # odd: SIMD tails and uneven thread splits


def _every_config(fn):
    """fn() on every (tier, threads) pair; returns the list of results."""
    saved = dk.get_num_threads()
    res = []
    try:
        for tier in SUPPORTED:
            with _config.use_isa(tier):
                for nt in (1, 2, 3):
                    dk.set_num_threads(nt)
                    res.append(((tier, nt), fn()))
    finally:
        dk.set_num_threads(saved)
    return res


def _assert_all_same(results):
    (k0, r0), rest = results[0], results[1:]
    r0 = r0 if isinstance(r0, tuple) else (r0,)
    for k, r in rest:
        r = r if isinstance(r, tuple) else (r,)
        for a, b in zip(r0, r):
            if isinstance(a, np.ndarray):
                assert np.array_equal(bits(a), bits(b)), (k0, k)
            else:
                assert a == b, (k0, k)


@pytest.fixture(scope="module")
def big_input():
    rng = np.random.default_rng(2024)
    x = (rng.standard_normal(N_BIG) * np.exp2(rng.integers(-20, 12, N_BIG))).astype(np.float32)
    x[::997] = np.nan
    x[1::1009] = np.inf
    x[2::1013] = 1e-41
    return x


@pytest.mark.parametrize("rf", [R.RefFormat("cfloat8_143", 7, "tesla"),
                                R.RefFormat("cfloat8_152", 15, "ieee"),
                                R.RefFormat("shp", 10, "tesla"), R.BF16_R, R.UHP_R], ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "toward_zero"])
def test_quantize_identical_across_tiers_threads(big_input, rf, rounding):
    fmt = {"bf16": dk.BF16, "uhp": dk.UHP}.get(rf.family) or \
        {"cfloat8_143": dk.cfloat8_143, "cfloat8_152": dk.cfloat8_152,
         "shp": dk.shp}[rf.family](rf.bias, subnormals=rf.subnormals)
    kw = {"seed": 2 ** 40 + 3} if rounding == "stochastic" else {}
    x = big_input

    def go():
        c, fl = dk.quantize(x, fmt, rounding=rounding, return_flags=True, **kw)
        return c, flags_dict(fl)
    results = _every_config(go)
    _assert_all_same(results)
    want = R.quantize_vec(x, rf, rounding, kw.get("seed"))
    assert np.array_equal(results[0][1][0], want[0]) and results[0][1][1] == want[1]


def test_other_kernels_identical_across_tiers_threads(big_input):
    x = big_input
    f = dk.cfloat8_143(9)
    c = dk.quantize(x, f)
    b = dk.quantize(x, dk.BF16)
    x64 = x.astype(np.float64) * (1 + 2.0 ** -30)
    xb = x.astype(ml_dtypes.bfloat16)
    s = dk.quantize(x, dk.shp(12))

    def go():
        return (dk.dequantize(c, f), dk.dequantize(b, dk.BF16, dtype=np.float64),
                dk.dequantize(s, dk.shp(12)),
                dk.fake_quantize(x, f, rounding="stochastic", seed=1),
                dk.quantize(x64, f, rounding="stochastic", seed=2),
                dk.quantize(x64, dk.BF16), dk.quantize(xb, dk.UHP),
                dk.quantize(x[::7], f),
                dk.add(c, c[::-1], f, rounding="stochastic", seed=3),
                dk.mul(b, b[::-1], dk.BF16),
                dk.fma(c, c[::-1], np.roll(c, 7), f,
                       rounding="stochastic", seed=4),
                dk.sub(s, s[::-1], dk.shp(12), rounding="toward_zero"),
                dk.quantize(x, dk.FP32), dk.quantize(x64, dk.FP32),
                dk.quantize(x64, dk.FP32, rounding="stochastic", seed=5))
    _assert_all_same(_every_config(go))


def test_strided_big_identical(big_input):
    x = big_input[: 1000 * 1000].reshape(1000, 1000).T[::, ::3]
    f = dk.cfloat8_152(20)
    results = _every_config(lambda: dk.quantize(x, f, rounding="stochastic", seed=11))
    _assert_all_same(results)
    want = R.quantize_vec(x, R.ref_of(f), "stochastic", 11)[0]
    assert np.array_equal(results[0][1], want)


def test_concurrent_python_threads(big_input):
    # kernels release the GIL; concurrent calls must not interfere with each other
    f = dk.cfloat8_143(7)
    x = big_input[:400_000]
    want = dk.quantize(x, f, rounding="stochastic", seed=5)
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: dk.quantize(x, f, rounding="stochastic", seed=5), range(8)))
    for o in outs:
        assert np.array_equal(o, want)
