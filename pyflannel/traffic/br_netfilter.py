"""Bridged traffic and iptables (upstream #2068, #2166, #2254): without the br_netfilter module
and ``net.bridge.bridge-nf-call-iptables=1``, packets between two pods on one bridge never
pass iptables, so kube-proxy's iptables rules (Services) silently do not apply to them.

Upstream v0.26 made flanneld exit when the sysctl is missing, which broke rootless and other
setups. pyflannel neither exits nor stays silent: ``pyflannel status`` and ``doctor`` name it
with the fix, and ``--enable-br-netfilter`` lets the daemon load the module and set the
sysctls (IPv6's too on a dual-stack network), saying so. The sysctls are per network
namespace; the module is the host's.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SYSCTLS = Path("/proc/sys/net/bridge")
NAMES = {4: "bridge-nf-call-iptables", 6: "bridge-nf-call-ip6tables"}


@dataclass(frozen=True)
class BridgeNf:
    """What this namespace says: each family's sysctl ("1", "0"), None if the module is not
    loaded (no /proc/sys/net/bridge)."""

    iptables: str | None
    ip6tables: str | None

    def value(self, family: int) -> str | None:
        return self.iptables if family == 4 else self.ip6tables


def read(root: Path = SYSCTLS) -> BridgeNf:
    def one(name: str) -> str | None:
        try:
            return (root / name).read_text().strip()
        except OSError:
            return None

    return BridgeNf(one(NAMES[4]), one(NAMES[6]))


def problem(state: BridgeNf, dual_stack: bool) -> tuple[str, str] | None:
    """(what is wrong, the fix), or None when bridged pod traffic passes iptables."""
    families = (4, 6) if dual_stack else (4,)
    if state.iptables is None:
        return (
            "the br_netfilter module is not loaded: traffic between pods on one bridge "
            "bypasses iptables (kube-proxy's Services in iptables mode break)",
            "modprobe br_netfilter; sysctl -w "
            + " ".join(f"net.bridge.{NAMES[f]}=1" for f in families)
            + " (persist both in /etc/modules-load.d and /etc/sysctl.d), or run pyflannel with "
            "--enable-br-netfilter",
        )
    off = [NAMES[f] for f in families if state.value(f) != "1"]
    if not off:
        return None
    return (
        f"{' and '.join(f'net.bridge.{n}' for n in off)} "
        f"{'is' if len(off) == 1 else 'are'} not 1: traffic between pods on one bridge "
        "bypasses iptables (kube-proxy's Services in iptables mode break)",
        f"sysctl -w {' '.join(f'net.bridge.{n}=1' for n in off)} (persist it in "
        "/etc/sysctl.d), or run pyflannel with --enable-br-netfilter",
    )


def enable(dual_stack: bool, root: Path = SYSCTLS) -> list[str]:
    """Load br_netfilter if needed and set the sysctls to 1; what was changed, in words.
    Failures are logged with the fix, never raised: the overlay works without it."""
    done: list[str] = []
    if not (root / NAMES[4]).exists():
        proc = subprocess.run(["modprobe", "br_netfilter"], capture_output=True, text=True)
        if proc.returncode != 0 or not (root / NAMES[4]).exists():
            log.warning(
                "--enable-br-netfilter: cannot load br_netfilter (%s); pods on one bridge "
                "bypass iptables",
                (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}",
            )
            return done
        done.append("loaded br_netfilter")
    for family in (4, 6) if dual_stack else (4,):
        path = root / NAMES[family]
        try:
            before = path.read_text().strip()
            if before != "1":
                path.write_text("1\n")
                done.append(f"set net.bridge.{NAMES[family]}=1 (was {before})")
        except OSError as e:
            log.warning("--enable-br-netfilter: cannot set net.bridge.%s: %s", NAMES[family], e)
    return done
