"""Shared fixtures for the numerics tests.

pyproject runs pytest with --import-mode=importlib, so this directory is not on sys.path by
itself: put it there so the tests can import the independent reference ``spec_ref``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import dojo_kernels  # noqa: E402
from dojo_kernels import _config, _gemm  # noqa: E402

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (default: hypothesis' own "default").
# "sanitize" (.ci/sanitize.sh, .ci/valgrind.sh): instrumented builds run 2-20x slower, so no
# deadline, a fixed seed and a smaller budget for the tests that do not set their own.
settings.register_profile("sanitize", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SUPPORTED_ISAS = tuple(_config.supported_isas())
# .ci/run runs the whole suite once more per forced lower tier with DOJO_TEST_QUICK=1: then
# the per-tier tests run on that tier only (the first, unforced run covers every tier).
FIXTURE_ISAS = ((dojo_kernels.get_isa(),) if os.environ.get("DOJO_TEST_QUICK") == "1"
                else SUPPORTED_ISAS)


# GEMM hands a product to the thread pool from a per-tier size (docs/threads.md: up to
# 3 * 2^25 multiply-adds on the amx tier, where a second thread pays only from there). The
# tests check bits across thread counts on products far smaller, so for them every tier uses
# the generic tier's 2^21; tests/test_threads.py checks the tiers' own thresholds (restored
# by the `gemm_par_min` fixture).
GEMM_TEST_PAR_MIN = 1 << 21
_gemm._set_par_min(GEMM_TEST_PAR_MIN)


@pytest.fixture
def gemm_par_min():
    """The tiers' own GEMM thresholds for the duration of a test."""
    _gemm._set_par_min(0)
    yield
    _gemm._set_par_min(GEMM_TEST_PAR_MIN)


@pytest.fixture(params=FIXTURE_ISAS)
def isa(request):
    """Run the test body once per ISA tier this CPU supports."""
    with _config.use_isa(request.param):
        assert dojo_kernels.get_isa() == request.param
        yield request.param


@pytest.fixture
def threads_restored():
    """Restore the thread count after a test that changes it."""
    saved = dojo_kernels.get_num_threads()
    yield
    dojo_kernels.set_num_threads(saved)


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (exhaustive sweeps of all 2^32 float32 patterns, minutes) run only
    when asked: ``-m slow`` (or any -m expression) or DOJO_KERNELS_SLOW_TESTS=1."""
    if config.getoption("-m") or os.environ.get("DOJO_KERNELS_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or DOJO_KERNELS_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
