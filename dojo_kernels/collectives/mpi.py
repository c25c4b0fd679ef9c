"""Run an all-reduce schedule across real processes with mpi4py point-to-point messages.

``allreduce(comm, array)`` executes the very schedule that :func:`dojo_kernels.allreduce`
simulates, with ranks laid out on a mesh (rank = node id ``r*cols + c``), messages sent with
``Isend``/``Irecv`` step by step, and the additions done by our C kernels in schedule order:
on equal inputs every rank returns the same bits as the simulator's row for that rank.
``MPI_Allreduce`` is never used (its order is implementation-defined).

It never hangs silently (docs/mpi.md has the details):

- **Agreement first.** Before any data moves, every rank sends every other rank a short
  description of its call (shape, dtype, format and bias, accumulation, algorithm, mesh, and
  whether its own argument checks passed). A rank whose arguments are refused raises its own
  error; the others raise a ``ValueError`` naming it and its error. Ranks that disagree all
  raise the same ``ValueError`` naming the ranks and the values. ``check=False`` skips this.
- **Errors travel.** A rank that fails inside the schedule tells every other rank, which raise a
  ``RuntimeError`` naming it, the step and its error (the failing rank raises its own error).
- **Nothing waits forever.** A rank that waits more than ``timeout`` seconds on a peer without
  progress tells the others whom it waits for; they answer with whom they wait for, and
  within about 2 s every rank raises ``TimeoutError`` naming the rank that did not answer
  (dead, or stuck elsewhere) and the step. Waits poll (``Request.Test`` / ``improbe``) with
  sleeps growing from 20 us to 2 ms: they never spin a core.
- **Big buffers.** Messages travel in pieces of at most ``2**28`` elements (1 GiB), below MPI's
  ``int`` count limit, so a rank's buffer may hold more than ``2**31`` elements.

The messages go over a private duplicate of ``comm`` (made with ``MPI_Comm_idup`` on the first
call and cached on ``comm``), so they never match the caller's own messages.

mpi4py is optional (``pip install dojo_kernels[mpi]`` or ``pip install mpi4py mpich``); it is
imported when a function of this module is called, not when the module is imported.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

import numpy as np

from .. import _config
from ._common import as_codes, check_algorithm
from ._allreduce import schedule_for, unit_boundaries
from ..numerics.formats import BF16, FP32, Format
from ..machine import D1Chip, DojoSystem, TrainingTile
from ..machine.mesh import Mesh2D, as_topology, chip_mesh
from ._schedule import COPY

#: Default ``timeout`` of :func:`allreduce`, seconds. Long enough for ranks that reach the call
#: at different times after unequal work on a loaded machine and for the largest message piece
#: (1 GiB) on a slow link; short enough that a hung interactive session reports within two
#: minutes rather than never.
DEFAULT_TIMEOUT: float = 120.0

_MAX_COUNT = 1 << 28          # elements per message piece (1 GiB of float32)
_TAG_AGREE = 1                # the agreement descriptions
_TAG_NOTICE = 2               # "I failed / I gave up" notices
_TAG_DATA = 3                 # data: _TAG_DATA + call number modulo the tag range
_SLEEP_MIN = 20e-6            # seconds: the first sleep of a wait
_SLEEP_MAX = 2e-3             # seconds: the longest sleep (a wait never spins a core)
_MAX_TEXT = 400               # characters of a value or an error quoted in a message
_GRACE = 2.0                  # seconds the ranks take, after a timeout, to say who is stuck

_KEYVAL: Optional[int] = None
# requests that were still pending when a call failed, with the buffers they use: kept alive
# (MPI may still write into a receive buffer) and dropped once they complete
_STRANDED: List[Tuple[Any, Any]] = []


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
    if isinstance(mesh_shape, (Mesh2D, D1Chip, TrainingTile, DojoSystem)):
        topo = as_topology(mesh_shape, "mesh_shape")   # a machine stands for its mesh
    else:
        try:
            rows, cols = mesh_shape
        except (TypeError, ValueError):
            raise TypeError(f"mesh_shape: expected None, (rows, cols), a Mesh2D or a machine "
                            f"(D1Chip, TrainingTile, DojoSystem), got {mesh_shape!r}") from None
        topo = chip_mesh(rows, cols)
    if topo.nodes != size:
        raise ValueError(f"mesh_shape: {topo.rows}x{topo.cols} has {topo.nodes} nodes but the "
                         f"communicator has {size} ranks")
    return topo


def _check_timeout(timeout: Any) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, (int, float, np.integer,
                                                                        np.floating)):
        raise TypeError(f"timeout: expected seconds (a positive number) or None, got "
                        f"{type(timeout).__name__}")
    t = float(timeout)
    if not t > 0 or math.isnan(t):
        raise ValueError(f"timeout: expected a positive number of seconds or None, got {timeout!r}")
    return None if math.isinf(t) else t


def _short(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT - 3] + "..."


def _error_text(exc: BaseException) -> str:
    return _short(f"{type(exc).__name__}: {exc}")


def _ranks(ranks: Sequence[int]) -> str:
    """'rank 3' / 'ranks 0-2, 5'."""
    parts: List[str] = []
    rs = sorted(ranks)
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        parts.append(str(rs[i]) if j == i else f"{rs[i]}-{rs[j]}" if j > i + 1
                     else f"{rs[i]}, {rs[j]}")
        i = j + 1
    return ("rank " if len(rs) == 1 else "ranks ") + ", ".join(parts)


class _Channel:
    """What this module keeps on a communicator: its private duplicate and the call count."""

    def __init__(self, comm: Any, pending: Any) -> None:
        self.comm = comm            # the private duplicate (valid once `pending` completed)
        self.pending = pending      # the MPI_Comm_idup request, or None
        self.calls = 0              # allreduce calls made on this communicator by this rank
        # messages that arrived for a later call: (call, tag) -> [(source, payload), ...]
        self.mail: Dict[Tuple[int, int], List[Tuple[int, Any]]] = {}


def _free_channel(comm: Any, keyval: int, chan: Any) -> None:  # pragma: no cover - at Free
    try:
        if isinstance(chan, _Channel) and chan.pending is None:
            chan.comm.Free()
    except Exception:  # noqa: BLE001 - never raise from an MPI callback
        pass


def _prune_stranded(MPI: Any) -> None:
    keep = []
    for req, buf in _STRANDED:
        try:
            if not req.Test():
                keep.append((req, buf))
        except Exception:  # noqa: BLE001 - a failed request is finished with
            pass
    _STRANDED[:] = keep


def _strand(MPI: Any, reqs: Sequence[Any], bufs: Sequence[Any], cancel: bool) -> None:
    """Keep the unfinished requests (and their buffers) alive; cancel receives if asked."""
    for req, buf in zip(reqs, bufs):
        if req == MPI.REQUEST_NULL:
            continue
        if cancel:
            try:
                req.Cancel()
            except Exception:  # noqa: BLE001
                pass
        _STRANDED.append((req, buf))


class _Call:
    """One allreduce call on one rank: the waits, the notices and the agreement."""

    def __init__(self, MPI: Any, chan: _Channel, me: int, size: int,
                 timeout: Optional[float]) -> None:
        self.MPI = MPI
        self.chan = chan
        self.comm = chan.comm
        self.me = me
        self.size = size
        self.timeout = timeout
        chan.calls += 1
        self.call = chan.calls
        tag_ub = MPI.COMM_WORLD.Get_attr(MPI.TAG_UB)   # at least 32767 (the MPI standard)
        span = max(int(tag_ub if tag_ub else 32767) - _TAG_DATA + 1, 1)
        self.data_tag = _TAG_DATA + self.call % span
        self.where = "the agreement step"
        self.told = False           # the error being raised came from a peer's notice
        self.checked = True         # the ranks agreed on the call (False with check=False)

    # --- messages of this call, in arrival order; later calls' are kept -------------------
    def _take(self, tag: int) -> List[Tuple[int, Any]]:
        got = self.chan.mail.pop((self.call, tag), [])
        status = self.MPI.Status()
        while True:
            msg = self.comm.improbe(source=self.MPI.ANY_SOURCE, tag=tag, status=status)
            if msg is None:
                return got
            src = status.Get_source()
            call, payload = msg.recv()
            if call == self.call:
                got.append((src, payload))
            elif call > self.call:
                self.chan.mail.setdefault((call, tag), []).append((src, payload))
            # else: from a call that failed earlier on this rank: dropped

    def check_notices(self, waiting: Optional[Callable[[], Tuple[List[int], str]]] = None
                      ) -> None:
        """Raise a peer's error or verdict if its notice arrived; join a stall if a peer
        reports one (``waiting`` says whom this rank waits for, and how long)."""
        stalls: Dict[int, Tuple[List[int], str]] = {}
        for src, (kind, body) in self._take(_TAG_NOTICE):
            if kind == "stall":
                stalls[src] = body
                continue
            self.told = True
            here = f"(rank {self.me} stopped in {self.where})"
            if kind == "timeout":
                raise TimeoutError(f"mpi.allreduce: {body} {here}")
            if kind == "args":
                raise ValueError(f"mpi.allreduce: {body}; no data was moved {here}")
            raise RuntimeError(f"mpi.allreduce: {body} {here}")
        if stalls:
            self.stall(waiting, stalls)

    def notify(self, kind: str, body: Any) -> None:
        """Tell every other rank (best effort, never waits)."""
        for r in range(self.size):
            if r == self.me:
                continue
            try:
                req = self.comm.isend((self.call, (kind, body)), dest=r, tag=_TAG_NOTICE)
                _STRANDED.append((req, None))
            except Exception:  # noqa: BLE001 - a dead peer may refuse the message
                pass

    def stall(self, waiting: Optional[Callable[[], Tuple[List[int], str]]],
              heard: Dict[int, Tuple[List[int], str]]) -> NoReturn:
        """A rank timed out (this one, or a peer whose report is in ``heard``). Tell everyone
        whom this rank waits for, gather the others' answers for up to ``_GRACE`` seconds,
        and raise TimeoutError naming the ranks that did not answer but are waited for
        (dead, or stuck outside this function), or the cycle of waits. A rank that already
        concluded sends its verdict, which the others adopt."""
        MPI = self.MPI
        mine = waiting() if waiting is not None else \
            ([], f"rank {self.me} was in {self.where}, waiting for no rank")
        heard[self.me] = mine
        self.notify("stall", mine)
        verdict = ""
        end = time.monotonic() + min(_GRACE, self.timeout or _GRACE)
        delay = _SLEEP_MIN
        while len(heard) < self.size and not verdict and time.monotonic() < end:
            time.sleep(delay)
            delay = min(2 * delay, _SLEEP_MAX)
            try:
                notes = self._take(_TAG_NOTICE)
            except MPI.Exception:  # pragma: no cover - a failed peer; conclude with what we have
                break
            for src, (kind, body) in notes:
                if kind == "stall":
                    heard[src] = body
                elif kind == "timeout":
                    verdict = body
                else:
                    self.told = True
                    here = f"(rank {self.me} stopped in {self.where})"
                    if kind == "args":
                        raise ValueError(f"mpi.allreduce: {body}; no data was moved {here}")
                    raise RuntimeError(f"mpi.allreduce: {body} {here}")
        if not verdict:
            verdict = _verdict(heard)
            self.notify("timeout", verdict)
        self.told = True
        raise TimeoutError(f"mpi.allreduce: {verdict} (rank {self.me} stopped in {self.where})")

    # --- the one wait loop -----------------------------------------------------------------
    def wait(self, poll: Callable[[], Tuple[bool, bool]],
             waiting_for: Callable[[], Tuple[List[int], str]]) -> None:
        """Call ``poll() -> (done, progressed)`` until done, sleeping between polls (20 us
        doubling to 2 ms, back to 20 us on progress); after ``timeout`` seconds without
        progress, find out with the other ranks who is stuck (:meth:`stall`) and raise
        TimeoutError; raise a peer's error as soon as its notice arrives. ``waiting_for()``
        gives the peers waited for and a description of them."""
        MPI = self.MPI
        delay = _SLEEP_MIN
        start = last = time.monotonic()

        def state() -> Tuple[List[int], str]:
            now = time.monotonic()
            peers, what = waiting_for()
            since = f", {now - start:.3g} s into the wait" if now - start > now - last \
                + 0.5 else ""
            return peers, (f"rank {self.me} waited {now - last:.3g} s for {what} in "
                           f"{self.where} without progress{since}")
        while True:
            try:
                done, progressed = poll()
                if done:
                    return
                self.check_notices(state)
            except MPI.Exception as exc:
                raise RuntimeError(
                    f"mpi.allreduce: rank {self.me}: MPI error in {self.where} while waiting "
                    f"for {waiting_for()[1]}: {_short(str(exc))}") from exc
            now = time.monotonic()
            if progressed:
                last, delay = now, _SLEEP_MIN
            elif self.timeout is not None and now - last >= self.timeout:
                self.stall(state, {})
            sleep = delay if self.timeout is None else min(delay, max(
                self.timeout - (now - last), 0.0))
            time.sleep(sleep)
            delay = min(2 * delay, _SLEEP_MAX)

    # --- agreement -------------------------------------------------------------------------
    def agree(self, desc: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Every rank's description (index = rank), exchanged directly so that a timeout can
        name the ranks that never arrived."""
        descs: Dict[int, Dict[str, Any]] = {self.me: desc}
        sends = [self.comm.isend((self.call, desc), dest=r, tag=_TAG_AGREE)
                 for r in range(self.size) if r != self.me]

        # the sends complete on their own (small messages); kept alive until they have
        _strand(self.MPI, sends, [None] * len(sends), cancel=False)

        def poll() -> Tuple[bool, bool]:
            n = len(descs)
            for src, d in self._take(_TAG_AGREE):
                descs[src] = d
            return len(descs) == self.size, len(descs) > n

        def missing() -> Tuple[List[int], str]:
            late = [r for r in range(self.size) if r not in descs]
            return late, _ranks(late) + " (no description received: not called, blocked " \
                "elsewhere or dead)"
        self.wait(poll, missing)
        self.check_notices()   # a rank that came late learns here that others gave up
        return [descs[r] for r in range(self.size)]


