"""br_netfilter: what status and doctor say of each state, and what --enable-br-netfilter
changes (on a directory standing in for /proc/sys/net/bridge)."""

from pyflannel.ops.doctor.checks import judge_bridge_nf
from pyflannel.traffic import br_netfilter
from pyflannel.traffic.br_netfilter import BridgeNf, problem


def test_set_is_no_problem():
    assert problem(BridgeNf("1", "1"), dual_stack=True) is None
    assert problem(BridgeNf("1", "0"), dual_stack=False) is None  # IPv6 matters on dual-stack
    assert judge_bridge_nf(BridgeNf("1", "0"), False).status == "pass"


def test_an_unset_sysctl_is_named_with_its_fix():
    what, fix = problem(BridgeNf("0", "1"), dual_stack=False)
    assert "net.bridge.bridge-nf-call-iptables is not 1" in what and "Services" in what
    assert "sysctl -w net.bridge.bridge-nf-call-iptables=1" in fix
    assert "--enable-br-netfilter" in fix
    what, fix = problem(BridgeNf("1", "0"), dual_stack=True)
    assert "bridge-nf-call-ip6tables is not 1" in what


def test_a_module_not_loaded_is_named_with_modprobe():
    what, fix = problem(BridgeNf(None, None), dual_stack=False)
    assert "br_netfilter module is not loaded" in what
    assert fix.startswith("modprobe br_netfilter")
    finding = judge_bridge_nf(BridgeNf(None, None), False)
    assert finding.status == "warn" and finding.advice == fix


def test_enable_sets_what_is_off_and_says_so(tmp_path):
    (tmp_path / "bridge-nf-call-iptables").write_text("0\n")
    (tmp_path / "bridge-nf-call-ip6tables").write_text("1\n")
    done = br_netfilter.enable(dual_stack=True, root=tmp_path)
    assert done == ["set net.bridge.bridge-nf-call-iptables=1 (was 0)"]
    assert br_netfilter.read(tmp_path) == BridgeNf("1", "1")
    assert br_netfilter.enable(dual_stack=True, root=tmp_path) == []
