"""Results as data (issue 12 items 5 and 6): report pickling / to_dict round trips, the
public Schedule's messages() (conservation, byte-hops), JSON/CSV, and the MSCCL-IR XML run by
a small interpreter written here from the format's definition."""
import csv
import dataclasses
import io
import json
import pickle
import random
import xml.etree.ElementTree as ET
from collections import defaultdict, deque

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels.collectives import ALGORITHMS
from dojo_kernels.mesh import Mesh2D, chip_mesh


def make(a, b, wrap=False, alpha=1e-7, delta=2e-8):
    return Mesh2D(a, b, link_bandwidth=1e9, link_latency=alpha, hop_latency=delta,
                  wraparound=wrap)


MESHES = [(2, 2), (3, 3), (4, 4), (5, 5)]


# --- item 5: reports as data ---------------------------------------------------------------
@pytest.mark.parametrize("alg", ["auto", "ring", "chain", "spanning_trees"])
def test_allreduce_report_pickles_and_round_trips(alg):
    r = dk.estimate_allreduce(3e6, make(3, 4), algorithm=alg)
    r2 = pickle.loads(pickle.dumps(r))
    assert r2 == r
    assert r2.schedule is not None and r2.schedule.algorithm == r.algorithm
    d = r.to_dict()
    text = json.dumps(d)                     # JSON-serializable
    back = dk.AllreduceReport.from_dict(json.loads(text))
    assert back == r
    assert back.schedule is None
    # units in the keys, values of the report
    assert d["time_s"] == r.time and d["per_node_bytes"] == 3e6
    assert d["bytes_per_link_bytes"] == list(r.bytes_per_link)
    assert d["lower_bounds_s"]["capacity"] == r.lower_bounds["capacity"]
    assert np.array_equal(back.step_times, r.step_times)
    asd = dataclasses.asdict(r)
    assert asd["time"] == r.time and asd["lower_bounds"] == dict(r.lower_bounds)


def test_report_equality_sees_every_field():
    r = dk.estimate_allreduce(3e6, make(3, 4), algorithm="ring")
    d = r.to_dict()
    for key in ("time_s", "byte_hops", "efficiency_fraction"):
        changed = dict(d)
        changed[key] = d[key] * 1.5 + 1
        assert dk.AllreduceReport.from_dict(changed) != r
    changed = dict(d, step_times_s=[t * 2 for t in d["step_times_s"]])
    assert dk.AllreduceReport.from_dict(changed) != r


def test_lower_bounds_read_only():
    r = dk.estimate_allreduce(3e6, make(3, 3), algorithm="ring")
    with pytest.raises(TypeError):
        r.lower_bounds["capacity"] = 0.0
    with pytest.raises(TypeError):
        r.lower_bounds.update(capacity=0.0)


def test_from_dict_bad_input():
    with pytest.raises(TypeError, match="d:"):
        dk.AllreduceReport.from_dict([1, 2])
    with pytest.raises(ValueError, match="missing key"):
        dk.AllreduceReport.from_dict({"time_s": 1.0})
    with pytest.raises(ValueError, match="kind"):
        dk.AllreduceReport.from_dict({"kind": "HierarchicalReport"})
    with pytest.raises(ValueError, match="missing key 'level_times_s'.*HierarchicalReport"):
        dk.HierarchicalReport.from_dict({"time_s": 1.0})
    with pytest.raises(TypeError, match="HierarchicalReport.to_dict"):
        dk.HierarchicalReport.from_dict("x")
    with pytest.raises(ValueError, match="kind 'HierarchicalReport'"):
        dk.HierarchicalReport.from_dict({"kind": "AllreduceReport"})
    # a level that is not an AllreduceReport dict names the inner missing key
    h = dk.estimate_hierarchical(1e6, dk.DojoSystem(tiles=6)).to_dict()
    del h["levels"][0]["time_s"]
    with pytest.raises(ValueError, match="missing key 'time_s'.*AllreduceReport"):
        dk.HierarchicalReport.from_dict(h)


