"""Importing from a source tree that shadows the installed package (issue 11, item 5): the
error names both locations and the fix, instead of "compiled module missing".

The situation is built in a subprocess: a temporary copy of the source tree (no compiled
modules) is the current directory, and the installed package's parent directory is on
PYTHONPATH after it (python -S: no site-packages, no editable-install finder, so only these
two copies exist)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import dojo_kernels

INSTALLED = os.path.dirname(os.path.realpath(dojo_kernels.__file__))
SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dojo_kernels")


def _copy_tree(dst):
    """The source tree without build products (as in a fresh clone)."""
    src = SOURCE if os.path.isdir(SOURCE) else INSTALLED
    shutil.copytree(src, os.path.join(dst, "dojo_kernels"),
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.pyd"))
    for f in ("pyproject.toml", "setup.py"):
        p = os.path.join(os.path.dirname(src), f)
        if os.path.isfile(p):
            shutil.copy(p, dst)


def _import(cwd, pythonpath):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-S", "-c", "import dojo_kernels"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_shadowing_names_both_locations_and_the_fix(tmp_path):
    tree = tmp_path / "checkout"
    tree.mkdir()
    _copy_tree(str(tree))
    p = _import(str(tree), os.path.dirname(INSTALLED))
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ")
    assert os.path.realpath(str(tree / "dojo_kernels")) in last
    assert INSTALLED in last
    assert "shadows the installed package" in last
    assert "run from another directory" in last and "pip install -e ." in last


def test_unbuilt_tree_alone_says_build_it(tmp_path):
    tree = tmp_path / "checkout"
    tree.mkdir()
    _copy_tree(str(tree))
    p = _import(str(tree), None)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "compiled module missing" in last and "pip install" in last
    assert os.path.realpath(str(tree / "dojo_kernels")) in last
    assert "shadows" not in last


def test_installed_copy_imports_from_elsewhere(tmp_path):
    """The control: from a neutral directory, the installed package imports fine."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", "import dojo_kernels, os; "
                        "print(os.path.dirname(os.path.realpath(dojo_kernels.__file__)))"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == INSTALLED
