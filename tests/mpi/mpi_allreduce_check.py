"""Run under mpiexec (-n 4, -n 6, ...): dojo_kernels.mpi.allreduce must give every rank the
same bits as the simulator's row for that rank, for every algorithm, several mesh shapes, FP32
and BF16 (both accumulations), and again with messages cut into pieces of 97 elements (the
limit is 2**28). Exits non-zero on the first mismatch (via MPI Abort)."""
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


class Counting:
    """Stands in for the module's private communicator and records the element count of
    every Isend/Irecv, so that the check below can see the messages travel in pieces."""

    def __init__(self, comm):
        self.comm, self.counts = comm, []

    def Isend(self, spec, **kw):
        self.counts.append(len(spec[0]))
        return self.comm.Isend(spec, **kw)

    def Irecv(self, spec, **kw):
        self.counts.append(len(spec[0]))
        return self.comm.Irecv(spec, **kw)

    def __getattr__(self, name):
        return getattr(self.comm, name)


def check_pieces(comm, rng, limit=97):
    """Messages longer than the piece limit (2**28 elements, lowered here to 97) are sent in
    pieces, and the result keeps the simulator's bits."""
    P, me = comm.Get_size(), comm.Get_rank()
    dk_mpi.allreduce(comm, np.zeros(1, np.float32))    # the private communicator exists
    chan = comm.Get_attr(dk_mpi._KEYVAL)
    real, counting = chan.comm, Counting(chan.comm)
    chan.comm, saved, dk_mpi._MAX_COUNT = counting, dk_mpi._MAX_COUNT, limit
    checked = 0
    try:
        topo = Mesh2D(1, P, link_bandwidth=1e9, link_latency=2e-6)
        x = rng.standard_normal((P, 2051)).astype(np.float32)
        xb = (x.view(np.uint32) >> 16).astype(np.uint16)
        for alg in ALGS:
            for buf, fmt, acc in [(x, FP32, "fp32"), (xb, BF16, "bf16")]:
                want, _ = dojo_kernels.allreduce(buf, topo, algorithm=alg, fmt=fmt,
                                                 accumulate=acc)
                got = dk_mpi.allreduce(comm, buf[me], algorithm=alg, mesh_shape=topo,
                                       fmt=fmt, accumulate=acc)
                if got.tobytes() != np.ascontiguousarray(want[me]).tobytes():
                    raise AssertionError(f"rank {me}: {alg} {fmt.name} in pieces of {limit}: "
                                         "bits differ from the simulator")
                checked += 1
    finally:
        chan.comm, dk_mpi._MAX_COUNT = real, saved
    # a ring on P ranks sends 2051/P > 97 elements per message: some pieces are full
    assert counting.counts and max(counting.counts) == limit, \
        f"rank {me}: no message was cut at {limit} elements: {sorted(set(counting.counts))}"
    return checked


def check_machines(comm, rng):
    """Issue 12 item 1: a D1 machine object as ``mesh_shape`` gives the bits of the explicit
    Mesh2D it stands for (the figures written here from SPEC section 6 and docs/machine.md:
    chip 128 GB/s NoC links, 0.5 ns; tile 2 TB/s, 100 ns + 20 ns per hop; D2 wafer
    10 TB/s, 10 ns; system 9 TB/s, 1 us + 100 ns), and the simulator's bits on that mesh."""
    P, me = comm.Get_size(), comm.Get_rank()
    checked = 0
    x = (rng.standard_normal((P, 1031)) * np.exp(rng.uniform(-8, 8, (P, 1031)))).astype(
        np.float32)
    for rows, cols in shapes(P):
        pairs = [
            (dojo_kernels.D1Chip(grid=(rows, cols), active_nodes=P),
             Mesh2D(rows, cols, link_bandwidth=128e9, link_latency=0.5e-9, hop_latency=0.5e-9)),
            (dojo_kernels.TrainingTile(chips=(rows, cols)),
             Mesh2D(rows, cols, link_bandwidth=2e12, link_latency=100e-9, hop_latency=20e-9)),
            (dojo_kernels.D2Tile(chips=(rows, cols)),
             Mesh2D(rows, cols, link_bandwidth=10e12, link_latency=10e-9, hop_latency=10e-9)),
            (dojo_kernels.DojoSystem(grid=(rows, cols)),
             Mesh2D(rows, cols, link_bandwidth=9e12, link_latency=1e-6, hop_latency=100e-9)),
        ]
        for machine, explicit in pairs:
            for alg in ALGS:
                want, _ = dojo_kernels.allreduce(x, explicit, algorithm=alg)
                got = dk_mpi.allreduce(comm, x[me], algorithm=alg, mesh_shape=machine)
                ref = dk_mpi.allreduce(comm, x[me], algorithm=alg, mesh_shape=explicit)
                w = np.ascontiguousarray(want[me]).tobytes()
                if got.tobytes() != w or ref.tobytes() != w:
                    raise AssertionError(f"rank {me}: {alg} on {type(machine).__name__} "
                                         f"{rows}x{cols}: bits differ from the explicit mesh")
                checked += 1
    return checked


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
    checked += check_pieces(comm, rng)
    checked += check_machines(comm, rng)
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
