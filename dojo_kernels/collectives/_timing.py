"""The link-level timing model of SPEC section 7, evaluated on a Schedule.

Per step: every link message of ``m`` bytes over ``h`` hops takes
``alpha + (h-1)*delta + L/B``, where ``L`` is the largest total of bytes that the messages
of that step put on one directed link of its route (k equal messages on one link take k times
the bandwidth term). A step ends with its slowest message. Templates are processed as
intervals of steps in which the set of active messages does not change, so a ring on a
3000-node mesh costs two intervals, not 6000 steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from ._schedule import Schedule
from ..machine.mesh import Mesh2D



@dataclass
class Timing:
    step_times: np.ndarray
    bytes_per_link: np.ndarray
    byte_hops: float
    max_contention: int
    links_used: int
    longest_path_hops: int


def _windows(start: np.ndarray, end: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breakpoints ``bp`` (sorted distinct starts and ends) and the interval index of every
    start and end. Steps are small non-negative integers: a table instead of sorting."""
    top = int(end.max()) + 1
    if top <= 8 * start.size + 4096 and int(start.min()) >= 0:
        seen = np.zeros(top, bool)
        seen[start] = True
        seen[end] = True
        bp = np.flatnonzero(seen)
        index = np.cumsum(seen) - 1
        return bp, index[start], index[end]
    bp = np.unique(np.concatenate([start, end]))
    return bp, np.searchsorted(bp, start), np.searchsorted(bp, end)


def _link_messages(a: Any) -> Tuple[np.ndarray, ...]:
    """The templates that cross links (src != dst): src, dst, start, count, size."""
    link = a["src"] != a["dst"]
    keys = ("src", "dst", "start", "count", "size")
    if link.all():
        return tuple(a[k] for k in keys)
    return tuple(a[k][link] for k in keys)


