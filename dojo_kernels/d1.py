"""``dojo_kernels.d1``: moved to ``dojo_kernels.machine.d1``
(the machine capability).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .machine import d1 as _impl
from .machine.d1 import *  # noqa: F401,F403  (the public names, for type checkers)

_sys.modules[__name__] = _impl
