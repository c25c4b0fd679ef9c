"""The machine capability: the Dojo hardware as data, and the meshes collectives run on.

- :mod:`dojo_kernels.machine.d1` (old path :mod:`dojo_kernels.d1`): the D1 machine objects
  ``D1Node``, ``D1Chip``, ``TrainingTile``, ``D2Tile``, ``DojoSystem`` (each figure in one
  place, SI units) and ``machine_from_dict``.
- :mod:`dojo_kernels.machine.mesh` (old path :mod:`dojo_kernels.mesh`): ``Mesh2D``,
  ``DamagedMesh2D``, the presets and ``as_topology`` / ``as_levels`` (machine object -> mesh).
- internal ``_units``: the SI-unit checks and the CLI's human units, public here as
  :func:`check_unit`, :func:`from_cli` and :data:`CLI_UNITS` for the other capabilities
  (the report's settings, the command line).

The old flat paths ``dojo_kernels.d1``, ``dojo_kernels.mesh`` and ``dojo_kernels._units``
are the same module objects (docs/layout.md).
"""
from __future__ import annotations

from . import d1, mesh
from ._units import CLI_UNITS
from ._units import check as check_unit
from ._units import from_cli
from .d1 import D1Chip, D1Node, D2Tile, DojoSystem, TrainingTile, machine_from_dict

__all__ = ["D1Node", "D1Chip", "TrainingTile", "D2Tile", "DojoSystem", "machine_from_dict",
           "d1", "mesh", "check_unit", "from_cli", "CLI_UNITS"]
