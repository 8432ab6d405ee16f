"""``pyflannel trace`` and ``doctor`` typed on a node with no store flags, beside daemons started
by hand with theirs: they take each network's settings from its running daemon, as ``status``
finds it. Two networks on each host, each with its own etcd user (a role limited to its own
prefix): network A's daemons got their password as a flag, network B's from FLANNELD_*; a
tool that took the wrong network's credentials would be refused by etcd. The password itself
never leaves the node's own process: the status document names where it is."""

import json
import sys

import pytest

from pyflannel.ops.doctor.checks import FAIL

from .conftest import FAST_RECONCILE, eventually, require_testbed

NETWORKS = {
    "": ("/coreos.com/network", {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}),
    "b": ("/net-b", {"Network": "10.12.0.0/16", "Backend": {"Type": "host-gw"}}),
}
USERS = {"": ("node-a", "secret-of-a"), "b": ("node-b", "secret-of-b")}


@pytest.fixture(scope="module")
def bed():
    from testbed.bed import TestBed

    require_testbed()
    with TestBed(hosts=2) as bed:
        for prefix, config in NETWORKS.values():
            bed.put_config(config, prefix=prefix)
        bed.etcd.enable_auth("root-pw")
        for tag, (prefix, _) in NETWORKS.items():
            user, password = USERS[tag]
            bed.etcd.ctl("user", "add", f"{user}:{password}")
            bed.etcd.ctl("role", "add", user)
            bed.etcd.ctl(
                "role", "grant-permission", user, "--prefix=true", "readwrite", f"{prefix}/"
            )
            bed.etcd.ctl("user", "grant-role", user, user)
        networks = {"": bed.nodes, "b": bed.second_network("b")}
        for node in networks[""]:  # the password as a flag
            user, password = USERS[""]
            node.start(*FAST_RECONCILE, f"--etcd-username={user}", f"--etcd-password={password}")
        for node in networks["b"]:  # the password in the environment; its own health port
            user, password = USERS["b"]
            env = {"FLANNELD_ETCD_USERNAME": user, "FLANNELD_ETCD_PASSWORD": password}
            node.start(*FAST_RECONCILE, "--etcd-prefix=/net-b", "--healthz-port=8481", env=env)
        for nodes in networks.values():
            for node in nodes:
                node.wait_ready()
                node.add_pod()
        bed.networks = networks
        yield bed


def bare(node, command: str, *args: str):
    """A pyflannel command on the node with no store flag (the subnet file is /run/flannel's
    on a real host; here each host has its own directory, so it is named)."""
    return node.run(
        sys.executable,
        "-m",
        "pyflannel",
        command,
        f"--subnet-file={node.subnet_file}",
        *args,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("tag", ["", "b"], ids=["password-as-flag", "password-in-environment"])
def test_trace_without_store_flags_uses_the_daemon_of_the_traced_network(bed, tag):
    a, b = bed.networks[tag]
    eventually(lambda: _reaches(a, b), timeout=20)
    proc = bare(a, "trace", str(a.pod_ip), str(b.pod_ip), "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["verdict"] == "ok", (proc.stderr, doc)
    assert doc["steps"][0]["place"] == "store" and doc["steps"][0]["ok"]


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1


def test_doctor_without_store_flags_reaches_etcd_as_the_daemon_does(bed):
    a = bed.networks[""][0]
    proc = bare(a, "doctor", "--json", "--iface=eth0")
    findings = {f["check"]: f for f in json.loads(proc.stdout)}
    assert findings["etcd"]["status"] != FAIL, findings["etcd"]
    assert findings["etcd"]["detail"].startswith("http://198.51.100.254:2379: round trip")


def test_the_status_document_names_where_the_password_is_never_what(bed):
    for tag, where in (("", "--etcd-password"), ("b", "FLANNELD_ETCD_PASSWORD")):
        node = bed.networks[tag][0]
        port = 8471 if tag == "" else 8481
        text = node.endpoint("/status", port)
        assert USERS[tag][1] not in text
        access = json.loads(text)["instance"]["access"]
        assert access["password_in"] == where and access["username"] == USERS[tag][0]


def test_given_store_flags_win_over_the_daemons(bed):
    a, b = bed.networks[""]
    proc = bare(
        a, "trace", str(a.pod_ip), str(b.pod_ip), "--etcd-endpoints=http://198.51.100.254:1"
    )
    assert proc.returncode == 1 and "etcd cannot be read" in proc.stdout, proc.stdout
