"""``dojo_kernels.train``: moved to ``dojo_kernels.report.train``
(the report capability).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .report import train as _impl
from .report.train import *  # noqa: F401,F403  (the public names, for type checkers)

_sys.modules[__name__] = _impl
