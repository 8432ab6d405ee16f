"""Operating a node: `pyflannel status` against a running 2-node bed (healthy; a route deleted
by hand; the daemon stopped; etcd stopped), the health endpoint on a real port, and the
systemd notify protocol against a real datagram socket playing systemd."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from testbed import netns

from .conftest import eventually, started_bed

ARGS = ("--reconcile-interval=60", "--ip-masq")  # slow reconcile: drift stays visible


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=2, daemon_args=ARGS)
    yield bed
    bed.close()


def status(bed, node, *extra):
    proc = node.status_cli(*extra)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def http(node, path):
    code = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:8471{path}', timeout=5); print(r.status); "
        "print(r.headers['Content-Type']); sys.stdout.write(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.headers['Content-Type']); sys.stdout.write(e.read().decode())\n"
    )
    out = netns.run([sys.executable, "-c", code], ns=node.ns).stdout
    status_line, ctype, body = out.split("\n", 2)
    return int(status_line), ctype, body


def test_healthy_node(bed):
    a, b = bed.nodes
    proc = status(bed, a)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("pyflannel on this node: HEALTHY")
    assert f"{b.subnet}" in proc.stdout and "masquerade + forward: in place" in proc.stdout
    doc = json.loads(status(bed, a, "--json").stdout)
    assert doc["daemon"]["running"] and doc["daemon"]["ready"]
    assert doc["lease"]["subnet"] == str(a.subnet) and doc["lease"]["expires_in_s"] > 86000
    assert doc["backend"]["vtep_mac"] == a.ip_json("link", "show", "flannel.1")[0]["address"]
    assert doc["backend"]["mtu"] == 1450 and "50 (VXLAN overhead)" in doc["backend"]["mtu_reason"]
    path = doc["peers"][0].pop("path")  # the prober's view: none yet, or this peer's
    assert path is None or path["state"] in ("unknown", "ok")
    heal = doc["peers"][0].pop("heal", None)  # the path healer's: none before its first round
    assert heal is None or heal["via"] == "vxlan"
    assert doc["peers"] == [
        {
            "subnet": str(b.subnet),
            "public_ip": str(b.underlay_ip),
            "encap": "vxlan",
            "vtep_mac": b.ip_json("link", "show", "flannel.1")[0]["address"],
            "udp_port": 8285,  # b accepts UDP encapsulation there (its lease's UDPPort)
            "neighbour": True,
            "fdb": True,
            "route": True,
        }
    ]
    assert doc["iptables"]["present"] and doc["subnet_env"]["problems"] == []


def test_cluster_view_lists_every_lease_with_its_expiry(bed):
    proc = status(bed, bed.nodes[0], "--cluster", "--json")
    rows = json.loads(proc.stdout)
    assert sorted(r["subnet"] for r in rows) == sorted(str(n.subnet) for n in bed.nodes)
    assert all(86000 < r["expires_in_s"] <= 86400 for r in rows)


def test_health_endpoints(bed):
    a = bed.nodes[0]
    assert http(a, "/healthz") == (200, "text/plain; charset=utf-8", "flanneld is running")
    assert http(a, "/readyz")[::2] == (200, "flanneld is ready")
    code, ctype, body = http(a, "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert 'pyflannel_peers{encap="vxlan"} 1.0' in body
    assert "pyflannel_ready 1.0" in body and "pyflannel_lease_expiry_seconds " in body
    assert "pyflannel_iptables_restores_total 1.0" in body
    code, ctype, body = http(a, "/status")
    assert (code, ctype) == (200, "application/json") and json.loads(body)["daemon"]["ready"]
    assert http(a, "/nope")[0] == 404


def test_endpoint_listens_on_loopback_only(bed):
    a = bed.nodes[0]
    local = [
        line.split()[3] for line in a.run("ss", "-Hltn", "sport", "= :8471").stdout.splitlines()
    ]
    assert local == ["127.0.0.1:8471"]


def test_drift_is_shown_and_fails_the_probe_until_the_daemon_repairs_it(bed):
    a, b = bed.nodes
    a.stop()  # a running daemon repairs a deleted route within milliseconds
    a.run("ip", "route", "del", str(b.subnet), "proto", "152")
    try:
        proc = status(bed, a)
        assert proc.returncode == 1
        assert f"! peer {b.subnet}: route not programmed" in proc.stdout
        assert "MISSING" in proc.stdout
    finally:
        a.start(*ARGS)
        a.wait_ready()
    proc = status(bed, a)
    assert proc.returncode == 0, proc.stdout  # repaired at start-up
    assert str(b.subnet) in [r["dst"] for r in a.routes()]


def test_stopped_daemon_is_reported_from_etcd_and_the_kernel(bed):
    a, b = bed.nodes
    a.stop()
    try:
        proc = status(bed, a)
        assert proc.returncode == 1
        assert "! daemon not running (no answer on http://127.0.0.1:8471/status" in proc.stdout
        assert "etcd       http://198.51.100.254:2379: reachable" in proc.stdout
        doc = json.loads(status(bed, a, "--json").stdout)
        assert [(r["subnet"], r["route"]) for r in doc["peers"]] == [(str(b.subnet), True)]
    finally:
        a.start(*ARGS)
        a.wait_ready()


def test_stopped_etcd_is_reported_and_the_kernel_still_shown(bed):
    a, b = bed.nodes
    bed.etcd.pause()
    try:
        eventually(lambda: _degraded(bed, a), timeout=40)
        a.stop()
        proc = status(bed, a)
        assert "etcd unreachable" in proc.stdout and "UNREACHABLE" in proc.stdout
        assert str(b.subnet) in proc.stdout  # programmed routes, from the kernel
    finally:
        bed.etcd.resume()
        if not a.running:
            a.start(*ARGS)
            a.wait_ready()


def _degraded(bed, node):
    proc = status(bed, node)
    assert proc.returncode == 2, proc.stdout  # the daemon runs; etcd is the problem
    assert "~ etcd unreachable" in proc.stdout


def test_systemd_notify_ready_status_watchdog_and_stopping(bed, tmp_path):
    a = bed.nodes[0]
    a.stop()
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    try:
        a.start(*ARGS, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        messages = [sock.recv(4096).decode()]
        assert messages[0].startswith("READY=1\nSTATUS=subnet ")
        assert a.subnet_file.exists()  # READY only once subnet.env is written
        t0 = time.monotonic()
        while sum(m.startswith("WATCHDOG=1") for m in messages) < 3:
            messages.append(sock.recv(4096).decode())
        assert time.monotonic() - t0 < 3  # every WatchdogSec/2 = 0.5 s
        assert a.stop(signal.SIGTERM) == 0
        rest = []
        sock.settimeout(2)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        sock.close()
        if not a.running:
            a.start(*ARGS)
            a.wait_ready()


def test_docker_opts_from_the_nodes_subnet_env(bed):
    a = bed.nodes[0]
    run = [
        "ip",
        "netns",
        "exec",
        a.ns,
        sys.executable,
        "-m",
        "pyflannel",
        "docker-opts",
        "-f",
        str(a.subnet_file),
        "-d",
        "-",
    ]
    out = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f'DOCKER_OPT_BIP="--bip={a.subnet.network_address + 1}/24"',
        'DOCKER_OPT_IPMASQ="--ip-masq=false"',  # pyflannel masquerades (--ip-masq), Docker must not
        'DOCKER_OPT_MTU="--mtu=1450"',
        f'DOCKER_OPTS=" --bip={a.subnet.network_address + 1}/24 --ip-masq=false --mtu=1450"',
    ]
    # As upstream: refuse when the routing table already sends that subnet elsewhere.
    a.run("ip", "route", "add", "10.1.254.0/24", "via", "198.51.100.254")
    try:
        (a.dir / "other.env").write_text(
            "FLANNEL_SUBNET=10.1.254.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        )
        run[run.index(str(a.subnet_file))] = str(a.dir / "other.env")
        out = subprocess.run(run, capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "already contains the subnet: 10.1.254.0/24" in out.stderr
    finally:
        a.run("ip", "route", "del", "10.1.254.0/24")


def test_doctor_on_a_node_of_the_bed(bed):
    a = bed.nodes[0]
    returncode, findings = a.doctor()
    for check in ("vxlan", "tun", "iptables", "mtu"):
        assert findings[check]["status"] == "pass", findings[check]
    assert findings["etcd"]["status"] in ("pass", "warn")  # warn: this VM's disk may be slow
    assert "round trip" in findings["etcd"]["detail"]
    (member,) = [f for check, f in findings.items() if check.startswith("etcd-pyflannel")]
    assert "WAL fsync p99" in member["detail"] and "leader" in member["detail"]
    assert findings["clock"]["status"] == "pass"
    # The daemon runs here: 8472 belongs to its VXLAN device, which is fine.
    assert (
        findings["port-8472"]["detail"] == "UDP 8472 (VXLAN) is used by flannel.1: pyflannel's own"
    )
    assert returncode in (0, 2)
    assert not [ns for ns in netns.list_namespaces() if ns.endswith("-doctor")]  # throwaway removed


def test_doctor_with_etcd_unreachable_fails(bed):
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            bed.nodes[0].ns,
            sys.executable,
            "-m",
            "pyflannel",
            "doctor",
            "--etcd-endpoints=http://198.51.100.254:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "FAIL  etcd       etcd unreachable" in proc.stdout
