"""Issue 12 item 8: the package is grouped by capability (collectives and report are
subpackages), and every public path the README and the docs name still resolves, old flat
paths included; moved modules are the same objects under both paths; reports pickled by
this code load in a fresh interpreter."""
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
              "dojo_kernels.d1", "dojo_kernels.numerics", "dojo_kernels.formats"):
        assert p in paths, p
    assert len(paths) > 50


@pytest.mark.parametrize("path", named_paths())
def test_every_documented_path_resolves(path):
    path = path.split(" as ")[0]
    if path.split(".")[1] in ("torch", "train") or path.startswith("dojo_kernels.report.train"):
        pytest.importorskip("torch")
    resolve(path)


OLD_TO_NEW = {
    "dojo_kernels.hierarchical": "dojo_kernels.collectives.hierarchical",
    "dojo_kernels.schedule": "dojo_kernels.collectives.schedule",
    "dojo_kernels.mpi": "dojo_kernels.collectives.mpi",
    "dojo_kernels._schedule": "dojo_kernels.collectives._schedule",
    "dojo_kernels._timing": "dojo_kernels.collectives._timing",
    "dojo_kernels._faults": "dojo_kernels.collectives._faults",
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_flat_paths_are_the_moved_modules(old):
    assert importlib.import_module(old) is importlib.import_module(OLD_TO_NEW[old])


def test_old_train_paths_are_the_moved_modules():
    pytest.importorskip("torch")
    assert importlib.import_module("dojo_kernels.train") is \
        importlib.import_module("dojo_kernels.report.train")
    assert importlib.import_module("dojo_kernels._train_cli") is \
        importlib.import_module("dojo_kernels.report._train_cli")


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
    assert g.plan_gemm is dk.plan_gemm


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