def _verdict(heard: Dict[int, Tuple[List[int], str]]) -> str:
    """Who is stuck, from every answering rank's (peers waited for, description)."""
    waits = "; ".join(f"{r} -> {', '.join(map(str, sorted(set(p))))}"
                      for r, (p, _) in sorted(heard.items()) if p)
    waited = {q for p, _ in heard.values() for q in p}
    silent = sorted(waited - set(heard))
    idle = sorted(r for r in waited & set(heard) if not heard[r][0])
    if silent or idle:
        blame = [text for r, (p, text) in sorted(heard.items()) if set(p) & set(silent + idle)]
        who = []
        if silent:
            who.append(f"{_ranks(silent)} did not answer (dead, or stuck outside "
                       f"mpi.allreduce)")
        if idle:
            who.append(f"{_ranks(idle)} came late (waiting for nobody when the others "
                       f"timed out)")
        return (", ".join(who) + ": " + _short("; ".join(blame))
                + f" [who waits for whom: {waits}]")
    texts = [text for _, (p, text) in sorted(heard.items()) if p]
    return ("every rank that answered waits for another, none is missing (a deadlock: do the "
            "ranks' calls agree? check=False does not check): "
            + _short("; ".join(texts[:2])) + f" [who waits for whom: {waits or 'nobody'}]")


