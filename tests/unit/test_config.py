"""Network config: upstream's vectors (pkg/subnet/config_test.go), defaults and error texts."""

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from pyflannel.errors import ConfigError
from pyflannel.subnet.config import parse_network_config


def test_defaults_for_a_16_match_upstream_vector():
    cfg = parse_network_config('{ "network": "10.3.0.0/16" }')
    assert cfg.network == IPv4Network("10.3.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Address("10.3.1.0")
    assert cfg.subnet_max == IPv4Address("10.3.255.0")
    assert cfg.subnet_count == 255


def test_ipv6_only_vector():
    cfg = parse_network_config(
        '{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }'
    )
    assert cfg.network is None
    assert cfg.ipv6_subnet_len == 64
    assert cfg.ipv6_subnet_min == IPv6Address("fc00:0:0:1::")
    assert cfg.ipv6_subnet_max == IPv6Address("fc00:0:0:ffff::")
    assert str(cfg.ipv6_subnet_min) == "fc00:0:0:1::"


def test_overrides_are_kept():
    cfg = parse_network_config(
        '{"Network": "10.3.0.0/16", "SubnetLen": 28, "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0"}'
    )
    assert (cfg.subnet_len, str(cfg.subnet_min), str(cfg.subnet_max)) == (
        28,
        "10.3.5.0",
        "10.3.8.0",
    )


def test_keys_match_case_insensitively_and_last_duplicate_wins():
    cfg = parse_network_config('{"NETWORK": "10.1.0.0/16", "network": "10.2.0.0/16"}')
    assert cfg.network == IPv4Network("10.2.0.0/16")


def test_host_bits_are_masked():
    assert parse_network_config('{"Network": "10.1.2.3/16"}').network == IPv4Network("10.1.0.0/16")


@pytest.mark.parametrize(
    "prefix, subnet_len", [(8, 24), (16, 24), (22, 24), (23, 25), (26, 28), (28, 30)]
)
def test_default_subnet_len_depends_on_network_size(prefix, subnet_len):
    cfg = parse_network_config(f'{{"Network": "10.0.0.0/{prefix}"}}')
    assert cfg.subnet_len == subnet_len


def test_backend_type_defaults_to_udp_when_backend_is_absent():
    # Upstream's code (not its docs, which say vxlan).
    assert parse_network_config('{"Network": "10.1.0.0/16"}').backend_type == "udp"


def test_backend_without_type_is_empty_type():
    assert parse_network_config('{"Network": "10.1.0.0/16", "Backend": {}}').backend_type == ""


def test_backend_options_are_read_case_insensitively():
    cfg = parse_network_config('{"Network": "10.1.0.0/16", "backend": {"type": "vxlan", "vni": 7}}')
    assert cfg.backend_type == "vxlan"
    assert cfg.backend_option("VNI") == 7


@pytest.mark.parametrize(
    "config, message",
    [
        ("{}", "please define a correct Network parameter in the flannel config"),
        ('{"Network": "10.1.0.0/16", "SubnetLen": 31}', "SubnetLen must be less than /31"),
        (
            '{"Network": "10.1.0.0/16", "SubnetLen": 17}',
            "network must be able to accommodate at least four subnets",
        ),
        (
            '{"Network": "10.1.0.0/29"}',
            "network is too small. Minimum useful network prefix is /28",
        ),
        (
            '{"Network": "10.1.0.0/16", "SubnetMin": "10.2.0.0"}',
            "SubnetMin is not in the range of the Network",
        ),
        (
            '{"Network": "10.1.0.0/16", "SubnetMax": "10.2.0.0"}',
            "SubnetMax is not in the range of the Network",
        ),
        (
            '{"Network": "10.1.0.0/16", "SubnetMin": "10.1.0.5"}',
            "SubnetMin is not on a SubnetLen boundary: 10.1.0.5",
        ),
        (
            '{"Network": "10.1.0.0/16", "SubnetMax": "10.1.3.7"}',
            "SubnetMax is not on a SubnetLen boundary: 10.1.3.7",
        ),
        (
            '{"EnableIPv4": false, "EnableIPv6": true}',
            "please define a correct IPv6Network parameter in the flannel config",
        ),
        (
            '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/125"}',
            "IPv6Network is too small. Minimum useful network prefix is /124",
        ),
        (
            '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 127}',
            "SubnetLen must be less than /127",
        ),
        (
            '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/48", '
            '"IPv6SubnetMin": "fd00::"}',
            "IPv6SubnetMin is not in the range of the IPv6Network",
        ),
        (
            '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/48", '
            '"IPv6SubnetMax": "fc00:0:0:1::5"}',
            "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:1::5",
        ),
    ],
)
def test_invalid_configs_give_upstream_error_texts(config, message):
    with pytest.raises(ConfigError) as e:
        parse_network_config(config)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "config, fragment",
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"Network": 10}', "Network must be a CIDR string"),
        ('{"Network": "10.1.0.0/33"}', "Network must be a CIDR string"),
        ('{"Network": "fc00::/48"}', "is not an IPv4 network"),
        (
            '{"Network": "10.1.0.0/16", "SubnetLen": "24"}',
            "SubnetLen must be a non-negative integer",
        ),
        ('{"Network": "10.1.0.0/16", "SubnetLen": -1}', "SubnetLen must be a non-negative integer"),
        ('{"Network": "10.1.0.0/16", "EnableIPv4": "yes"}', "EnableIPv4 must be true or false"),
        ('{"Network": "10.1.0.0/16", "Backend": "vxlan"}', "error decoding Backend property"),
        ('{"Network": "10.1.0.0/16", "Backend": {"Type": 5}}', "Type must be a string"),
        ('{"Network": "10.1.0.0/16", "SubnetMin": 5}', "SubnetMin must be an address string"),
    ],
)
def test_malformed_configs_are_clear_errors_not_tracebacks(config, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_network_config(config)


def test_null_values_behave_like_absent_keys():
    cfg = parse_network_config('{"Network": "10.1.0.0/16", "SubnetLen": null, "Backend": null}')
    assert cfg.subnet_len == 24
    assert cfg.backend_type == ""


def test_config_changes_are_said_in_words_without_derived_defaults():
    from pyflannel.subnet.config import config_changes

    old = parse_network_config(b'{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}')
    new = parse_network_config(
        b'{"Network": "10.9.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4}}'
    )
    assert config_changes(old, new) == [
        "Network 10.1.0.0/16 -> 10.9.0.0/16",
        "Backend.vni None -> 4",
    ]
    assert config_changes(old, old) == []
