"""Collectives: the mesh all-reduce (timing model, numerics, schedules, MPI executor).

This subpackage groups one capability. Its modules and their roles:

- ``dojo_kernels.collectives`` (this package): the public all-reduce API --
  :func:`allreduce`, :func:`estimate_allreduce`, :func:`estimate_schedule`,
  :func:`schedule_for`, :class:`AllreduceReport`, :data:`ALGORITHMS`. Implemented in
  ``_allreduce`` (reports, algorithm choice, the numerics program run by the C reduce kernel).
- :mod:`dojo_kernels.collectives.hierarchical` (also importable as
  ``dojo_kernels.hierarchical``): all-reduce across levels of meshes.
- :mod:`dojo_kernels.collectives.schedule` (also ``dojo_kernels.schedule``): the public,
  exportable :class:`~dojo_kernels.schedule.Schedule` (messages, JSON, CSV, MSCCL-IR XML) and
  :func:`~dojo_kernels.schedule.pack_spanning_trees`.
- :mod:`dojo_kernels.collectives.mpi` (also ``dojo_kernels.mpi``): runs a schedule across MPI
  ranks.
- Internal modules (no public API; the old flat paths ``dojo_kernels._schedule``,
  ``dojo_kernels._timing``, ``dojo_kernels._faults`` still import the same module objects):
  ``_schedule`` (the schedule builders: rings, 2D, trees, the LP tree packing),
  ``_timing`` (the SPEC section 7 link model evaluated on a schedule), ``_faults`` (schedules on
  damaged meshes) and ``_common``, the explicit internal interface the public modules share
  (argument checks, buffer validation, ``from_dict`` validation): modules of this package
  import from it, never each other's private names.

The topologies come from the machine capability (:mod:`dojo_kernels.mesh`,
:mod:`dojo_kernels.d1`), the additions from the numerics core (``dojo_kernels._reduce``).
"""
from __future__ import annotations

from ._allreduce import (ALGORITHMS, AllreduceReport, allreduce, estimate_allreduce,
                         estimate_schedule, schedule_for)
# Internal helpers other modules and tests use (not part of the public contract).
from ._allreduce import FrozenDict as FrozenDict
from ._allreduce import Program as Program
from ._allreduce import compile_program as compile_program
from ._allreduce import unit_boundaries as unit_boundaries

__all__ = ["AllreduceReport", "allreduce", "estimate_allreduce", "estimate_schedule",
           "schedule_for", "ALGORITHMS"]
