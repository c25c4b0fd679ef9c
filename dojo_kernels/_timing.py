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

import numpy as np

from ._schedule import Schedule
from .mesh import Mesh2D

_BLOCK_ELEMS = 4_000_000


@dataclass
class Timing:
    step_times: np.ndarray
    bytes_per_link: np.ndarray
    byte_hops: float
    max_contention: int
    links_used: int
    longest_path_hops: int


def simulate(schedule: Schedule, topology: Mesh2D, nbytes: float) -> Timing:
    a = schedule.arrays
    L = topology.num_links
    link = a["src"] != a["dst"]
    src, dst = a["src"][link], a["dst"][link]
    start, count, size = a["start"][link], a["count"][link], a["size"][link]
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
    bp = np.unique(np.concatenate([start, end]))
    NI = bp.size - 1
    i0 = np.searchsorted(bp, start)
    i1 = np.searchsorted(bp, end)
    used, col = np.unique(hop_link, return_inverse=True)
    NL = used.size
    classes = np.unique(hops)
    # events per hop: (+size at i0, -size at i1), counts (+1, -1)
    ev_i = np.concatenate([i0[hop_msg], i1[hop_msg]])
    ev_c = np.concatenate([col, col])
    ev_u = np.concatenate([size[hop_msg], -size[hop_msg]])
    ev_n = np.concatenate([np.ones(hop_msg.size, np.int64), -np.ones(hop_msg.size, np.int64)])
    ev_h = np.concatenate([hops[hop_msg], hops[hop_msg]])
    order = np.argsort(ev_i, kind="stable")
    ev_i, ev_c, ev_u, ev_n, ev_h = ev_i[order], ev_c[order], ev_u[order], ev_n[order], ev_h[order]
    alpha, delta, B = topology.link_latency, topology.hop_latency, topology.link_bandwidth
    interval_time = np.zeros(NI)
    active = np.zeros(NI, bool)
    max_cont = 0
    carry_u = np.zeros(NL, np.int64)
    carry_n = np.zeros(NL, np.int64)
    carry_h = {int(h): np.zeros(NL, np.int64) for h in classes}
    blk = max(1, _BLOCK_ELEMS // max(NL, 1))
    for b0 in range(0, NI, blk):
        b1 = min(NI, b0 + blk)
        lo, hi = np.searchsorted(ev_i, [b0, b1])
        ii, cc = ev_i[lo:hi] - b0, ev_c[lo:hi]
        flat = ii * NL + cc
        nrow = b1 - b0
        d_u = np.bincount(flat, weights=ev_u[lo:hi].astype(np.float64),
                          minlength=nrow * NL).reshape(nrow, NL)
        d_n = np.bincount(flat, weights=ev_n[lo:hi].astype(np.float64),
                          minlength=nrow * NL).reshape(nrow, NL)
        load = np.cumsum(d_u.astype(np.int64), axis=0) + carry_u
        cnt = np.cumsum(d_n.astype(np.int64), axis=0) + carry_n
        carry_u, carry_n = load[-1].copy(), cnt[-1].copy()
        max_cont = max(max_cont, int(cnt.max()))
        active[b0:b1] = cnt.max(axis=1) > 0
        best = np.full(nrow, -np.inf)
        hh = ev_h[lo:hi]
        for h in classes:
            h = int(h)
            sel = hh == h
            if len(classes) == 1:
                ch = cnt
            else:
                d_h = np.bincount(flat[sel], weights=ev_n[lo:hi][sel].astype(np.float64),
                                  minlength=nrow * NL).reshape(nrow, NL)
                ch = np.cumsum(d_h.astype(np.int64), axis=0) + carry_h[h]
                carry_h[h] = ch[-1].copy()
            m = np.where(ch > 0, load, -1).max(axis=1)
            t = np.where(m >= 0, alpha + (h - 1) * delta + m * unit_bytes / B, -np.inf)
            best = np.maximum(best, t)
        interval_time[b0:b1] = np.where(active[b0:b1], best, 0.0)
    lengths = np.diff(bp)
    step_times = np.repeat(interval_time[active], lengths[active])
    return Timing(step_times, bytes_per_link, byte_hops, max_cont,
                  int(np.count_nonzero(bytes_per_link)), int(hops.max()))


def lower_bounds(topology: Mesh2D, nbytes: float) -> dict:
    """SPEC section 7 lower bounds (seconds). The latency bound is
    ``alpha + (D-1)*min(alpha, delta)`` with D the diameter: a message may cross several hops
    for ``(h-1)*delta`` (it equals SPEC's ``(a+b-2)*alpha`` when delta >= alpha)."""
    P = topology.nodes
    if P == 1:
        return {"latency": 0.0, "degree": 0.0, "capacity": 0.0}
    B = topology.link_bandwidth
    D = topology.diameter()
    alpha, delta = topology.link_latency, topology.hop_latency
    edges = topology.num_links // 2
    return {
        "latency": alpha + (D - 1) * min(alpha, delta),
        "degree": nbytes / (int(topology.degree().min()) * B),
        "capacity": (P - 1) * nbytes / (edges * B),
    }
