"""The flannel CNI plugin's decisions (pure): the delegate config upstream's plugin builds,
subnet.env parsing, and refusals (upstream's flannel_linux_test.go cases as a guide)."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.cni.netconf import (
    CniError,
    check_container_id,
    delegate_config,
    parse_netconf,
    parse_subnet_env,
)

ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"


def conf(**extra):
    return parse_netconf(
        json.dumps(
            {"cniVersion": "0.3.1", "name": "cni-flannel", "type": "flannel", **extra}
        ).encode()
    )


def test_the_default_delegate_is_upstreams_bridge():
    d = delegate_config(conf(), parse_subnet_env(ENV, "subnet.env"))
    assert d == {
        "name": "cni-flannel",
        "type": "bridge",
        "ipMasq": False,  # flannel masquerades (FLANNEL_IPMASQ=true): the bridge must not
        "mtu": 1472,
        "isGateway": True,
        "cniVersion": "0.3.1",
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.1.17.0/24"}]],
            "routes": [{"dst": "10.1.0.0/16"}],
        },
    }


def test_given_delegate_keys_win_and_ipam_and_runtime_config_pass_through():
    n = conf(
        delegate={"type": "ipvlan", "mtu": 1400, "ipMasq": True},
        ipam={"type": "host-local", "dataDir": "/x", "routes": [{"dst": "192.168.0.0/16"}]},
        runtimeConfig={"portMappings": [{"hostPort": 80, "containerPort": 8080}]},
    )
    d = delegate_config(n, parse_subnet_env(ENV, "subnet.env"))
    assert (d["type"], d["mtu"], d["ipMasq"]) == ("ipvlan", 1400, True)
    assert "isGateway" not in d  # only for bridge
    assert d["ipam"]["dataDir"] == "/x"
    assert d["ipam"]["routes"] == [{"dst": "192.168.0.0/16"}, {"dst": "10.1.0.0/16"}]
    assert d["runtimeConfig"]["portMappings"][0]["hostPort"] == 80


def test_dual_stack_subnet_env_gives_two_ranges_and_two_routes():
    env = parse_subnet_env(
        ENV + "FLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:17::1/64\n", "f"
    )
    ipam = delegate_config(conf(), env)["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fd00:10:0:17::/64"}]]
    assert ipam["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "fd00:10::/48"}]


@pytest.mark.parametrize(
    "delegate, message",
    [
        ({"name": "x"}, "must not have 'name'"),
        ({"ipam": {}}, "must not have 'ipam'"),
        ({"type": 3}, r"\(string\) 'type'"),
    ],
)
def test_upstreams_delegate_refusals(delegate, message):
    with pytest.raises(CniError, match=message):
        delegate_config(conf(delegate=delegate), parse_subnet_env(ENV, "f"))


def test_subnet_env_missing_keys_are_named():
    with pytest.raises(CniError, match="f is missing FLANNEL_MTU, FLANNEL_IPMASQ"):
        parse_subnet_env("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n", "f")


@pytest.mark.parametrize("cid", ["abc", "0" * 64, "pod_1.a-b"])
def test_plain_container_ids_pass(cid):
    assert check_container_id(cid) == cid


@pytest.mark.parametrize("cid", ["", "..", "../x", "a/b", "a\x00b", ".x", "x" * 256, "a b"])
def test_other_container_ids_are_refused(cid):
    with pytest.raises(CniError) as e:
        check_container_id(cid)
    assert e.value.code == 4


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")  # the rule, as a pattern


@settings(deadline=None)
@given(
    st.text(alphabet="aZ09_.-/ \x00\u0661\u00e9", max_size=260)
    | st.text(alphabet="ab_.-", min_size=250, max_size=260)
)
def test_a_container_id_passes_exactly_when_it_is_a_plain_name(cid):
    try:
        check_container_id(cid)
        passed = True
    except CniError:
        passed = False
    assert passed == bool(PLAIN_NAME.fullmatch(cid)), cid


def test_unknown_cni_version_and_junk_are_refused_with_their_codes():
    with pytest.raises(CniError) as e:
        parse_netconf(b'{"cniVersion": "0.2.0"}')
    assert e.value.code == 1
    with pytest.raises(CniError) as e:
        parse_netconf(b"[1, 2]")
    assert e.value.code == 6


def test_install_writes_an_executable_plugin_and_keeps_an_existing_conflist(tmp_path):
    import subprocess

    from pyflannel.cni.install import CONFLIST_NAME, install

    done = install(str(tmp_path / "bin"), str(tmp_path / "net.d"))
    plugin = tmp_path / "bin" / "flannel"
    assert plugin.stat().st_mode & 0o111 and len(done) == 2
    conflist = json.loads((tmp_path / "net.d" / CONFLIST_NAME).read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["flannel", "portmap"]
    assert conflist["plugins"][0]["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}
    out = subprocess.run(
        [str(plugin)], input=b"", env={"CNI_COMMAND": "VERSION"}, capture_output=True
    )
    assert json.loads(out.stdout)["supportedVersions"][-1] == "1.0.0"
    (tmp_path / "net.d" / CONFLIST_NAME).write_text("{}")
    assert "kept the existing" in install(str(tmp_path / "bin"), str(tmp_path / "net.d"))[1]
    assert (tmp_path / "net.d" / CONFLIST_NAME).read_text() == "{}"


def test_the_plugin_imports_nothing_of_the_daemon():
    import subprocess
    import sys

    code = "import sys, pyflannel.cni.plugin; print(sorted(m for m in sys.modules if m.split('.')[0] in ('h2', 'google', 'pyroute2', 'asyncio', 'numpy') or m.startswith('pyflannel.app')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
