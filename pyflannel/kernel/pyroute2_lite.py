"""Import only the pyroute2 modules pyflannel uses.

Called by ``kernel/rtnl.py`` (the one module of pyflannel that imports pyroute2) before its
first pyroute2 import. ``import pyroute2`` runs the package's ``__init__``, which imports every module the library
has (NDB with sqlite3, IPDB, conntrack, nftables, nl80211, plan9, …): ~190 modules, about
6 MB of the daemon's memory and a tenth of its start-up on this VM, for nothing the daemon
uses. ``install()`` puts the package in ``sys.modules`` without running its ``__init__``, so
``from pyroute2.iproute.linux import IPRoute`` loads that module and what it needs, nothing
else. Anyone asking the package itself for a name (``from pyroute2 import NDB``) gets the
whole package loaded then, as a plain import would have done: nothing breaks.
"""

from __future__ import annotations

import importlib.util
import sys


def install() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return  # not installed: the import that needs it says so
    package = importlib.util.module_from_spec(spec)  # created, not executed
    loaded = False

    def __getattr__(name: str):
        nonlocal loaded
        if loaded or name.startswith("__"):
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:  # a submodule
            return importlib.import_module(f"pyroute2.{name}")  # (``from pyroute2 import config``)
        loaded = True
        assert spec.loader is not None
        spec.loader.exec_module(package)  # the full package, on first use of its namespace
        return getattr(package, name)

    setattr(package, "__getattr__", __getattr__)  # noqa: B010 - a module-level __getattr__
    sys.modules["pyroute2"] = package
