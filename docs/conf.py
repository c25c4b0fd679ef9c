"""Sphinx configuration of the dojo_kernels API reference (built by .ci/docs.sh).

The package must be installed in the building environment (its compiled modules are not in
the source tree): ``pip install ".[docs]"``.
"""
from __future__ import annotations

import dojo_kernels

project = "dojo_kernels"
author = "dojo_kernels authors"
release = dojo_kernels.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = False   # parameter "types" here are prose (shapes, formats), not xrefs
napoleon_use_ivar = True     # dataclass fields are documented once, in "Attributes"
napoleon_preprocess_types = False
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_mock_imports = ["mpi4py", "matplotlib"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
html_static_path: list[str] = []
