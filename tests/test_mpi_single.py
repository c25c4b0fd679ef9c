"""dojo_kernels.mpi in this process (MPI.COMM_SELF, one rank) when mpi4py is installed; the
multi-rank checks run under mpiexec (tests/mpi/mpi_allreduce_check.py, .ci/mpi.sh)."""
import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI")

from dojo_kernels import BF16, mpi  # noqa: E402
from dojo_kernels.mesh import Mesh2D  # noqa: E402


def test_single_rank_returns_its_input():
    x = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    for alg in ("ring", "tree", "chain", "spanning_trees", "auto"):
        y = mpi.allreduce(MPI.COMM_SELF, x, algorithm=alg)
        assert y.shape == x.shape and y.dtype == np.float32
        np.testing.assert_array_equal(y, x)
    codes = np.array([0x3F80, 0xC000, 0x0001], np.uint16)
    np.testing.assert_array_equal(mpi.allreduce(MPI.COMM_SELF, codes, fmt=BF16), codes)


def test_bad_arguments():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="mesh_shape"):
        mpi.allreduce(MPI.COMM_SELF, x, mesh_shape=(2, 2))
    with pytest.raises(TypeError, match="mesh_shape"):
        mpi.allreduce(MPI.COMM_SELF, x, mesh_shape="2x2")
    with pytest.raises(ValueError, match="algorithm"):
        mpi.allreduce(MPI.COMM_SELF, x, algorithm="nope")
    with pytest.raises(TypeError, match="array: expected float32"):
        mpi.allreduce(MPI.COMM_SELF, x.astype(np.float64))
    m = Mesh2D(1, 1, link_bandwidth=1e9, link_latency=0)
    np.testing.assert_array_equal(mpi.allreduce(MPI.COMM_SELF, x, mesh_shape=m), x)