def _disagreement(descs: List[Dict[str, Any]], keys: Sequence[Tuple[str, str]]) -> List[str]:
    lines = []
    for key, label in keys:
        groups: Dict[str, List[int]] = {}
        for r, d in enumerate(descs):
            groups.setdefault(str(d[key]), []).append(r)
        if len(groups) > 1:
            lines.append(f"{label}: " + "; ".join(
                f"{_short(v)} on {_ranks(rs)}" for v, rs in groups.items()))
    return lines


_AGREED = (("shape", "shape"), ("dtype", "dtype"), ("format", "format"),
           ("accumulate", "accumulate"), ("algorithm", "algorithm"), ("mesh", "mesh"))


def _channel(comm: Any, MPI: Any, timeout: Optional[float]) -> _Channel:
    """This module's private duplicate of ``comm`` (MPI_Comm_idup on first use, cached as an
    attribute of ``comm``), waited for with ``timeout``."""
    global _KEYVAL
    if _KEYVAL is None:
        _KEYVAL = MPI.Comm.Create_keyval(delete_fn=_free_channel)
    chan = comm.Get_attr(_KEYVAL)
    if not isinstance(chan, _Channel):
        dup, req = comm.Idup()
        chan = _Channel(dup, req)
        comm.Set_attr(_KEYVAL, chan)
    if chan.pending is not None:
        start = time.monotonic()
        delay = _SLEEP_MIN
        while not chan.pending.Test():
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise TimeoutError(
                    f"mpi.allreduce: rank {comm.Get_rank()} waited {waited:.3g} s "
                    f"(timeout={timeout:g}) for every rank of the communicator to make its "
                    f"first mpi.allreduce call (MPI_Comm_idup of the private communicator): a "
                    f"rank is not calling, is slow, or is dead")
            time.sleep(delay)
            delay = min(2 * delay, _SLEEP_MAX)
        chan.pending = None
    return chan


