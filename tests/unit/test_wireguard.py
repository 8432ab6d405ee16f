"""The wireguard backend's pure parts: config (upstream's keys and defaults), keys (file mode,
malformed files, public key as wg(8) computes it), the UAPI text and diff, peers from leases
(refusal reasons) and upstream's lease bytes, doctor's verdicts."""

import base64
import os
import shutil
import stat
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.backend.plan import PeerDataError
from pyflannel.backend.wireguard.config import Mode, parse_wireguard_config
from pyflannel.backend.wireguard.keys import InvalidKey, load_or_create, parse_key, public_key
from pyflannel.backend.wireguard.peers import lease_data, wanted_device, wireguard_peer
from pyflannel.backend.wireguard.uapi import (
    SESSION_LIFETIME,
    DeviceState,
    PeerState,
    UapiError,
    WantedDevice,
    WantedPeer,
    diff,
    parse_get,
    parse_response,
    set_request,
)
from pyflannel.errors import ConfigError
from pyflannel.ops.doctor.checks import PASS, WARN, Probe, judge_wireguard
from pyflannel.subnet.lease import Lease, LeaseAttrs
from tests.conftest import require

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()


def test_config_defaults_and_overrides_as_upstream():
    cfg = parse_wireguard_config({"Type": "wireguard"})
    assert (cfg.listen_port, cfg.listen_port_v6, cfg.mode, cfg.keepalive, cfg.psk) == (
        51820,
        51821,
        Mode.SEPARATE,
        0,
        "",
    )
    cfg = parse_wireguard_config(
        {"listenport": 5000, "PersistentKeepaliveInterval": 25, "PSK": KEY_A, "Mode": "auto"}
    )
    assert (cfg.listen_port, cfg.keepalive, cfg.mode) == (5000, 25, Mode.AUTO)
    assert KEY_A not in repr(cfg)  # the PSK never in a log line


@pytest.mark.parametrize(
    "backend, words",
    [
        ({"Mode": "mesh"}, "No valid Mode configured"),
        ({"ListenPort": 0}, "ListenPort must be an integer from 1 to 65535"),
        ({"PSK": "short"}, "could not parse psk"),
        ({"PersistentKeepaliveInterval": "25s"}, "PersistentKeepaliveInterval must be"),
    ],
)
def test_bad_config_is_refused_with_a_clear_error(backend, words):
    with pytest.raises(ConfigError, match=words):
        parse_wireguard_config(backend)


