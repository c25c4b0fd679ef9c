"""``dojo_kernels._train_cli``: moved to ``dojo_kernels.report._train_cli``
(internal: the dojo-kernels train command line).

This path keeps working: importing it gives the same module object (private names and
monkeypatching included), so old imports and old pickles still resolve."""
import sys as _sys

from .report import _train_cli as _impl

_sys.modules[__name__] = _impl
