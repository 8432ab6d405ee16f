"""The extension backend's commands: config parsing, and what a command gets (run by sh)."""

import pytest

from pyflannel.backend.extension.commands import parse_extension_config, peer_env, run
from pyflannel.errors import ConfigError


def test_config_keys_are_case_insensitive_and_optional():
    cfg = parse_extension_config({"Type": "extension", "subnetaddcommand": "true", "MTU": 1450})
    assert (cfg.subnet_add, cfg.pre_startup, cfg.mtu) == ("true", "", 1450)


@pytest.mark.parametrize(
    "backend, words",
    [
        ({"SubnetAddCommand": ["ip", "route"]}, "Backend.SubnetAddCommand must be a string"),
        ({"MTU": "1450"}, "Backend.MTU must be an integer"),
        ({"MTU": 100}, "from 576 to 65535"),
    ],
)
def test_bad_config_is_refused_with_the_key(backend, words):
    with pytest.raises(ConfigError, match=words):
        parse_extension_config(backend)


async def test_a_command_gets_the_environment_and_stdin_and_its_output_is_combined():
    env = peer_env("10.1.5.0/24", "198.51.100.5", "fd10:0:5::/64", "2001:db8::5")
    outcome = await run(
        'read DATA; echo "$SUBNET $PUBLIC_IP $IPV6SUBNET $DATA"; echo err >&2', env, "aa:bb"
    )
    assert outcome.ok
    assert outcome.output == "10.1.5.0/24 198.51.100.5 fd10:0:5::/64 aa:bb\nerr"


async def test_values_are_never_pasted_into_the_command_text():
    outcome = await run('echo "$SUBNET"', {"SUBNET": "$(echo injected)"})
    assert outcome.output == "$(echo injected)"


async def test_a_failure_carries_its_status_and_output():
    outcome = await run("echo nope; exit 3")
    assert not outcome.ok and outcome.describe() == "exit status 3: nope"


async def test_a_failing_pre_startup_command_is_retried_until_it_succeeds(tmp_path, caplog):
    """The lease waits for it (its output is the lease's BackendData); the daemon keeps
    running and says why it waits."""
    import asyncio
    import json
    from ipaddress import IPv4Address

    from pyflannel.backend.extension.backend import ExtensionBackend
    from pyflannel.kernel.iface import ExtIface
    from pyflannel.subnet.config import parse_network_config

    flag = tmp_path / "ready"
    cfg = parse_network_config(
        json.dumps(
            {
                "Network": "10.1.0.0/16",
                "Backend": {
                    "Type": "extension",
                    "PreStartupCommand": f"test -e {flag} && echo aa:bb || (echo not yet; exit 4)",
                },
            }
        )
    )
    ip = IPv4Address("198.51.100.1")
    backend = ExtensionBackend(None, cfg, ExtIface("eth0", 2, 1500, ip, ip))
    caplog.set_level("ERROR")
    task = asyncio.create_task(backend.prepare())
    for _ in range(200):  # 10 s at most
        if "PreStartupCommand failed" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "exit status 4: not yet" in caplog.text and not task.done()
    flag.touch()
    attrs = await asyncio.wait_for(task, 10)
    assert attrs.backend_data == "aa:bb" and attrs.backend_type == "extension"
