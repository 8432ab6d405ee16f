"""``pyflannel docker-opts``: upstream's dist/mk-docker-opts.sh — Docker options from subnet.env.

Output (upstream's test vector):
    DOCKER_OPT_BIP="--bip=10.1.74.1/24"
    DOCKER_OPT_IPMASQ="--ip-masq=true"
    DOCKER_OPT_MTU="--mtu=1472"
    DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
Docker must not masquerade what flannel already masquerades: FLANNEL_IPMASQ=true gives
--ip-masq=false and the other way round.

A dual-stack subnet.env (FLANNEL_IPV6_SUBNET) also gives
``DOCKER_OPT_IPV6="--ipv6 --fixed-cidr-v6=<the IPv6 subnet>"``: a pyflannel addition (upstream's
script predates dual-stack and ignores the key), so Docker's containers get addresses of both.
"""

from __future__ import annotations

import ipaddress


class DockerOptsError(ValueError):
    pass


def docker_options(
    env: dict[str, str],
    *,
    individual: bool = True,
    combined: bool = True,
    key: str = "DOCKER_OPTS",
    existing: str = "",
    omit_ipmasq: bool = False,
) -> str:
    """The env-file text; both kinds of line unless only one is asked for (as upstream)."""
    for name in ("FLANNEL_SUBNET", "FLANNEL_MTU"):
        if not env.get(name):
            raise DockerOptsError(f"{name} is missing from the subnet file")
    opts = {"DOCKER_OPT_BIP": f"--bip={env['FLANNEL_SUBNET']}"}
    if not omit_ipmasq:
        masq = env.get("FLANNEL_IPMASQ", "")
        if masq not in ("true", "false"):
            raise DockerOptsError(f"FLANNEL_IPMASQ must be true or false, not {masq!r}")
        opts["DOCKER_OPT_IPMASQ"] = f"--ip-masq={'false' if masq == 'true' else 'true'}"
    opts["DOCKER_OPT_MTU"] = f"--mtu={env['FLANNEL_MTU']}"
    subnet6 = env.get("FLANNEL_IPV6_SUBNET", "").split(",")[0].strip()
    if subnet6:
        try:
            network6 = ipaddress.IPv6Interface(subnet6).network
        except ValueError:
            raise DockerOptsError(f"FLANNEL_IPV6_SUBNET {subnet6!r} is not an IPv6 CIDR") from None
        opts["DOCKER_OPT_IPV6"] = f"--ipv6 --fixed-cidr-v6={network6}"
    if not individual and not combined:
        individual = combined = True
    lines = []
    if individual:
        lines += [f'{name}="{value}"' for name, value in opts.items()]
    if combined:
        joined = "".join(f" {value}" for value in opts.values())
        lines.append(f'{key}="{existing + " " if existing else ""}{joined}"')
    return "\n".join(lines) + "\n"
