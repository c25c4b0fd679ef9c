"""Issue 12 item 8: the package is grouped by capability (numerics, machine, collectives and
report are subpackages, gemm one module, the compiled core at the top), and every public path
the README and the docs name still resolves, old flat paths included; moved modules are the
same objects under both paths; a capability imports another's public names only; objects
pickled by this code, and by the code before the move, load in a fresh interpreter."""
from __future__ import annotations

import glob
import importlib
import os
import pickle
import re
import subprocess
import sys

import pytest

import dojo_kernels as dk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")) + glob.glob(os.path.join(ROOT, "docs", "*.rst")))
PATH = re.compile(r"\bdojo_kernels(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
FROM = re.compile(r"\bfrom (dojo_kernels(?:\.[A-Za-z_]\w*)*) import ([\w, ]+)")
DK = re.compile(r"\bdk\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")


def named_paths():
    """Dotted paths (``dojo_kernels.mesh.Mesh2D``), ``from dojo_kernels.x import a, b``
    (``dojo_kernels.x.a`` ...) and ``dk.name`` (``import dojo_kernels as dk``) in the docs."""
    found = set()
    for f in DOCS:
        with open(f) as fh:
            text = fh.read()
        found.update(m.group(0) for m in PATH.finditer(text))
        for m in FROM.finditer(text):
            found.update(f"{m.group(1)}.{n.split(' as ')[0].strip()}"
                         for n in m.group(2).split(",") if n.strip())
        if "import dojo_kernels as dk" in text:
            found.update(f"dojo_kernels.{m.group(1)}" for m in DK.finditer(text))
    return sorted(found)


def resolve(path):
    """Import the longest importable module prefix of ``path``, then getattr the rest."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(path)


def test_docs_name_paths():
    paths = named_paths()
    # the documented public modules are among them (the scan works)
    for p in ("dojo_kernels.mesh", "dojo_kernels.collectives", "dojo_kernels.hierarchical",
              "dojo_kernels.schedule", "dojo_kernels.mpi", "dojo_kernels.report",
              "dojo_kernels.train", "dojo_kernels.torch", "dojo_kernels.gemm",
              "dojo_kernels.d1", "dojo_kernels.numerics", "dojo_kernels.formats",
              "dojo_kernels.machine", "dojo_kernels.machine.mesh", "dojo_kernels.machine.d1",
              "dojo_kernels.numerics.formats", "dojo_kernels.numerics.torch"):
        assert p in paths, p
    assert len(paths) > 50


@pytest.mark.parametrize("path", named_paths())
def test_every_documented_path_resolves(path):
    path = path.split(" as ")[0]
    parts = path.split(".")[1:]
    if "torch" in parts or "train" in parts:      # modules that need the torch extra
        pytest.importorskip("torch")
    resolve(path)


OLD_TO_NEW = {
    "dojo_kernels.hierarchical": "dojo_kernels.collectives.hierarchical",
    "dojo_kernels.schedule": "dojo_kernels.collectives.schedule",
    "dojo_kernels.mpi": "dojo_kernels.collectives.mpi",
    "dojo_kernels._schedule": "dojo_kernels.collectives._schedule",
    "dojo_kernels._timing": "dojo_kernels.collectives._timing",
    "dojo_kernels._faults": "dojo_kernels.collectives._faults",
    "dojo_kernels.d1": "dojo_kernels.machine.d1",
    "dojo_kernels.mesh": "dojo_kernels.machine.mesh",
    "dojo_kernels._units": "dojo_kernels.machine._units",
    "dojo_kernels.formats": "dojo_kernels.numerics.formats",
}
#: the old paths of the machine and numerics modules: no file, the package registers the
#: moved module under the old name (and a .pyi stub tells type checkers)
ALIASES = ("dojo_kernels.d1", "dojo_kernels.mesh", "dojo_kernels._units", "dojo_kernels.formats")
#: every old flat path (-> the module it is); torch and train need torch
SHIMS = {**OLD_TO_NEW, "dojo_kernels.torch": "dojo_kernels.numerics.torch",
         "dojo_kernels.train": "dojo_kernels.report.train",
         "dojo_kernels._train_cli": "dojo_kernels.report._train_cli"}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_flat_paths_are_the_moved_modules(old):
    assert importlib.import_module(old) is importlib.import_module(OLD_TO_NEW[old])


def test_old_train_paths_are_the_moved_modules():
    pytest.importorskip("torch")
    assert importlib.import_module("dojo_kernels.train") is \
        importlib.import_module("dojo_kernels.report.train")
    assert importlib.import_module("dojo_kernels._train_cli") is \
        importlib.import_module("dojo_kernels.report._train_cli")
    assert importlib.import_module("dojo_kernels.torch") is \
        importlib.import_module("dojo_kernels.numerics.torch")
    import dojo_kernels.torch as dkt
    from dojo_kernels.torch import D1Linear
    assert dkt.D1Linear is D1Linear and dk.numerics.torch is dkt


def test_public_names_through_every_path():
    from dojo_kernels import collectives, report
    from dojo_kernels.collectives import hierarchical
    assert dk.allreduce is collectives.allreduce and dk.AllreduceReport is collectives.AllreduceReport
    assert dk.estimate_hierarchical is hierarchical.estimate_hierarchical
    assert dk.Schedule is importlib.import_module("dojo_kernels.schedule").Schedule
    assert report.ReportConfig.__name__ == "ReportConfig"
    assert set(collectives.__all__) >= {"allreduce", "estimate_allreduce", "AllreduceReport",
                                        "estimate_schedule", "schedule_for", "ALGORITHMS"}
    # the gemm module (the package's `gemm` attribute is the function)
    g = importlib.import_module("dojo_kernels.gemm")
    assert g.plan_gemm is dk.plan_gemm and callable(dk.gemm) and dk.gemm is g.gemm
    assert g.__file__.endswith(os.path.join("dojo_kernels", "gemm.py"))
    # the machine capability
    from dojo_kernels import machine
    from dojo_kernels.d1 import D1Chip
    from dojo_kernels.mesh import Mesh2D
    assert machine.D1Chip is D1Chip is dk.D1Chip and machine.mesh.Mesh2D is Mesh2D
    assert dk.mesh is machine.mesh is dk.machine.mesh and dk.d1 is machine.d1
    assert machine.from_cli(2, "GB/s") == 2e9
    with pytest.raises(ValueError, match="did you mean"):
        machine.check_unit("link", 2000, "B/s")
    # the numerics capability: the package is the old numerics module
    from dojo_kernels.formats import FAMILIES, Format
    from dojo_kernels.numerics import _ctuple
    assert dk.numerics.formats.Format is Format is dk.Format and callable(_ctuple)
    assert dk.numerics.quantize is dk.quantize and dk.formats.FAMILIES is FAMILIES
    for name in dk.__all__:
        assert getattr(dk, name) is not None, name


def test_no_module_imports_another_modules_private_names():
    """Inside the package, ``from .x import _name`` only takes a private *name* from an
    internal module (``_common``, ``_schedule``, ... : the explicit interfaces) or imports an
    internal submodule; never a private name of a public module (as ``hierarchical`` and
    ``mpi`` once took ``_as_codes`` from ``collectives``)."""
    pkg = os.path.join(ROOT, "dojo_kernels")
    bad = []
    for f in glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True):
        with open(f) as fh:
            src = re.sub(r"#[^\n]*", "", fh.read())
        here = os.path.dirname(f)
        for m in re.finditer(r"^\s*from (\.+)([\w.]*) import (?:\(([^)]*)\)|([^\n]*))", src,
                             re.M):
            base = here
            for _ in range(len(m.group(1)) - 1):
                base = os.path.dirname(base)
            target = os.path.join(base, *m.group(2).split(".")) if m.group(2) else base
            names = [n.strip().split(" as ")[0].strip()
                     for n in (m.group(3) or m.group(4)).split(",")]
            for n in names:
                if not n.startswith("_") or n.startswith("__"):
                    continue
                if glob.glob(os.path.join(target, n + ".*")) or \
                        os.path.isdir(os.path.join(target, n)):
                    continue                    # an internal submodule
                if os.path.basename(target).startswith("_"):
                    continue                    # a name of an internal module
                bad.append((os.path.relpath(f, ROOT), m.group(1) + m.group(2), n))
    assert not bad, sorted(set(bad))


def test_pickles_of_new_reports_load_in_a_fresh_interpreter(tmp_path):
    rep = dk.estimate_allreduce(1e6, dk.TrainingTile(), algorithm="ring")
    hier = dk.estimate_hierarchical(1e6, dk.DojoSystem(tiles=6))
    plan = dk.plan_gemm(64, 64, 64, a_format=dk.BF16, b_format=dk.BF16)
    path = tmp_path / "objs.pkl"
    path.write_bytes(pickle.dumps((rep, hier, plan, dk.mesh.chip_mesh(3, 4))))
    code = ("import pickle, sys; r, h, p, m = pickle.load(open(sys.argv[1], 'rb')); "
            "print(type(r).__name__, type(h).__name__, type(p).__name__, m.shape, r.time)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, cwd=str(tmp_path), check=True).stdout.split()
    assert out[:4] == ["AllreduceReport", "HierarchicalReport", "GemmPlan", "(3,"]
    assert float(out[-1]) == rep.time


def test_package_attributes_of_before_the_move_in_a_fresh_interpreter():
    """``import dojo_kernels as dk`` alone gives ``dk.schedule`` and ``dk.hierarchical`` (the
    attributes the package had before the collectives moved into a subpackage), as the moved
    modules; checked in a fresh interpreter, where no other test has imported them."""
    code = ("import sys, dojo_kernels as dk; "
            "from dojo_kernels.collectives import schedule, hierarchical; "
            "assert dk.schedule is schedule and dk.hierarchical is hierarchical; "
            "assert sys.modules['dojo_kernels.schedule'] is schedule; "
            "assert sys.modules['dojo_kernels.hierarchical'] is hierarchical; "
            "assert dk.collectives.estimate_allreduce is dk.estimate_allreduce; "
            "print(dk.schedule.MESSAGE_DTYPE.names[0], dk.hierarchical.INNER_ALGORITHMS[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(ROOT), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["step", "ring"]


# --- capabilities: which group a module belongs to (docs/layout.md) ----------------------
#: top-level modules that are not a subpackage: the compiled core and its Python helpers
#: (every capability may use them), the gemm module, the command line (report capability)
TOP = {"_config": "core", "_cformat": "core", "_fromdict": "core", "_cpu": "core", "_numerics": "core",
       "_reduce": "core", "_gemm": "core", "_plan": "core", "gemm": "gemm", "cli": "report",
       "_bench": "report", "__main__": "report"}
SUBPACKAGES = ("numerics", "machine", "collectives", "report")


def capability(dotted):
    """The capability of ``dojo_kernels.x.y`` (None for the package root and the shims)."""
    parts = dotted.split(".")[1:]
    if not parts:
        return None
    if parts[0] in SUBPACKAGES:
        return parts[0]
    if f"dojo_kernels.{parts[0]}" in SHIMS:
        return None
    return TOP[parts[0]]


def package_imports():
    """(importing module, imported module, imported name or None) for every ``from ... import``
    in the package's Python sources; a name that is a submodule counts as that module."""
    pkg = os.path.join(ROOT, "dojo_kernels")
    out = []
    for f in sorted(glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(f, ROOT)[:-3].split(os.sep)
        is_pkg = rel[-1] == "__init__"
        me = ".".join(rel[:-1] if is_pkg else rel)
        with open(f) as fh:
            src = re.sub(r"#[^\n]*", "", fh.read())
        for m in re.finditer(r"^\s*from (\.*)([\w.]*) import (?:\(([^)]*)\)|([^\n]*))", src, re.M):
            dots, mod = m.group(1), m.group(2)
            if dots:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[:len(base) - (len(dots) - 1)]
                target = ".".join(base + ([mod] if mod else []))
            elif mod.startswith("dojo_kernels"):
                target = mod
            else:
                continue                                  # numpy, torch, ...
            for n in (m.group(3) or m.group(4)).split(","):
                n = n.strip().split(" as ")[0].strip()
                if not n or n == "*":
                    continue
                path = os.path.join(ROOT, *target.split("."), n)
                if glob.glob(path + ".*") or os.path.isdir(path):
                    out.append((me, f"{target}.{n}", None))
                else:
                    out.append((me, target, n))
    return out


def test_the_import_scan_sees_the_package():
    found = package_imports()
    assert ("dojo_kernels.gemm", "dojo_kernels.machine", "D1Chip") in found
    assert ("dojo_kernels.collectives._allreduce", "dojo_kernels.machine.mesh", "Mesh2D") in found
    assert ("dojo_kernels.numerics", "dojo_kernels._cformat", "ctuple") in found
    assert ("dojo_kernels.report._report", "dojo_kernels.machine", "check_unit") in found
    assert capability("dojo_kernels.collectives._common") == "collectives"
    assert capability("dojo_kernels.gemm") == "gemm" and capability("dojo_kernels.mesh") is None


def test_capabilities_import_each_others_public_names_only():
    """A module takes from another capability only public names of public modules (the
    compiled core and ``_config`` / ``_cformat`` are shared by all); within a capability,
    internal modules are its explicit interfaces (the test above)."""
    bad = []
    for me, target, name in package_imports():
        mine, theirs = capability(me), capability(target)
        if mine is None or theirs is None or theirs in (mine, "core"):
            continue
        private = [p for p in target.split(".")[1:] if p.startswith("_")]
        if private or (name and name.startswith("_")):
            bad.append((me, target, name))
    assert not bad, bad


def test_no_module_imports_through_an_old_path():
    """The shims at the old flat paths are for users; the package itself imports the new
    paths (so that the shims could one day go, and no import order depends on them)."""
    bad = [(me, target, name) for me, target, name in package_imports()
           if capability(me) is not None and target in SHIMS]
    assert not bad, bad


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_every_shim_is_a_small_alias(old):
    """A file shim is a few lines that alias the moved module; an old path of the machine and
    numerics modules has no ``.py`` (so that git's rename detection carries edits made on
    other branches to the old file over to the moved one) and a ``.pyi`` stub of the new."""
    path = os.path.join(ROOT, *old.split("."))
    new = SHIMS[old]
    pkg, mod = new.rsplit(".", 1)
    if old in ALIASES:
        assert not os.path.exists(path + ".py")
        with open(path + ".pyi") as fh:
            assert f"from .{new[len('dojo_kernels.'):]} import *" in fh.read()
        assert os.path.isfile(os.path.join(ROOT, *new.split(".")) + ".py")
        return
    with open(path + ".py") as fh:
        src = fh.read()
    assert f"from .{pkg[len('dojo_kernels.'):]} import {mod} as _impl" in src
    assert "_sys.modules[__name__] = _impl" in src and len(src.splitlines()) < 15


@pytest.mark.parametrize("old", ALIASES)
def test_old_paths_import_first_in_a_fresh_interpreter(old):
    """``import dojo_kernels.mesh`` (and the others without a file) as the very first import
    of an interpreter, and ``from dojo_kernels.mesh import ...``: the package registers the
    moved module before the import system looks for the old path."""
    new = SHIMS[old]
    name = {"dojo_kernels.d1": "D1Chip", "dojo_kernels.mesh": "Mesh2D",
            "dojo_kernels._units": "CLI_UNITS", "dojo_kernels.formats": "Format"}[old]
    code = (f"import sys, {old}; from {old} import {name}; import {new} as new; "
            f"assert sys.modules['{old}'] is new and {name} is new.{name}; "
            f"import importlib; assert importlib.import_module('{old}') is new; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(ROOT), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]


DATA = os.path.join(ROOT, "tests", "data")


def test_pickles_from_before_the_move_load_in_a_fresh_interpreter():
    """tests/data/pickles_before_layout.pkl was written by the package before the machine
    and numerics modules moved (its pickles name ``dojo_kernels.d1.D1Chip``,
    ``dojo_kernels.mesh.Mesh2D``, ``dojo_kernels.formats.Format``; how: the generator script
    beside it). A fresh interpreter loads it, and every object equals the one the current
    code builds from the same arguments."""
    path = os.path.join(DATA, "pickles_before_layout.pkl")
    with open(path, "rb") as fh:
        raw = fh.read()
    for old in (b"dojo_kernels.d1", b"dojo_kernels.mesh", b"dojo_kernels.formats"):
        assert old in raw                                   # the fixture is what it says
    code = r"""
import pickle, sys
import dojo_kernels as dk
objs = pickle.load(open(sys.argv[1], "rb"))
tile = dk.TrainingTile()
now = {
    "D1Node": dk.D1Node(clock_hz=2.5e9), "D1Chip": dk.D1Chip(), "TrainingTile": tile,
    "D2Tile": dk.D2Tile(), "DojoSystem": dk.DojoSystem(tiles=6),
    "chip_mesh": dk.mesh.chip_mesh(3, 4), "training_tile": dk.mesh.training_tile(),
    "damaged": dk.mesh.chip_mesh(3, 4).with_failures(nodes=[5]),
    "cfloat8_143": dk.cfloat8_143(bias=9), "BF16": dk.BF16,
    "plan": dk.plan_gemm(64, 96, 128, a_format=dk.BF16, b_format=dk.BF16, machine=tile),
    "allreduce": dk.estimate_allreduce(1e6, dk.mesh.chip_mesh(3, 4), algorithm="ring"),
    "hierarchical": dk.estimate_hierarchical(1e6, dk.DojoSystem(tiles=6)),
}
assert sorted(objs) == sorted(now), sorted(objs)
for k in now:
    assert type(objs[k]) is type(now[k]), k
    if k in ("chip_mesh", "training_tile", "damaged"):
        same = objs[k].shape == now[k].shape and objs[k].link_bandwidth == now[k].link_bandwidth
        if k == "damaged":
            same = same and objs[k].failed_nodes == now[k].failed_nodes
    elif k == "plan":
        same = objs[k].to_dict() == now[k].to_dict()
    elif k in ("allreduce", "hierarchical"):
        same = objs[k].time == now[k].time and objs[k].to_dict() == now[k].to_dict()
    else:
        same = objs[k] == now[k]
    assert same, k
assert type(objs["D1Chip"]) is dk.machine.d1.D1Chip and type(objs["BF16"]) is dk.numerics.formats.Format
print("ok", len(objs))
"""
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         cwd=os.path.dirname(ROOT), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "13"]


def test_torch_pickles_from_before_the_move_load():
    pytest.importorskip("torch")
    path = os.path.join(DATA, "pickles_before_layout_torch.pkl")
    with open(path, "rb") as fh:
        assert b"dojo_kernels.torch" in fh.read()
    code = ("import pickle, sys; import dojo_kernels.numerics.torch as t; "
            "o = pickle.load(open(sys.argv[1], 'rb')); "
            "assert o['recipe'] == t.RECIPES['cfloat8'], o; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         cwd=os.path.dirname(ROOT), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]
