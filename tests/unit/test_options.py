"""Options: upstream flag names and defaults, FLANNELD_* environment, flags win."""

import dataclasses
import re
from pathlib import Path

import pytest

from pyflannel.app.cli import make_parser
from pyflannel.app.options import (
    Options,
    build_options,
    env_name,
    normalize_go_flags,
    with_service_environment,
)
from pyflannel.errors import OptionsError


def options(argv, env=None) -> Options:
    args = make_parser().parse_args(["run", *normalize_go_flags(argv)])
    return build_options(args, env or {})


def test_upstream_defaults():
    o = options([])
    assert o.etcd_endpoints == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    assert o.etcd_prefix == "/coreos.com/network"
    assert o.subnet_file == "/run/flannel/subnet.env"
    assert o.subnet_lease_renew_margin == 60
    assert o.subnet_lease_ttl == 86400
    assert (o.iface, o.ip_masq, o.v) == ([], False, 0)


def test_environment_names():
    assert env_name("etcd-endpoints") == "FLANNELD_ETCD_ENDPOINTS"
    assert env_name("subnet-lease-renew-margin") == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"


def test_environment_fills_flags_not_given():
    o = options(
        [],
        {
            "FLANNELD_ETCD_ENDPOINTS": "http://a:2379,http://b:2379",
            "FLANNELD_IP_MASQ": "true",
            "FLANNELD_IFACE": "eth1",
            "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30",
        },
    )
    assert o.etcd_endpoints == ["http://a:2379", "http://b:2379"]
    assert o.ip_masq is True and o.iface == ["eth1"] and o.subnet_lease_renew_margin == 30


def test_flag_wins_over_environment():
    o = options(["--etcd-prefix=/flag"], {"FLANNELD_ETCD_PREFIX": "/env"})
    assert o.etcd_prefix == "/flag"


def test_empty_environment_variable_is_ignored():
    assert options([], {"FLANNELD_ETCD_PREFIX": ""}).etcd_prefix == "/coreos.com/network"


def test_iface_is_repeatable_and_keeps_order():
    assert options(["--iface", "eth1", "--iface=10.0.0.1"]).iface == ["eth1", "10.0.0.1"]


def test_go_style_single_dash_flags():
    o = options(["-etcd-prefix=/x", "-iface", "eth9", "-ip-masq", "-v", "2"])
    assert (o.etcd_prefix, o.iface, o.ip_masq, o.v) == ("/x", ["eth9"], True, 2)


@pytest.mark.parametrize(
    "value, expected", [("true", True), ("false", False), ("1", True), ("F", False)]
)
def test_bool_flags_take_go_values(value, expected):
    assert options([f"--ip-masq={value}"]).ip_masq is expected


@pytest.mark.parametrize("margin", ["0", "1440", "-5"])
def test_renew_margin_out_of_range_is_upstreams_error(margin):
    with pytest.raises(
        OptionsError, match="Invalid subnet-lease-renew-margin option, out of acceptable range"
    ):
        options([f"--subnet-lease-renew-margin={margin}"])


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--subnet-lease-renew-margin=soon"], {}, "invalid value for --subnet-lease-renew-margin"),
        ([], {"FLANNELD_IP_MASQ": "maybe"}, "invalid value for FLANNELD_IP_MASQ"),
        (["--public-ip=1.2.3"], {}, "is not an IPv4 address"),
        (["--etcd-certfile=/c"], {}, "must be given together"),
        (["--etcd-username=u"], {}, "must be given together"),
        (["--etcd-endpoints=,"], {}, "--etcd-endpoints is empty"),
        (["--etcd-endpoints=ftp://x:1"], {}, "is not http://host:port or https://host:port"),
        (["--udp-workers=-1"], {}, "--udp-workers must be from 0 \\(one per core\\) to 64"),
        ([], {"FLANNELD_UDP_WORKERS": "100"}, "--udp-workers must be from 0"),
    ],
)
def test_invalid_options_say_which_flag_or_variable(argv, env, message):
    with pytest.raises(OptionsError, match=message):
        options(argv, env)


def test_etcd_endpoints_given_twice_last_wins_like_go():
    o = options(["--etcd-endpoints=http://a:2379", "--etcd-endpoints=http://b:2379,http://c:2379"])
    assert o.etcd_endpoints == ["http://b:2379", "http://c:2379"]


def test_status_and_doctor_see_the_services_environment_file_under_their_own(tmp_path):
    """`pyflannel status` typed in a shell has no FLANNELD_* of its own: it reads the
    service's /etc/default/pyflannel; what the shell (or a flag) sets still wins."""
    service = tmp_path / "pyflannel"
    service.write_text(
        "# the service's options\nFLANNELD_ETCD_ENDPOINTS=http://10.0.0.5:2379\n"
        'FLANNELD_ETCD_PREFIX="/net-b"\nPATH=/nowhere\n'
    )
    env = with_service_environment({"FLANNELD_ETCD_PREFIX": "/net-c", "HOME": "/root"}, service)
    assert env == {
        "FLANNELD_ETCD_ENDPOINTS": "http://10.0.0.5:2379",
        "FLANNELD_ETCD_PREFIX": "/net-c",
        "HOME": "/root",
    }
    o = options(["--etcd-prefix=/net-d"], env)
    assert o.etcd_endpoints == ["http://10.0.0.5:2379"] and o.etcd_prefix == "/net-d"
    assert with_service_environment({"A": "1"}, tmp_path / "absent") == {"A": "1"}


@pytest.mark.parametrize(
    "argv, env, where",
    [
        (["--etcd-password=pw"], {}, "--etcd-password"),
        ([], {"FLANNELD_ETCD_PASSWORD": "pw"}, "FLANNELD_ETCD_PASSWORD"),
        (["--etcd-password=pw"], {"FLANNELD_ETCD_PASSWORD": "other"}, "--etcd-password"),
    ],
)
def test_where_the_password_is_said_never_what(argv, env, where):
    assert options(["--etcd-username=u", *argv], env).password_in == where
    assert options([]).password_in == ""


def test_store_settings_given_or_not():
    assert not options([]).store_given
    assert not options(["--etcd-prefix=/net-b", "--subnet-file=/x.env"]).store_given
    assert options(["--etcd-cafile=/ca.pem"]).store_given
    assert options([], {"FLANNELD_ETCD_ENDPOINTS": "http://10.0.0.5:2379"}).store_given


def test_the_readme_flag_table_gives_each_options_default():
    # The operator reads the defaults there: "| `--flag` | `default` | meaning |".
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| `(--[a-z0-9-]+)` \| `([^`]*)` \|", readme, re.M)
    defaults = {f.name: f for f in dataclasses.fields(Options)}
    assert len(rows) > 20
    for flag, shown in rows:
        field = defaults[flag[2:].replace("-", "_")]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if isinstance(default, bool):
            assert shown == str(default).lower(), flag
        elif isinstance(default, float):
            assert float(shown) == default, flag
        elif isinstance(default, list):
            assert shown == ",".join(default), flag
        else:
            assert shown == str(default), flag
