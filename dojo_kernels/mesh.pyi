"""Type stub of the old path ``dojo_kernels.mesh``: at run time it is the module
``dojo_kernels.machine.mesh`` itself (``dojo_kernels/__init__.py`` registers it in sys.modules;
docs/layout.md, "Old paths"). No ``mesh.py`` exists, so that git carries edits made to the
old file on other branches to the moved one."""
from .machine.mesh import *  # noqa: F401,F403
