"""dojo_kernels.mesh: structure, routing and presets (SPEC sections 6 and 7)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dojo_kernels import mesh
from dojo_kernels.mesh import Mesh2D


def make(a, b, wrap=False):
    return Mesh2D(a, b, link_bandwidth=1e9, link_latency=1e-6, hop_latency=1e-7, wraparound=wrap)


def adjacent(m, u, v):
    (r1, c1), (r2, c2) = divmod(int(u), m.cols), divmod(int(v), m.cols)
    dr, dc = abs(r1 - r2), abs(c1 - c2)
    if m.wraparound and m.rows >= 3:
        dr = min(dr, m.rows - dr)
    if m.wraparound and m.cols >= 3:
        dc = min(dc, m.cols - dc)
    return dr + dc == 1


@pytest.mark.parametrize("a,b", [(1, 1), (1, 5), (2, 2), (3, 4), (5, 5), (8, 8)])
def test_link_count_mesh(a, b):
    m = make(a, b)
    assert m.num_links == 2 * (2 * a * b - a - b)
    links = m.links()
    assert links.shape == (m.num_links, 2)
    assert len({tuple(x) for x in links}) == m.num_links
    assert all(adjacent(m, u, v) for u, v in links)


@pytest.mark.parametrize("a,b", [(3, 3), (4, 5), (1, 6), (2, 4)])
def test_link_count_torus(a, b):
    m = make(a, b, wrap=True)
    # a dimension of size >= 3 wraps: a*b edges along it; smaller dimensions do not
    edges = (a * b if b >= 3 else a * (b - 1)) + (a * b if a >= 3 else b * (a - 1))
    assert m.num_links == 2 * edges
    assert all(adjacent(m, u, v) for u, v in m.links())


@settings(max_examples=60, deadline=None)
@given(a=st.integers(1, 7), b=st.integers(1, 7), wrap=st.booleans(), data=st.data())
def test_routes_are_dimension_order_paths(a, b, wrap, data):
    m = make(a, b, wrap)
    P = a * b
    src = np.array(data.draw(st.lists(st.integers(0, P - 1), min_size=1, max_size=20)))
    dst = np.array(data.draw(st.lists(st.integers(0, P - 1), min_size=src.size,
                                      max_size=src.size)))
    msg, link, hops = m.route(src, dst)
    ends = m.links()
    for i in range(src.size):
        ls = link[msg == i]
        (r1, c1), (r2, c2) = divmod(int(src[i]), b), divmod(int(dst[i]), b)
        dr, dc = abs(r1 - r2), abs(c1 - c2)
        if wrap and a >= 3:
            dr = min(dr, a - dr)
        if wrap and b >= 3:
            dc = min(dc, b - dc)
        assert hops[i] == dr + dc == ls.size
        if ls.size:
            path = [ends[ls[0], 0]] + [ends[x, 1] for x in ls]
            assert path[0] == src[i] and path[-1] == dst[i]
            assert all(ends[ls[k], 1] == ends[ls[k + 1], 0] for k in range(ls.size - 1))
            # row first: the row changes only after the column is done
            rows = [p // b for p in path]
            first_row_change = next((k for k in range(len(rows) - 1) if rows[k] != rows[k + 1]),
                                    len(rows))
            assert all(p % b == c2 for p in path[first_row_change:])


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="link_bandwidth"):
        Mesh2D(2, 2, link_bandwidth=0, link_latency=0)
    with pytest.raises(ValueError, match="link_bandwidth"):
        Mesh2D(2, 2, link_bandwidth=-1e9, link_latency=0)
    with pytest.raises(ValueError, match="link_bandwidth"):
        Mesh2D(2, 2, link_bandwidth=float("inf"), link_latency=0)
    with pytest.raises(ValueError, match="link_latency"):
        Mesh2D(2, 2, link_bandwidth=1, link_latency=-1)
    with pytest.raises(ValueError, match="hop_latency"):
        Mesh2D(2, 2, link_bandwidth=1, link_latency=0, hop_latency=float("nan"))
    with pytest.raises(ValueError, match="rows"):
        Mesh2D(0, 2, link_bandwidth=1, link_latency=0)
    with pytest.raises(TypeError, match="cols"):
        Mesh2D(2, 2.5, link_bandwidth=1, link_latency=0)
    with pytest.raises(TypeError, match="wraparound"):
        Mesh2D(2, 2, link_bandwidth=1, link_latency=0, wraparound="yes")
    with pytest.raises(TypeError):
        Mesh2D(2, 2, 1e9, 0)  # keyword-only link figures


def test_frozen():
    m = make(2, 2)
    with pytest.raises(Exception):
        m.rows = 3


def test_presets_use_spec_figures():
    chip = mesh.d1_chip()
    assert (chip.rows, chip.cols) == (18, 20)
    assert chip.link_bandwidth == 128e9          # 64 B/cycle at 2 GHz (SPEC section 6)
    assert chip.hop_latency == pytest.approx(0.5e-9)  # one cycle per hop at 2 GHz
    tile = mesh.training_tile()
    assert (tile.rows, tile.cols) == (5, 5)
    assert tile.link_bandwidth == 2e12           # ~2 TB/s per D1 edge per direction
    sysm = mesh.system(10, 12)
    assert sysm.nodes == 120 and sysm.link_bandwidth == 9e12
    assert mesh.chip_mesh(50, 60).nodes == 3000
    # every figure is overridable
    assert mesh.d1_chip(link_bandwidth=512e9).link_bandwidth == 512e9
    assert mesh.training_tile(link_latency=0.0).link_latency == 0.0
    assert mesh.system(2, 3, wraparound=True).wraparound


def test_link_grid_places_values_by_source_and_direction():
    m = make(2, 3)
    vals = np.arange(m.num_links, dtype=float)
    g = m.link_grid(vals)
    assert g.shape == (2, 3, 4)
    nb = {mesh.EAST: (0, 1), mesh.WEST: (0, -1), mesh.SOUTH: (1, 0), mesh.NORTH: (-1, 0)}
    for k, (u, v) in enumerate(m.links()):
        (r, c), (r2, c2) = divmod(int(u), 3), divmod(int(v), 3)
        d = [d for d, (dr, dc) in nb.items() if (r + dr, c + dc) == (r2, c2)][0]
        assert g[r, c, d] == vals[k]
    assert np.isnan(g[0, 0, mesh.NORTH]) and np.isnan(g[1, 2, mesh.EAST])
    assert int(np.isfinite(g).sum()) == m.num_links
    with pytest.raises(ValueError, match="values"):
        m.link_grid(np.zeros(3))


def test_presets_take_their_figures_from_the_d1_machine_model():
    from dojo_kernels import d1

    node = d1.D1Node(noc_link_bw=512e9, clock_hz=1e9, hop_latency_cycles=2.0)
    m = mesh.d1_chip(d1.D1Chip(node=node, grid=(6, 7), active_nodes=40))
    assert (m.rows, m.cols, m.link_bandwidth, m.hop_latency) == (6, 7, 512e9, 2e-9)
    t = mesh.training_tile(d1.TrainingTile(chips=(3, 4), chip_link_bw=1e12))
    assert (t.rows, t.cols, t.link_bandwidth) == (3, 4, 1e12)
    # keyword figures still override the machine
    assert mesh.training_tile(d1.TrainingTile(chips=(3, 4)), rows=2).rows == 2
    # defaults are SPEC section 6: 18 x 20 nodes at 128 GB/s; 5 x 5 chips at 2 TB/s
    assert (mesh.d1_chip().shape, mesh.d1_chip().link_bandwidth) == ((18, 20), 128e9)
    assert (mesh.training_tile().shape, mesh.training_tile().link_bandwidth) == ((5, 5), 2e12)
    with pytest.raises(TypeError, match="machine"):
        mesh.training_tile(d1.D1Chip())
