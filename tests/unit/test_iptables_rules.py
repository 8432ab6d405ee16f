"""iptables rules: upstream's exact text and order, the restore transaction, drift checks."""

from ipaddress import IPv4Network

from pyflannel.traffic.iptables_rules import (
    drift,
    forward_rules,
    masquerade_rules,
    parse_version,
    restore_payload,
)

CLUSTER = IPv4Network("10.1.0.0/16")
POD = IPv4Network("10.1.5.0/24")


def test_masquerade_rules_match_upstreams_iptables_S_output():
    assert [r.line for r in masquerade_rules(CLUSTER, POD, random_fully=True)] == [
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.1.5.0/24 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.5.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.5.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
        "-j MASQUERADE --random-fully",
        '-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" '
        "-j MASQUERADE --random-fully",
    ]
    assert all(r.table == "nat" for r in masquerade_rules(CLUSTER, POD, True))


def test_without_random_fully():
    rules = masquerade_rules(CLUSTER, POD, random_fully=False)
    assert rules[-1].line.endswith("-j MASQUERADE") and "random" not in " ".join(
        r.line for r in rules
    )


def test_forward_rules_match_upstream():
    assert [(r.table, r.line) for r in forward_rules(CLUSTER)] == [
        ("filter", '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD'),
        (
            "filter",
            '-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        ),
        (
            "filter",
            '-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        ),
    ]


def test_restore_payload_declares_our_chain_and_replaces_existing_jumps():
    rules = forward_rules(CLUSTER)
    jump = rules[0].line
    payload = restore_payload("filter", rules, [jump, jump], CLUSTER)
    assert payload.splitlines() == [
        "*filter",
        ":FLANNEL-FWD - [0:0]",
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        jump,
        rules[1].line,
        rules[2].line,
        "COMMIT",
    ]


def test_restore_payload_for_a_fresh_table_has_no_deletes():
    payload = restore_payload("nat", masquerade_rules(CLUSTER, POD, False), [], CLUSTER)
    assert "-D " not in payload and payload.startswith("*nat\n:FLANNEL-POSTRTG - [0:0]\n")


def listing(rules):
    return {"nat": ["-P POSTROUTING ACCEPT", "-N FLANNEL-POSTRTG"] + [r.line for r in rules]}


def test_no_drift_when_everything_is_there():
    rules = masquerade_rules(CLUSTER, POD, True)
    assert drift(rules, listing(rules), CLUSTER) == []


def test_drift_finds_missing_duplicated_and_foreign_rules():
    rules = masquerade_rules(CLUSTER, POD, True)
    have = listing(rules)
    have["nat"].remove(rules[3].line)
    have["nat"].append(rules[0].line)  # jump twice
    have["nat"].append("-A FLANNEL-POSTRTG -s 10.1.9.0/24 -j RETURN")  # old subnet's leftovers
    assert set(drift(rules, have, CLUSTER)) == {
        f"missing in nat: {rules[3].line}",
        f"duplicated in nat: {rules[0].line}",
        "unexpected in nat: -A FLANNEL-POSTRTG -s 10.1.9.0/24 -j RETURN",
    }


def test_a_flushed_table_is_all_missing():
    rules = forward_rules(CLUSTER)
    assert len(drift(rules, {"filter": ["-P FORWARD ACCEPT"]}, CLUSTER)) == 3


def test_version_parsing():
    assert parse_version("iptables v1.8.9 (nf_tables)") == (1, 8, 9)
    assert parse_version("iptables v1.6.1") < (1, 6, 2) <= parse_version("iptables v1.6.2")
    assert parse_version("garbage") == (0, 0, 0)


def test_vxlan_peer_filter_rules():
    from pyflannel.traffic.iptables_rules import vxlan_peer_rules

    rules = vxlan_peer_rules(8472, ["198.51.100.2", "198.51.100.3"])
    assert [(r.table, r.line) for r in rules] == [
        (
            "filter",
            '-A INPUT -p udp -m udp --dport 8472 -m comment --comment "pyflannel vxlan peers" -j FLANNEL-VXLAN-8472',
        ),
        (
            "filter",
            '-A FLANNEL-VXLAN-8472 -s 198.51.100.2/32 -m comment --comment "pyflannel vxlan peers" -j RETURN',
        ),
        (
            "filter",
            '-A FLANNEL-VXLAN-8472 -s 198.51.100.3/32 -m comment --comment "pyflannel vxlan peers" -j RETURN',
        ),
        ("filter", '-A FLANNEL-VXLAN-8472 -m comment --comment "pyflannel vxlan peers" -j DROP'),
    ]


# -- two networks on one host share upstream's chains; each owns only its own lines ----------

OTHER = IPv4Network("10.2.0.0/16")
OTHER_POD = IPv4Network("10.2.7.0/24")


def both_networks_listing():
    ours = masquerade_rules(CLUSTER, POD, True)
    theirs = masquerade_rules(OTHER, OTHER_POD, True)
    lines = ["-P POSTROUTING ACCEPT", "-N FLANNEL-POSTRTG", ours[0].line]
    lines += [r.line for r in ours[1:]] + [r.line for r in theirs[2:]]
    return ours, theirs, {"nat": lines}


def test_another_networks_lines_in_the_shared_chain_are_not_drift():
    ours, theirs, listed = both_networks_listing()
    assert drift(ours, listed, CLUSTER) == []
    assert drift(theirs, listed, OTHER) == []


def test_restoring_one_network_never_declares_or_deletes_the_others_lines():
    ours, _, listed = both_networks_listing()
    listed["nat"].remove(ours[3].line)  # one of ours missing: restore
    payload = restore_payload("nat", ours, listed["nat"], CLUSTER).splitlines()
    assert ":FLANNEL-POSTRTG - [0:0]" not in payload  # declaring would flush the other's
    deleted = [line for line in payload if line.startswith("-D FLANNEL-POSTRTG")]
    assert deleted and not any(str(OTHER) in line for line in deleted)
    assert all(str(CLUSTER) in line for line in deleted)
    assert [line for line in payload if line.startswith("-A FLANNEL-POSTRTG")] == [
        r.line for r in ours[2:]
    ]
    assert not any(line.startswith("-I") for line in payload)  # the shared line is there


def test_a_missing_shared_line_is_inserted_first_and_a_stray_line_is_removed():
    ours, _, listed = both_networks_listing()
    listed["nat"].remove(ours[1].line)  # the kube-proxy mark rule
    listed["nat"].append("-A FLANNEL-POSTRTG -s 203.0.113.0/24 -j ACCEPT")  # nobody's
    problems = drift(ours, listed, CLUSTER)
    assert f"missing in nat: {ours[1].line}" in problems
    assert "unexpected in nat: -A FLANNEL-POSTRTG -s 203.0.113.0/24 -j ACCEPT" in problems
    payload = restore_payload("nat", ours, listed["nat"], CLUSTER).splitlines()
    assert f"-I FLANNEL-POSTRTG 1 {ours[1].spec}" in payload
    assert "-D FLANNEL-POSTRTG -s 203.0.113.0/24 -j ACCEPT" in payload


def test_the_vxlan_peer_filter_chain_is_per_port():
    from pyflannel.traffic.iptables_rules import vxlan_peer_rules

    a = vxlan_peer_rules(8472, ["198.51.100.2"])
    b = vxlan_peer_rules(8473, ["198.51.100.3"])
    assert {r.chain for r in a[1:]} == {"FLANNEL-VXLAN-8472"}
    assert {r.chain for r in b[1:]} == {"FLANNEL-VXLAN-8473"}


def test_the_site_port_chain_lets_members_by_and_counts_the_rest():
    from pyflannel.traffic.iptables_rules import site_port_rules

    rules = site_port_rules(51830, ["10.0.0.2", "198.51.100.103"])
    c = '-m comment --comment "pyflannel site link members"'
    assert [r.line for r in rules] == [
        f"-A INPUT -p udp -m udp --dport 51830 {c} -j FLANNEL-SITE-51830",
        f"-A FLANNEL-SITE-51830 -s 10.0.0.2/32 {c} -j RETURN",
        f"-A FLANNEL-SITE-51830 -s 198.51.100.103/32 {c} -j RETURN",
        # no target: counted, then WireGuard decides (a member roamed to a new address passes)
        '-A FLANNEL-SITE-51830 -m comment --comment "pyflannel site link: from no member"',
    ]
    assert {r.table for r in rules} == {"filter"}


def test_the_strangers_count_is_read_from_the_chain_with_its_counters():
    from pyflannel.traffic.iptables_rules import strangers_counted

    # iptables v1.8.9 (nf_tables), `iptables -S FLANNEL-SITE-51830 -v`, as printed
    listed = (
        "-N FLANNEL-SITE-51830\n"
        '-A FLANNEL-SITE-51830 -s 10.0.0.2/32 -m comment --comment "pyflannel site link members"'
        " -c 812 90211 -j RETURN\n"
        '-A FLANNEL-SITE-51830 -m comment --comment "pyflannel site link: from no member"'
        " -c 50 2100\n"
    )
    assert strangers_counted(listed) == 50
    assert strangers_counted("-N FLANNEL-SITE-51830\n") is None