def allreduce(comm: Any, array: Any, *, algorithm: str = "ring", mesh_shape: Any = None,
              fmt: Format = FP32, accumulate: str = "fp32", check: bool = True,
              timeout: Optional[float] = DEFAULT_TIMEOUT) -> np.ndarray:
    """All-reduce ``array`` (this rank's contribution) over ``comm``.

    Every rank of ``comm`` calls this function with the same arguments (except ``array``'s
    values and ``timeout``). Nothing waits forever: see *Raises*.

    Parameters
    ----------
    comm : an mpi4py intracommunicator; rank i is mesh node i.
    array : this rank's buffer (any shape, the same on every rank): float32 for FP32, uint16
        BF16 codes (or ``ml_dtypes.bfloat16``) for BF16. Not modified. It may hold more than
        ``2**31`` elements (messages travel in pieces of at most ``2**28`` elements).
    algorithm : as in :func:`dojo_kernels.allreduce` (default ``"ring"``).
    mesh_shape : ``(rows, cols)``, a :class:`~dojo_kernels.mesh.Mesh2D`, a machine
        (:class:`~dojo_kernels.D1Chip`, :class:`~dojo_kernels.TrainingTile`,
        :class:`~dojo_kernels.DojoSystem`: the mesh it stands for,
        :func:`~dojo_kernels.mesh.as_topology`) or None (``MPI.Compute_dims(size, 2)``). The chunked algorithms (tree, chain, spanning_trees)
        pick their pipeline depth from the link figures, so pass the same Mesh2D as to the
        simulator to run the same schedule; a shape uses :func:`~dojo_kernels.mesh.chip_mesh`.
    fmt, accumulate : as in :func:`dojo_kernels.allreduce`. Partial sums travel as FP32.
    check : True (default): before moving data, the ranks exchange a description of their
        call (shape, dtype, format, accumulate, algorithm, mesh, and whether their own
        argument checks passed; one small message to every other rank) and all raise if
        they differ. False skips that exchange: a rank whose arguments are refused still
        tells the others, but mismatched shapes or algorithms then end in an MPI error or a
        ``TimeoutError`` instead of a clear message. Must be the same on every rank.
    timeout : seconds a rank waits on its peers without progress before it raises
        ``TimeoutError`` (default :data:`DEFAULT_TIMEOUT`, 120 s); ``None`` waits without limit
        (still without spinning a core). Applies to every wait: the first call's
        communicator duplication, the agreement and each step.

    Returns the array this rank ends with (same shape and dtype as ``array``).

    Raises
    ------
    TypeError, ValueError
        On the rank whose own arguments are refused (as a one-rank call would), before any
        data moves. Every other rank then raises ``ValueError`` naming that rank and its
        error. ``comm`` that is not an mpi4py communicator raises ``TypeError`` at once.
    ValueError
        The same on every rank when the ranks' calls disagree, naming the ranks and values.
    RuntimeError
        On every other rank when one rank fails inside the schedule (naming it, the step and
        its error; that rank raises its own error), or on an MPI error.
    TimeoutError
        When a rank waited ``timeout`` seconds for a peer without progress: on every rank
        still running, about 2 s later, naming the rank that did not answer (a dead peer
        ends this way), the step, and who waited for whom. After a
        ``TimeoutError`` the messages of that call may still be in flight: the ranks can call
        again (later calls do not match them), but a dead rank stays dead, and
        ``MPI_Finalize`` waits for it: end such a program with ``comm.Abort()`` or
        ``os._exit``.
    """
    MPI = _mpi()
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL or comm.Is_inter():
        raise TypeError(f"comm: expected an mpi4py intracommunicator, got "
                        f"{type(comm).__name__}")
    _prune_stranded(MPI)
    size, me = comm.Get_size(), comm.Get_rank()
    # --- local checks: their failure is reported to every rank, not raised here yet --------
    err: Optional[BaseException] = None
    desc: Dict[str, Any] = {"error": None}
    wait_s: Optional[float] = DEFAULT_TIMEOUT
    try:
        wait_s = _check_timeout(timeout)
        if not isinstance(check, (bool, np.bool_)):
            raise TypeError(f"check: expected a bool, got {type(check).__name__}")
    except Exception as exc:  # noqa: BLE001 - reported below
        err = exc
    chan = _channel(comm, MPI, wait_s)
    run = _Call(MPI, chan, me, size, wait_s)
    prep: Optional[_Prepared] = None
    if err is None:
        try:
            prep = _Prepared(array, algorithm, mesh_shape, fmt, accumulate, size, MPI)
            desc.update(prep.describe())
        except Exception as exc:  # noqa: BLE001 - reported below
            err = exc
    if err is not None:
        desc["error"] = _error_text(err)
    settled = False   # the error being raised is one every rank raises by itself
    try:
        if check is not False:   # the agreement (an invalid `check` also takes part in it)
            descs = run.agree(desc)
            settled = True
            failed = [(r, d["error"]) for r, d in enumerate(descs) if d["error"] is not None]
            if err is not None:
                raise err
            if failed:
                raise ValueError("mpi.allreduce: " + "; ".join(
                    f"rank {r} refused its arguments ({e})" for r, e in failed)
                    + "; no data was moved")
            lines = _disagreement(descs, _AGREED)
            if lines:
                raise ValueError("mpi.allreduce: the ranks' calls disagree, no data was "
                                 "moved: " + "; ".join(lines))
            settled = False
        else:
            run.checked = False
        if check is False and err is not None:
            run.notify("args", f"rank {me} refused its arguments ({desc['error']})")
            settled = True
            raise err
        assert prep is not None
        return prep.execute(run)
    except BaseException as exc:
        if not (settled or run.told):
            if isinstance(exc, RuntimeError) and str(exc).startswith("mpi.allreduce: "):
                run.notify("error", str(exc)[len("mpi.allreduce: "):])   # already says where
            else:
                run.notify("error", f"rank {me} failed in {run.where}: {_error_text(exc)}")
        raise