def test_keys_parse_and_the_key_file_is_created_once_with_mode_0600(tmp_path):
    assert parse_key(KEY_A) == bytes(range(32))
    for junk in ("", "not base64!", base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(InvalidKey):
            parse_key(junk)
    path = tmp_path / "dir" / "wgkey"
    old = os.umask(0)
    try:
        private, created = load_or_create(path)
    finally:
        os.umask(old)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = load_or_create(path)
    assert again == private and not created


def test_a_world_readable_key_file_is_tightened_and_a_malformed_one_named(tmp_path):
    path = tmp_path / "wgkey"
    path.write_text(KEY_A + "\n")
    path.chmod(0o644)
    assert load_or_create(path)[0] == bytes(range(32))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("garbage")
    with pytest.raises(InvalidKey, match=f"could not parse private key from file {path}") as e:
        load_or_create(path)
    assert "garbage" not in str(e.value)


def test_the_public_key_is_the_one_wg_computes():
    require(shutil.which("wg") is not None, "wg (apt install wireguard-tools)")
    out = subprocess.run(["wg", "pubkey"], input=KEY_A, capture_output=True, text=True).stdout
    assert base64.b64encode(public_key(parse_key(KEY_A))).decode() == out.strip()


def lease(key, backend="wireguard", subnet="10.1.2.0/24"):
    data = {"PublicKey": key} if key is not None else None
    return Lease(
        IPv4Network(subnet),
        LeaseAttrs(IPv4Address("198.51.100.2"), backend_type=backend, backend_data=data),
    )


def test_the_lease_value_is_upstreams_byte_for_byte():
    attrs = LeaseAttrs(
        IPv4Address("198.51.100.1"),
        backend_type="wireguard",
        backend_data=lease_data(bytes(range(32))),
    )
    assert attrs.to_json() == (
        b'{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"wireguard",'
        b'"BackendData":{"PublicKey":"' + KEY_A.encode() + b'"}}'
    )


def test_a_peer_from_its_lease_and_the_refusals():
    peer = wireguard_peer(lease(KEY_B), KEY_A, 51820)
    assert (peer.encap, peer.public_key, peer.udp_port) == ("wireguard", KEY_B, 51820)
    for bad, words in (
        (lease(KEY_B, backend="vxlan"), "not wireguard"),
        (lease(None), "BackendData is missing"),
        (lease("nonsense"), "malformed"),
        (lease(KEY_A), "own public key"),
    ):
        with pytest.raises(PeerDataError, match=words):
            wireguard_peer(bad, KEY_A, 51820)


def test_a_peer_is_reached_at_the_port_its_lease_names_else_at_ours():
    """Upstream v0.26.5+ writes its ListenPort as BackendData.Port; v0.20.2 writes none."""
    newer = Lease(
        IPv4Network("10.1.3.0/24"),
        LeaseAttrs(
            IPv4Address("198.51.100.3"),
            backend_type="wireguard",
            backend_data={"PublicKey": KEY_B, "Port": 51900},
        ),
    )
    older = wireguard_peer(lease(KEY_B), KEY_A, 51820)
    assert (wireguard_peer(newer, KEY_A, 51820).udp_port, older.udp_port) == (51900, 51820)
    wanted = wanted_device(bytes(range(32)), 51820, [wireguard_peer(newer, KEY_A, 51820)])
    (peer,) = wanted.peers.values()
    assert peer.endpoint == "198.51.100.3:51900" and wanted.listen_port == 51820
    for port in ("51900", 70000, True):
        bad = Lease(
            newer.subnet,
            LeaseAttrs(
                newer.attrs.public_ip,
                backend_type="wireguard",
                backend_data={"PublicKey": KEY_B, "Port": port},
            ),
        )
        with pytest.raises(PeerDataError, match=r"BackendData\.Port .* is not a UDP port"):
            wireguard_peer(bad, KEY_A, 51820)


def test_the_wanted_device_and_its_diff_against_the_device():
    peer = wireguard_peer(lease(KEY_B), KEY_A, 51820)
    wanted = wanted_device(bytes(range(32)), 51820, [peer], keepalive=25)
    hex_b = bytes(range(1, 33)).hex()
    assert set(wanted.peers) == {hex_b}
    empty = diff(wanted, DeviceState())
    assert empty.private_key == bytes(range(32)).hex() and empty.listen_port == 51820
    assert [p.public_key for p in empty.write] == [hex_b]
    have = DeviceState(
        private_key=bytes(range(32)).hex(),
        listen_port=51820,
        peers={
            hex_b: PeerState("198.51.100.2:51820", {"10.1.2.0/24"}, 25),
            "ab" * 32: PeerState("203.0.113.9:51820", {"10.9.0.0/16"}),
        },
    )
    change = diff(wanted, have)
    assert change.remove == ["ab" * 32] and not change.write and change.private_key is None
    have.peers[hex_b].allowed_ips = {"10.9.0.0/16"}  # someone's `wg set`
    assert [p.public_key for p in diff(wanted, have).write] == [hex_b]
    text = set_request(diff(wanted, have))
    assert text.startswith("set=1\n") and text.endswith("\n\n")
    assert f"public_key={'ab' * 32}\nremove=true" in text
    assert "replace_allowed_ips=true\nallowed_ip=10.1.2.0/24" in text
    assert "persistent_keepalive_interval=25" in text
    assert bytes(range(32)).hex() not in repr(wanted)


def test_an_endpoint_the_device_learned_from_the_peer_is_kept_while_its_session_lives():
    """A peer behind NAT publishes an address nobody reaches (its inside one); the device
    learns the outside one from its authenticated packets (WireGuard roams). A reconcile
    keeps that endpoint while the session lives, even when another field is rewritten; it
    writes the published endpoint again when the session is dead, or at once when the peer
    publishes a new one."""
    peer = wireguard_peer(lease(KEY_B), KEY_A, 51820)
    wanted = wanted_device(bytes(range(32)), 51820, [peer], keepalive=25)
    hex_b = bytes(range(1, 33)).hex()
    published = {hex_b: wanted.peers[hex_b].endpoint}
    now = 1_800_000_000.0
    learned = PeerState("203.0.113.7:40001", {"10.1.2.0/24"}, 25, last_handshake=int(now) - 30)
    have = DeviceState(bytes(range(32)).hex(), 51820, {hex_b: learned})
    assert not diff(wanted, have, now, published)  # kept, as the device has it
    assert not diff(wanted, have, now, {})  # after a start: what was written is not known
    learned.allowed_ips = {"10.9.0.0/16"}  # someone's `wg set`: repaired, endpoint kept
    (fixed,) = diff(wanted, have, now, published).write
    assert fixed.endpoint == "203.0.113.7:40001" and fixed.allowed_ips == ("10.1.2.0/24",)
    learned.allowed_ips = {"10.1.2.0/24"}
    learned.last_handshake = int(now) - SESSION_LIFETIME  # the session is dead
    assert diff(wanted, have, now, published).write == [wanted.peers[hex_b]]
    learned.last_handshake = int(now) - 30
    moved = {hex_b: "198.51.100.99:51820"}  # it published another endpoint since
    assert diff(wanted, have, now, moved).write == [wanted.peers[hex_b]]
    assert diff(wanted, have).write == [wanted.peers[hex_b]]  # no clock: the wanted one


def test_a_learned_endpoint_differing_from_a_newly_published_one_in_the_port_only_is_kept():
    """A NAT that maps each flow to a port of its own: the peer publishes its outside
    address with the port another node sees; this device learned the port that works here."""
    peer = WantedPeer("bb" * 32, "198.51.100.104:27341", ("10.1.4.0/24",), 25)
    wanted = WantedDevice("aa" * 32, 51830, {peer.public_key: peer})
    now = 1_800_000_000.0
    learned = PeerState("198.51.100.104:9255", {"10.1.4.0/24"}, 25, last_handshake=int(now) - 5)
    have = DeviceState("aa" * 32, 51830, {peer.public_key: learned})
    before = {peer.public_key: "198.51.100.104:51830"}  # what was written before
    assert not diff(wanted, have, now, before)
    learned.endpoint = "198.51.100.113:9255"  # another address: the published one is written
    assert diff(wanted, have, now, before).write == [peer]


def test_a_get_response_parses_and_an_errno_is_an_error():
    text = (
        "private_key=" + "11" * 32 + "\nlisten_port=51820\n"
        "public_key=" + "22" * 32 + "\npreshared_key=" + "0" * 64 + "\n"
        "protocol_version=1\nendpoint=198.51.100.2:51820\nlast_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=0\ntx_bytes=10\nrx_bytes=20\n"
        "persistent_keepalive_interval=0\nallowed_ip=10.1.2.0/24\nerrno=0\n\n"
    )
    state = parse_get(text)
    peer = state.peers["22" * 32]
    assert (state.listen_port, peer.endpoint, peer.allowed_ips, peer.has_psk) == (
        51820,
        "198.51.100.2:51820",
        {"10.1.2.0/24"},
        False,
    )
    assert (peer.last_handshake, peer.rx_bytes, peer.tx_bytes) == (1700000000, 20, 10)
    with pytest.raises(UapiError):
        parse_response("errno=22\n\n")
    with pytest.raises(UapiError, match="not the WireGuard protocol"):
        parse_response("hello\n\n")


@pytest.mark.parametrize(
    "kernel, tun, binary, status, words",
    [
        (Probe(True), True, None, PASS, "kernel WireGuard"),
        (Probe(False, "Unknown device type"), True, "/usr/bin/wireguard-go", PASS, "userspace"),
        (Probe(False, "Unknown device type"), True, None, WARN, "no wireguard-go"),
        (
            Probe(False, "Unknown device type"),
            False,
            "/usr/bin/wireguard-go",
            WARN,
            "no TUN device",
        ),
    ],
)
def test_doctor_wireguard_verdicts(kernel, tun, binary, status, words):
    finding = judge_wireguard(kernel, tun, binary)
    assert finding.status == status and words in finding.detail


def test_the_ipv6_half_of_a_dual_stack_peer_and_its_device():
    from ipaddress import IPv6Address, IPv6Network

    from pyflannel.backend.wireguard.peers import wireguard_peer6

    dual = Lease(
        IPv4Network("10.1.2.0/24"),
        LeaseAttrs(
            IPv4Address("198.51.100.2"),
            public_ipv6=IPv6Address("fd00::2"),
            backend_type="wireguard",
            backend_data={"PublicKey": KEY_B},
            backend_v6_data={"PublicKey": KEY_B},
        ),
        IPv6Network("fd10:0:0:2::/64"),
    )
    half = wireguard_peer6(dual, IPv6Network("fd10:0:0:2::/64"), KEY_A)
    assert (half.public_ip, half.public_key, half.encap) == (
        IPv6Address("fd00::2"),
        KEY_B,
        "wireguard",
    )
    wanted = wanted_device(bytes(range(32)), 51821, [half])
    (peer,) = wanted.peers.values()
    assert (peer.endpoint, peer.allowed_ips) == ("[fd00::2]:51821", ("fd10:0:0:2::/64",))
    without = Lease(dual.subnet, LeaseAttrs(dual.attrs.public_ip, backend_type="wireguard"))
    with pytest.raises(PeerDataError, match="BackendV6Data is missing"):
        wireguard_peer6(without, IPv6Network("fd10:0:0:2::/64"), KEY_A)


def _dual_peer(ip4: str, ip6: str | None, port: int = 51820):
    from ipaddress import IPv6Address, IPv6Network

    from pyflannel.backend.plan import Peer, Peer6

    v6 = (
        Peer6(IPv6Network("fd10:0:2::/64"), IPv6Address(ip6), "wireguard", public_key=KEY_B)
        if ip6
        else None
    )
    return Peer(
        IPv4Network("10.1.2.0/24"),
        IPv4Address(ip4),
        "wireguard",
        udp_port=port,
        public_key=KEY_B,
        v6=v6,
    )


@pytest.mark.parametrize(
    "mode, peer4, peer6, own6, family",
    [
        (Mode.IPV4, "203.0.113.2", "2001:db8::2", "2001:db8::1", 4),
        (Mode.IPV6, "203.0.113.2", "2001:db8::2", "2001:db8::1", 6),
        (Mode.IPV6, "203.0.113.2", None, "2001:db8::1", 4),  # no IPv6 half
        (Mode.AUTO, "203.0.113.2", "2001:db8::2", "2001:db8::1", 4),  # public IPv4 first
        (Mode.AUTO, "10.0.0.2", "2001:db8::2", "2001:db8::1", 6),  # private IPv4, public IPv6
        (Mode.AUTO, "10.0.0.2", "fd00::2", "2001:db8::1", 4),  # ULA: not public
        (Mode.AUTO, "10.0.0.2", "2001:db8::2", "fd00::1", 4),  # our IPv6 not public
    ],
)
def test_one_device_reaches_a_peer_over_the_family_its_mode_picks(mode, peer4, peer6, own6, family):
    from ipaddress import IPv6Address

    from pyflannel.backend.wireguard.peers import endpoint_family

    peer = _dual_peer(peer4, peer6)
    assert endpoint_family(mode, peer, IPv4Address("198.51.100.1"), IPv6Address(own6)) == family


def test_one_device_peer_allows_both_subnets_at_the_devices_port():
    from ipaddress import IPv6Address

    from pyflannel.backend.wireguard.peers import one_device_halves

    halves = one_device_halves(
        [_dual_peer("10.0.0.2", "2001:db8::2", port=51900)],
        Mode.IPV6,
        IPv4Address("198.51.100.1"),
        IPv6Address("2001:db8::1"),
    )
    wanted = wanted_device(bytes(range(32)), 51820, halves)
    (peer,) = wanted.peers.values()
    assert peer.endpoint == "[2001:db8::2]:51900"  # the peer's (IPv4) device port
    assert peer.allowed_ips == ("10.1.2.0/24", "fd10:0:2::/64")
