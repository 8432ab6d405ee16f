"""subnet.env: upstream's exact text, atomic writes, reading the previous subnet back."""

import os
import stat
from ipaddress import IPv4Network, IPv6Network

from pyflannel.subnet.env_file import SubnetEnv, previous_subnet, write_atomic


def test_render_matches_upstream_sample():
    # dist/sample_subnet.env
    env = SubnetEnv(IPv4Network("10.1.0.0/16"), IPv4Network("10.1.74.0/24"), 1472, False)
    assert env.render() == (
        "FLANNEL_NETWORK=10.1.0.0/16\n"
        "FLANNEL_SUBNET=10.1.74.1/24\n"
        "FLANNEL_MTU=1472\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_render_dual_stack_order():
    env = SubnetEnv(
        IPv4Network("10.5.0.0/16"),
        IPv4Network("10.5.72.0/24"),
        1450,
        True,
        IPv6Network("2001:cafe:42::/56"),
        IPv6Network("2001:cafe:42::/64"),
    )
    assert env.render().splitlines() == [
        "FLANNEL_NETWORK=10.5.0.0/16",
        "FLANNEL_SUBNET=10.5.72.1/24",
        "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56",
        "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64",
        "FLANNEL_MTU=1450",
        "FLANNEL_IPMASQ=true",
    ]


def test_write_is_mode_0644_despite_umask_and_creates_the_directory(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    old = os.umask(0o077)
    try:
        assert write_atomic(path, "A=1\n")
    finally:
        os.umask(old)
    assert path.read_text() == "A=1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_unchanged_content_is_not_rewritten(tmp_path):
    path = tmp_path / "subnet.env"
    assert write_atomic(path, "A=1\n")
    inode = path.stat().st_ino
    assert not write_atomic(path, "A=1\n")
    assert path.stat().st_ino == inode
    assert write_atomic(path, "A=2\n")
    assert path.stat().st_ino != inode  # replaced by rename, never edited in place


def test_previous_subnet_is_the_masked_network(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n")
    assert previous_subnet(path) == IPv4Network("10.1.74.0/24")


def test_previous_subnet_skips_invalid_list_items(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text('FLANNEL_SUBNET="junk,fd00::1/64,10.1.9.1/24"\n')
    assert previous_subnet(path) == IPv4Network("10.1.9.0/24")


def test_previous_subnet_of_a_missing_or_garbled_file_is_none(tmp_path):
    assert previous_subnet(tmp_path / "absent") is None
    (tmp_path / "bad").write_bytes(b"\xff\xfe\x00")
    assert previous_subnet(tmp_path / "bad") is None
    (tmp_path / "empty").write_text("FLANNEL_SUBNET=\n")
    assert previous_subnet(tmp_path / "empty") is None


def test_previous_network_is_read_from_the_subnet_file(tmp_path):
    from ipaddress import IPv4Network

    from pyflannel.subnet.env_file import previous_network

    path = tmp_path / "subnet.env"
    assert previous_network(path) is None
    path.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.5.1/24\n")
    assert previous_network(path) == IPv4Network("10.1.0.0/16")
    path.write_text("FLANNEL_NETWORK=junk\n")
    assert previous_network(path) is None
