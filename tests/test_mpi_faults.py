"""dojo_kernels.mpi never hangs silently (issue 14): injected faults under real mpiexec runs of
tests/mpi/mpi_fault_check.py, each bounded from outside (a hang fails the test instead of
hanging CI; the whole process group is killed).

By default: the scenarios that must end at once (mismatched sizes, dtypes, formats,
accumulations, algorithms, meshes; one rank's arguments refused, with and without the
agreement; one rank raising inside the schedule) under ``mpiexec -n 4``, about 2 s.
With ``DOJO_KERNELS_MPI_TESTS=1`` (.ci/mpi.sh sets it): every scenario under ``-n 4`` and
``-n 6``, including those that must time out (a late rank; mismatched sizes without the
agreement; a rank that dies before the first call, between calls, or in the middle of one),
about a minute and a half.
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

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "mpi", "mpi_fault_check.py")
# the mpiexec of the MPI that mpi4py uses: the one next to this Python first (the mpich wheel)
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
FULL = os.environ.get("DOJO_KERNELS_MPI_TESTS") == "1"
OUTER = 120          # seconds: the outer bound of one mpiexec run

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")]

IMMEDIATE = ["size", "dtype", "format", "accumulate", "algorithm", "mesh", "args",
             "args_nocheck", "raise_during", "raise_during_nocheck", "raise_during_big",
             "user_messages"]
# scenario -> the rank that dies (None: nobody dies, one comes late)
TIMED = {"slow": None, "size_nocheck": None, "dead_during": 1, "dead_before": -1,
         "dead_first": -1}


def _hydra() -> bool:
    try:
        out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "HYDRA" in out


def launch(n, scenarios, dead=False):
    """Run the scenarios under mpiexec -n n; return (exit code, output). Never hangs."""
    cmd = [MPIEXEC] + (["-disable-auto-cleanup"] if dead else []) + \
        ["-n", str(n), sys.executable, SCRIPT, *scenarios]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=OUTER)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:])}: still running after {OUTER} s, a hang:\n"
                    f"{out[-4000:]}")
    return proc.returncode, out


def check(out, scenario, survivors):
    got = {}
    for rank, name, status in re.findall(r"RESULT (\d+) (\w+) (ok|FAIL)", out):
        if name == scenario:
            got.setdefault(int(rank), []).append(status)
    bad = {r: s for r, s in got.items() if s != ["ok"]}
    assert not bad and set(got) == set(survivors), (
        f"{scenario}: ranks {sorted(survivors)} must each report ok once; got {got}\n"
        + "\n".join(line for line in out.splitlines() if scenario in line or "Error" in line)
        [-6000:])


@pytest.mark.parametrize("n", [4, 6] if FULL else [4])
def test_faults_end_at_once_on_every_rank(n):
    rc, out = launch(n, IMMEDIATE)
    for s in IMMEDIATE:
        check(out, s, range(n))
    assert rc == 0, f"mpiexec exit code {rc} (MPI_Finalize after the faults?):\n{out[-3000:]}"


@pytest.mark.skipif(not FULL, reason="about a minute: set DOJO_KERNELS_MPI_TESTS=1 "
                                     "(.ci/mpi.sh does)")
@pytest.mark.parametrize("n", [4, 6])
@pytest.mark.parametrize("scenario", sorted(TIMED))
def test_timeouts_and_dead_ranks(scenario, n):
    dies = TIMED[scenario]
    if dies is not None and not _hydra():
        pytest.skip("the dead-rank runs need MPICH's hydra (mpiexec -disable-auto-cleanup)")
    rc, out = launch(n, [scenario], dead=dies is not None)
    dead = None if dies is None else dies % n
    check(out, scenario, [r for r in range(n) if r != dead])
    if dies is None:
        assert rc == 0, f"mpiexec exit code {rc}:\n{out[-3000:]}"
