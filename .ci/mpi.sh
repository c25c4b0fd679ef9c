#!/usr/bin/env bash
# MPI tests of dojo_kernels.mpi: the schedule run across real processes must give the
# simulator's bits. Installs nothing: expects mpi4py and an MPI (pip install mpi4py mpich)
# in the active environment. 6 ranks oversubscribe a 2-core machine; MPICH's hydra needs no
# flag for that.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mpiexec >/dev/null || { echo "mpi.sh: mpiexec not found (pip install mpich)"; exit 1; }
python -c "import mpi4py" || { echo "mpi.sh: mpi4py not installed"; exit 1; }
for n in 4 6; do
    timeout 600 mpiexec -n "$n" python tests/mpi/mpi_allreduce_check.py
done