def test_hierarchical_report_pickles_and_round_trips():
    h = dk.estimate_hierarchical(1e7, [make(2, 2), make(3, 3)],
                                 algorithms=["ring", "spanning_trees"])
    assert pickle.loads(pickle.dumps(h)) == h
    d = json.loads(json.dumps(h.to_dict()))
    assert d["time_s"] == h.time and len(d["levels"]) == 2
    assert dk.HierarchicalReport.from_dict(d) == h
    asd = dataclasses.asdict(h)
    assert asd["levels"][1]["algorithm"] == "spanning_trees"
    changed = dict(d, time_s=d["time_s"] * 2)
    assert dk.HierarchicalReport.from_dict(changed) != h


def test_pickled_schedule_is_the_same_schedule():
    """A report's schedule travels as its recipe (algorithm, mesh, nbytes) and is rebuilt on
    first use: same messages; a hand-built schedule travels whole."""
    from dojo_kernels._schedule import build_ring
    from dojo_kernels.collectives import estimate_schedule
    m = make(5, 5)
    r = dk.estimate_allreduce(1e7, m, algorithm="spanning_trees")
    blob = pickle.dumps(r)
    assert len(blob) < 20000
    r2 = pickle.loads(blob)
    assert np.array_equal(r2.schedule.messages(), r.schedule.messages())
    custom = estimate_schedule(build_ring(m, order=list(range(25))), m, 1e6)
    c2 = pickle.loads(pickle.dumps(custom))
    assert np.array_equal(c2.schedule.messages(), custom.schedule.messages())
    assert c2 == custom


def test_reports_through_multiprocessing_pickle_protocols():
    r = dk.estimate_allreduce(1e6, make(2, 3), algorithm="2d")
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(r, protocol=proto)) == r


# --- item 6: messages() -------------------------------------------------------------------
CASES = [(alg, shape, wrap) for alg in ALGORITHMS for shape in MESHES for wrap in (False,)] + \
        [(alg, (4, 4), True) for alg in ALGORITHMS] + [(alg, (3, 5), True) for alg in ALGORITHMS]


def replay_counts(rows, P, slots, N):
    """Execute messages() rows as documented (phase 1 messages read the value from before
    the step; everything applied in row order) on count vectors: state[v, slot, e] counts how
    many times each node's element e is included. Independent of the package's executor."""
    state = np.zeros((P, slots, N, P), np.int64)
    for v in range(P):
        state[v, 0, :, v] = 1
    filled = np.zeros((P, slots), bool)
    filled[:, 0] = True
    i = 0
    n = len(rows)
    while i < n:
        j = i
        while j < n and rows["step"][j] == rows["step"][i] and rows["phase"][j] == rows["phase"][i]:
            j += 1
        group = rows[i:j]
        snap = state.copy() if rows["phase"][i] == 1 else None
        for m in group:
            src = (snap if snap is not None else state)[m["src"], m["src_buf"],
                                                         m["offset"]:m["offset"] + m["count"]]
            sl = (m["dst"], m["dst_buf"], slice(m["offset"], m["offset"] + m["count"]))
            if m["op"] == "reduce":
                state[sl] = state[sl] + src
            else:
                assert m["op"] == "copy"
                state[sl] = src
        i = j
    return state[:, 0]


