"""``dojo_kernels.torch``: moved to ``dojo_kernels.numerics.torch``
(the numerics capability: the PyTorch integration).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .numerics import torch as _impl
from .numerics.torch import *  # noqa: F401,F403  (the public names, for type checkers)

_sys.modules[__name__] = _impl
