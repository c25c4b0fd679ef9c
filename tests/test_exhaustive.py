"""Exhaustive FP32 -> format conversion: all 2^32 float32 bit patterns (slow, ~15 s each).

Positive float32 bit patterns are ordered like their values, and nearest / toward_zero
rounding is monotone, so the reference's answer over all patterns is a step function: the
first pattern reaching each code is found by bisection with the reference (spec_ref), and
the expected codes of a chunk of patterns are a np.repeat of those steps. The kernel runs on
every pattern, chunk by chunk, on the tier in use (the CI runs the suite once per tier).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk
import spec_ref as R

pytestmark = pytest.mark.slow

CHUNK = 1 << 24
INF_BITS = 0x7F800000


def fmt_of(rf):
    return {"bf16": dk.BF16, "uhp": dk.UHP}.get(rf.family) or \
        {"cfloat8_143": dk.cfloat8_143, "cfloat8_152": dk.cfloat8_152,
         "shp": dk.shp}[rf.family](rf.bias, subnormals=rf.subnormals)


def steps(rf, rounding):
    """(P, C): C[j] is the code of every positive pattern p with P[j] <= p < P[j+1]."""
    def ref_codes(pats):
        return R.quantize_vec(pats.astype(np.uint32).view(np.float32), rf, rounding)[0] \
            .astype(np.int64)
    top = int(ref_codes(np.array([INF_BITS]))[0])
    cand = np.unique(np.concatenate([ref_codes(np.arange(0, INF_BITS + 1, 4099)),
                                     np.arange(top + 1)]))
    cand = cand[cand <= top]
    lo = np.zeros(cand.size, np.int64)          # ref(lo) < c  (or lo == 0)
    hi = np.full(cand.size, INF_BITS, np.int64)  # ref(hi) >= c
    for _ in range(33):
        mid = (lo + hi) // 2
        ge = ref_codes(mid) >= cand
        hi = np.where(ge, mid, hi)
        lo = np.where(ge, lo, mid)
    first = np.where(ref_codes(lo) >= cand, lo, hi)
    first[0] = 0
    # keep only codes that occur: first[j] < first[j+1]
    keep = np.concatenate([first[1:] > first[:-1], [True]])
    P, C = first[keep], cand[keep]
    assert np.all(np.diff(P) > 0) and P[0] == 0
    return P, C


def expected(P, C, s, e):
    i0 = np.searchsorted(P, s, "right") - 1
    i1 = np.searchsorted(P, e, "left")
    b = np.clip(P[i0:i1], s, e)
    lengths = np.diff(np.concatenate([b, [e]]))
    return np.repeat(C[i0:i1], lengths)


@pytest.mark.parametrize("rf,rounding", [
    (R.RefFormat("cfloat8_143", 7, "tesla"), "nearest"),
    (R.RefFormat("cfloat8_152", 15, "tesla"), "nearest"),
    (R.RefFormat("cfloat8_143", 63, "ieee"), "toward_zero"),
    (R.RefFormat("shp", 15, "tesla"), "nearest"),
    (R.UHP_R, "nearest"),
], ids=str)
def test_all_fp32_patterns(rf, rounding):
    fmt = fmt_of(rf)
    P, C = steps(rf, rounding)
    # the step function is the reference itself (checked on a few windows)
    for s0 in (0x3F7F0000, 0x00000000, 0x3A000000, 0x4F7F0000):
        pats = np.arange(s0, s0 + (1 << 16), dtype=np.uint32)
        ref = R.quantize_vec(pats.view(np.float32), rf, rounding)[0]
        assert np.array_equal(expected(P, C, s0, s0 + (1 << 16)), ref)
    sbit = rf.sign_bit
    for s in range(0, INF_BITS + 1, CHUNK):
        e = min(s + CHUNK, INF_BITS + 1)
        pats = np.arange(s, e, dtype=np.uint32)
        want = expected(P, C, s, e)
        got = dk.quantize(pats.view(np.float32), fmt, rounding=rounding)
        bad = np.nonzero(got != want)[0]
        assert bad.size == 0, (f"{bad.size} mismatches in [{s:#x}, {e:#x}): first pattern "
                               f"{int(pats[bad[0]]):#010x} got {int(got[bad[0]]):#x} "
                               f"want {int(want[bad[0]]):#x}")
        neg = dk.quantize((pats | np.uint32(0x80000000)).view(np.float32), fmt, rounding=rounding)
        if rf.signed:
            wn = want | sbit
        else:
            wn = np.where(pats == 0, 0, rf.nan_code)
        bad = np.nonzero(neg != wn)[0]
        assert bad.size == 0, (f"negative pattern {int(pats[bad[0]]) | 0x80000000:#010x} got "
                               f"{int(neg[bad[0]]):#x} want {int(wn[bad[0]]):#x}")
    nan = np.arange(INF_BITS + 1, 0x80000000, dtype=np.uint32)
    for sign in (0, 0x80000000):
        got = dk.quantize((nan | np.uint32(sign)).view(np.float32), fmt, rounding=rounding)
        assert (got == rf.nan_code).all()


def test_bf16_all_fp32_patterns_vs_ml_dtypes():
    for s in range(0, 1 << 32, CHUNK):
        x = np.arange(s, s + CHUNK, dtype=np.uint64).astype(np.uint32).view(np.float32)
        got = dk.quantize(x, dk.BF16)
        with np.errstate(all="ignore"):
            want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
        bad = np.nonzero(got != want)[0]
        assert bad.size == 0, f"pattern {int(x.view(np.uint32)[bad[0]]):#010x}"