@pytest.mark.parametrize("alg,shape,wrap", CASES)
def test_messages_conservation_and_byte_hops(alg, shape, wrap):
    m = make(*shape, wrap=wrap)
    r = dk.estimate_allreduce(5e4, m, algorithm=alg)
    sch = r.schedule
    assert isinstance(sch, dk.Schedule) and sch.algorithm == alg
    assert sch.steps == r.steps and sch.nodes == m.nodes and sch.topology == m
    rows = sch.messages()
    assert rows.size == 0 or int(rows["step"].max()) == r.steps - 1
    assert rows.dtype == dk.schedule.MESSAGE_DTYPE
    # bytes x hops adds up to the report's byte_hops
    assert float(np.sum(rows["bytes"] * rows["hops"])) == pytest.approx(r.byte_hops, rel=1e-12)
    # hops: Manhattan distance (mesh) or the shorter way round (torus), independent of route()
    a, b = shape
    r1, c1 = np.divmod(rows["src"], b)
    r2, c2 = np.divmod(rows["dst"], b)
    dr, dc = np.abs(r1 - r2), np.abs(c1 - c2)
    if wrap:
        dr = np.minimum(dr, a - dr) if a >= 3 else dr
        dc = np.minimum(dc, b - dc) if b >= 3 else dc
    assert np.array_equal(rows["hops"], dr + dc)
    assert set(np.unique(rows["op"])) <= {"reduce", "copy"}
    assert np.all(np.diff(rows["step"]) >= 0)
    # every element of every node reaches every node exactly once in the sum
    N = sch.units
    final = replay_counts(rows, m.nodes, sch.slots, N)
    assert np.array_equal(final, np.ones_like(final)), alg
    # with a different element count, ranges follow (u*N)//units and still conserve
    N2 = 7 * sch.units // 3 + 1
    rows2 = sch.messages(elements=N2)
    assert np.array_equal(rows2["bytes"], rows["bytes"])
    final2 = replay_counts(rows2, m.nodes, sch.slots, N2)
    assert np.array_equal(final2, np.ones_like(final2))


def test_messages_ring_rows_by_hand():
    """2x2 ring (cycle 0,1,3,2): 3 reduce-scatter steps then 3 all-gather steps, 4 messages
    each, each a quarter of the buffer over one hop."""
    m = make(2, 2)
    sch = dk.estimate_allreduce(4000, m, algorithm="ring").schedule
    rows = sch.messages(elements=8)
    assert len(rows) == 24
    assert list(np.bincount(rows["step"])) == [4] * 6
    assert np.all(rows["count"] == 2) and np.all(rows["bytes"] == 1000)
    assert np.all(rows["hops"] == 1)
    assert list(rows["op"][:12]) == ["reduce"] * 12 and list(rows["op"][12:]) == ["copy"] * 12
    nxt = {0: 1, 1: 3, 3: 2, 2: 0}
    assert all(nxt[s] == d for s, d in zip(rows["src"], rows["dst"]))


def test_json_and_csv_exports(tmp_path):
    r = dk.estimate_allreduce(1e5, make(3, 3), algorithm="2d")
    sch = r.schedule
    rows = sch.messages()
    doc = json.loads(sch.to_json())
    assert doc["algorithm"] == "2d" and doc["nodes"] == 9 and doc["per_node_bytes"] == 1e5
    assert doc["messages"]["src"] == rows["src"].tolist()
    assert doc["messages"]["op"] == rows["op"].tolist()
    p = tmp_path / "s.csv"
    text = sch.to_csv(str(p))
    assert p.read_text() == text
    got = list(csv.DictReader(io.StringIO(text)))
    assert len(got) == len(rows)
    assert [int(g["dst"]) for g in got] == rows["dst"].tolist()
    assert sum(float(g["bytes"]) * int(g["hops"]) for g in got) == pytest.approx(r.byte_hops)
    with pytest.raises(ValueError, match="elements"):
        sch.messages(elements=-1)
    with pytest.raises(ValueError, match="channels"):
        sch.to_msccl_xml(channels=0)
    with pytest.raises(ValueError, match="proto"):
        sch.to_msccl_xml(proto="fast")


# --- item 6: MSCCL-IR XML, executed by an interpreter written from the format ---------------
class MscclDeadlock(AssertionError):
    pass


