"""Type stub of the old path ``dojo_kernels._units``: at run time it is the module
``dojo_kernels.machine._units`` itself (``dojo_kernels/__init__.py`` registers it in sys.modules;
docs/layout.md, "Old paths"). No ``_units.py`` exists, so that git carries edits made to the
old file on other branches to the moved one."""
from .machine._units import *  # noqa: F401,F403
from .machine._units import CLI_UNITS as CLI_UNITS
from .machine._units import check as check
from .machine._units import check_latency as check_latency
from .machine._units import from_cli as from_cli
