"""``dojo_kernels.schedule``: moved to ``dojo_kernels.collectives.schedule``
(the collectives capability).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .collectives import schedule as _impl
from .collectives.schedule import *  # noqa: F401,F403  (the public names, for type checkers)

_sys.modules[__name__] = _impl
