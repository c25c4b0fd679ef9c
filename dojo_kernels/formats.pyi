"""Type stub of the old path ``dojo_kernels.formats``: at run time it is the module
``dojo_kernels.numerics.formats`` itself (``dojo_kernels/__init__.py`` registers it in sys.modules;
docs/layout.md, "Old paths"). No ``formats.py`` exists, so that git carries edits made to the
old file on other branches to the moved one."""
from .numerics.formats import *  # noqa: F401,F403
