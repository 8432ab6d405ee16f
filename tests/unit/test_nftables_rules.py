"""nftables mode: upstream's tables and rules as text, the transaction that installs one
network's share, drift, and cleanup, with several networks sharing the table."""

from ipaddress import IPv4Network

from pyflannel.traffic import nftables_rules as nft

CLUSTER, POD = IPv4Network("10.1.0.0/16"), IPv4Network("10.1.5.0/24")
OTHER, OTHER_POD = IPv4Network("10.2.0.0/16"), IPv4Network("10.2.7.0/24")

# As `nft -a list table ip flannel-ipv4` prints upstream's rules (nftables 1.0.6).
LISTED = """table ip flannel-ipv4 { # handle 1
	comment "rules for flannel-ipv4"
	chain forward { # handle 1
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip saddr 10.1.0.0/16 accept # handle 3
		ip daddr 10.1.0.0/16 accept # handle 4
	}

	chain postrtg { # handle 2
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x00004000 return # handle 5
		ip saddr 10.1.5.0/24 ip daddr 10.1.0.0/16 return # handle 6
		ip saddr 10.1.0.0/16 ip daddr 10.1.5.0/24 return # handle 7
		ip saddr != 10.1.5.0/24 ip daddr 10.1.0.0/16 return # handle 8
		ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random # handle 9
		ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade fully-random # handle 10
	}
}
"""


def ours(fully_random=True):
    return nft.forward_rules(CLUSTER) + nft.masquerade_rules(CLUSTER, POD, fully_random)


def test_rules_are_upstreams_rule_for_rule():
    assert [r.text for r in nft.masquerade_rules(CLUSTER, POD, True)] == [
        "meta mark 0x00004000 return",
        "ip saddr 10.1.5.0/24 ip daddr 10.1.0.0/16 return",
        "ip saddr 10.1.0.0/16 ip daddr 10.1.5.0/24 return",
        "ip saddr != 10.1.5.0/24 ip daddr 10.1.0.0/16 return",
        "ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade fully-random",
    ]
    assert nft.masquerade_rules(CLUSTER, POD, False)[-1].text.endswith(" masquerade")
    assert [r.text for r in nft.forward_rules(CLUSTER)] == [
        "ip saddr 10.1.0.0/16 accept",
        "ip daddr 10.1.0.0/16 accept",
    ]


def test_listing_parses_chains_rules_and_handles():
    listing = nft.parse_listing(LISTED)
    assert list(listing.chains) == ["forward", "postrtg"]
    assert listing.chains["forward"] == [
        ("ip saddr 10.1.0.0/16 accept", 3),
        ("ip daddr 10.1.0.0/16 accept", 4),
    ]
    assert listing.chains["postrtg"][0] == ("meta mark 0x00004000 return", 5)
    assert not nft.parse_listing("").exists


def test_no_drift_when_all_is_there_and_all_missing_when_flushed():
    assert nft.drift(ours(), nft.parse_listing(LISTED), CLUSTER) == []
    problems = nft.drift(ours(), nft.Listing(), CLUSTER)
    assert problems == [
        "missing chain ip flannel-ipv4 forward",
        "missing chain ip flannel-ipv4 postrtg",
    ]


def test_an_old_subnets_rule_is_drift_and_is_deleted_by_handle():
    listing = nft.parse_listing(LISTED)
    listing.chains["postrtg"].append(("ip saddr 10.1.99.0/24 ip daddr 10.1.0.0/16 return", 11))
    problems = nft.drift(ours(), listing, CLUSTER)
    assert problems == ["unexpected in postrtg: ip saddr 10.1.99.0/24 ip daddr 10.1.0.0/16 return"]
    script = nft.transaction(ours(), listing, CLUSTER)
    assert "delete rule ip flannel-ipv4 postrtg handle 11" in script


def test_the_transaction_creates_without_flushing_and_rewrites_only_ours():
    listing = nft.parse_listing(LISTED)
    theirs = nft.masquerade_rules(OTHER, OTHER_POD, True)
    listing.chains["postrtg"] += [(r.text, 20 + i) for i, r in enumerate(theirs[1:])]
    script = nft.transaction(ours(), listing, CLUSTER).splitlines()
    assert script[0] == 'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }'
    assert not any(line.startswith(("flush", "delete table", "delete chain")) for line in script)
    deleted = {int(line.rsplit(" ", 1)[1]) for line in script if line.startswith("delete rule")}
    assert deleted == {3, 4, 6, 7, 8, 9, 10}  # ours; not the shared mark rule, not the other's
    added = [line for line in script if line.startswith("add rule")]
    assert added[-1] == (
        "add rule ip flannel-ipv4 postrtg ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 "
        "masquerade fully-random"
    )
    assert nft.drift(theirs, listing, OTHER) == []  # the other network sees no drift either


