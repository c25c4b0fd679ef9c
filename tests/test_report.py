"""dojo_kernels.report: the training-step report's figures are consistent with each other and
with the public APIs they come from, the JSON round-trips, the CLI runs, --plot works."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import mesh
from dojo_kernels import report as rp

SMALL = dict(d_model=64, seq=96, batch=2, mlp_ratio=2)


@pytest.fixture(scope="module")
def small():
    return rp.run_report(rp.ReportConfig(**SMALL, algorithms=("ring", "2d", "tree"),
                                         check_elements=512))


def test_gemm_shapes_and_flops(small):
    M, d, h = 96 * 2, 64, 128
    # (m, n, k) of every GEMM, written out from the block's algebra
    want = {"qkv": (M, 3 * d, d), "attn_out": (M, d, d), "mlp_up": (M, h, d),
            "mlp_down": (M, d, h),
            "mlp_down.dX": (M, h, d), "mlp_down.dW": (h, d, M),
            "mlp_up.dX": (M, d, h), "mlp_up.dW": (d, h, M),
            "attn_out.dX": (M, d, d), "attn_out.dW": (d, d, M),
            "qkv.dX": (M, d, 3 * d), "qkv.dW": (d, 3 * d, M)}
    got = {g.name: (g.m, g.n, g.k) for g in small.gemms}
    assert got == want
    for g in small.gemms:
        assert g.flops == 2 * g.m * g.n * g.k
    assert small.flops == 3 * 2 * M * (4 * d * d + 2 * d * h)
    assert small.config.params == 4 * d * d + 2 * d * h


def test_errors_bf16_below_cfloat8_and_plausible(small):
    u_bf16 = 2.0 ** -8  # BF16 unit roundoff (8 significand bits incl. the hidden one): 2^-8
    for g in small.gemms:
        b, c = g.errors["bf16"], g.errors["cfloat8"]
        assert b.rms_rel_error < c.rms_rel_error, g.name
        assert b.max_rel_error < c.max_rel_error, g.name
        # both inputs rounded to nearest: relative error per product ~ u/sqrt(3) each, so the
        # normwise RMS error sits well inside [u/20, u]
        assert u_bf16 / 20 < b.rms_rel_error < u_bf16, (g.name, b.rms_rel_error)
        # CFloat8 1_4_3 has 4 significand bits: u = 2^-4; 1_5_2: 2^-3
        assert 2.0 ** -4 / 20 < c.rms_rel_error < 2.0 ** -3, (g.name, c.rms_rel_error)
        assert sum(b.histogram) + b.exact == g.m * g.n
        assert c.max_rel_error >= c.rms_rel_error / math.sqrt(g.m * g.n)
        fam = "cfloat8_152" if g.name.endswith("dX") else "cfloat8_143"
        assert c.a_format.startswith(fam), (g.name, c.a_format)


def test_plans_match_plan_gemm(small):
    tile = dk.TrainingTile()
    for g in small.gemms:
        p = dk.plan_gemm(g.m, g.n, g.k, a_format=dk.BF16, b_format=dk.BF16, machine=tile)
        assert g.plans["bf16"].seconds == p.seconds
        assert g.plans["bf16"].flops == g.flops
        assert 0 < g.plans["cfloat8"].utilization <= 1


def test_allreduce_matches_estimate(small):
    nbytes = small.config.params * 2
    for a in small.allreduce:
        topo = mesh.training_tile() if a.mesh == "tile" else mesh.system(2, 3)
        assert a.shape == topo.shape
        r = dk.estimate_allreduce(nbytes, topo, algorithm=a.algorithm)
        assert a.time_s == r.time and a.nbytes == nbytes
        assert a.efficiency == r.efficiency
        # the real FP32 all-reduce of Gaussian buffers: error of a few float32 roundings
        assert a.check_max_rel_error is not None and a.check_max_rel_error < 1e-5
    assert {a.mesh for a in small.allreduce} == {"tile", "system"}
    assert len(small.allreduce) == 6


def test_totals_add_up(small):
    for f in ("bf16", "cfloat8"):
        comp = sum(g.plans[f].seconds for g in small.gemms)
        tile_ar = min(a.time_s for a in small.allreduce if a.mesh == "tile")
        sys_ar = min(a.time_s for a in small.allreduce if a.mesh == "system")
        assert small.compute_s(f) == pytest.approx(comp, rel=1e-12)
        assert small.step_s(f) == pytest.approx(comp + tile_ar, rel=1e-12)
        # the system step (deliberately changed: data parallel with the hierarchical
        # all-reduce, whose inner level is a ring-family algorithm): GEMMs + hierarchical,
        # costed here on the explicit meshes
        inner = min((a for a in small.allreduce if a.mesh == "tile"
                     and a.algorithm in ("ring", "bidirectional_ring", "2d")),
                    key=lambda a: a.time_s).algorithm
        best_sys = min((a for a in small.allreduce if a.mesh == "system"),
                       key=lambda a: a.time_s)
        h = dk.estimate_hierarchical(small.config.params * 2,
                                     [mesh.training_tile(), mesh.system(2, 3)],
                                     algorithms=(inner, best_sys.algorithm))
        assert best_sys.time_s == sys_ar
        assert small.system_step_s(f) == pytest.approx(comp + h.time, rel=1e-12)
        # overlapping the per-weight all-reduces with the backward GEMMs never loses, and
        # cannot beat the GEMMs alone
        ov = small.system_step_s(f, overlap=True)
        assert comp <= ov <= small.system_step_s(f, overlap=False)
        assert small.cpu_emulation_s[f] == pytest.approx(
            sum(g.errors[f].emulation_s for g in small.gemms), rel=1e-9)
    assert small.peak_flops == dk.TrainingTile().peak_flops
    assert small.wall_s >= small.cpu_emulation_s["bf16"]


def test_json_roundtrip_and_unit_keys(small, tmp_path):
    path = tmp_path / "r.json"
    rp.write_json(small, str(path))
    back = json.loads(path.read_text())
    assert back == json.loads(json.dumps(small.to_dict()))
    t = back["totals"]
    assert t["bf16"]["d1_step_s"] == pytest.approx(small.step_s("bf16"))
    assert t["step_flop"] == small.flops
    assert len(back["gemms"]) == 12
    assert back["gemms"][0]["formats"]["bf16"]["d1_time_s"] == small.gemms[0].plans["bf16"].seconds

    unit_suffixes = ("_s", "_bytes", "_bytes_per_s", "_flop", "_flop_per_s", "_fraction",
                     "_rel_error", "_hz", "_binades", "_per_param",
                     # the machine objects' to_dict(): per-cycle figures, counts of nodes,
                     # chips, tiles, the MAC block's elements, watts
                     "_per_cycle", "_cycles", "_nodes", "_grid", "_tiles", "_mnk", "_w",
                     # the plans (d1_plan, GemmPlan.to_dict): bytes per node, format fields
                     "_per_node", "_bits", "_elements", "_chips")
    counts = {"d_model", "seq", "batch", "mlp_ratio", "tokens", "hidden", "params", "bias",
              "seed", "m", "n", "k", "steps", "threads", "exact_elements", "grad_scale",
              "edges", "dips_per_edge", "d1_k_split", "k_split"}

    units = {u.lstrip("_") for u in unit_suffixes}

    def walk(obj, key=""):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            assert key.endswith(unit_suffixes) or key in counts or key in units or key in (
                "error_histogram_counts", "error_histogram_log10_edges", "shape",
                "system_shape_tiles", "d1_node_grid", "d1_tile_mnk",
                "failed_chips", "failed_links"), key   # chip ids of the fault study

    walk(back)


def test_report_pickles(small):
    """Issue 12 item 5: a report crosses a process boundary (pickle, every protocol) with
    every figure intact (compared through its JSON form, which holds every figure), and its
    plans and all-reduce reports stay the objects of their classes."""
    import pickle
    want = json.loads(json.dumps(small.to_dict()))
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(small, protocol=proto))
        assert type(back) is type(small)
        assert json.loads(json.dumps(back.to_dict())) == want
        assert back.gemms[0].plans["bf16"] == small.gemms[0].plans["bf16"]
        assert np.array_equal(back.allreduce[0].bytes_per_link, small.allreduce[0].bytes_per_link)


def test_render_has_every_gemm_and_algorithm(small):
    text = rp.render_report(small)
    for g in small.gemms:
        assert g.name in text
    for a in ("ring", "2d", "tree"):
        assert a in text
    assert "9.06 PFLOP/s" in text
    # aligned: every line of a table block has the same header/rule width
    lines = text.splitlines()
    rule = [i for i, s in enumerate(lines) if set(s.strip()) <= {"-", " "} and s.strip()]
    assert rule
    for i in rule:
        assert len(lines[i - 1].rstrip()) <= len(lines[i])


def test_config_validation():
    with pytest.raises(ValueError, match="d_model"):
        rp.ReportConfig(d_model=0)
    with pytest.raises(ValueError, match="formats"):
        rp.ReportConfig(formats=("fp16",))
    with pytest.raises(ValueError, match="algorithms"):
        rp.ReportConfig(algorithms=("nope",))
    with pytest.raises(ValueError, match="bias"):
        rp.ReportConfig(bias=64)


def test_machine_figures_change_the_plan():
    slow = rp.machine_with(clock_hz=1e9)
    assert slow.chip.node.clock_hz == 1e9 and slow.peak_flops == dk.TrainingTile().peak_flops / 2
    cfg = rp.ReportConfig(d_model=32, seq=64, formats=("bf16",), algorithms=("ring",),
                          machine=rp.machine_with(chip_link_bw=1e12), check_elements=0)
    r = rp.run_report(cfg)
    ring = r.allreduce[0]
    want = dk.estimate_allreduce(cfg.params * 2, mesh.training_tile(link_bandwidth=1e12),
                                 algorithm="ring")
    assert ring.time_s == want.time and ring.check_max_rel_error is None


def test_progress_bar_only_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet = io.StringIO()
    p = rp.Progress(3, stream=quiet)
    p.advance("x")
    p.close()
    assert quiet.getvalue() == ""
    tty = Tty()
    p = rp.Progress(2, stream=tty)
    p.advance("a")
    p.advance("b")
    assert "2/2" in tty.getvalue() and "#" in tty.getvalue()
    off = Tty()
    p = rp.Progress(2, stream=off, enabled=False)
    p.advance()
    assert off.getvalue() == ""


def _run(args, tmp_path, pre=""):
    code = (pre + "import sys; from dojo_kernels.cli import main; "
            f"sys.exit(main({args!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


SMALL_ARGS = ["report", "--d-model", "32", "--seq", "64", "--algorithms", "ring,tree",
              "--check-elements", "64"]


def test_cli_report_json(tmp_path):
    out = tmp_path / "r.json"
    p = _run(SMALL_ARGS + ["--json", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "The step" in p.stdout and "qkv.dW" in p.stdout
    assert p.stderr == ""  # no progress bar when stderr is not a terminal
    d = json.loads(out.read_text())
    assert d["config"]["d_model"] == 32 and d["config"]["algorithms"] == ["ring", "tree"]


def test_cli_report_plot(tmp_path):
    pytest.importorskip("matplotlib")
    p = _run(SMALL_ARGS + ["--plot", str(tmp_path / "png")], tmp_path)
    assert p.returncode == 0, p.stderr
    names = sorted(os.listdir(tmp_path / "png"))
    assert names == ["allreduce_links_system.png", "allreduce_links_tile.png",
                     "error_histograms.png", "gemm_roofline.png"]
    for n in names:
        with open(tmp_path / "png" / n, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_report_plot_without_matplotlib(tmp_path):
    # matplotlib made unimportable: a clear message and exit status 2, before any work
    p = _run(SMALL_ARGS + ["--plot", str(tmp_path / "png")], tmp_path,
             pre="import sys; sys.modules['matplotlib'] = None; ")
    assert p.returncode == 2
    assert "matplotlib" in p.stderr and "pip install" in p.stderr
    assert not (tmp_path / "png").exists()


def test_python_dash_m_report(tmp_path):
    p = subprocess.run([sys.executable, "-m", "dojo_kernels", "report", "--d-model", "16",
                        "--seq", "32", "--formats", "bf16", "--algorithms", "ring", "-q"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "cfloat8" not in p.stdout.split("The step")[1]
    assert np.isfinite(float(p.stdout.count("BF16")))


def test_roofline_is_drawn_with_the_feeds_plan_gemm_uses(small, tmp_path, monkeypatch):
    """Issue 12 item 4: the roofline's off-chip roof is the sum of the feeds plan_gemm gives
    the whole tile (gemm.feed_bandwidths of the report's machine: 36 TB/s, the four 9 TB/s
    tile edges of SPEC section 6), and every plan of the step lies under that roof (its
    off-chip time is the slowest of the A, B and C transfers, which is at least their total
    bytes over the total feed)."""
    pytest.importorskip("matplotlib")
    mod = sys.modules[rp.plot_report.__module__]
    real = mod.feed_bandwidths
    seen = []
    monkeypatch.setattr(mod, "feed_bandwidths", lambda m: seen.append(m) or real(m))
    rp.plot_report(small, str(tmp_path))
    m = small.config.machine
    assert seen == [m]
    feed = float(sum(real(m)))
    assert feed == 4 * 9e12
    for g in small.gemms:
        for p in g.plans.values():
            roof = min(m.peak_flops, p.flops / p.offchip_bytes * feed)
            assert p.flops / p.seconds <= roof * (1 + 1e-12), (g.name, p.bound)


def _costed_report(d, seq, mlp_ratio=4, algorithms=("ring", "2d", "tree")):
    """A Report of the block's 12 GEMMs (shapes from the block's algebra) and gradient
    all-reduces, costed only (plan_gemm, estimate_allreduce on the explicit meshes), without
    the CPU emulation: a step too large to emulate in a test."""
    cfg = rp.ReportConfig(d_model=d, seq=seq, mlp_ratio=mlp_ratio, formats=("bf16",),
                          algorithms=algorithms, check_elements=0, fault_study=False)
    M, h = seq, mlp_ratio * d
    shapes = [("qkv", M, 3 * d, d), ("attn_out", M, d, d), ("mlp_up", M, h, d),
              ("mlp_down", M, d, h), ("mlp_down.dX", M, h, d), ("mlp_down.dW", h, d, M),
              ("mlp_up.dX", M, d, h), ("mlp_up.dW", d, h, M), ("attn_out.dX", M, d, d),
              ("attn_out.dW", d, d, M), ("qkv.dX", M, d, 3 * d), ("qkv.dW", d, 3 * d, M)]
    gemms = [rp.GemmResult(name, "backward" if "." in name else "forward", m, n, k,
                           2.0 * m * n * k, 0.0, {},
                           {"bf16": dk.plan_gemm(m, n, k, a_format=dk.BF16, b_format=dk.BF16,
                                                 machine=cfg.machine)})
             for name, m, n, k in shapes]
    nbytes = float(2 * (4 * d * d + 2 * d * h))
    ars = []
    for where, topo in (("tile", mesh.training_tile()), ("system", mesh.system(2, 3))):
        for a in algorithms:
            r = dk.estimate_allreduce(nbytes, topo, algorithm=a)
            ars.append(rp.AllreduceResult(where, topo.shape, a, nbytes, r.time, r.efficiency,
                                          r.bus_bandwidth, r.lower_bound, r.steps,
                                          r.bytes_per_link_max, r.bit_identical, None,
                                          np.array(r.bytes_per_link)))
    return rp.Report(cfg, gemms, ars, {"bf16": 0.0, "fp32": 0.0}, 0.0, 1, "none", [])


def _documented_system_steps(report, fmt):
    """(overlapped, serial) system step recomputed from Report.system_step_s's docs on the
    explicit meshes: the GEMMs run in order; when a weight's dW is done (sizes from the
    block's algebra: Wqkv 3d^2, Wo d^2, W1 and W2 d h, 2 bytes per BF16 gradient) its
    hierarchical all-reduce (across the tile's chips with the fastest costed ring-family
    algorithm, then across the 2 x 3 tiles with the fastest costed algorithm) starts once the
    previous one has finished; the step ends when both are done, or is the serial step (one
    fused all-reduce after the GEMMs) if that is faster."""
    d = report.config.d_model
    h = report.config.mlp_ratio * d
    sizes = {"qkv.dW": 3 * d * d, "attn_out.dW": d * d, "mlp_up.dW": d * h,
             "mlp_down.dW": h * d}
    levels = [mesh.training_tile(), mesh.system(2, 3)]
    inner = min((a for a in report.allreduce if a.mesh == "tile"
                 and a.algorithm in ("ring", "bidirectional_ring", "2d")),
                key=lambda a: a.time_s).algorithm
    outer = min((a for a in report.allreduce if a.mesh == "system"),
                key=lambda a: a.time_s).algorithm
    t = ar_end = 0.0
    for g in report.gemms:
        t += g.plans[fmt].seconds
        if g.name in sizes:
            ar = dk.estimate_hierarchical(2 * sizes[g.name], levels,
                                          algorithms=(inner, outer)).time
            ar_end = max(ar_end, t) + ar
    serial = t + dk.estimate_hierarchical(2 * sum(sizes.values()), levels,
                                          algorithms=(inner, outer)).time
    return min(serial, max(t, ar_end)), serial


def test_overlapped_system_step_follows_its_documented_schedule(small):
    """Issue 12 item 3: the system-scale step, data parallel with the hierarchical
    all-reduce, overlapped or not, as documented. The small step is latency-bound (the
    serial step wins); at d_model 2048, seq 8192 the overlapped step is faster."""
    for f in ("bf16", "cfloat8"):
        ov, serial = _documented_system_steps(small, f)
        assert small.system_step_s(f, overlap=True) == pytest.approx(ov, rel=1e-12)
        assert small.system_step_s(f, overlap=False) == pytest.approx(serial, rel=1e-12)
    big = _costed_report(2048, 8192)
    ov, serial = _documented_system_steps(big, "bf16")
    assert big.system_step_s("bf16", overlap=True) == pytest.approx(ov, rel=1e-12)
    assert big.system_step_s("bf16", overlap=False) == pytest.approx(serial, rel=1e-12)
    assert big.compute_s("bf16") < ov < 0.95 * serial        # overlap hides most of it
    round_trip = rp.Report.from_dict(json.loads(json.dumps(big.to_dict())))
    assert round_trip == big and round_trip.system_step_s("bf16", overlap=True) == \
        big.system_step_s("bf16", overlap=True)
