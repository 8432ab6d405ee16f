"""pyflannel.service on booted Debian minions, installed from the package: the systemd
behaviour an operator relies on (readiness, the watchdog, restarts, stop, reboot, the journal,
status and doctor inside the machine). Three VXLAN minions share one bed for the module."""

import json
import re
import threading
import time

import pytest

from tests.e2e.conftest import eventually

from .conftest import minion_bed, wait_until_it_knows_the_vtep_of

SERVICE = "pyflannel.service"
WATCHDOG_DROPIN = "/etc/systemd/system/pyflannel.service.d/watchdog.conf"


@pytest.fixture(scope="module")
def bed(installed_layers):
    bed = minion_bed(installed_layers, hosts=3)
    yield bed
    bed.close()


def routes_to(node, subnet) -> list[dict]:
    return [r for r in node.routes() if r["dst"] == str(subnet)]


def restarts(node) -> int:
    return int(node.service("NRestarts")["NRestarts"])


def test_every_minion_started_pyflannel_at_boot_and_pairs_reach_each_other(bed):
    for node in bed.nodes:
        props = node.service("ActiveState", "UnitFileState", "Type", "NRestarts")
        assert props == {
            "ActiveState": "active",
            "UnitFileState": "enabled",  # the package enabled it
            "Type": "notify",
            "NRestarts": "0",
        }
    for a in bed.nodes:
        for b in bed.nodes:
            if a is not b:
                assert a.ping(b.pod_ip, count=2, interval=0.2).lost == 0, (a.ns, b.ns)


def test_the_service_runs_with_only_net_admin_and_net_raw(bed):
    node = bed.nodes[0]
    status = node.minion.exec("cat", f"/proc/{node.main_pid}/status").stdout
    caps = dict(re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M))
    net_admin_and_raw = 1 << 12 | 1 << 13
    for kind in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(caps[kind], 16) == net_admin_and_raw, (kind, caps)
    assert "NoNewPrivs:\t1" in status


