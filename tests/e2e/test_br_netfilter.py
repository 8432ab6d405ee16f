"""br_netfilter on a real node namespace (the sysctls are per namespace): with
net.bridge.bridge-nf-call-iptables=0 the daemon runs, and status and doctor name the setting
with its fix; with --enable-br-netfilter the daemon sets it and says so."""

import pytest

from testbed import netns

from .conftest import FAST_RECONCILE, require_testbed

SYSCTL = "net.bridge.bridge-nf-call-iptables"


@pytest.fixture(scope="module")
def node():
    from testbed.bed import TestBed

    require_testbed()
    with TestBed(hosts=1) as bed:
        bed.put_config()
        (node,) = bed.nodes
        netns.sysctl(node.ns, SYSCTL, "0")
        node.start(*FAST_RECONCILE)
        node.wait_ready()
        yield node


def _value(node) -> str:
    return node.run("sysctl", "-n", SYSCTL).stdout.strip()


def test_unset_it_is_named_by_status_and_doctor_and_the_daemon_runs(node):
    assert _value(node) == "0" and node.running
    doc = node.status()
    assert doc["bridge_nf"]["iptables"] == "0"
    proc = node.status_cli()
    assert proc.returncode == 2, proc.stdout  # a warning, not a failure
    assert f"~ {SYSCTL} is not 1: traffic between pods on one bridge bypasses" in proc.stdout
    assert "bridge nf  bridge-nf-call-iptables=0" in proc.stdout
    _, findings = node.doctor()
    finding = findings["br_netfilter"]
    assert finding["status"] == "warn", finding
    assert f"sysctl -w {SYSCTL}=1" in finding["advice"]


def test_with_the_flag_the_daemon_sets_it_and_says_so(node):
    node.stop()
    mark = len(node.log())
    node.start(*FAST_RECONCILE, "--enable-br-netfilter")
    node.wait_ready()
    assert _value(node) == "1"
    node.wait_log(rf"--enable-br-netfilter: set {SYSCTL}=1 \(was 0\)", after=mark)
    assert "bypasses iptables" not in node.status_cli().stdout
    _, findings = node.doctor()
    assert findings["br_netfilter"]["status"] == "pass", findings["br_netfilter"]
