"""``dojo_kernels.mesh``: moved to ``dojo_kernels.machine.mesh``
(the machine capability).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .machine import mesh as _impl
from .machine.mesh import *  # noqa: F401,F403  (the public names, for type checkers)

_sys.modules[__name__] = _impl
