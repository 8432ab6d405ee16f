"""A CIDR from subnet.env as the network it names, ``str(ipaddress.ip_network(text,
strict=False))`` ("10.1.7.1/24" -> "10.1.7.0/24"), without importing ``ipaddress`` in the
plugin's process (~4 ms of every container start with the ``functools`` and ``collections`` it
imports; bench/README, "CNI plugin"): the C library's inet_pton/inet_ntop through ``_socket``
for the plain forms subnet.env has, ``ipaddress`` itself for every other form it accepts (a
netmask after the slash, an IPv4-mapped IPv6 address, a scope). Same answers, same errors
(ValueError): tests/unit/test_cni_cidr.py compares the two on generated input."""

from __future__ import annotations

from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton


def network(text: str) -> str:
    """The network ``text`` (an address with an optional prefix length) lies in, canonical."""
    address, slash, prefix = text.partition("/")
    family, bits = (AF_INET6, 128) if ":" in address else (AF_INET, 32)
    plain = prefix.isascii() and prefix.isdigit() if slash else True
    if not plain or "%" in address or (family == AF_INET6 and "." in address):
        return _by_ipaddress(text)
    length = int(prefix) if slash else bits
    try:
        packed = inet_pton(family, address)
    except (OSError, ValueError):  # (ValueError: a NUL or a character outside ASCII)
        return _by_ipaddress(text)  # not an address: ipaddress's error says why
    if length > bits:
        return _by_ipaddress(text)
    masked = int.from_bytes(packed, "big") & ~((1 << (bits - length)) - 1)
    shown = inet_ntop(family, masked.to_bytes(bits // 8, "big"))
    if "." in shown and family == AF_INET6:  # ::ffff:0.0.0.0: ipaddress writes it in hex
        return _by_ipaddress(text)
    return f"{shown}/{length}"


def _by_ipaddress(text: str) -> str:
    import ipaddress

    return str(ipaddress.ip_network(text, strict=False))