def run_msccl(xml_text, inputs, rng):
    """Interpret an MSCCL-IR ``<algo>``: every GPU runs its threadblocks, each threadblock its
    steps in order. A step waits for step ``deps`` of threadblock ``depid`` of its GPU to have
    completed; receives wait for a message on the connection (sender, receiver, channel),
    matched first in, first out. ``s`` sends ``cnt`` chunks of ``srcbuf`` at ``srcoff``;
    ``r`` stores a message at ``dstbuf/dstoff``; ``rrc`` stores ``received + srcbuf[srcoff]``
    there; ``cpy`` copies locally; ``re`` adds src into dst; ``nop`` only waits. ``inplace``:
    buffers ``i`` and ``o`` are one. Runnable steps are picked in a random order, so that a
    missing dependency shows up as a wrong result."""
    algo = ET.fromstring(xml_text)
    assert algo.tag == "algo" and algo.get("coll") == "allreduce"
    P = int(algo.get("ngpus"))
    C = int(algo.get("nchunksperloop"))
    nch = int(algo.get("nchannels"))
    inplace = algo.get("inplace") == "1"
    assert inplace
    gpus = algo.findall("gpu")
    assert [int(g.get("id")) for g in gpus] == list(range(P))
    bufs = []
    tbs = []
    for g in gpus:
        rank = int(g.get("id"))
        assert int(g.get("i_chunks")) == C and int(g.get("o_chunks")) == C
        b = {"i": inputs[rank].copy(), "s": np.zeros((int(g.get("s_chunks")),) +
                                                     inputs[rank].shape[1:], inputs.dtype)}
        b["o"] = b["i"]
        bufs.append(b)
        seen_send, seen_recv = set(), set()
        lst = []
        for k, tb in enumerate(g.findall("tb")):
            assert int(tb.get("id")) == k
            send, recv, chan = int(tb.get("send")), int(tb.get("recv")), int(tb.get("chan"))
            assert 0 <= chan < nch
            # a connection (peer, channel) belongs to one threadblock per direction
            if send >= 0:
                assert (send, chan) not in seen_send and send != rank
                seen_send.add((send, chan))
            if recv >= 0:
                assert (recv, chan) not in seen_recv and recv != rank
                seen_recv.add((recv, chan))
            steps = tb.findall("step")
            assert [int(s.get("s")) for s in steps] == list(range(len(steps)))
            lst.append(dict(send=send, recv=recv, chan=chan, steps=steps, pc=0))
        tbs.append(lst)
    fifo = defaultdict(deque)
    # which steps are marked as depended upon must match the deps
    marked = {(r, k, int(s.get("s"))) for r in range(P) for k, tb in enumerate(tbs[r])
              for s in tb["steps"] if s.get("hasdep") == "1"}
    needed = {(r, int(s.get("depid")), int(s.get("deps"))) for r in range(P)
              for tb in tbs[r] for s in tb["steps"] if int(s.get("depid")) >= 0}
    assert needed <= marked

    def view(rank, buf, off, cnt):
        assert buf in ("i", "o", "s") and off >= 0 and cnt >= 0
        arr = bufs[rank][buf]
        assert off + cnt <= arr.shape[0], (buf, off, cnt, arr.shape)
        return arr[off:off + cnt]

    def runnable(rank, tb):
        st = tb["steps"][tb["pc"]]
        depid, deps = int(st.get("depid")), int(st.get("deps"))
        if depid >= 0 and tbs[rank][depid]["pc"] <= deps:
            return False
        typ = st.get("type")
        if typ in ("r", "rrc", "rcs", "rrs", "rrcs"):
            assert tb["recv"] >= 0
            return bool(fifo[(tb["recv"], rank, tb["chan"])])
        return True

    total = sum(len(tb["steps"]) for lst in tbs for tb in lst)
    done = 0
    while done < total:
        ready = [(r, k) for r in range(P) for k, tb in enumerate(tbs[r])
                 if tb["pc"] < len(tb["steps"]) and runnable(r, tb)]
        if not ready:
            raise MscclDeadlock(f"deadlock after {done} of {total} steps")
        r, k = ready[rng.integers(len(ready))]
        tb = tbs[r][k]
        st = tb["steps"][tb["pc"]]
        typ, cnt = st.get("type"), int(st.get("cnt"))
        sb, so = st.get("srcbuf"), int(st.get("srcoff"))
        db, do = st.get("dstbuf"), int(st.get("dstoff"))
        if typ == "s":
            assert tb["send"] >= 0
            fifo[(r, tb["send"], tb["chan"])].append(view(r, sb, so, cnt).copy())
        elif typ == "r":
            data = fifo[(tb["recv"], r, tb["chan"])].popleft()
            assert data.shape[0] == cnt
            view(r, db, do, cnt)[...] = data
        elif typ == "rrc":
            data = fifo[(tb["recv"], r, tb["chan"])].popleft()
            assert data.shape[0] == cnt
            view(r, db, do, cnt)[...] = view(r, sb, so, cnt) + data
        elif typ == "cpy":
            view(r, db, do, cnt)[...] = view(r, sb, so, cnt).copy()
        elif typ == "re":
            view(r, db, do, cnt)[...] = view(r, db, do, cnt) + view(r, sb, so, cnt)
        elif typ == "nop":
            pass
        else:  # pragma: no cover - a type the exporter never emits
            raise AssertionError(f"unexpected step type {typ}")
        tb["pc"] += 1
        done += 1
    assert not any(fifo.values()), "messages left unreceived"
    return np.stack([bufs[r]["o"] for r in range(P)])


