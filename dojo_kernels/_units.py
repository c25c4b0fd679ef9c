"""``dojo_kernels._units``: moved to ``dojo_kernels.machine._units``
(internal: SI units and the CLI's human units).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .machine import _units as _impl

_sys.modules[__name__] = _impl
