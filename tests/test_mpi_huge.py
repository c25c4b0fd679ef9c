"""dojo_kernels.mpi.allreduce on a rank buffer of 2**31 + 33 elements under mpiexec -n 2
(issue 14, big buffers): messages of about 2**30 elements travel in pieces of 2**28.

Opt-in like tests/test_huge.py: needs about 25 GiB of RAM (12 GiB per rank; 3.2 GB measured
at 2**29 + 33 elements) and a few minutes, so it runs only with DOJO_KERNELS_HUGE_TESTS=1, e.g.
``DOJO_KERNELS_HUGE_TESTS=1 pytest -m slow tests/test_mpi_huge.py``. The run is bounded from
outside (the process group is killed after 30 minutes).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

pytest.importorskip("mpi4py")

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi", "mpi_huge_check.py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
OUTER = 1800


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.skipif(os.environ.get("DOJO_KERNELS_HUGE_TESTS") != "1",
                    reason="needs ~25 GiB: set DOJO_KERNELS_HUGE_TESTS=1")
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")
def test_mpi_allreduce_beyond_2_31_elements():
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, SCRIPT],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=OUTER)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"still running after {OUTER} s:\n{out[-3000:]}")
    got = dict(re.findall(r"RESULT (\d) huge (ok|FAIL)", out))
    assert got == {"0": "ok", "1": "ok"}, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
