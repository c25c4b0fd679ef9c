"""The amx tier (issue 10): run-time detection, the Linux permission request and its
fallback, and the AMX contract proven against the hardware instruction itself.

The reference here is TDPBF16PS, executed one instruction at a time through a small test
helper (``_gemm.amx_tdpbf16ps``: one tile load each, one instruction, one store) on
zero-padded 16 x 16 output tiles and 32-element k blocks, chained in Python. That is the
order of dk_gemm.h by construction of the instruction, so comparing every tier's
``order="amx"`` result with it proves that the documented order is what the hardware
computes (tests/test_gemm_order.py checks the same kernels against exact arithmetic
written from the description). Needs an AMX CPU: skipped, with the reason, elsewhere.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _config, _cpu, _gemm

HAS_AMX = "amx" in _config.supported_isas()
AMX_FEATURES = {"amx_tile", "amx_bf16", "os_amx"}
needs_amx = pytest.mark.skipif(
    not HAS_AMX, reason="this CPU (or its OS) offers no AMX-BF16 tiles: features "
    f"{sorted(AMX_FEATURES & set(_cpu.features())) or 'none of amx_tile/amx_bf16/os_amx'}")
TIERS = ([dk.get_isa()] if os.environ.get("DOJO_TEST_QUICK") == "1"
         else list(_config.supported_isas()))
NO_TABLE = np.zeros(256, np.uint16)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("DOJO_KERNELS_")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=e, cwd=os.path.dirname(__file__), timeout=120)


def test_amx_tier_iff_features_and_permission():
    f = set(_cpu.features())
    expect = (AMX_FEATURES | {"amx_granted", "avx512_bf16", "os_zmm"}) <= f
    assert HAS_AMX == expect
    assert ("amx_granted" in f) <= (AMX_FEATURES <= f)  # granted only where it exists


def test_forcing_amx_without_it_is_a_clear_import_error():
    r = _run("import dojo_kernels", DOJO_KERNELS_ISA="amx", DOJO_KERNELS_NO_AMX_REQUEST="1")
    assert r.returncode != 0
    assert "DOJO_KERNELS_ISA='amx'" in r.stderr and "the best it runs is" in r.stderr


def test_refused_permission_falls_back_to_the_next_tier():
    code = ("import dojo_kernels as dk, numpy as np; from dojo_kernels import _config;"
            "print(dk.get_isa(), ' '.join(_config.supported_isas()));"
            "a = np.arange(64, dtype=np.float32).reshape(8, 8);"
            "print(float(dk.gemm(a, a).sum()))")
    r = _run(code, DOJO_KERNELS_NO_AMX_REQUEST="1")
    assert r.returncode == 0, r.stderr
    tier, tiers = r.stdout.splitlines()[0].split(" ", 1)
    assert "amx" not in tiers.split() and tier == tiers.split()[-1]
    want = (np.arange(64.0).reshape(8, 8) @ np.arange(64.0).reshape(8, 8)).sum()
    assert float(r.stdout.splitlines()[1]) == want  # small integers: exact in any order


def test_show_config_lists_amx_and_the_gemm_kernels(capsys):
    dk.show_config()
    out = capsys.readouterr().out
    assert ("amx_tile" in out) == ("amx_tile" in _cpu.features())
    assert "gemm kernels" in out and "amx" in out and "vdpbf16ps" in out


# --- the contract against the instruction --------------------------------------------

def hw_amx_order(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FP32 bits of a @ b computed by TDPBF16PS itself, one instruction per 16 x 16 output
    tile and 32-element k block, zero padded; NaN canonicalized to 0x7FC00000 as
    dk_gemm.h's final step does (scale 1)."""
    m, k = a.shape
    n = b.shape[1]
    nblk = -(-k // 32)
    m16, n16 = -(-m // 16) * 16, -(-n // 16) * 16
    A = np.zeros((m16, nblk * 32), np.uint16)
    A[:m, :k] = a
    B = np.zeros((nblk * 32, n16), np.uint16)
    B[:k, :n] = b
    Bp = B[0::2].astype(np.uint32) | (B[1::2].astype(np.uint32) << 16)  # VNNI pairs
    C = np.zeros((m16, n16), np.float32)
    for i0 in range(0, m16, 16):
        for j0 in range(0, n16, 16):
            c = C[i0:i0 + 16, j0:j0 + 16]
            for blk in range(nblk):
                _gemm.amx_tdpbf16ps(A[i0:i0 + 16, 32 * blk:32 * blk + 32],
                                    Bp[16 * blk:16 * blk + 16, j0:j0 + 16], c)
    out = C[:m, :n].view(np.uint32).copy()
    out[np.isnan(C[:m, :n])] = 0x7FC00000
    return out


def mixed_bf16(rng: np.random.Generator, shape, span=(-8, 8), regimes=True) -> np.ndarray:
    """BF16 codes: random signs and mantissas. With `regimes`, each row (and, for a k x n
    operand, each column: pass the transpose) has an exponent centre of 0, -63 or +63 and a
    spread of `span`/2, so that outputs of tiny rows by tiny columns land around FP32's
    flush edge (2^-126) and huge by huge around overflow; then a share of subnormals (read
    as zero), signed zeros, infinities and NaNs."""
    e = rng.integers(span[0], span[1] + 1, shape)
    if regimes:
        centre = rng.choice(np.array([0, 0, -63, 63]), size=(shape[0], 1))
        e = centre + e // 2
    codes = (rng.integers(0, 2, shape) << 15) | ((e + 127) << 7) | rng.integers(0, 128, shape)
    codes = codes.astype(np.uint16)
    s = rng.random(shape)
    codes[s < 0.02] = 0x8000                                         # -0
    codes[(s >= 0.02) & (s < 0.04)] = 0x0000                         # +0
    sub = (s >= 0.04) & (s < 0.05)
    codes[sub] = rng.integers(1, 128, int(sub.sum())) | (codes[sub] & 0x8000)  # subnormals
    codes[(s >= 0.05) & (s < 0.051)] = 0x7F80                        # +Inf
    codes[(s >= 0.051) & (s < 0.052)] = 0xFF80                       # -Inf
    codes[(s >= 0.052) & (s < 0.0525)] = 0x7FC1                      # NaN with payload
    return codes


def via_glue(a, b, tier, threads=1):
    out = np.full((1, a.shape[0], b.shape[1]), np.nan, np.float32)
    rc = _gemm.gemm(a[None], b[None], NO_TABLE, NO_TABLE, 1.0, out,
                    _config.ISA_NAMES.index(tier), 0, threads, _gemm.ORDER_AMX)
    assert rc == 0
    return out[0].view(np.uint32)


def assert_same(got, want, what):
    if not np.array_equal(got, want):
        i = tuple(np.argwhere(got != want)[0])
        raise AssertionError(f"{what}: at {i} got {got[i]:#010x}, TDPBF16PS {want[i]:#010x} "
                             f"({np.count_nonzero(got != want)} of {got.size} differ)")


@needs_amx
def test_a_million_outputs_equal_the_instruction_on_every_tier():
    rng = np.random.default_rng(20261130)
    m = n = 1024
    k = 80  # two whole blocks and a partial third
    a, b = mixed_bf16(rng, (m, k)), mixed_bf16(rng, (n, k)).T
    want = hw_amx_order(a, b)
    assert want.size >= 10 ** 6
    # the data reaches the flush region, overflow and NaN (the test would be weaker if not)
    f = want.view(np.float32)
    tiny = (f != 0) & (np.abs(f) < 2.0 ** -118)
    assert np.isnan(f).any() and np.isinf(f).any() and tiny.sum() > 1000
    for tier in TIERS:
        assert_same(via_glue(a, b, tier, threads=2), want, f"tier {tier}")


@needs_amx
@pytest.mark.parametrize("m,n", [(1, 1), (15, 17), (16, 16), (31, 33), (33, 64), (70, 5)])
@pytest.mark.parametrize("k", [1, 2, 31, 32, 33, 63, 64, 65, 100, 1100])
def test_shapes_and_block_edges_equal_the_instruction(m, n, k):
    rng = np.random.default_rng(m * 100003 + n * 101 + k)
    a, b = mixed_bf16(rng, (m, k)), mixed_bf16(rng, (n, k)).T
    want = hw_amx_order(a, b)
    for tier in TIERS:
        for threads in (1, 2):
            assert_same(via_glue(a, b, tier, threads), want, f"{tier}, {threads} threads")


@needs_amx
def test_strided_operands_through_gemm_match_the_instruction():
    """The public gemm (its scaling pre-pass, transposed and Fortran operands): with
    operands whose scale is 1 (BF16 in a moderate range) it equals the instruction."""
    rng = np.random.default_rng(7)

    def moderate(shape):  # no subnormals (they would be scaled), exponents -4..4
        c = mixed_bf16(rng, shape, span=(-4, 4), regimes=False)
        sub = ((c & 0x7F80) == 0) & ((c & 0x7F) != 0)
        return np.where(sub, np.uint16(0x3F80), c).astype(np.uint16)

    a, bt = moderate((96, 200)), moderate((80, 200))
    want = hw_amx_order(a, np.ascontiguousarray(bt.T))
    with _config.use_isa("amx"):
        got = dk.gemm(np.asfortranarray(a), bt.T, order="amx")     # F-order A, transposed B
    assert_same(got.view(np.uint32), want, "gemm() on the amx tier")