class _Prepared:
    """A rank's validated arguments, its working buffer and its part of the schedule."""

    def __init__(self, array: Any, algorithm: str, mesh_shape: Any, fmt: Format,
                 accumulate: str, size: int, MPI: Any) -> None:
        self.algorithm = check_algorithm(algorithm)
        self.topology = _topology(mesh_shape, size, MPI)
        src = np.asarray(array)
        arr, wire = as_codes(src[None], fmt, accumulate, name="array")
        self.in_dtype = src.dtype
        self.shape = src.shape
        self.fmt = fmt
        self.accumulate = accumulate
        self.row = np.require(arr.reshape(-1), requirements=("C_CONTIGUOUS", "ALIGNED"))
        self.schedule = schedule_for(float(self.row.size * wire), self.topology,
                                     algorithm=self.algorithm)

    def describe(self) -> Dict[str, Any]:
        t = self.topology
        return {"shape": self.shape, "dtype": str(self.in_dtype),
                "format": f"{self.fmt.name} (bias {self.fmt.bias})",
                "accumulate": self.accumulate, "algorithm": self.algorithm,
                "mesh": repr(t)}

    def execute(self, run: _Call) -> np.ndarray:
        MPI, comm, me = run.MPI, run.comm, run.me
        row, schedule, fmt = self.row, self.schedule, self.fmt
        N = row.size
        isa, threads = _config.isa(), _config.threads()
        from .. import _reduce

        slots: List[Optional[np.ndarray]] = [None] * schedule.slots
        first = np.empty(N, np.float32)
        if fmt == BF16:
            if N:
                _reduce.bf16_to_f32(isa, threads, first, row)
        else:
            first[...] = row
        slots[0] = first
        round_each = fmt == BF16 and self.accumulate == "bf16"

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

        def comm_step(g0: int, g1: int) -> None:
            """One step's messages; its buffers are freed on return."""
            reqs: List[Any] = []
            bufs: List[Any] = []
            what: List[Tuple[int, str, int]] = []   # (peer, "send"/"receive", elements)
            # every send reads the values from before the step: the slots are not written
            # until every request of the step has completed, so views need no copy
            for i in range(g0, g1):
                k = tpl[i]
                if src[i] == me and dst[i] != me:
                    lo, hi = int(lo_e[i]), int(hi_e[i])
                    view = slot(a["sslot"][k])[lo:hi]
                    for p in range(0, hi - lo, _MAX_COUNT):
                        piece = view[p:p + _MAX_COUNT]
                        reqs.append(comm.Isend([piece, MPI.FLOAT], dest=int(dst[i]),
                                               tag=run.data_tag))
                        bufs.append(piece)
                        what.append((int(dst[i]), "send", piece.size))
            incoming = []
            for i in range(g0, g1):
                if dst[i] == me and src[i] != me:
                    buf = np.empty(int(hi_e[i] - lo_e[i]), np.float32)
                    for p in range(0, buf.size, _MAX_COUNT):
                        piece = buf[p:p + _MAX_COUNT]
                        reqs.append(comm.Irecv([piece, MPI.FLOAT], source=int(src[i]),
                                               tag=run.data_tag))
                        bufs.append(piece)
                        what.append((int(src[i]), "receive", piece.size))
                    incoming.append((i, buf))
            _exchange(run, reqs, bufs, what)
            for i, buf in incoming:  # applied in (prio, template) order
                k = tpl[i]
                apply(a["op"][k], a["dslot"][k], int(lo_e[i]), int(hi_e[i]), buf)

        label = schedule.algorithm if schedule.algorithm == self.algorithm else \
            f"{schedule.algorithm} (chosen by {self.algorithm!r})"
        t = self.topology
        on = f"{t.rows}x{t.cols}" if isinstance(t, Mesh2D) else type(t).__name__
        if N:
            ub = unit_boundaries(schedule, N)
            tpl, step, lo_u, hi_u = schedule.instances()
            nsteps = int(step.max()) + 1 if step.size else 0
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
                run.where = f"step {int(step[g0]) + 1} of {nsteps} of {label} on the {on} mesh"
                if stage[g0] != 1:  # node-local operations, in order
                    for i in range(g0, g1):
                        k = tpl[i]
                        lo, hi = int(lo_e[i]), int(hi_e[i])
                        apply(a["op"][k], a["dslot"][k], lo, hi,
                              slot(a["sslot"][k])[lo:hi].copy())
                    continue
                comm_step(int(g0), int(g1))
        run.where = "the end of the call"
        res = first
        out: np.ndarray
        if fmt == BF16:
            out = np.empty(N, np.uint16)
            if N:
                _reduce.f32_to_bf16(isa, threads, out, res)
        else:
            out = res
        out = out.reshape(self.shape)
        return out.view(self.in_dtype) if out.dtype != self.in_dtype else out