def simulate(schedule: Schedule, topology: Mesh2D, nbytes: float) -> Timing:
    L = topology.num_links
    src, dst, start, count, size = _link_messages(schedule.arrays)
    unit_bytes = float(nbytes) / schedule.units
    if src.size == 0:
        return Timing(np.zeros(0), np.zeros(L), 0.0, 0, 0, 0)
    hop_msg, hop_link, hops = topology.route(src, dst)
    end = start + count
    # bytes per link and byte-hops: exact in units, scaled once
    units_on_link = np.bincount(hop_link, weights=(size * count)[hop_msg].astype(np.float64),
                                minlength=L)
    bytes_per_link = units_on_link * unit_bytes
    byte_hops = float(np.sum(size * count * hops)) * unit_bytes
    # intervals of constant activity
    bp, i0, i1 = _windows(start, end)
    NI = bp.size - 1
    on_link = np.bincount(hop_link, minlength=L)
    used = np.flatnonzero(on_link)
    remap = np.zeros(L, np.int64)
    remap[used] = np.arange(used.size)
    col = remap[hop_link]
    NL = used.size
    classes = np.unique(hops)
    # hops with the same (link, window, hop count) act together: aggregate them
    h_i0, h_i1, h_h = i0[hop_msg], i1[hop_msg], hops[hop_msg]
    h_sz = size[hop_msg].astype(np.float64)
    h_n = np.ones(hop_msg.size)
    hmax = int(hops.max()) + 1
    key = ((col * (NI + 1) + h_i0) * (NI + 1) + h_i1) * hmax + h_h
    if key.size > 4 * NL:
        uk, inv = np.unique(key, return_inverse=True)
        h_sz = np.bincount(inv, weights=h_sz, minlength=uk.size)
        h_n = np.bincount(inv, minlength=uk.size).astype(np.float64)
        uk, h_h = np.divmod(uk, hmax)
        uk, h_i1 = np.divmod(uk, NI + 1)
        col, h_i0 = np.divmod(uk, NI + 1)
    # events per aggregated hop: (+size at i0, -size at i1), counts (+n, -n)
    ev_i = np.concatenate([h_i0, h_i1])
    ev_c = np.concatenate([col, col])
    ev_u = np.concatenate([h_sz, -h_sz])
    ev_n = np.concatenate([h_n, -h_n])
    # stable sort by interval (radix sort when the index fits 16 bits)
    order = np.argsort(ev_i.astype(np.int16) if NI < 2**15 else ev_i, kind="stable")
    ev_i, ev_c, ev_u, ev_n = ev_i[order], ev_c[order], ev_u[order], ev_n[order]
    alpha, delta, B = topology.link_latency, topology.hop_latency, topology.link_bandwidth
    interval_time = np.zeros(NI)
    active = np.zeros(NI, bool)
    max_cont = 0
    # loads before the current block, per used link (units, exact in float64), and counts
    carry_u = np.zeros(NL)
    carry_n = np.zeros(NL)
    # blocks of intervals: the dense (intervals x links) tables stay about 1 MiB
    blk = int(min(256, max(8, (1 << 17) // max(NL, 1))))
    mark = np.zeros(NL, bool)                # links touched by the current block
    pos = np.zeros(NL, np.int64)             # their column in the block's tables
    for b0 in range(0, NI, blk):
        b1 = min(NI, b0 + blk)
        lo, hi = np.searchsorted(ev_i, [b0, b1])
        # links touched in this block: hops active in it, or ending at its first interval
        touch = (h_i0 < b1) & (h_i1 >= b0)
        mark[col[touch]] = True
        cols = np.flatnonzero(mark)          # sorted, without a sort
        mark[cols] = False
        nb = cols.size
        pos[cols] = np.arange(nb)
        nrow = b1 - b0
        ii = ev_i[lo:hi] - b0
        cc = pos[ev_c[lo:hi]]
        flat = ii * nb + cc
        d_u = np.bincount(flat, weights=ev_u[lo:hi], minlength=nrow * nb).reshape(nrow, nb)
        d_n = np.bincount(flat, weights=ev_n[lo:hi], minlength=nrow * nb).reshape(nrow, nb)
        load = np.cumsum(d_u, axis=0) + carry_u[cols]
        cnt = np.cumsum(d_n, axis=0) + carry_n[cols]
        carry_u[cols], carry_n[cols] = load[-1], cnt[-1]
        if cnt.size:
            max_cont = max(max_cont, int(round(cnt.max())))
        act = cnt.max(axis=1) > 0.5 if nb else np.zeros(nrow, bool)
        active[b0:b1] = act
        if len(classes) == 1:
            # every message has h hops: the slowest is the one on the busiest link
            h = int(classes[0])
            m = np.where(cnt > 0.5, load, -1.0).max(axis=1) if nb else np.full(nrow, -1.0)
            best = np.where(m >= 0, alpha + (h - 1) * delta + m * unit_bytes / B, -np.inf)
        else:
            # per message: alpha + (h-1) delta + its busiest link, at every step it is active
            sel = np.flatnonzero((h_i0 < b1) & (h_i1 > b0))
            rs = np.maximum(h_i0[sel], b0)
            lens = np.minimum(h_i1[sel], b1) - rs
            tot = int(lens.sum())
            rep = np.repeat(sel, lens)
            first = np.repeat(np.cumsum(lens) - lens, lens)
            row = np.repeat(rs - b0, lens) + (np.arange(tot) - first)
            val = load[row, pos[col[rep]]]
            t = alpha + (h_h[rep] - 1) * delta + val * unit_bytes / B
            best = np.full(nrow, -np.inf)
            np.maximum.at(best, row, t)
        interval_time[b0:b1] = np.where(act, best, 0.0)
    lengths = np.diff(bp)
    step_times = np.repeat(interval_time[active], lengths[active])
    return Timing(step_times, bytes_per_link, byte_hops, max_cont,
                  int(np.count_nonzero(bytes_per_link)), int(hops.max()))


def time_floor(schedule: Schedule, topology: Mesh2D, nbytes: float) -> float:
    """A cheap lower bound on ``simulate(...).step_times.sum()``, without routing: every step
    lasts at least as long as each of its link messages would alone (``alpha + (h-1)*delta +
    own bytes/B``; the busiest link of its route carries at least its own bytes). Used by
    ``algorithm="auto"`` to skip algorithms that cannot win. Returns 0.0 (no information)
    when the schedule has too many distinct activity windows to evaluate cheaply."""
    src, dst, start, count, size = _link_messages(schedule.arrays)
    if src.size == 0:
        return 0.0
    hops = topology.grid_hops(src, dst)
    unit_bytes = float(nbytes) / schedule.units
    c = (topology.link_latency + (hops - 1) * topology.hop_latency
         + size * unit_bytes / topology.link_bandwidth)
    end = start + count
    bp, i0, i1 = _windows(start, end)
    NI = bp.size - 1
    pair = i0 * (NI + 1) + i1
    order = np.argsort(pair)     # groups only: no need for a stable sort
    pair = pair[order]
    first = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
    if first.size > 4096:
        return 0.0
    cmax = np.maximum.reduceat(c[order], first)
    p0, p1 = np.divmod(pair[first], NI + 1)
    floor = np.zeros(NI)
    for lo, hi, v in zip(p0.tolist(), p1.tolist(), cmax.tolist()):
        np.maximum(floor[lo:hi], v, out=floor[lo:hi])
    return float(np.dot(floor, np.diff(bp)))


#: The keys of :func:`lower_bounds` that are valid bounds (``lower_bound`` is their maximum).
BOUND_KEYS = ("latency", "degree", "capacity")


def lower_bounds(topology: Mesh2D, nbytes: float) -> Dict[str, float]:
    """SPEC section 7 lower bounds (seconds).

    ``latency`` is ``alpha + (D-1)*min(alpha, delta)`` with D the diameter: a message may
    cross several hops for ``(h-1)*delta``. ``latency_spec`` is SPEC's literal
    ``(a+b-2)*alpha``, reported for comparison only: it assumes ``delta >= alpha`` and no
    wrap links (then it equals ``latency``) and is not used in the report's ``lower_bound``
    (the maximum of :data:`BOUND_KEYS`).

    On a damaged mesh (:class:`~dojo_kernels.mesh.DamagedMesh2D`) every bound is that of the
    surviving graph: ``P`` the survivors, ``D`` its diameter (hops of a shortest path), the
    least degree of a survivor, and its surviving edges."""
    alive = topology.survivors()
    P = int(alive.size)
    alpha, delta = topology.link_latency, topology.hop_latency
    if P == 1:
        return {"latency": 0.0, "degree": 0.0, "capacity": 0.0, "latency_spec": 0.0}
    B = topology.link_bandwidth
    D = topology.diameter()
    edges = topology.num_links // 2
    return {
        "latency": alpha + (D - 1) * min(alpha, delta),
        "degree": nbytes / (int(topology.degree()[alive].min()) * B),
        "capacity": (P - 1) * nbytes / (edges * B),
        "latency_spec": (topology.rows + topology.cols - 2) * alpha,
    }
