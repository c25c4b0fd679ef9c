"""``dojo_kernels._faults``: moved to ``dojo_kernels.collectives._faults``
(internal: schedules on damaged meshes).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .collectives import _faults as _impl

_sys.modules[__name__] = _impl