def _exchange(run: _Call, reqs: List[Any], bufs: List[Any],
              what: List[Tuple[int, str, int]]) -> None:
    """Wait for one step's requests (polling; timeout; peers' notices)."""
    MPI = run.MPI
    left = list(range(len(reqs)))

    def poll() -> Tuple[bool, bool]:
        n = len(left)
        for j in list(left):
            try:
                done = reqs[j].Test()
            except MPI.Exception as exc:
                peer, kind, count = what[j]
                hint = "" if run.checked else " (check=False: do the ranks' calls agree?)"
                raise RuntimeError(
                    f"mpi.allreduce: rank {run.me}: MPI error on the {kind} of {count} elements "
                    f"{'to' if kind == 'send' else 'from'} rank {peer} in {run.where}{hint}: "
                    f"{_short(str(exc))}") from exc
            if done:
                left.remove(j)
        return not left, len(left) < n

    def pending() -> Tuple[List[int], str]:
        by_peer: Dict[int, List[str]] = {}
        for j in left:
            peer, kind, n = what[j]
            by_peer.setdefault(peer, []).append(f"{kind} of {n} elements")
        return sorted(by_peer), "; ".join(f"rank {p} ({', '.join(v)})"
                                          for p, v in sorted(by_peer.items()))
    try:
        run.wait(poll, pending)
    except BaseException:
        _strand(MPI, reqs, bufs, cancel=True)
        raise


__all__ = ["DEFAULT_TIMEOUT", "allreduce"]