def msccl_check(sch, P, seeds=(0, 1), channels=1):
    xml = sch.to_msccl_xml(channels=channels)
    C = sch.units
    for seed in seeds:
        rng = np.random.default_rng(seed)
        # exact integers: every rank must end with the exact sum of every rank's chunk
        x = rng.integers(-2**20, 2**20, (P, C, 3)).astype(np.int64)
        out = run_msccl(xml, x, rng)
        want = x.sum(axis=0)
        assert np.array_equal(out, np.broadcast_to(want, out.shape)), sch.algorithm


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_msccl_xml_executes_to_the_sum(alg, shape):
    m = make(*shape, alpha=1e-5)       # a large alpha: few pipeline chunks, a short XML
    sch = dk.estimate_allreduce(2e4, m, algorithm=alg).schedule
    msccl_check(sch, m.nodes)


@pytest.mark.parametrize("alg", ["ring", "spanning_trees", "chain"])
def test_msccl_xml_channels_and_torus(alg):
    m = make(3, 4, wrap=True, alpha=1e-5)
    sch = dk.estimate_allreduce(2e4, m, algorithm=alg).schedule
    msccl_check(sch, m.nodes, seeds=(3,), channels=2)
    root = ET.fromstring(sch.to_msccl_xml(channels=2))
    assert root.get("nchannels") == "2"
    assert {tb.get("chan") for tb in root.iter("tb")} == {"0", "1"}


def test_msccl_interpreter_catches_a_missing_dependency():
    """The interpreter test is not vacuous: dropping the dependencies of a ring's XML makes
    some random order read a chunk before it is reduced (or deadlock on nothing)."""
    m = make(2, 2)
    sch = dk.estimate_allreduce(2e4, m, algorithm="ring").schedule
    xml = sch.to_msccl_xml()
    root = ET.fromstring(xml)
    for st in root.iter("step"):
        st.set("depid", "-1")
        st.set("deps", "-1")
    broken = ET.tostring(root, encoding="unicode")
    x = np.arange(4 * sch.units * 1, dtype=np.int64).reshape(4, sch.units, 1) ** 2
    wrong = 0
    for seed in range(20):
        out = run_msccl(broken, x, np.random.default_rng(seed))
        wrong += not np.array_equal(out, np.broadcast_to(x.sum(axis=0), out.shape))
    assert wrong > 0


def test_msccl_xml_header_matches_the_schedule():
    m = chip_mesh(2, 3)
    sch = dk.estimate_allreduce(1e4, m, algorithm="chain").schedule
    root = ET.fromstring(sch.to_msccl_xml(name="mine", proto="LL"))
    assert root.get("name") == "mine" and root.get("proto") == "LL"
    assert root.get("ngpus") == "6" and root.get("nchunksperloop") == str(sch.units)
    assert root.get("inplace") == "1" and root.get("redop") == "sum"
    assert root.get("minBytes") == "0" and int(root.get("maxBytes")) > 0
    root = ET.fromstring(sch.to_msccl_xml(min_bytes=1024, max_bytes=4096))
    assert (root.get("minBytes"), root.get("maxBytes")) == ("1024", "4096")
    with pytest.raises(ValueError, match="max_bytes"):
        sch.to_msccl_xml(min_bytes=10, max_bytes=5)
    gpu0 = root.find("gpu")
    assert gpu0.get("s_chunks") == str((sch.slots - 1) * sch.units)
