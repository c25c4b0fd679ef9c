"""Report: the training-step report, the training demo and their command lines.

This subpackage groups one capability. Its modules and their roles:

- ``dojo_kernels.report`` (this package): the public API of ``dojo-kernels report`` --
  :class:`ReportConfig`, :func:`run_report`, :class:`Report`, :func:`render_report`,
  :func:`plot_report`, :func:`write_json`, :func:`compare_machines`, :func:`machine_with`,
  :data:`MACHINES` ... Implemented in ``_report``.
- :mod:`dojo_kernels.report.train` (also importable as ``dojo_kernels.train``): the
  ``dojo-kernels train`` demo (a small model trained with the number-format recipes of
  :mod:`dojo_kernels.torch`, step costs from the machine model).
- ``_train_cli`` (also ``dojo_kernels._train_cli``): the ``dojo-kernels train`` command line.

It builds on the other capabilities through their public APIs: GEMM (:mod:`dojo_kernels.gemm`),
numerics (:mod:`dojo_kernels.numerics`), collectives (:mod:`dojo_kernels.collectives`) and the
machine model (:mod:`dojo_kernels.d1`, :mod:`dojo_kernels.mesh`). ``dojo_kernels.cli`` (the
``dojo-kernels`` command) stays at the top of the package.
"""
from __future__ import annotations

from ._report import (HIST_EDGES, MACHINES, AllreduceResult, FaultResult, GemmResult,
                      Progress, Report, ReportConfig, compare_machines, fault_scenarios,
                      plot_report, render_report, run_report)
from ._report import FormatError as FormatError
from ._report import machine_with as machine_with
from ._report import pyplot as pyplot
from ._report import write_json as write_json

__all__ = ["ReportConfig", "GemmResult", "AllreduceResult", "Report", "run_report",
           "compare_machines", "MACHINES",
           "render_report", "plot_report", "Progress", "HIST_EDGES", "FaultResult",
           "fault_scenarios"]
