"""The flannel CNI plugin's protocol with real delegates: Debian's bridge and host-local in
throwaway namespaces (a "host" and its containers), environment and stdin as a runtime sets
them, results and errors per the CNI spec; bad input; many containers at once."""

import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import netns
from tests.conftest import require, require_root

CNI_DIR = "/usr/lib/cni"
_seq = itertools.count()


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    require_root()
    require(
        all(os.access(f"{CNI_DIR}/{p}", os.X_OK) for p in ("bridge", "host-local")),
        "Debian's CNI plugins in /usr/lib/cni (apt install containernetworking-plugins)",
    )
    name = f"pf{os.getpid()}-cnihost"
    netns.create(name)
    work = tmp_path_factory.mktemp("cni")
    (work / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.7.1/24\nFLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )
    try:
        yield {"ns": name, "work": work}
    finally:
        for ns in netns.list_namespaces():
            if ns.startswith(f"pf{os.getpid()}-cnic"):
                netns.delete(ns)
        netns.delete(name)


def netconf(host, **extra) -> dict:
    work = host["work"]
    return {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": str(work / "subnet.env"),
        "dataDir": str(work / "flannel"),
        "ipam": {"dataDir": str(work / "ipam")},
        **extra,
    }


def plugin(host, command: str, conf, container_id: str, container_ns: str | None = None, **env):
    """Run the plugin as a runtime does: in the host's namespace, CNI_* in the environment."""
    environ = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": f"/run/netns/{container_ns}" if container_ns else "",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": env.pop("cni_path", CNI_DIR),
        **env,
    }
    body = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run(
        ["ip", "netns", "exec", host["ns"], sys.executable, "-m", "pyflannel.cni"],
        input=body,
        env=environ,
        capture_output=True,
        timeout=60,
    )
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out


def container():
    name = f"pf{os.getpid()}-cnic{next(_seq)}"
    netns.create(name)
    return name


def test_version_lists_the_supported_versions(host):
    code, out = plugin(host, "VERSION", b"{}", "")
    assert code == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


def test_add_check_del_with_the_real_bridge_and_host_local(host):
    c = container()
    conf = netconf(host)
    code, result = plugin(host, "ADD", conf, "c1", c)
    assert code == 0, result
    assert result["cniVersion"] == "1.0.0"
    address = result["ips"][0]["address"]
    assert address.startswith("10.1.7.") and address.endswith("/24")
    link = netns.ip_json(c, "link", "show", "eth0")[0]
    assert link["mtu"] == 1450  # FLANNEL_MTU
    routes = {r["dst"] for r in netns.ip_json(c, "route", "show")}
    assert "10.1.0.0/16" in routes  # FLANNEL_NETWORK
    stored = json.loads((host["work"] / "flannel" / "c1").read_text())
    assert stored["type"] == "bridge" and stored["ipMasq"] is False and stored["isGateway"] is True
    assert stored["ipam"]["ranges"] == [[{"subnet": "10.1.7.0/24"}]]
    assert oct((host["work"] / "flannel").stat().st_mode)[-3:] == "700"
    assert plugin(host, "CHECK", {**conf, "prevResult": result}, "c1", c)[0] == 0
    ip = address.split("/")[0]
    assert (host["work"] / "ipam" / "cbr0" / ip).exists()
    assert plugin(host, "DEL", conf, "c1", c) == (0, None)
    assert not (host["work"] / "ipam" / "cbr0" / ip).exists()  # the address is released
    assert not (host["work"] / "flannel" / "c1").exists()
    assert plugin(host, "DEL", conf, "c1", c) == (0, None)  # again: nothing there, success


def test_a_data_dir_not_there_yet_is_made_private_with_its_parents(host):
    c = container()
    data_dir = host["work"] / "deep" / "er" / "flannel"
    conf = netconf(host, dataDir=str(data_dir))
    code, result = plugin(host, "ADD", conf, "c-deep", c)
    assert code == 0, result
    assert json.loads((data_dir / "c-deep").read_text())["type"] == "bridge"
    assert oct(data_dir.stat().st_mode)[-3:] == "700"
    assert oct(data_dir.parent.stat().st_mode)[-3:] == oct(0o777 & ~_umask())[-3:]
    assert plugin(host, "DEL", conf, "c-deep", c) == (0, None)
    assert not (data_dir / "c-deep").exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


PROBE = """#!/bin/sh
cat > "$PROBE_OUT.$CNI_COMMAND"
awk '/^SigIgn/ {print "{\\"cniVersion\\": \\"1.0.0\\", \\"sigign\\": \\"" $2 "\\"}"}' /proc/self/status
"""
SIGPIPE_BIT = 1 << (13 - 1)  # SigIgn's bit for SIGPIPE (13)