def test_a_missing_shared_rule_is_inserted_first():
    listing = nft.parse_listing(LISTED)
    del listing.chains["postrtg"][0]
    script = nft.transaction(ours(), listing, CLUSTER)
    assert "insert rule ip flannel-ipv4 postrtg meta mark 0x00004000 return" in script


def test_cleanup_deletes_the_table_when_nobody_else_is_in_it_else_only_ours():
    assert nft.cleanup(nft.parse_listing(LISTED), CLUSTER) == "delete table ip flannel-ipv4\n"
    assert nft.cleanup(nft.Listing(), CLUSTER) is None
    listing = nft.parse_listing(LISTED)
    listing.chains["forward"].append(("ip saddr 10.2.0.0/16 accept", 30))
    script = nft.cleanup(listing, CLUSTER)
    assert "delete table" not in script
    assert "delete rule ip flannel-ipv4 forward handle 3" in script
    assert "handle 30" not in script and "handle 5\n" not in script
    assert nft.cleanup(listing, IPv4Network("10.9.0.0/16")) is None  # nothing of that network


def test_iptables_cleanup_removes_our_lines_and_an_unused_chain_with_its_jump():
    from pyflannel.traffic.iptables_rules import cleanup_payload, masquerade_rules

    rules = masquerade_rules(CLUSTER, POD, True)
    listed = ["-P POSTROUTING ACCEPT", "-N FLANNEL-POSTRTG"] + [r.line for r in rules]
    payload = cleanup_payload("nat", listed, CLUSTER).splitlines()
    assert payload[1].startswith("-D POSTROUTING") and payload[-3:] == [
        "-F FLANNEL-POSTRTG",
        "-X FLANNEL-POSTRTG",
        "COMMIT",
    ]
    theirs = masquerade_rules(OTHER, OTHER_POD, True)
    payload = cleanup_payload("nat", listed + [r.line for r in theirs[2:]], CLUSTER)
    assert "-X" not in payload and str(OTHER) not in payload and str(CLUSTER) in payload
    assert cleanup_payload("nat", ["-P POSTROUTING ACCEPT"], CLUSTER) is None


def test_masquerade_turned_off_removes_our_masquerade_rules():
    listing = nft.parse_listing(LISTED)
    forward_only = nft.forward_rules(CLUSTER)
    problems = nft.drift(forward_only, listing, CLUSTER)
    assert "unexpected in postrtg: ip saddr 10.1.5.0/24 ip daddr 10.1.0.0/16 return" in problems
    script = nft.transaction(forward_only, listing, CLUSTER)
    deleted = {
        int(line.rsplit(" ", 1)[1]) for line in script.splitlines() if "postrtg handle" in line
    }
    assert deleted == {6, 7, 8, 9, 10}  # ours; the shared mark rule stays


def test_a_networks_rules_are_made_for_its_mode_and_backend_at_construction():
    """What the backend decides reaches the rules when they are made (no attribute set
    afterwards could bypass a manager's own checks): nftables has no VXLAN peer filter, so it
    is said and dropped; the forward rules follow the backend where the flag was not given."""
    from pyflannel.traffic.families import RulesFor, TrafficSettings, network_rules

    settings = TrafficSettings(masquerade=False, forward=False)
    nft_rules = network_rules(settings, RulesFor(nftables=True, peer_filter_port=8472))
    assert nft_rules.mode == "nftables" and nft_rules.peer_filter_port is None
    assert not nft_rules.enabled  # nothing to install: no masquerade, no forward, no filter
    ipt = network_rules(settings, RulesFor(dual_stack=True, peer_filter_port=8472))
    assert [m.peer_filter_port for m in ipt.managers] == [8472, None]  # IPv4 underlay only
    routed = network_rules(TrafficSettings(forward=True), RulesFor(forward=False))
    assert not routed.forward and network_rules(TrafficSettings(forward=True)).forward
