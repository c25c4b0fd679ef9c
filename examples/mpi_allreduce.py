"""All-reduce across real processes with MPI, checked bit for bit against the simulator.

    mpiexec -n 4 python examples/mpi_allreduce.py
    python examples/mpi_allreduce.py                 # one rank works too

Needs mpi4py (pip install "dojo_kernels[mpi]": mpi4py and the mpich wheel). Every rank
contributes its own data; every rank checks that what it got equals row ``rank`` of
``dojo_kernels.allreduce`` run on all ranks' data in one process.
"""
from __future__ import annotations

import sys

import numpy as np

import dojo_kernels as dk
from dojo_kernels import mesh, mpi


def main() -> int:
    try:
        from mpi4py import MPI
    except ImportError:
        print("mpi_allreduce.py needs mpi4py: pip install 'dojo_kernels[mpi]'")
        return 1
    comm = MPI.COMM_WORLD
    P = comm.size
    n = 50_000
    everyone = np.random.default_rng(0).standard_normal((P, n), dtype=np.float32)
    topo = mesh.chip_mesh(1, P)
    ok = True
    for alg in ("ring", "bidirectional_ring", "tree", "chain"):
        got = mpi.allreduce(comm, everyone[comm.rank], algorithm=alg, mesh_shape=topo)
        want, _ = dk.allreduce(everyone, topo, algorithm=alg)
        same = bool(np.array_equal(got.view(np.uint32),
                                   np.ascontiguousarray(want[comm.rank]).view(np.uint32)))
        same_all = comm.allreduce(int(same), op=MPI.MIN) == 1
        ok &= same_all
        if comm.rank == 0:
            print(f"{alg:<20} {P} rank(s): every rank got the simulator's bits: {same_all}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
