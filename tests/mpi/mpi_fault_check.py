"""Injected faults for dojo_kernels.mpi.allreduce; run under mpiexec (tests/test_mpi_faults.py
does, bounded by an outer timeout):

    mpiexec -n 4 python tests/mpi/mpi_fault_check.py SCENARIO [SCENARIO ...]
    mpiexec -disable-auto-cleanup -n 4 python tests/mpi/mpi_fault_check.py dead_during

Every rank prints one line per scenario,
``RESULT <rank> <scenario> ok <seconds> s (cpu <seconds> s) <error>`` or
``RESULT <rank> <scenario> FAIL <why>``; the driver checks that every surviving rank printed
``ok``. A scenario is ok on a rank when the call raised the documented error (type and the
names in its message, written here from the issue, not taken from the code) within the
time allowed: well under ``timeout`` when nobody should wait, ``timeout`` plus a margin when
somebody must, using at most a quarter of a core while it waits. The scenarios that need no
dead or late rank also check that the same communicator still gives the right sum afterwards.
"""
import os
import re
import sys
import time

import ml_dtypes
import numpy as np
from mpi4py import MPI

import dojo_kernels._reduce as _reduce
from dojo_kernels import BF16, FP32
from dojo_kernels import mpi as dk_mpi

N = 1000
FAST = 30.0        # timeout of the scenarios where nobody should wait for it
SHORT = 5.0        # timeout of the scenarios where somebody must time out
MARGIN = 4.0       # seconds allowed beyond SHORT: 2 s for the ranks to say who is stuck,
                   # then notices on a loaded 2-core machine


def data(rank, n=N):
    return np.random.default_rng(rank).standard_normal(n).astype(np.float32)


def bf16(rank, n=N):
    return (data(rank, n).view(np.uint32) >> 16).astype(np.uint16)


def patch_accumulate(when, action):
    """Make this rank's `when`-th addition inside the schedule run `action` instead."""
    real = _reduce.accumulate
    calls = [0]

    def accumulate(*args):
        calls[0] += 1
        if calls[0] == when:
            action()
        return real(*args)
    _reduce.accumulate = accumulate
    return lambda: setattr(_reduce, "accumulate", real)


def injected():
    raise RuntimeError("injected fault in the schedule")


def died():
    sys.stdout.flush()
    os._exit(7)


def ranks_text(rs):
    """'rank 3' for one rank, else a group() needle for the set."""
    rs = sorted(rs)
    return f"rank {rs[0]}" if len(rs) == 1 else group("", rs)


class group:
    """A needle: the message says `value on ranks ...` for exactly this set of ranks (the
    list may be written with commas and ranges: '0, 2-5')."""

    def __init__(self, value, ranks):
        self.value, self.ranks = value, set(ranks)

    def __radd__(self, prefix):
        return group(prefix + self.value, self.ranks)

    def found_in(self, text):
        for m in re.finditer(re.escape(self.value) + r"ranks? ([0-9][0-9, -]*)", text):
            got = set()
            for part in m.group(1).rstrip(", ").split(","):
                lo, _, hi = part.strip().partition("-")
                got |= set(range(int(lo), int(hi or lo) + 1))
            if got == self.ranks:
                return True
        return False

    def __repr__(self):
        return f"{self.value}ranks {sorted(self.ranks)}"


def has(text, needle):
    if isinstance(needle, tuple):   # any of these
        return any(has(text, n) for n in needle)
    return needle.found_in(text) if isinstance(needle, group) else needle in text


class Expect:
    """What a rank must raise: exception types, substrings of the message, time limit."""

    def __init__(self, types, needles, limit):
        self.types, self.needles, self.limit = types, needles, limit


