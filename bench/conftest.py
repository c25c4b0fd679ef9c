"""Benchmark plumbing: each benchmark records its rate (bench/_benchlib.py), and the
session ends with ratio tables against the peers measured in the same run (machines here
are shared and noisy: only ratios from one run mean anything)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # importlib mode: make _benchlib importable

from _benchlib import RESULTS, TABLES  # noqa: E402


def pytest_collect_file(file_path, parent):
    """Collect bench/bench_*.py (pytest's default python_files is test_*.py, and this
    conftest cannot change an ini option): `pytest bench` and `dojo-kernels bench --suite`
    run the whole suite. Files named on the command line are collected by pytest itself."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter):
    lines = []
    for table in TABLES:
        lines += table(RESULTS) + [""]
    if lines:
        terminalreporter.write_sep("=", "dojo_kernels ratio tables (same run)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def threads():
    """Restore the kernel thread count after a benchmark that changes it."""
    import dojo_kernels as dk

    saved = dk.get_num_threads()
    yield dk.set_num_threads
    dk.set_num_threads(saved)
