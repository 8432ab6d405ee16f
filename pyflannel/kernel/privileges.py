"""Does this process have the capabilities the daemon needs? Asked once, before anything
fails with EPERM: without CAP_NET_ADMIN every device, route and neighbour entry is refused,
and a VXLAN "fallback" to UDP would fail the same way."""

from __future__ import annotations

from pathlib import Path

from pyflannel.errors import FlannelError

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NEEDED = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}


class MissingPrivileges(FlannelError):
    """The daemon cannot program the kernel as it is started."""


def effective_capabilities(status_text: str) -> int:
    """The CapEff mask of a /proc/<pid>/status text (0 if absent)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_capabilities(mask: int) -> list[str]:
    return [name for bit, name in NEEDED.items() if not mask >> bit & 1]


def check_privileges(status_path: str = "/proc/self/status") -> None:
    """Raise MissingPrivileges naming what is missing and how the unit grants it."""
    try:
        mask = effective_capabilities(Path(status_path).read_text())
    except OSError:
        return  # cannot tell: let the kernel's answer speak later
    missing = missing_capabilities(mask)
    if missing:
        raise MissingPrivileges(
            f"pyflannel lacks {' and '.join(missing)}: it cannot create its devices or program "
            "routes, neighbours and FDB entries. Run it as root, or as the shipped "
            "systemd/pyflannel.service does (AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)"
        )
