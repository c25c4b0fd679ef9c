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


def test_machine_objects_stand_for_their_mesh():
    """A D1 machine object is accepted as mesh_shape (the mesh it stands for): on one rank
    its node count is checked against the communicator like any mesh."""
    import dojo_kernels as dk

    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="mesh_shape: 5x5 has 25 nodes but the communicator has 1"):
        mpi.allreduce(MPI.COMM_SELF, x, mesh_shape=dk.TrainingTile())
    with pytest.raises(ValueError, match="mesh_shape: .* nodes but the communicator has 1"):
        mpi.allreduce(MPI.COMM_SELF, x, mesh_shape=dk.D1Chip())


def test_timeout_and_check_arguments():
    """timeout: positive seconds or None; check: a bool; comm: a communicator. On one rank the
    refused argument raises here, as the issue asks (other ranks would raise ValueError)."""
    x = np.arange(5, dtype=np.float32)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            mpi.allreduce(MPI.COMM_SELF, x, timeout=bad)
    for bad in ("5", True, [1]):
        with pytest.raises(TypeError, match="timeout"):
            mpi.allreduce(MPI.COMM_SELF, x, timeout=bad)
    with pytest.raises(TypeError, match="check"):
        mpi.allreduce(MPI.COMM_SELF, x, check="yes")
    with pytest.raises(TypeError, match="comm"):
        mpi.allreduce(None, x)
    with pytest.raises(TypeError, match="comm"):
        mpi.allreduce(MPI.COMM_NULL, x)
    for ok in (None, float("inf"), 0.5, 3, np.float32(2)):
        np.testing.assert_array_equal(mpi.allreduce(MPI.COMM_SELF, x, timeout=ok), x)
    for check in (True, False, np.bool_(False)):
        np.testing.assert_array_equal(mpi.allreduce(MPI.COMM_SELF, x, check=check), x)
    # a refused call leaves the communicator usable
    np.testing.assert_array_equal(mpi.allreduce(MPI.COMM_SELF, x[::-1].copy()), x[::-1])


def test_default_timeout_is_documented():
    import inspect
    assert inspect.signature(mpi.allreduce).parameters["timeout"].default == 120.0
    assert mpi.DEFAULT_TIMEOUT == 120.0
    assert "120 s" in mpi.allreduce.__doc__


def test_communicator_freed_after_use():
    """The private duplicate is cached on the communicator (made once, whatever the number of
    calls) and freed with it; a user's message pending on the communicator comes out intact.
    (tests/mpi/mpi_fault_check.py checks across ranks that the all-reduce never takes it.)"""
    comm = MPI.COMM_SELF.Dup()
    user = np.array([7.0, 8.0], np.float32)
    req = comm.Isend([user, MPI.FLOAT], dest=0, tag=3)   # to itself, not yet received
    x = np.ones(4, np.float32)
    np.testing.assert_array_equal(mpi.allreduce(comm, x), x)
    chan = comm.Get_attr(mpi._KEYVAL)
    for _ in range(2):
        np.testing.assert_array_equal(mpi.allreduce(comm, x), x)
    assert comm.Get_attr(mpi._KEYVAL) is chan and chan.calls == 3
    assert MPI.Comm.Compare(chan.comm, comm) == MPI.CONGRUENT
    got = np.zeros(2, np.float32)
    comm.Recv([got, MPI.FLOAT], source=0, tag=3)
    req.Wait()
    np.testing.assert_array_equal(got, user)
    comm.Free()
    assert chan.comm == MPI.COMM_NULL     # freed with comm


def test_timeout_verdict_names_the_stuck_rank():
    """After a timeout the ranks report whom they wait for; the verdict names the rank that
    is waited for but did not answer, one that answered waiting for nobody (late), or a cycle
    of waits. (The multi-rank runs are in tests/test_mpi_faults.py.)"""
    ring = {0: ([1], "rank 0 waited 5 s for rank 1 (receive) in step 3"),
            2: ([0], "rank 2 waited 5 s for rank 0 (receive) in step 4"),
            3: ([2], "rank 3 waited 5 s for rank 2 (receive) in step 5")}
    v = mpi._verdict(ring)
    assert v.startswith("rank 1 did not answer") and "rank 0 waited 5 s for rank 1" in v
    assert "rank 2 waited" not in v.split("[")[0]          # only the direct waiter is quoted
    assert "0 -> 1; 2 -> 0; 3 -> 2" in v
    late = {1: ([0], "rank 1 waited 5 s for rank 0"), 0: ([], "rank 0 was in the agreement")}
    assert mpi._verdict(late).startswith("rank 0 came late")
    both = {0: ([1, 3], "rank 0 waited"), 2: ([3], "rank 2 waited")}
    assert mpi._verdict(both).startswith("ranks 1, 3 did not answer")
    cycle = {0: ([1], "rank 0 waited for rank 1"), 1: ([0], "rank 1 waited for rank 0")}
    v = mpi._verdict(cycle)
    assert "did not answer" not in v and "deadlock" in v and "0 -> 1; 1 -> 0" in v
