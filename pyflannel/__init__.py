"""pyflannel: a pure-Python, flannel-compatible overlay network daemon."""

from pyflannel.kernel.pyroute2_lite import install as _load_only_used_pyroute2_modules

__version__ = "0.1.0"

_load_only_used_pyroute2_modules()