def scenario(name, comm):
    """Run one scenario on this rank; return (Expect, callable) for the faulty call."""
    P, me = comm.size, comm.rank
    last = P - 1
    others = [r for r in range(P) if r != last]
    x = data(me)

    if name == "size":
        n = N + 5 if me == last else N
        return (Expect((ValueError,), ["disagree", "shape", f"({N},) on " + ranks_text(others),
                                        f"({N + 5},) on rank {last}"], FAST / 3),
                lambda: dk_mpi.allreduce(comm, data(me, n), timeout=FAST))
    if name == "dtype":   # both are valid BF16 inputs, but not the same dtype
        b = bf16(me)
        arr = b.view(ml_dtypes.bfloat16) if me == 1 else b
        rest = [r for r in range(P) if r != 1]
        return (Expect((ValueError,), ["dtype", "uint16 on " + ranks_text(rest),
                                        "bfloat16 on rank 1"], FAST / 3),
                lambda: dk_mpi.allreduce(comm, arr, fmt=BF16, timeout=FAST))
    if name == "format":  # rank 2 sends float32 with FP32, the others BF16 codes
        arr, fmt = (x, FP32) if me == 2 else (bf16(me), BF16)
        rest = [r for r in range(P) if r != 2]
        return (Expect((ValueError,), ["format", "bf16", "fp32", "on " + ranks_text(rest),
                                        "on rank 2", "dtype"], FAST / 3),
                lambda: dk_mpi.allreduce(comm, arr, fmt=fmt, timeout=FAST))
    if name == "accumulate":
        acc = "bf16" if me == 2 else "fp32"
        rest = [r for r in range(P) if r != 2]
        return (Expect((ValueError,), ["accumulate", "fp32 on " + ranks_text(rest),
                                        "bf16 on rank 2"], FAST / 3),
                lambda: dk_mpi.allreduce(comm, bf16(me), fmt=BF16, accumulate=acc,
                                         timeout=FAST))
    if name == "algorithm":
        alg = "tree" if me == 0 else "ring"
        return (Expect((ValueError,), ["algorithm", "tree on rank 0",
                                        "ring on " + ranks_text(range(1, P))], FAST / 3),
                lambda: dk_mpi.allreduce(comm, x, algorithm=alg, timeout=FAST))
    if name == "mesh":
        shape = (P, 1) if me == 1 else (1, P)
        return (Expect((ValueError,), ["mesh", f"rows={P}, cols=1", f"rows=1, cols={P}",
                                        "on rank 1"], FAST / 3),
                lambda: dk_mpi.allreduce(comm, x, mesh_shape=shape, timeout=FAST))
    if name in ("args", "args_nocheck"):   # rank `last` passes float64 with fmt=FP32
        check = name == "args"
        arr = x.astype(np.float64) if me == last else x
        if me == last:
            exp = Expect((TypeError,), ["array: expected float32", "float64"], FAST / 3)
        else:
            exp = Expect((ValueError,), [f"rank {last} refused its arguments", "TypeError",
                                         "float64"], FAST / 3)
        return exp, lambda: dk_mpi.allreduce(comm, arr, check=check, timeout=FAST)
    if name in ("raise_during", "raise_during_nocheck", "raise_during_big"):
        # rank 2 fails at its 2nd addition (big: messages of 1 MiB, sent by rendezvous)
        check = name != "raise_during_nocheck"
        if name == "raise_during_big":
            x = data(me, 1 << 20)
        if me == 2:
            exp = Expect((RuntimeError,), ["injected fault in the schedule"], FAST / 3)
        else:
            exp = Expect((RuntimeError,), ["rank 2 failed in step", "of ring",
                                           "injected fault in the schedule"], FAST / 3)

        def call():
            undo = patch_accumulate(2, injected) if me == 2 else (lambda: None)
            try:
                return dk_mpi.allreduce(comm, x, mesh_shape=(1, P), check=check, timeout=FAST)
            finally:
                undo()
        return exp, call
    if name == "slow":   # rank 0 comes SHORT + 3 s late to a call: the others time out
        # (blamed as "did not answer", or "came late" if it arrives while they conclude)
        blame = ("rank 0 did not answer", "rank 0 came late")
        exp = Expect((TimeoutError,), [blame, "for rank 0", "agreement", "waited"],
                     SHORT + MARGIN)
        if me == 0:      # and when it arrives, it learns at once that they gave up
            exp = Expect((TimeoutError,), [blame, "waited", "for rank 0"], SHORT + 3 + MARGIN)

        def call():
            dk_mpi.allreduce(comm, x, timeout=SHORT)   # a good call first
            if me == 0:
                time.sleep(SHORT + 3)
            return dk_mpi.allreduce(comm, x, timeout=SHORT)
        return exp, call
    if name == "size_nocheck":  # without the agreement a mismatch is an MPI error or a timeout
        n = N + 5 if me == last else N
        return (Expect((RuntimeError, TimeoutError), ["rank"], SHORT + MARGIN),
                lambda: dk_mpi.allreduce(comm, data(me, n), check=False, timeout=SHORT))
    if name == "dead_during":   # rank 1 dies at its 2nd addition (mid ring)
        exp = Expect((TimeoutError,), ["rank 1 did not answer", "for rank 1", "of ring"],
                     SHORT + MARGIN)

        def call():
            if me == 1:
                patch_accumulate(2, died)
            return dk_mpi.allreduce(comm, x, mesh_shape=(1, P), timeout=SHORT)
        return exp, call
    if name == "dead_before":   # rank `last` dies between two calls
        exp = Expect((TimeoutError,), [f"rank {last} did not answer", f"for rank {last}",
                                       "agreement"], SHORT + MARGIN)

        def call():
            dk_mpi.allreduce(comm, x, timeout=SHORT)   # a good call first
            if me == last:
                died()
            return dk_mpi.allreduce(comm, x, timeout=SHORT)
        return exp, call
    if name == "dead_first":    # rank `last` dies before the first call on the communicator:
        # the survivors wait in MPI_Comm_idup, which cannot say who is missing
        exp = Expect((TimeoutError,), ["first mpi.allreduce call"], SHORT + MARGIN)

        def call():
            if me == last:
                died()
            return dk_mpi.allreduce(comm, x, timeout=SHORT)
        return exp, call
    if name == "user_messages":   # the caller's own messages on comm are never taken
        def call():
            mine = np.full(3, 100 + me, np.float32)
            tags = range(6)             # whatever tags the module might use on comm itself
            reqs = [comm.Isend([mine, MPI.FLOAT], dest=(me + 1) % P, tag=t) for t in tags]
            for _ in range(2):
                got = dk_mpi.allreduce(comm, x, timeout=FAST)
                want = np.sum([data(r).astype(np.float64) for r in range(P)], axis=0)
                assert np.allclose(got, want, rtol=1e-5, atol=1e-5), "wrong sum"
            for t in tags:
                buf = np.zeros(3, np.float32)
                comm.Recv([buf, MPI.FLOAT], source=(me - 1) % P, tag=t)
                assert np.all(buf == 100 + (me - 1) % P), f"user message {t} changed: {buf}"
            MPI.Request.Waitall(reqs)
            raise LookupError("all good")   # the harness expects an exception
        return Expect((LookupError,), ["all good"], FAST / 3), call
    raise SystemExit(f"unknown scenario {name!r}")


