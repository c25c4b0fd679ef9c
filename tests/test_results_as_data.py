"""Results as data (issue 12 item 5): every report and plan of the package pickles, has a
JSON-serializable ``to_dict()`` with the units in its keys, and a ``from_dict`` that
round-trips (``X.from_dict(x.to_dict()) == x``, through ``json.dumps``/``json.loads`` too).

The classes: GemmPlan, AllreduceReport, HierarchicalReport (dojo_kernels); ReportConfig,
Report and its parts FormatError, GemmResult, AllreduceResult, FaultResult
(dojo_kernels.report); TrainConfig, StepCost, RecipeRun, TrainResult (dojo_kernels.train).
Every round trip is checked against an object built by the package's own code paths (no
figure copied into the test); equality is made to fail by a changed figure, so that
``==`` cannot pass vacuously.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import warnings

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import mesh
from dojo_kernels import report as rp
from dojo_kernels.formats import BF16, cfloat8_143

SMALL = dict(d_model=32, seq=32, batch=1, mlp_ratio=2, check_elements=64)


def _json(obj, strict=True):
    """obj.to_dict() through JSON text (``strict``: no NaN/Infinity, i.e. standard JSON)."""
    return json.loads(json.dumps(obj.to_dict(), allow_nan=not strict))


def round_trip(obj, strict=True):
    """The generic contract, asserted: pickle (every protocol), to_dict -> from_dict (as a
    dict and through JSON text), and a second to_dict that is the first one."""
    cls = type(obj)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(obj, protocol=proto))
        assert type(back) is cls and back == obj
    d = obj.to_dict()
    text = json.dumps(d, allow_nan=not strict)         # JSON-serializable as it is
    assert cls.from_dict(d) == obj
    again = cls.from_dict(json.loads(text))
    assert type(again) is cls and again == obj
    assert json.dumps(again.to_dict(), allow_nan=not strict) == text
    return again


# --- plans and all-reduce reports ---------------------------------------------------------
MACHINES = {"chip": dk.D1Chip(), "tile": dk.TrainingTile(), "d2": dk.D2Tile(),
            "system": dk.DojoSystem(tiles=6)}


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_gemm_plan_round_trips_on_every_machine(name):
    machine = MACHINES[name]
    for m, n, k, fa, fb in ((4096, 4096, 4096, BF16, BF16), (1, 8192, 8192, cfloat8_143(7),
                                                                cfloat8_143(7)),
                            (333, 77, 1000, cfloat8_143(5), BF16)):
        p = dk.plan_gemm(m, n, k, a_format=fa, b_format=fb, machine=machine)
        back = round_trip(p)
        assert back.machine == machine and type(back.machine) is type(machine)
    # a changed figure is a different plan
    d = p.to_dict()
    d["time_s"] *= 2
    assert dk.GemmPlan.from_dict(d) != p


def test_gemm_plan_from_dict_errors_name_the_problem():
    p = dk.plan_gemm(64, 64, 64, a_format=BF16, b_format=BF16)
    assert p.to_dict()["kind"] == "GemmPlan"
    with pytest.raises(TypeError, match="GemmPlan.to_dict"):
        dk.GemmPlan.from_dict([1])
    with pytest.raises(ValueError, match="kind 'GemmPlan'"):
        dk.GemmPlan.from_dict(dk.estimate_allreduce(1e6, dk.TrainingTile()).to_dict())
    d = p.to_dict()
    del d["time_s"]
    with pytest.raises(ValueError, match="'time_s'"):
        dk.GemmPlan.from_dict(d)
    d = p.to_dict()
    del d["kind"], d["k_split"]          # no kind: accepted; k_split has a default
    assert dk.GemmPlan.from_dict(d) == p


def test_k_split_and_empty_plans_round_trip():
    f = cfloat8_143(7)
    p = dk.plan_gemm(1, 8192, 8192, a_format=f, b_format=f, machine=dk.D1Chip())
    assert p.k_split > 1 and p.reduction_seconds > 0   # the plan with a reduction
    round_trip(p)
    e = dk.GemmPlan.empty(0, 5, 7, a_format=f, machine=dk.TrainingTile())
    assert e.bound == "empty"
    round_trip(e)
    _, plan = dk.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32),
                      a_format=BF16, b_format=BF16, return_plan=True)
    round_trip(plan)


@pytest.mark.parametrize("alg", [*dk.collectives.ALGORITHMS, "auto"])
def test_allreduce_report_round_trips(alg):
    r = dk.estimate_allreduce(3e6, dk.TrainingTile(), algorithm=alg)
    back = round_trip(r)
    assert back.schedule is None                    # the schedule exports itself
    d = r.to_dict()
    d["bytes_per_link_bytes"][0] += 1.0
    assert dk.AllreduceReport.from_dict(d) != r


def test_allreduce_report_on_a_damaged_mesh_round_trips():
    topo = mesh.training_tile().with_failures(nodes=[12])
    round_trip(dk.estimate_allreduce(1e6, topo, algorithm="ring"))


def test_hierarchical_report_round_trips():
    h = dk.estimate_hierarchical(5e6, dk.DojoSystem(tiles=6))
    back = round_trip(h)
    assert back.levels == h.levels and len(back.levels) == len(h.levels) >= 2


# --- the report -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return rp.run_report(rp.ReportConfig(**SMALL, algorithms=("ring", "2d", "tree")))


def test_report_round_trips(small):
    back = round_trip(small)
    # the rebuilt report answers every question the original does, with the same figures
    for f in small.config.formats:
        assert back.compute_s(f) == small.compute_s(f)
        assert back.system_step_s(f) == small.system_step_s(f)
        assert back.system_step_s(f, overlap=True) == small.system_step_s(f, overlap=True)
    assert back.hierarchical_allreduce() == small.hierarchical_allreduce()
    assert rp.render_report(back) == rp.render_report(small)
    for g, h in zip(small.gemms, back.gemms):
        for key in g.plans:
            assert h.plans[key] == g.plans[key]
            assert h.plans[key].machine == small.config.machine
    for a, b in zip(small.allreduce, back.allreduce):
        assert np.array_equal(a.bytes_per_link, b.bytes_per_link) and a.bytes_per_link.size
    assert dataclasses.asdict(small)["config"]["d_model"] == 32    # asdict works too
    assert copy.deepcopy(small) == small


def test_report_equality_sees_every_part(small):
    d = _json(small)
    changes = [
        lambda d: d["config"].__setitem__("seed", 1),
        lambda d: d["gemms"][3]["formats"]["bf16"]["d1_plan"].__setitem__("noc_bytes", 1.0),
        lambda d: d["gemms"][0]["formats"]["cfloat8"]["error_histogram_counts"].__setitem__(
            10, 12345),
        lambda d: d["gemms"][5].__setitem__("fp32_reference_s", 1.0),
        lambda d: d["allreduce"][1]["bytes_per_link_bytes"].__setitem__(0, -1.0),
        lambda d: d["allreduce"][0].__setitem__("check_max_rel_error", None),
        lambda d: d["cpu"]["gemm_emulation"].__setitem__("fp32_s", 0.0),
        lambda d: d["cpu"].__setitem__("isa", "nope"),
        lambda d: d["faults"][-1].__setitem__("reason", "x"),
    ]
    assert rp.Report.from_dict(d) == small
    for change in changes:
        e = copy.deepcopy(d)
        change(e)
        assert rp.Report.from_dict(e) != small


def test_report_with_every_config_field_set_round_trips():
    tile = rp.machine_with(clock_hz=2.2e9, base=dk.D2Tile())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cfg = rp.ReportConfig(**{**SMALL, "check_elements": 0}, formats=("cfloat8",),
                              forward_format="cfloat8_152", gradient_format="cfloat8_143",
                              bias=9, bias_margin=1, gemm_order="vdpbf16ps", grad_scale=0.5,
                              grad_bytes_per_param=4, machine=tile, system_shape=(1, 3),
                              tile_link_bandwidth=4e12, overlap=True, algorithms=("ring",),
                              seed=7, failed_chips=(6,), failed_links=((0, 1),),
                              fault_study=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # from_dict restores the deprecated field silently
        back = round_trip(cfg)
    assert back.system == cfg.system and back.tile_link_bandwidth == 4e12
    assert isinstance(back.machine, dk.D2Tile)
    r = rp.run_report(cfg)
    assert [f.scenario for f in r.faults][-1] == "given" and r.faults[-1].failed_chips == (6,)
    back = round_trip(r)
    assert back.system_step_s("cfloat8") == r.system_step_s("cfloat8")


def test_report_parts_round_trip():
    nan = float("nan")
    fe = rp.FormatError(nan, 0.25, 1e-3, "cfloat8_143(bias=7)", "bf16", [0, 3, 5], 2)
    round_trip(fe, strict=False)                    # a NaN figure stays NaN
    fr = rp.FaultResult("1 chip", (12,), (), "2d", False, nan, nan, nan, "algorithm: no")
    assert _json(fr)["time_s"] is None              # standard JSON: null, not NaN
    round_trip(fr)
    assert fr != dataclasses.replace(fr, reason="other")
    ar = rp.AllreduceResult("tile", (5, 5), "ring", 1e6, 1e-3, 0.5, 1e9, 5e-4, 48, 2e5, True,
                            None, np.arange(80, dtype=np.float64))
    round_trip(ar)
    assert ar != dataclasses.replace(ar, bytes_per_link=np.arange(80, dtype=np.float64) + 1)


def test_cli_json_loads_back_as_the_report(tmp_path, capsys):
    """``dojo-kernels report --json FILE`` writes what Report.from_dict reads: the loaded
    report renders exactly the tables the command printed."""
    from dojo_kernels import cli
    out = tmp_path / "r.json"
    rc = cli.main(["report", "--d-model", "16", "--seq", "32", "--algorithms", "ring,tree",
                   "--check-elements", "32", "--machine", "d2", "--json", str(out), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    back = rp.Report.from_dict(json.loads(out.read_text()))
    assert isinstance(back.config.machine, dk.D2Tile)
    assert rp.render_report(back) in printed


def test_from_dict_errors_name_the_problem(small):
    with pytest.raises(TypeError, match="Report.to_dict"):
        rp.Report.from_dict([1])
    with pytest.raises(ValueError, match="kind"):
        rp.Report.from_dict({"kind": "AllreduceReport"})
    d = _json(small)
    del d["cpu"]
    with pytest.raises(ValueError, match="'cpu'"):
        rp.Report.from_dict(d)
    d = _json(small)
    del d["gemms"][0]["formats"]["bf16"]["d1_plan"]   # JSON of an older version: no plan
    with pytest.raises(ValueError, match="d1_plan"):
        rp.Report.from_dict(d)
    with pytest.raises(ValueError, match="machine"):
        rp.GemmResult.from_dict(_json(small)["gemms"][0])   # its plans need the machine
    with pytest.raises(ValueError, match="'d_model'"):
        rp.ReportConfig.from_dict({})


# --- the training demo's results ---------------------------------------------------------
def _train_result():
    torch = pytest.importorskip("torch")
    from dojo_kernels import train

    cfg = train.TrainConfig(epochs=2, recipes=("fp32", "cfloat8_sr"), hidden=(16,), seed=5)
    layers = [(64, 16), (16, 10)]
    params = sum(i * o + o for i, o in layers)
    g = torch.Generator().manual_seed(0)
    weights = {"0.weight": torch.randn(16, 64, generator=g),
               "0.bias": torch.randn(16, generator=g).bfloat16(),   # SR keeps BF16 weights
               "2.weight": torch.tensor([[math.nan, -0.0, math.inf]]),
               "steps": torch.tensor([3], dtype=torch.int64)}
    runs = [train.RecipeRun("fp32", [0.9, math.nan], [0.5, 0.25], 2.3, 0.1, None, weights),
            train.RecipeRun("cfloat8_sr", [1.0, 0.75], [0.5, 0.625], 2.3, 0.2,
                            train.step_cost(cfg, layers, "cfloat8_sr", params), {})]
    return train, train.TrainResult(cfg, runs, (1348, 449), params, layers, 1.5, "MLP 64-16-10")


def test_train_result_round_trips_with_its_weights_bit_exact():
    train, r = _train_result()
    back = round_trip(r, strict=False)             # a diverged loss is NaN
    w, v = r.runs[0].weights, back.runs[0].weights
    assert w.keys() == v.keys()
    for k in w:
        assert v[k].dtype == w[k].dtype and tuple(v[k].shape) == tuple(w[k].shape)
        assert np.array_equal(v[k].view(-1).view(dtype=__import__("torch").uint8).numpy(),
                              w[k].contiguous().view(-1).view(
                                  dtype=__import__("torch").uint8).numpy())
    # a weight one bit off (-0.0 -> +0.0) is a different result
    d = _json(r, strict=False)
    back = train.TrainResult.from_dict(d)
    back.runs[0].weights["2.weight"][0, 1] = 0.0
    assert back != r
    round_trip(r.config)
    round_trip(r.runs[1].cost)
    # without the weights (what `dojo-kernels train --json` writes): equal but the weights
    light = train.TrainResult.from_dict(json.loads(json.dumps(r.to_dict(weights=False))))
    assert light.runs[0].weights == {} and light != r
    assert dataclasses.replace(light, runs=[dataclasses.replace(light.runs[0], weights=w),
                                            light.runs[1]]) == r


def test_train_json_written_by_write_json_loads(tmp_path):
    train, r = _train_result()
    path = tmp_path / "t.json"
    train.write_json(r, str(path))
    back = train.TrainResult.from_dict(json.loads(path.read_text()))
    assert back.runs[1] == r.runs[1] and back.config == r.config
    train.write_json(r, str(path), weights=True)
    assert train.TrainResult.from_dict(json.loads(path.read_text())) == r


def test_report_pickle_loads_in_a_fresh_interpreter(small, tmp_path):
    """A report crosses a process boundary (what multiprocessing and joblib do): a fresh
    interpreter unpickles it and writes the same JSON."""
    import subprocess
    import sys
    path = tmp_path / "r.pkl"
    path.write_bytes(pickle.dumps(small))
    code = ("import json, pickle, sys; r = pickle.load(open(sys.argv[1], 'rb')); "
            "print(type(r).__module__, type(r).__name__); print(json.dumps(r.to_dict()))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, cwd=str(tmp_path), check=True).stdout.split("\n", 1)
    assert out[0] == "dojo_kernels.report._report Report"
    assert rp.Report.from_dict(json.loads(out[1])) == small
