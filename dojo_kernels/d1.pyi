"""Type stub of the old path ``dojo_kernels.d1``: at run time it is the module
``dojo_kernels.machine.d1`` itself (``dojo_kernels/__init__.py`` registers it in sys.modules;
docs/layout.md, "Old paths"). No ``d1.py`` exists, so that git carries edits made to the
old file on other branches to the moved one."""
from .machine.d1 import *  # noqa: F401,F403
