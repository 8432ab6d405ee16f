"""pyflannel doctor's verdicts, fed with findings this machine cannot show (an OpenVZ host,
a slow etcd disk, a skewed clock, a missing VXLAN module)."""

import pytest

from pyflannel.ops.doctor.checks import (
    FAIL,
    PASS,
    WARN,
    Finding,
    Probe,
    exit_code,
    judge_clock,
    judge_container,
    judge_etcd,
    judge_fast_path,
    judge_iptables,
    judge_mtu,
    judge_port,
    judge_tun,
    judge_vxlan,
    render,
)

NOW = 1_790_000_000.0


def test_vxlan_missing_with_tun_is_a_warning_about_the_fallback():
    f = judge_vxlan(Probe(False, "Operation not supported"), tun_ok=True)
    assert f.status == WARN and "falls back to UDP" in f.advice


def test_neither_vxlan_nor_tun_is_a_failure():
    assert judge_vxlan(Probe(False, "Operation not supported"), tun_ok=False).status == FAIL
    assert judge_tun(Probe(False, "No such device")).status == FAIL


def test_what_a_kernel_can_do_is_named_by_its_release():
    f = judge_vxlan(Probe(False, "Unknown device type"), tun_ok=True, kernel="6.1.0-57-amd64")
    assert f.detail.startswith("this kernel (6.1.0-57-amd64) cannot create a VXLAN device")
    assert "(6.12.48+deb13-amd64)" in judge_vxlan(Probe(True), True, "6.12.48+deb13-amd64").detail


def test_the_udp_fast_path_finding_names_what_the_kernel_refused():
    taken = {"tun offloads": None, "UDP_SEGMENT": None, "UDP_GRO": None}
    f = judge_fast_path(Probe(True, facts=taken), "6.1.0-57-amd64")
    assert (
        f.status == PASS and "(6.1.0-57-amd64) takes tun offloads, UDP_SEGMENT, UDP_GRO" in f.detail
    )
    old = {**taken, "UDP_GRO": "refused: Protocol not available"}
    f = judge_fast_path(Probe(True, facts=old), "4.19.0-27-amd64")
    assert f.status == WARN and "refuses UDP_GRO (refused: Protocol not available)" in f.detail
    assert "UDP_SEGMENT" not in f.detail and "per packet" in f.advice
    assert judge_fast_path(Probe(None, "no namespace")).status == PASS


def test_openvz_container_is_recognised():
    f = judge_container({"openvz": True, "kind": ""})
    assert f.status == WARN and "OpenVZ" in f.detail and "UDP fallback" in f.advice


@pytest.mark.parametrize(
    "markers, status", [({"kind": "lxc"}, WARN), ({"lxc": True}, WARN), ({}, PASS)]
)
def test_other_containers(markers, status):
    assert judge_container(markers).status == status


def test_iptables_missing_fails_only_when_masquerade_is_wanted():
    assert judge_iptables(Probe(False, "not installed"), masquerade_wanted=True).status == FAIL
    assert judge_iptables(Probe(False, "not installed"), masquerade_wanted=False).status == WARN


@pytest.mark.parametrize(
    "mtu, status", [(1500, PASS), (9000, PASS), (1300, WARN), (100, FAIL), (None, FAIL)]
)
def test_mtu(mtu, status):
    assert judge_mtu("eth0", mtu).status == status


def test_etcd_members_are_listed_and_their_trouble_is_a_warning_with_advice():
    members = [
        {"name": "e1", "id": "1", "reachable": True, "rtt_ms": 1.2, "leader": True},
        {"name": "e2", "id": "2", "reachable": True, "rtt_ms": 1.0, "knows_leader": "1"},
        {"name": "e3", "id": "3", "reachable": True, "rtt_ms": 1.1, "knows_leader": "1"},
    ]
    members[1]["fsync_p99_ms"] = 64.0
    findings = judge_etcd(
        Probe(True, facts={"endpoint": "http://e:2379", "rtt_ms": 1.2, "members": members}), 0
    )
    assert findings[0].status == WARN and "0 leader changes in the last hour" in findings[0].detail
    assert [f.detail for f in findings[1:4]] == [
        "member e1: rtt 1.2 ms, leader",
        "member e2: rtt 1.0 ms, follower of 1, WAL fsync p99 >= 64 ms (0 over 1 s)",
        "member e3: rtt 1.1 ms, follower of 1",
    ]
    (warning,) = findings[4:]
    assert warning.status == WARN and "WAL fsync p99 is at least 64 ms" in warning.detail
    assert "Raft heartbeats" in warning.advice


def test_fast_etcd_passes_and_unreachable_fails():
    (ok,) = judge_etcd(Probe(True, facts={"endpoint": "e", "rtt_ms": 0.8}))
    assert ok.status == PASS
    (slow,) = judge_etcd(Probe(True, facts={"endpoint": "e", "rtt_ms": 80.0}))
    assert slow.status == WARN and "put etcd closer" in slow.advice
    (down,) = judge_etcd(Probe(False, "connection refused"))
    assert down.status == FAIL


def test_ports_used_by_our_own_devices_are_fine_others_are_not():
    assert judge_port(8472, "VXLAN", None, in_use=False).status == PASS
    assert judge_port(8472, "VXLAN", "flannel.1", in_use=True).status == PASS
    assert judge_port(8472, "VXLAN", "vxlan0", in_use=True).status == FAIL
    daemon = "pyflannel (pid 42: its UDP port, before the UDP path runs)"
    assert judge_port(8285, "UDP", daemon, in_use=True).status == PASS


@pytest.mark.parametrize(
    "skew, now, status",
    [(0.4, NOW, PASS), (12, NOW, WARN), (-300, NOW, FAIL), (None, NOW, WARN), (0, 1_000_000, FAIL)],
)
def test_clock(skew, now, status):
    assert judge_clock(skew, now).status == status


def test_exit_code_and_rendering():
    findings = [Finding("a", PASS, "fine"), Finding("b", WARN, "hmm", "do this")]
    assert exit_code(findings) == 2
    assert exit_code([*findings, Finding("c", FAIL, "bad")]) == 1
    assert exit_code(findings[:1]) == 0
    text = render(findings)
    assert (
        "WARN  b          hmm\n" in text
        and "-> do this" in text
        and text.endswith("passed with warnings\n")
    )


def test_legacy_iptables_and_nftables_both_hooking_forward_is_a_warning():
    from pyflannel.ops.doctor.checks import judge_traffic_tools

    both = Probe(
        True,
        facts={
            "iptables": "v1.8.9 (nf_tables)",
            "nft": "v1.0.6",
            "legacy_forward": "1 rules",
            "nft_forward": ["ip flannel-ipv4 forward (priority 0, policy accept)"],
        },
    )
    finding = judge_traffic_tools(both)
    assert finding.status == WARN and "both hook forward" in finding.detail
    assert "iptables-nft" in finding.advice
    one = Probe(True, facts={"iptables": "v1.8.9 (nf_tables)", "nft": "v1.0.6", "nft_forward": []})
    assert judge_traffic_tools(one).status == PASS
    assert "nftables not installed" in judge_traffic_tools(Probe(True, facts={})).detail
