"""The extension backend's commands (upstream pkg/backend/extension): what the network config
names, the environment and stdin each one gets, and ``run``, the one function that starts a
process.

``PreStartupCommand`` runs before the lease is acquired; its output (trimmed) becomes the
lease's ``BackendData``, a JSON string. ``PostStartupCommand`` runs once the lease is held
(``NETWORK``, ``SUBNET``, ``PUBLIC_IP``; on a dual-stack network ``IPV6SUBNET`` and
``PUBLIC_IPV6`` too). ``SubnetAddCommand`` / ``SubnetRemoveCommand`` run per peer with the
peer's ``SUBNET`` and ``PUBLIC_IP`` (and IPv6 ones) in the environment and its
``BackendData`` string on stdin. As upstream v0.20.2 documents, each is run by ``sh -c``;
values reach it only through the environment (checked addresses and subnets) and stdin,
never pasted into the command text.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from pyflannel.errors import ConfigError

KEYS = ("PreStartupCommand", "PostStartupCommand", "SubnetAddCommand", "SubnetRemoveCommand")
TIMEOUT_S = 60.0  # a command that hangs is killed and reported (upstream waits forever)


@dataclass(frozen=True)
class ExtensionConfig:
    pre_startup: str = ""
    post_startup: str = ""
    subnet_add: str = ""
    subnet_remove: str = ""
    mtu: int | None = None  # pyflannel only: the pods' MTU, when the commands encapsulate


def parse_extension_config(backend: dict[str, Any]) -> ExtensionConfig:
    doc = {k.lower(): v for k, v in backend.items()}
    for key in KEYS:
        value = doc.get(key.lower(), "")
        if not isinstance(value, str):
            raise ConfigError(f"Backend.{key} must be a string (a shell command), not {value!r}")
    mtu = doc.get("mtu")
    if mtu is not None and (
        isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535
    ):
        raise ConfigError(f"Backend.MTU must be an integer from 576 to 65535, not {mtu!r}")
    pre, post, add, remove = (doc.get(key.lower(), "") for key in KEYS)
    return ExtensionConfig(pre, post, add, remove, mtu)


def peer_env(
    subnet: object, public_ip: object, subnet6: object = None, public_ip6: object = None
) -> dict[str, str]:
    env = {"SUBNET": str(subnet), "PUBLIC_IP": str(public_ip)}
    if subnet6 is not None:
        env.update(IPV6SUBNET=str(subnet6), PUBLIC_IPV6=str(public_ip6 or ""))
    return env


@dataclass(frozen=True)
class Outcome:
    command: str
    status: int | None  # exit status; None: killed after TIMEOUT_S
    output: str  # stdout and stderr together, trimmed (upstream's CombinedOutput)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        how = (
            f"exit status {self.status}"
            if self.status is not None
            else f"killed after {TIMEOUT_S:g} s"
        )
        return f"{how}: {self.output or '(no output)'}"


async def run(command: str, env: dict[str, str] | None = None, stdin: str = "") -> Outcome:
    """``sh -c command`` with ``env`` added to ours and ``stdin`` (and a newline, as upstream)
    on its standard input."""
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        command,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate((stdin + "\n").encode()), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return Outcome(command, None, out.decode(errors="replace").strip())
    return Outcome(command, proc.returncode, out.decode(errors="replace").strip())
