# plan_gemm's candidate loop (dojo_kernels/gemm.py, _plan): the branch and bound over
# (span, tile) candidates with the cost model's seconds computed per candidate in C, with
# exactly the operations, in exactly the order, of gemm.py's vectorised _cost (IEEE double:
# the same values). gemm.py prepares every array (spans, bounds, masks) and finishes the
# chosen plan with _cost itself; this module only replaces the per-batch NumPy evaluation
# (about 80 array operations per batch) by one loop. No allocation, no GIL needed.
from libc.math cimport ceil
from libc.stdint cimport int64_t, uint8_t

ctypedef struct node_t:
    double bm, bn, bk, clock, load_bw, store_bw, hop_lat, link_lat, fp32_peak, sync_s


cdef inline double dmax(double a, double b) noexcept nogil:
    # np.maximum on non-NaN values (no NaN can arise: every figure is finite and positive)
    return a if a >= b else b


cdef inline double seconds_of(double m, double n, double k, double gr, double gc, double ks,
                              double RT, double eff_h, double eff_v, double feed_a,
                              double feed_b, double feed_out, double hop, bint shared,
                              double mt, double nt, double kt, const node_t *nd, double ab,
                              double bb, double ob) noexcept nogil:
    """gemm.py _cost's "seconds" for one candidate (the same expressions, left to right)."""
    cdef double step_cycles = ceil(mt / nd.bm) * ceil(nt / nd.bn) * ceil(kt / nd.bk)
    cdef double sup = ceil(m / (gr * mt)) * ceil(n / (gc * nt))
    cdef double kst = ceil(ceil(k / ks) / kt)
    cdef double steps = sup * kst
    cdef double t_comp = steps * step_cycles / nd.clock
    cdef double red = 1.0 if ks > 1 else 0.0
    cdef double S = 4 * mt * nt
    cdef double pa = mt * kt * ab
    cdef double pb = kt * nt * bb
    cdef double rd_node = (steps * (mt * nt * kt * (ab + bb) / 8 + S + pa + pb) + sup * S
                           + red * sup * 2 * S)
    cdef double wr_node = steps * (S + pa + pb) + red * sup * 2 * S
    cdef double t_sram = dmax(rd_node / nd.load_bw, wr_node / nd.store_bw)
    cdef double v_panels = ks if gr > 1 else ks - 1
    cdef double h_link = steps * pa * (1.0 if gc > 1 else 0.0)
    cdef double v_link = steps * v_panels * pb + red * sup * S
    cdef double t_noc = dmax(h_link / eff_h, v_link / eff_v)
    cdef double off_a = steps * RT * pa
    cdef double off_b = steps * gc * ks * pb
    cdef double off_out = sup * gr * gc * mt * nt * ob
    cdef double t_in, fill_in
    if shared:
        t_in = (off_a + off_b) / feed_a
        fill_in = (RT * pa + gc * ks * pb) / feed_a
    else:
        t_in = dmax(off_a / feed_a, off_b / feed_b)
        fill_in = dmax(RT * pa / feed_a, gc * ks * pb / feed_b)
    cdef double t_off = dmax(t_in, off_out / feed_out)
    cdef double fill = (fill_in + dmax(pa / eff_h, pb / eff_v) + hop
                        + gr * gc * mt * nt * ob / feed_out)
    cdef double t_red = red * sup * (ks - 1) * (S / eff_v + nd.hop_lat + nd.link_lat
                                                + mt * nt / nd.fp32_peak)
    cdef double t_sync = steps * nd.sync_s
    cdef double top = dmax(dmax(dmax(t_comp, t_sram), t_noc), t_off)
    return top + fill + t_red + t_sync


