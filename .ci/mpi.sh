#!/usr/bin/env bash
# MPI tests of dojo_kernels.mpi: the schedule run across real processes must give the
# simulator's bits, and injected faults (mismatched calls, refused arguments, errors inside the
# schedule, late and dead ranks) must end every surviving rank with the documented error within
# its timeout. Installs nothing: expects mpi4py and an MPI (pip install mpi4py mpich) in the
# active environment. 6 ranks oversubscribe a 2-core machine; MPICH's hydra needs no flag for
# that. Every mpiexec is bounded from outside (timeout here, subprocess timeouts in
# tests/test_mpi_faults.py), so a regression fails instead of hanging CI. About 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mpiexec >/dev/null || { echo "mpi.sh: mpiexec not found (pip install mpich)"; exit 1; }
python -c "import mpi4py" || { echo "mpi.sh: mpi4py not installed"; exit 1; }
py=$(python -c "import sys; print(sys.executable)")   # mpiexec may put another python first
for n in 4 6; do
    timeout 300 mpiexec -n "$n" "$py" tests/mpi/mpi_allreduce_check.py
done
# the venv's pytest script, not `python -m pytest`: that puts the repository root (the
# source tree, which would shadow the installed package) first on sys.path
DOJO_KERNELS_MPI_TESTS=1 timeout 600 pytest -q tests/test_mpi_faults.py
