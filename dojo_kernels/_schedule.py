"""``dojo_kernels._schedule``: moved to ``dojo_kernels.collectives._schedule``
(internal: the schedule builders).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .collectives import _schedule as _impl

_sys.modules[__name__] = _impl
