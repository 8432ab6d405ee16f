import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    """Mark tests by directory so `-m 'not e2e'` etc. work."""
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)
        if "/minions/" in path:
            item.add_marker(pytest.mark.minions)


def require(condition: bool, what: str) -> None:
    """Skip only where the machine truly lacks a capability, and say which. In CI
    (PYFLANNEL_REQUIRE_ALL=1) the capability is promised, so its absence is a failure."""
    if not condition:
        if os.environ.get("PYFLANNEL_REQUIRE_ALL") == "1":
            pytest.fail(f"this machine lacks {what}, which CI must provide")
        pytest.skip(f"this machine lacks {what}")


def require_root() -> None:
    require(os.geteuid() == 0, "root privileges (network namespaces need CAP_NET_ADMIN)")


def require_etcd() -> None:
    require(shutil.which("etcd") is not None, "the etcd server binary (apt install etcd-server)")
