"""Which filter rule decides a forwarded packet, read from ``iptables-save -t filter``: the
FORWARD chain and the chains it jumps to, followed for one packet (source, destination, in and
out interfaces). Pure. Matches on addresses and interfaces are evaluated; a rule with any
other match (protocol, conntrack state, ...) may or may not apply, so it is reported as
"may drop" when its target drops, and otherwise passed over.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

DROPPING = ("DROP", "REJECT")
BUILTIN = ("ACCEPT", "DROP", "REJECT", "RETURN")


@dataclass(frozen=True)
class Packet:
    src: IPv4Address
    dst: IPv4Address
    iif: str
    oif: str


@dataclass
class Verdict:
    """What the filter table does with the packet, and the rules that say so."""

    accepted: bool
    rule: str = ""  # the deciding rule ("-A FORWARD ..."), or "policy DROP"
    may_drop: list[str] = field(default_factory=list)  # rules that drop if their other match does


@dataclass
class Table:
    policies: dict[str, str]
    rules: dict[str, list[str]]


def parse(text: str) -> Table:
    """The filter table of an ``iptables-save`` output."""
    policies: dict[str, str] = {}
    rules: dict[str, list[str]] = {}
    in_filter = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_filter = line == "*filter"
        elif not in_filter:
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            policies[name] = policy
            rules.setdefault(name, [])
        elif line.startswith("-A "):
            rules.setdefault(line.split()[1], []).append(line)
    return Table(policies, rules)


def decide(table: Table, packet: Packet) -> Verdict:
    """Follow FORWARD for ``packet``."""
    may_drop: list[str] = []
    outcome = _walk(table, "FORWARD", packet, may_drop, depth=0)
    if outcome is None:
        policy = table.policies.get("FORWARD", "ACCEPT")
        return Verdict(policy == "ACCEPT", f"policy {policy}", may_drop)
    accepted, rule = outcome
    return Verdict(accepted, rule, may_drop)


def _walk(
    table: Table, chain: str, packet: Packet, may_drop: list[str], depth: int
) -> tuple[bool, str] | None:
    """(accepted, deciding rule), or None when the chain ends (or RETURNs) undecided."""
    if depth > 20:
        return None
    for rule in table.rules.get(chain, []):
        words = shlex.split(rule)
        target = _target(words)
        known = _matches(words, packet)
        if known is False:
            continue
        if known is None:  # other matches decide
            if target in DROPPING:
                may_drop.append(rule)
            continue
        if target == "ACCEPT":
            return True, rule
        if target in DROPPING:
            return False, rule
        if target == "RETURN":
            return None
        if target in table.rules:
            outcome = _walk(table, target, packet, may_drop, depth + 1)
            if outcome is not None:
                return outcome
    return None


def _target(words: list[str]) -> str:
    for i, w in enumerate(words):
        if w in ("-j", "--jump", "-g", "--goto") and i + 1 < len(words):
            return words[i + 1]
    return ""


def _matches(words: list[str], packet: Packet) -> bool | None:
    """True/False if the rule's matches are all known; None if others may decide."""
    i, other = 2, False
    while i < len(words):
        negate = words[i] == "!"
        if negate:
            i += 1
        option = words[i]
        value = words[i + 1] if i + 1 < len(words) else ""
        if option in ("-s", "--source", "-d", "--destination"):
            address = packet.src if option in ("-s", "--source") else packet.dst
            hit = any(address in IPv4Network(v, strict=False) for v in value.split(","))
        elif option in ("-i", "--in-interface", "-o", "--out-interface"):
            name = packet.iif if option in ("-i", "--in-interface") else packet.oif
            hit = name.startswith(value[:-1]) if value.endswith("+") else name == value
        elif option in ("-j", "--jump", "-g", "--goto"):
            i += 2
            while i < len(words) and not words[i].startswith("-"):
                i += 1  # the target's own options
            continue
        elif option == "-p" and value in ("all", "0"):
            hit = True
        elif option == "-m" and value == "comment":
            i += 4  # -m comment --comment TEXT
            continue
        else:
            other = True
            i += 1
            while i < len(words) and not words[i].startswith("-") and words[i] != "!":
                i += 1
            continue
        if hit == negate:
            return False
        i += 2
    return None if other else True