@pytest.mark.parametrize("padding", [0, 20000], ids=["exec", "spawned"])
def test_the_delegate_gets_all_its_config_and_default_signals(host, tmp_path, padding):
    """ADD execs the delegate with its config piped ahead, or, for a config bigger than a pipe
    holds (and on DEL), spawns it and writes the config as it reads; either way it reads all
    of it, its output is the runtime's, and SIGPIPE is back at its default (Python ignores it)."""
    probe = tmp_path / "probe"
    probe.write_text(PROBE)
    probe.chmod(0o755)
    conf = netconf(host, delegate={"type": "probe", "padding": "x" * padding})
    out = str(tmp_path / "seen")
    for command in ("ADD", "DEL"):
        code, result = plugin(
            host, command, conf, f"p{padding}", cni_path=str(tmp_path), PROBE_OUT=out
        )
        assert code == 0, result
        assert not int(result["sigign"], 16) & SIGPIPE_BIT, result
        seen = json.loads(Path(f"{out}.{command}").read_text())
        assert seen["type"] == "probe" and len(seen["padding"]) == padding
    assert not (host["work"] / "flannel" / f"p{padding}").exists()  # DEL removed it


def test_an_older_cni_version_gets_its_result_format(host):
    c = container()
    conf = netconf(host, cniVersion="0.3.1")
    code, result = plugin(host, "ADD", conf, "old1", c)
    assert code == 0 and result["cniVersion"] == "0.3.1" and result["ips"][0]["version"] == "4"
    assert plugin(host, "DEL", conf, "old1", c)[0] == 0


@pytest.mark.parametrize("bad_id", ["../escape", "/etc/passwd", "a/b", "", "x" * 300, ".hidden"])
def test_a_container_id_that_is_not_a_plain_name_never_becomes_a_path(host, bad_id):
    code, out = plugin(host, "ADD", netconf(host), bad_id)
    assert code != 0 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]
    assert not list(host["work"].glob("**/escape")) and not Path("/escape").exists()


def test_errors_are_cni_error_objects(host, tmp_path):
    cases = [
        (b"{not json", 6, "failed to load netconf"),
        (json.dumps(netconf(host, cniVersion="9.9.9")).encode(), 1, "incompatible CNI versions"),
        (json.dumps(netconf(host, delegate={"name": "x"})).encode(), 7, "must not have 'name'"),
        (
            json.dumps(netconf(host, subnetFile=str(tmp_path / "none.env"))).encode(),
            5,
            "cannot read",
        ),
    ]
    for body, want, text in cases:
        code, out = plugin(host, "ADD", body, "e1")
        assert code != 0 and out["code"] == want and text in out["msg"], out
    code, out = plugin(
        host, "ADD", json.dumps(netconf(host, subnetFile=str(tmp_path / "none.env"))).encode(), "e1"
    )
    assert "is pyflannel running" in out["details"]
    code, out = plugin(host, "ADD", netconf(host), "e2", cni_path=str(tmp_path))
    assert code != 0 and out["code"] == 5 and 'failed to find plugin "bridge"' in out["msg"]


def test_a_delegates_own_error_is_passed_through(host):
    c = container()
    conf = netconf(host, delegate={"type": "bridge", "bridge": "x" * 40})  # too long a name
    code, out = plugin(host, "ADD", conf, "d1", c)
    assert code != 0 and out["code"] != 0 and out["msg"]  # the bridge plugin's own words
    assert plugin(host, "DEL", conf, "d1", c)[0] == 0


def test_many_containers_at_once_lose_nothing_and_leak_no_address(host):
    conf = netconf(host)
    ids = [f"many{i}" for i in range(16)]
    namespaces = {cid: container() for cid in ids}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda cid: plugin(host, "ADD", conf, cid, namespaces[cid]), ids))
    assert all(code == 0 for code, _ in added), added
    addresses = [out["ips"][0]["address"] for _, out in added]
    assert len(set(addresses)) == len(ids)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        deleted = list(pool.map(lambda cid: plugin(host, "DEL", conf, cid, namespaces[cid]), ids))
    assert all(code == 0 for code, _ in deleted)
    left = [p.name for p in (host["work"] / "ipam" / "cbr0").iterdir() if p.name.startswith("10.")]
    assert left == []
    assert not any((host["work"] / "flannel").glob("many*"))


def test_check_fails_for_an_unknown_container_and_after_the_subnet_moved(host, tmp_path):
    conf = netconf(host)
    code, out = plugin(host, "CHECK", conf, "never-added")
    assert code != 0 and out["code"] == 3
    c = container()
    assert plugin(host, "ADD", conf, "moved1", c)[0] == 0
    moved = tmp_path / "subnet.env"
    moved.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    code, out = plugin(host, "CHECK", {**conf, "subnetFile": str(moved)}, "moved1", c)
    assert code != 0 and "recreate the container" in out["msg"]
    assert plugin(host, "DEL", conf, "moved1", c)[0] == 0
