"""A rank buffer of more than 2**31 elements through dojo_kernels.mpi.allreduce (issue 14):
run under ``mpiexec -n 2`` by tests/test_mpi_huge.py (opt-in: DOJO_KERNELS_HUGE_TESTS=1).

Each rank contributes N = 2**31 + 33 float32 elements (DOJO_MPI_HUGE_N overrides N, for a
dry run of this script), zero except in windows at both ends and around index 2**31. A ring
on 1x2 ranks moves messages of about 2**30 elements, which travel in pieces of 2**28. With two
contributions every element's sum is one float32 addition: the reference is the float64 sum
rounded to float32 (exact here: standard-normal values). Memory: about 12 GiB per rank (the
working float32 copy, 8 GiB; one received half, 4 GiB; the input's zero pages are never
touched). Prints ``RESULT <rank> huge ok|FAIL ...``.
"""
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from dojo_kernels import mpi as dk_mpi

N = int(os.environ.get("DOJO_MPI_HUGE_N", 2**31 + 33))


def windows(n):
    lo = [(0, 64), (2**31 - 32, 2**31 + 33), (n - 64, n)]
    return np.unique(np.concatenate([np.arange(max(a, 0), min(b, n), dtype=np.int64)
                                     for a, b in lo]))


def values(rank, idx):
    return np.random.default_rng(100 + rank).standard_normal(idx.size).astype(np.float32)


def main():
    comm = MPI.COMM_WORLD
    me, P = comm.rank, comm.size
    assert P == 2, "run with mpiexec -n 2"
    idx = windows(N)
    x = np.zeros(N, np.float32)        # zero pages: only the windows are touched
    x[idx] = values(me, idx)
    t0 = time.monotonic()
    try:
        got = dk_mpi.allreduce(comm, x, algorithm="ring", mesh_shape=(1, 2), timeout=600)
    except Exception as exc:  # noqa: BLE001
        print(f"RESULT {me} huge FAIL raised {type(exc).__name__}: {exc}", flush=True)
        return
    dt = time.monotonic() - t0
    want = (values(0, idx).astype(np.float64) + values(1, idx)).astype(np.float32)
    probe = np.array([64, 2**20, 2**30, 2**31 - 33, 2**31 + 33]) % N   # between the windows
    probe = probe[~np.isin(probe, idx)]
    why = []
    if got.shape != (N,) or got.dtype != np.float32:
        why.append(f"shape/dtype {got.shape} {got.dtype}")
    elif not np.array_equal(got[idx].view(np.uint32), want.view(np.uint32)):
        bad = idx[got[idx].view(np.uint32) != want.view(np.uint32)]
        why.append(f"{bad.size} window elements differ, first at {bad[:5]}")
    elif np.any(got[probe] != 0):
        why.append("elements between the windows are not zero")
    print(f"RESULT {me} huge " + (f"FAIL {'; '.join(why)}" if why else
                                  f"ok {N} elements in {dt:.1f} s"), flush=True)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