RECOVERS = {"size", "dtype", "format", "accumulate", "algorithm", "mesh", "args",
            "args_nocheck", "raise_during", "raise_during_nocheck", "raise_during_big"}


def run(name, world):
    comm = world.Dup()   # a fresh communicator for every scenario
    me, P = comm.rank, comm.size
    exp, call = scenario(name, comm)
    t0, c0 = time.monotonic(), time.process_time()
    try:
        call()
    except Exception as exc:   # noqa: BLE001
        dt, cpu = time.monotonic() - t0, time.process_time() - c0
        text = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, exp.types):
            return f"FAIL raised {text}"
        missing = [s for s in exp.needles if not has(str(exc), s)]
        if missing:
            return f"FAIL message lacks {missing}: {text}"
        if dt > exp.limit:
            return f"FAIL took {dt:.2f} s (limit {exp.limit} s): {text}"
        if dt > 2 and cpu > 0.25 * dt:   # a wait that spins would use a whole core
            return f"FAIL used {cpu:.2f} s of CPU in {dt:.2f} s: {text}"
        if name in RECOVERS:   # the communicator still works, and sums right
            got = dk_mpi.allreduce(comm, data(me), timeout=FAST)
            want = np.sum([data(r).astype(np.float64) for r in range(P)], axis=0)
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                return "FAIL the call after the fault gave a wrong sum"
        return f"ok {dt:.2f} s (cpu {cpu:.2f} s) {text}".replace("\n", " ")
    return "FAIL returned instead of raising"


def main():
    world = MPI.COMM_WORLD
    dead = False
    for name in sys.argv[1:]:
        dead |= name.startswith("dead")
        line = run(name, world)
        print(f"RESULT {world.rank} {name} {line}", flush=True)
    if dead:   # MPI_Finalize would wait for the dead rank forever
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
