"""The capability check that turns EPERM tracebacks into one clear error."""

import pytest

from pyflannel.kernel.privileges import (
    MissingPrivileges,
    check_privileges,
    effective_capabilities,
    missing_capabilities,
)

ROOT = "Name:\tx\nCapEff:\t000001ffffffffff\n"
NO_NET_ADMIN = "Name:\tx\nCapEff:\t000001ffffffefff\n"  # bit 12 cleared


def test_root_has_what_it_needs():
    assert missing_capabilities(effective_capabilities(ROOT)) == []


def test_missing_net_admin_is_named_with_the_unit_that_grants_it(tmp_path):
    status = tmp_path / "status"
    status.write_text(NO_NET_ADMIN)
    with pytest.raises(MissingPrivileges, match=r"lacks CAP_NET_ADMIN.*AmbientCapabilities"):
        check_privileges(str(status))


def test_no_capabilities_at_all():
    assert missing_capabilities(effective_capabilities("CapEff:\t0000000000000000\n")) == [
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
    ]
