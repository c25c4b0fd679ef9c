"""Run an all-reduce schedule across real processes with mpi4py point-to-point messages.

``allreduce(comm, array)`` executes the very schedule that :func:`dojo_kernels.allreduce`
simulates, with ranks laid out on a mesh (rank = node id ``r*cols + c``), messages sent with
``Isend``/``Irecv`` step by step, and the additions done by our C kernels in schedule order:
on equal inputs every rank returns the same bits as the simulator's row for that rank.
``MPI_Allreduce`` is never used (its order is implementation-defined).

mpi4py is optional (``pip install dojo_kernels[mpi]`` or ``pip install mpi4py mpich``); it is
imported when a function of this module is called, not when the module is imported.
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from . import _config
from .collectives import _as_codes, _check_algorithm, schedule_for, unit_boundaries
from .formats import BF16, FP32, Format
from .mesh import Mesh2D, chip_mesh
from ._schedule import COPY


def _mpi() -> Any:
    try:
        from mpi4py import MPI  # type: ignore[import-not-found,unused-ignore]  # optional
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("dojo_kernels.mpi needs mpi4py: pip install mpi4py mpich "
                          "(or pip install dojo_kernels[mpi])") from exc
    return MPI


def _topology(mesh_shape: Any, size: int, MPI: Any) -> Mesh2D:
    if mesh_shape is None:
        rows, cols = MPI.Compute_dims(size, 2)
        return chip_mesh(int(rows), int(cols))
    if isinstance(mesh_shape, Mesh2D):
        topo = mesh_shape
    else:
        try:
            rows, cols = mesh_shape
        except (TypeError, ValueError):
            raise TypeError(f"mesh_shape: expected None, (rows, cols) or a Mesh2D, got "
                            f"{mesh_shape!r}") from None
        topo = chip_mesh(rows, cols)
    if topo.nodes != size:
        raise ValueError(f"mesh_shape: {topo.rows}x{topo.cols} has {topo.nodes} nodes but the "
                         f"communicator has {size} ranks")
    return topo


def allreduce(comm: Any, array: Any, *, algorithm: str = "ring", mesh_shape: Any = None,
              fmt: Format = FP32, accumulate: str = "fp32") -> np.ndarray:
    """All-reduce ``array`` (this rank's contribution) over ``comm``.

    Parameters
    ----------
    comm : an mpi4py communicator; rank i is mesh node i.
    array : this rank's buffer (any shape, the same on every rank): float32 for FP32, uint16
        BF16 codes (or ``ml_dtypes.bfloat16``) for BF16. Not modified.
    algorithm : as in :func:`dojo_kernels.allreduce` (default ``"ring"``).
    mesh_shape : ``(rows, cols)``, a :class:`~dojo_kernels.mesh.Mesh2D` or None
        (``MPI.Compute_dims(size, 2)``). The chunked algorithms (tree, chain, spanning_trees)
        pick their pipeline depth from the link figures, so pass the same Mesh2D as to the
        simulator to run the same schedule; a shape uses :func:`~dojo_kernels.mesh.chip_mesh`.
    fmt, accumulate : as in :func:`dojo_kernels.allreduce`. Partial sums travel as FP32.

    Returns the array this rank ends with (same shape and dtype as ``array``).
    """
    MPI = _mpi()
    algorithm = _check_algorithm(algorithm)
    size, me = comm.Get_size(), comm.Get_rank()
    topology = _topology(mesh_shape, size, MPI)
    arr, wire = _as_codes(np.asarray(array)[None], fmt, accumulate, name="array")
    in_dtype = np.asarray(array).dtype
    row = np.require(arr.reshape(-1), requirements=("C_CONTIGUOUS", "ALIGNED"))
    N = row.size
    schedule = schedule_for(float(N * wire), topology, algorithm=algorithm)
    isa, threads = _config.isa(), _config.threads()
    from . import _reduce

    slots: List[Optional[np.ndarray]] = [None] * schedule.slots
    first = np.empty(N, np.float32)
    if fmt == BF16:
        if N:
            _reduce.bf16_to_f32(isa, threads, first, row)
    else:
        first[...] = row
    slots[0] = first
    round_each = fmt == BF16 and accumulate == "bf16"

    def slot(k: int) -> np.ndarray:
        have = slots[k]
        if have is None:
            have = slots[k] = np.zeros(N, np.float32)
        return have

    def apply(op: int, dslot: int, lo: int, hi: int, payload: np.ndarray) -> None:
        dst = slot(dslot)[lo:hi]
        if op == COPY:
            dst[...] = payload
        else:
            _reduce.accumulate(isa, threads, dst, payload, round_each)

    if N:
        ub = unit_boundaries(schedule, N)
        tpl, step, lo_u, hi_u = schedule.instances()
        a = schedule.arrays
        lo_e, hi_e = ub[lo_u], ub[hi_u]
        src, dst = a["src"][tpl], a["dst"][tpl]
        mine = ((src == me) | (dst == me)) & (hi_e > lo_e)
        tpl, step, lo_e, hi_e, src, dst = (v[mine] for v in (tpl, step, lo_e, hi_e, src, dst))
        stage = a["stage"][tpl]
        key = step * 3 + stage
        cut = np.flatnonzero(np.diff(key)) + 1
        bounds = zip(np.concatenate([[0], cut]), np.concatenate([cut, [key.size]])) \
            if key.size else ()
        for g0, g1 in bounds:
            if stage[g0] != 1:  # node-local operations, in order
                for i in range(g0, g1):
                    t = tpl[i]
                    lo, hi = int(lo_e[i]), int(hi_e[i])
                    apply(a["op"][t], a["dslot"][t], lo, hi,
                          slot(a["sslot"][t])[lo:hi].copy())
                continue
            reqs, recv = [], []
            for i in range(g0, g1):  # all sends read the values from before the step
                t = tpl[i]
                lo, hi = int(lo_e[i]), int(hi_e[i])
                if src[i] == me and dst[i] != me:
                    buf = slot(a["sslot"][t])[lo:hi].copy()
                    reqs.append(comm.Isend([buf, MPI.FLOAT], dest=int(dst[i]), tag=0))
                    recv.append(buf)  # keep alive
            incoming = []
            for i in range(g0, g1):
                if dst[i] == me and src[i] != me:
                    buf = np.empty(int(hi_e[i] - lo_e[i]), np.float32)
                    reqs.append(comm.Irecv([buf, MPI.FLOAT], source=int(src[i]), tag=0))
                    incoming.append((i, buf))
            MPI.Request.Waitall(reqs)
            for i, buf in incoming:  # applied in (prio, template) order
                t = tpl[i]
                apply(a["op"][t], a["dslot"][t], int(lo_e[i]), int(hi_e[i]), buf)
    res = first
    out: np.ndarray
    if fmt == BF16:
        out = np.empty(N, np.uint16)
        if N:
            _reduce.f32_to_bf16(isa, threads, out, res)
    else:
        out = res
    out = out.reshape(np.asarray(array).shape)
    return out.view(in_dtype) if out.dtype != in_dtype else out


__all__ = ["allreduce"]
