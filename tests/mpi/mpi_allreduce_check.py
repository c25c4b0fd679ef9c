"""Run under mpiexec (-n 4, -n 6, ...): dojo_kernels.mpi.allreduce must give every rank the
same bits as the simulator's row for that rank, for every algorithm, several mesh shapes, FP32
and BF16 (both accumulations). Exits non-zero on the first mismatch (via MPI Abort)."""
import sys
import traceback

import numpy as np
from mpi4py import MPI

import dojo_kernels
from dojo_kernels import mpi as dk_mpi
from dojo_kernels.formats import BF16, FP32
from dojo_kernels.mesh import Mesh2D

ALGS = ["ring", "bidirectional_ring", "2d", "halving_doubling", "tree", "chain",
        "spanning_trees", "auto"]


def shapes(P):
    out = []
    for r in range(1, P + 1):
        if P % r == 0:
            out.append((r, P // r))
    return out


def main():
    comm = MPI.COMM_WORLD
    P, me = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(1234)      # same data on every rank
    checked = 0
    for rows, cols in shapes(P):
        for wrap in (False, True):
            topo = Mesh2D(rows, cols, link_bandwidth=1e9, link_latency=2e-6, hop_latency=1e-7,
                          wraparound=wrap)
            for N in (1, 7, 2051):
                x = (rng.standard_normal((P, N)) * np.exp(rng.uniform(-8, 8, (P, N))))
                x32 = x.astype(np.float32)
                xb = (x32.view(np.uint32) >> 16).astype(np.uint16)  # truncated: valid BF16
                for alg in ALGS:
                    cases = [(x32, FP32, "fp32"), (xb, BF16, "fp32"), (xb, BF16, "bf16")]
                    for buf, fmt, acc in cases:
                        want, _ = dojo_kernels.allreduce(buf, topo, algorithm=alg, fmt=fmt,
                                                         accumulate=acc)
                        got = dk_mpi.allreduce(comm, buf[me], algorithm=alg, mesh_shape=topo,
                                               fmt=fmt, accumulate=acc)
                        if got.dtype != buf.dtype or got.shape != buf[me].shape or \
                                got.tobytes() != np.ascontiguousarray(want[me]).tobytes():
                            bad = np.flatnonzero(got.view(np.uint8) != np.ascontiguousarray(
                                want[me]).view(np.uint8))
                            raise AssertionError(
                                f"rank {me}: {alg} on {rows}x{cols} wrap={wrap} N={N} "
                                f"{fmt.name}/{acc}: bits differ from the simulator "
                                f"(first bytes {bad[:5]})")
                        checked += 1
    # a shape given as a tuple, and the default layout
    x = rng.standard_normal((P, 333)).astype(np.float32)
    got = dk_mpi.allreduce(comm, x[me])
    want, _ = dojo_kernels.allreduce(x, dojo_kernels.mesh.chip_mesh(*MPI.Compute_dims(P, 2)),
                                     algorithm="ring")
    assert got.tobytes() == np.ascontiguousarray(want[me]).tobytes(), "default layout differs"
    assert np.allclose(got, x.astype(np.float64).sum(0), rtol=1e-5, atol=1e-4)
    checked += 1
    total = comm.allreduce(checked)
    if me == 0:
        print(f"mpi allreduce: {P} ranks, {total} rank-cases bit-identical to the simulator")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        MPI.COMM_WORLD.Abort(1)