def search(int64_t m, int64_t n, int64_t k, dict g, const int64_t[::1] order,
           const double[::1] lb, const uint8_t[:, ::1] use_m, const uint8_t[:, ::1] use_n,
           const uint8_t[:, ::1] use_k, const uint8_t[:, ::1] min_m,
           const uint8_t[:, ::1] min_n, const uint8_t[:, :, ::1] fits,
           const double[::1] tile_mn, const double[::1] tile_k, tuple node, double ab,
           double bb, double ob, list debug):
    """The plan of least seconds: (span index, i, j, l) of (mt, nt, kt) = (tile_mn[i],
    tile_mn[j], tile_k[l]), and its seconds, or None when no candidate survives.

    The search of gemm.py's _plan: spans in the order `order` (of their lower bounds lb), in
    batches of 2, 6, 24 and the rest; a batch's spans whose bound exceeds the best seconds
    found so far are dropped, an empty batch ends the search; the spans of a batch are taken
    in increasing index, and per span the undominated tiles (use_m/use_n, narrowest spans
    inside one chip, use_k, fits) in (i, j, l) order. The winner has the fewest seconds, then
    the fewest nodes (RT * gc), then comes first. debug (a list or None) gets (spans, candidates)
    per batch, as _plan's _DEBUG."""
    cdef const double[::1] gr = g["gr"], gc = g["gc"], ks = g["ks"], RT = g["RT"]
    cdef const double[::1] eff_h = g["eff_h"], eff_v = g["eff_v"], feed_a = g["feed_a"]
    cdef const double[::1] feed_b = g["feed_b"], feed_out = g["feed_out"], hop = g["hop"]
    cdef const double[::1] one_r = g["one_r"], one_c = g["one_c"]
    cdef const int64_t[::1] ig = g["i_gr"], ic = g["i_gc"], ik = g["i_ks"]
    cdef bint shared = g["shared"][0] > 0
    cdef node_t nd
    (nd.bm, nd.bn, nd.bk, nd.clock, nd.load_bw, nd.store_bw, nd.hop_lat, nd.link_lat,
     nd.fp32_peak, nd.sync_s) = node
    cdef Py_ssize_t total = order.shape[0], pos = 0, q, t, cnt, size, nbatch
    cdef Py_ssize_t ntm = tile_mn.shape[0], ntk = tile_k.shape[0]
    cdef Py_ssize_t sizes[4]
    cdef int64_t gi, b_gi = -1
    cdef int i, j, l, b_i = 0, b_j = 0, b_l = 0, s
    cdef double ub = float("inf"), best = float("inf"), best_nodes = 0.0, sec, nodes, bmin
    cdef bint um, un
    cdef double dm = <double>m, dn = <double>n, dk = <double>k
    cdef int64_t[::1] batch
    import numpy
    sizes[0], sizes[1], sizes[2], sizes[3] = 2, 6, 24, total
    buf = numpy.empty(total if total > 0 else 1, numpy.int64)
    batch = buf
    for s in range(4):
        size = sizes[s]
        # the batch: order[pos:pos+size] whose bound is at most ub, in increasing span index
        nbatch = 0
        for q in range(pos, min(pos + size, total)):
            if lb[order[q]] <= ub:
                batch[nbatch] = order[q]
                nbatch += 1
        pos += size
        if nbatch == 0:
            break
        buf[:nbatch].sort()
        cnt = 0
        bmin = float("inf")
        with nogil:
            for t in range(nbatch):
                gi = batch[t]
                nodes = RT[gi] * gc[gi]
                for i in range(ntm):
                    um = use_m[ig[gi], i] and (min_m[ig[gi], i] or not one_r[gi] > 0)
                    if not um:
                        continue
                    for j in range(ntm):
                        un = use_n[ic[gi], j] and (min_n[ic[gi], j] or not one_c[gi] > 0)
                        if not un:
                            continue
                        for l in range(ntk):
                            if not (use_k[ik[gi], l] and fits[i, j, l]):
                                continue
                            sec = seconds_of(dm, dn, dk, gr[gi], gc[gi], ks[gi], RT[gi],
                                             eff_h[gi], eff_v[gi], feed_a[gi], feed_b[gi],
                                             feed_out[gi], hop[gi], shared, tile_mn[i],
                                             tile_mn[j], tile_k[l], &nd, ab, bb, ob)
                            cnt += 1
                            if sec < bmin:
                                bmin = sec
                            if sec < best or (sec == best and nodes < best_nodes):
                                best, best_nodes = sec, nodes
                                b_gi, b_i, b_j, b_l = gi, i, j, l
        if cnt == 0:     # every candidate of these spans is dominated
            continue
        if bmin < ub:
            ub = bmin
        if debug is not None:
            debug.append((int(nbatch), int(cnt)))
    if b_gi < 0:
        return None
    return int(b_gi), b_i, b_j, b_l, best


def bounds(int64_t m, int64_t n, int64_t k, dict g, double bm, double bn, double bk,
           double clock, double in_a0, double in_b0, double out0, double pa0, double pb0,
           double sq0):
    """gemm.py _plan's lower bound of every span (a new float64 array), by the same
    expressions in the same order: in_a0 = m k ab, in_b0 = k n bb, out0 = m n ob (Python
    floats), pa0 / pb0 the smallest tile's A / B panel bytes, sq0 its C tile's output bytes.
    Spans inside one chip wider than the product needs get +inf (dominated)."""
    cdef const double[::1] gr = g["gr"], gc = g["gc"], ks = g["ks"], RT = g["RT"]
    cdef const double[::1] eff_h = g["eff_h"], eff_v = g["eff_v"], feed_a = g["feed_a"]
    cdef const double[::1] feed_b = g["feed_b"], feed_out = g["feed_out"], hop = g["hop"]
    cdef const double[::1] one_r = g["one_r"], one_c = g["one_c"]
    cdef bint shared = g["shared"][0] > 0
    cdef Py_ssize_t s, ns = gr.shape[0]
    cdef double dm = <double>m, dn = <double>n, dk = <double>k
    cdef double lb_comp, sr_min, sc_min, in_a, in_b, lb_in, fill0
    cdef double inf = float("inf")
    # -(-m // bm) of the integer mac block (bm, bn are whole numbers)
    cdef double rows_need = <double>((m + <int64_t>bm - 1) // <int64_t>bm)
    cdef double cols_need = <double>((n + <int64_t>bn - 1) // <int64_t>bn)
    import numpy
    out = numpy.empty(ns, numpy.float64)
    cdef double[::1] lb = out
    with nogil:
        for s in range(ns):
            lb_comp = (ceil(ceil(dm / gr[s]) / bm) * ceil(ceil(dn / gc[s]) / bn)
                       * ceil(ceil(dk / ks[s]) / bk) / clock)
            sr_min = ceil(dm / (gr[s] * 256.0))
            sc_min = ceil(dn / (gc[s] * 256.0))
            in_a = sc_min * in_a0
            in_b = sr_min * in_b0
            if shared:
                lb_in = (in_a + in_b) / feed_a[s]
                fill0 = (RT[s] * pa0 + gc[s] * ks[s] * pb0) / feed_a[s]
            else:
                lb_in = dmax(in_a / feed_a[s], in_b / feed_b[s])
                fill0 = dmax(RT[s] * pa0 / feed_a[s], gc[s] * ks[s] * pb0 / feed_b[s])
            fill0 = fill0 + dmax(pa0 / eff_h[s], pb0 / eff_v[s]) + gr[s] * gc[s] * sq0 / feed_out[s]
            lb[s] = dmax(dmax(lb_comp, lb_in), out0 / feed_out[s]) + hop[s] + fill0
            if (one_r[s] > 0 and gr[s] > rows_need) or (one_c[s] > 0 and gc[s] > cols_need):
                lb[s] = inf
    return out
