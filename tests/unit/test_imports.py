"""What the daemon loads: no pyroute2 (it speaks route netlink itself: kernel/iproute.py;
pyroute2 is an optional extra for kernel WireGuard's generic netlink, kernel/rtnl.py), and
what start-up does not need loads when first used."""

import json
import subprocess
import sys
from pathlib import Path


def loaded_after(code: str, prefixes: tuple[str, ...] = ("pyroute2", "sqlite3")) -> set:
    script = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


BACKENDS = (
    "pyflannel.backend.vxlan.backend",
    "pyflannel.backend.hostgw.backend",
    "pyflannel.backend.udp.backend",
    "pyflannel.backend.wireguard.backend",
    "pyflannel.backend.wireguard.kernel_wg",
)


def test_the_daemon_and_its_backends_load_no_pyroute2():
    assert not loaded_after(
        "import pyflannel.app.daemon, pyflannel.kernel.watch, pyflannel.kernel.netlink, "
        + ", ".join(BACKENDS)
    )


def test_without_pyroute2_kernel_wireguard_says_what_to_install():
    """pyroute2 is an optional extra (kernel WireGuard only): where it is missing, the
    daemon still loads, and kernel WireGuard says what is missing and what to do."""
    script = (
        "import sys\n"
        "sys.modules['pyroute2'] = None  # as if not installed\n"
        "import pyflannel.app.daemon, pyflannel.backend.wireguard.kernel_wg\n"
        "from pyflannel.kernel.rtnl import wireguard_socket\n"
        "from pyflannel.errors import BackendError\n"
        "try:\n"
        "    wireguard_socket()\n"
        "except BackendError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "kernel WireGuard needs pyroute2" in out.stdout
    assert "pip install 'pyflannel[wireguard]'" in out.stdout and "wireguard-go" in out.stdout


def test_the_cni_plugin_loads_no_pyroute2():
    assert not {m for m in loaded_after("import pyflannel.cni.plugin") if m.startswith("pyroute2")}


def test_start_up_loads_no_status_snapshot_or_udp_worker_modules():
    """What the way to subnet.env does not need loads when first used: the status and snapshot
    modules (first /status), the UDP path's workers, their BPF and ctypes (when a VXLAN node's
    UDP path starts, if ever), etcd's metrics parser (a member check)."""
    mods = loaded_after(
        "import pyflannel.app.cli, pyflannel.app.daemon, pyflannel.etcd.store, "
        "pyflannel.backend.vxlan.backend",
        prefixes=("pyflannel", "ctypes"),
    )
    assert "pyflannel.backend.vxlan.backend" in mods and "pyflannel.backend.udp.path" in mods
    for later in (
        "pyflannel.ops.snapshot",
        "pyflannel.ops.status.live",
        "pyflannel.backend.udp.pool",
        "pyflannel.backend.udp.worker",
        "pyflannel.backend.udp.steering",
        "pyflannel.backend.offline",
        "pyflannel.etcd.metrics",
        "ctypes",
    ):
        assert later not in mods, later


def test_the_cni_plugin_builds_a_delegate_config_without_json_re_or_ipaddress():
    """The plugin's process (python -IS, as install-cni writes it) parses its config and
    subnet.env and writes the delegate config with none of the modules that cost ~12 ms of
    every container start (bench/README, "CNI plugin")."""
    root = str(Path(__file__).resolve().parents[2])
    script = (
        f"import sys; sys.path.insert(0, {root!r})\n"
        "from pyflannel.cni import lean_json, netconf, plugin\n"
        'conf = netconf.parse_netconf(b\'{"cniVersion": "1.0.0", "name": "cbr0"}\')\n'
        "env = netconf.parse_subnet_env('FLANNEL_NETWORK=10.1.0.0/16\\nFLANNEL_SUBNET=10.1.7.1/24"
        "\\nFLANNEL_IPV6_SUBNET=fd00:1:0:7::1/64\\nFLANNEL_MTU=1450\\nFLANNEL_IPMASQ=true', 'f')\n"
        "netconf.check_container_id('abc')\n"
        "print(lean_json.dumps(netconf.delegate_config(conf, env)))\n"
        "print(lean_json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-IS", "-c", script], capture_output=True, text=True, check=True
    )
    delegate, modules = (json.loads(line) for line in out.stdout.splitlines())
    assert delegate["ipam"]["ranges"] == [
        [{"subnet": "10.1.7.0/24"}],
        [{"subnet": "fd00:1:0:7::/64"}],
    ]
    loaded = set(modules) & {
        "json",
        "re",
        "ipaddress",
        "collections",
        "enum",
        "functools",
        "typing",
        "os",
        "subprocess",
    }
    assert not loaded
