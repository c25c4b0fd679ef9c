"""``dojo_kernels._timing``: moved to ``dojo_kernels.collectives._timing``
(internal: the link timing model).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .collectives import _timing as _impl

_sys.modules[__name__] = _impl
