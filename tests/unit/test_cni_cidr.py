"""The CNI plugin's CIDRs (cidr.py) are ipaddress's: ``str(ip_network(text, strict=False))``
or its ValueError, on generated addresses and prefix lengths in every form ipaddress reads."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.cni.cidr import network

V4 = st.ip_addresses(v=4).map(str)
V6 = st.ip_addresses(v=6).map(lambda a: a.exploded) | st.ip_addresses(v=6).map(str)
PREFIX = st.integers(0, 140).map(str) | st.sampled_from(
    ["", "024", "255.255.0.0", "0.0.0.255", " 8", "x"]
)
MANGLED = st.text(alphabet="0123456789abcdef:./% x", max_size=45)


def ipaddress_says(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as e:
        return f"ValueError: {e}"


def ours(text: str) -> str:
    try:
        return network(text)
    except ValueError as e:
        return f"ValueError: {e}"


@settings(max_examples=500, deadline=None)  # (what is tested is the answer, not its time)
@given(V4 | V6, st.none() | PREFIX)
def test_an_address_with_or_without_a_prefix_is_ipaddresss_network(address, prefix):
    text = address if prefix is None else f"{address}/{prefix}"
    assert ours(text) == ipaddress_says(text)


@settings(max_examples=500, deadline=None)  # (what is tested is the answer, not its time)
@given(MANGLED)
def test_anything_else_gets_ipaddresss_answer_or_error(text):
    assert ours(text) == ipaddress_says(text)


@pytest.mark.parametrize(
    "text",
    [
        "10.1.7.1/24",
        "fd00:1:0:7::1/64",
        "::ffff:10.1.2.3/120",
        "::ffff:0:0/96",
        "fe80::1%eth0/64",
        "1.2.3.4/33",
        "01.2.3.4/8",
        "1.2.3/8",
        "10.0.0.0/255.0.0.0",
        "::/0",
        "0.0.0.0/0",
        "1:0:0:1::/64",
        "1:0:0:1:0:0:0:1/128",
        "1.2.3.4\x00/8",
        "\u0661.2.3.4/8",
        "10.1.0.0/-1",
        "10.1.0.0/\u0662\u0664",
    ],
)
def test_edge_forms(text):
    assert ours(text) == ipaddress_says(text)