def test_stop_exits_0_and_leaves_the_data_plane(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    routes = sorted(r["dst"] for r in a.routes())
    device = a.ip_json("link", "show", "flannel.1")[0]
    assert a.systemctl("stop", SERVICE).returncode == 0
    props = a.service("ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert sorted(r["dst"] for r in a.routes()) == routes
    assert a.ip_json("link", "show", "flannel.1")[0]["ifindex"] == device["ifindex"]
    assert a.ping(b.pod_ip, count=3, interval=0.2).lost == 0  # pods still reach each other
    assert b.ping(a.pod_ip, count=3, interval=0.2).lost == 0
    a.start()
    assert a.wait_ready()["FLANNEL_SUBNET"].startswith(str(a.subnet.network_address + 1))


def test_restart_loses_no_ping(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    subnet = a.subnet
    ping = b.start_ping(a.pod_ip, interval=0.02)
    try:
        time.sleep(0.3)
        a.systemctl("restart", SERVICE)
        time.sleep(0.3)
    finally:
        result = b.finish_ping(ping, interrupt=True)
    assert result.sent > 20 and result.lost == 0, result.output[-500:]
    assert a.subnet == subnet


def test_kill_9_is_restarted_with_the_same_subnet_and_peers_untouched(bed):
    a, b, c = bed.nodes
    subnet, pid, before = a.subnet, a.main_pid, restarts(a)
    peer_routes = {n.ns: routes_to(n, subnet) for n in (b, c)}
    ping = b.start_ping(a.pod_ip, interval=0.02)
    try:
        a.minion.exec("kill", "-9", str(pid))
        eventually(lambda: _restarted(a, before), timeout=20)
    finally:
        result = b.finish_ping(ping, interrupt=True)
    assert a.main_pid != pid and a.subnet == subnet
    assert {n.ns: routes_to(n, subnet) for n in (b, c)} == peer_routes
    assert result.lost == 0, result.output[-500:]  # the data plane never depended on the process
    assert "Main process exited, code=killed, status=9/KILL" in a.log()


def _restarted(node, before: int) -> None:
    assert restarts(node) == before + 1
    assert node.service("ActiveState")["ActiveState"] == "active"


def test_the_watchdog_leaves_a_healthy_daemon_and_restarts_a_hung_one(bed):
    node = bed.nodes[2]
    subnet = node.subnet
    node.minion.write(WATCHDOG_DROPIN, "[Service]\nWatchdogSec=6\n")
    try:
        node.systemctl("daemon-reload")
        node.systemctl("restart", SERVICE)
        before = restarts(node)
        assert node.service("WatchdogUSec")["WatchdogUSec"] == "6s"
        time.sleep(13)  # more than two watchdog periods
        assert restarts(node) == before and node.service("ActiveState")["ActiveState"] == "active"
        assert "systemd watchdog: pinging every 3.0 s while alive" in node.log()
        node.minion.exec("kill", "-STOP", str(node.main_pid))  # hung: alive but silent
        eventually(lambda: _restarted(node, before), timeout=30, interval=0.5)
        journal = node.log()
        assert "Watchdog timeout" in journal and "Failed with result 'watchdog'" in journal
        assert node.subnet == subnet
    finally:
        node.minion.path(WATCHDOG_DROPIN).unlink()
        node.systemctl("daemon-reload")
        node.systemctl("restart", SERVICE)


def test_a_reboot_keeps_the_subnet_though_the_kernel_state_is_gone(bed):
    a, b = bed.nodes[1], bed.nodes[0]
    subnet, machine_id = a.subnet, a.minion.exec("cat", "/etc/machine-id").stdout
    seconds = a.reboot()
    assert a.minion.exec("cat", "/etc/machine-id").stdout == machine_id
    assert a.service("ActiveState")["ActiveState"] == "active"
    log = a.log()
    assert "created flannel.1" in log  # a new machine: nothing of the old kernel state left
    assert a.subnet == subnet, log[-3000:]
    a.add_pod()
    wait_until_it_knows_the_vtep_of(b, a, timeout=20)  # b answers through a's new MAC
    assert a.ping(b.pod_ip, count=3, interval=0.2).lost == 0
    assert b.ping(a.pod_ip, count=3, interval=0.2).lost == 0
    print(f"reboot to pyflannel ready: {seconds:.2f} s")


def test_the_journal_reads_one_line_per_event_and_no_traceback_for_known_faults(bed):
    node = bed.nodes[0]
    bed.etcd.put("/coreos.com/network/subnets/10.1.250.0-24", "{not json")
    bed.etcd.pause()  # etcd unreachable for a while
    try:
        time.sleep(4)
    finally:
        bed.etcd.resume()
    bed.etcd.ctl("del", "/coreos.com/network/subnets/10.1.250.0-24")
    eventually(lambda: _logged(node, "ignoring etcd key /coreos.com/network/subnets/10.1.250.0-24"))
    entries = [
        json.loads(line)
        for line in node.minion.exec(
            "journalctl", "-u", SERVICE, "-o", "json", "--no-pager"
        ).stdout.splitlines()
    ]
    messages = [e["MESSAGE"] for e in entries if e.get("_COMM") != "systemd"]
    assert len(messages) > 10
    assert all(isinstance(m, str) and "\n" not in m for m in messages), messages
    assert not [m for m in messages if "Traceback" in m or m.startswith("  File ")]
    assert any("ignoring etcd key" in m and "10.1.250.0-24" in m for m in messages)


def _logged(node, text: str) -> None:
    assert text in node.log()


def test_status_and_doctor_work_inside_a_minion_as_an_operator_types_them(bed):
    node = bed.nodes[0]
    status = node.status_cli()
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("pyflannel on this node: HEALTHY")
    assert str(node.subnet) in status.stdout
    # --cluster reads etcd itself: the endpoints come from /etc/default/pyflannel.
    cluster = node.status_cli("--cluster", "--json")
    assert cluster.returncode == 0, cluster.stderr
    assert sorted(r["subnet"] for r in json.loads(cluster.stdout)) == sorted(
        str(n.subnet) for n in bed.nodes
    )
    code, findings = node.doctor()
    # Honest about where it runs: a container sharing the host's kernel ...
    assert findings["container"]["status"] == "warn"
    assert "systemd-nspawn" in findings["container"]["detail"]
    # ... and still passing what works there, failing what does not.
    for check in ("vxlan", "tun", "iptables"):
        assert findings[check]["status"] == "pass", findings[check]
    assert findings["etcd"]["status"] in ("pass", "warn")  # warn: this VM's disk may be slow
    assert findings["wireguard"]["status"] != "pass"  # no module here, no wireguard-go installed
    assert "flannel.1: pyflannel's own" in findings["port-8472"]["detail"]
    assert code == 2  # warnings, no failure


def test_start_returns_only_once_subnet_env_exists(installed_layers):
    """Type=notify: `systemctl start` waits for READY=1, which comes after subnet.env."""
    bed = minion_bed(installed_layers, hosts=1)
    try:
        node = bed.nodes[0]
        node.systemctl("stop", SERVICE)
        node.minion.exec("rm", "-f", "/run/flannel/subnet.env")
        bed.etcd.ctl("del", "/coreos.com/network/config")
        returned: dict = {}

        def start():
            node.systemctl("start", SERVICE)
            returned["subnet.env"] = node.has_subnet_env()
            returned["at"] = time.monotonic()

        starting = threading.Thread(target=start)
        starting.start()
        time.sleep(2.5)
        assert starting.is_alive(), "systemctl start returned without a network config"
        assert node.service("ActiveState")["ActiveState"] == "activating"
        assert not node.has_subnet_env()
        put_at = time.monotonic()
        bed.put_config()
        starting.join(30)
        assert returned == {"subnet.env": True, "at": returned["at"]} and returned["at"] > put_at
        assert "flannel config not found in etcd store" in node.log()
    finally:
        bed.close()
