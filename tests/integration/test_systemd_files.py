"""The files in systemd/: systemd-analyze verify accepts the service and the Docker drop-in
(and rejects a broken copy, so the check can fail); the .link file keeps udev off our MACs;
the environment file only sets variables `pyflannel run` understands."""

import configparser
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyflannel.app.cli import make_parser
from pyflannel.app.env_doc import render
from pyflannel.app.options import FLAGS, Options, build_options, env_name
from tests.conftest import require

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


@pytest.fixture
def units(tmp_path):
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (systemd)")
    pyflannel = shutil.which("pyflannel") or sys.executable
    text = (
        (SYSTEMD / "pyflannel.service").read_text().replace("/usr/local/bin/pyflannel", pyflannel)
    )
    (tmp_path / "pyflannel.service").write_text(text)
    (tmp_path / "docker.service").write_text(
        "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n"
    )
    (tmp_path / "docker.service.d").mkdir()
    dropin = (SYSTEMD / "docker.service.d" / "10-pyflannel.conf").read_text()
    (tmp_path / "docker.service.d" / "10-pyflannel.conf").write_text(
        dropin.replace("/usr/local/bin/pyflannel", pyflannel).replace(
            "/usr/bin/dockerd", "/bin/true"
        )
    )
    return tmp_path


def verify(*paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True
    )


def test_service_and_docker_dropin_verify(units):
    proc = verify(units / "pyflannel.service", units / "docker.service")
    assert proc.returncode == 0, proc.stderr


def test_a_broken_unit_fails_verification(units):
    unit = units / "pyflannel.service"
    lines = [ln for ln in unit.read_text().splitlines() if not ln.startswith("ExecStart=")]
    unit.write_text(
        "\n".join(lines).replace("[Service]", "[Service]\nExecStart=/nonexistent/pyflannel run")
    )
    proc = verify(unit)
    assert proc.returncode != 0 and "/nonexistent/pyflannel" in proc.stderr


def test_service_essentials():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(SYSTEMD / "pyflannel.service")
    s = unit["Service"]
    assert s["Type"] == "notify" and s["Restart"] == "always" and int(s["WatchdogSec"]) > 0
    assert s["RuntimeDirectory"] == "flannel" and s["RuntimeDirectoryPreserve"] == "yes"
    assert set(s["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert (
        "docker.service" in unit["Unit"]["Before"]
        and "network-online.target" in unit["Unit"]["After"]
    )


def test_link_file_stops_udev_rewriting_our_macs():
    link = configparser.ConfigParser()
    link.read(SYSTEMD / "90-pyflannel.link")
    assert link["Match"]["OriginalName"] == "flannel*"
    assert link["Link"]["MACAddressPolicy"] == "none"


def test_the_environment_file_documents_every_variable_pyflannel_run_reads():
    """/etc/default/pyflannel (the Debian package's conffile) is rendered from the flags: a new
    flag must be documented there (regenerate with the command below)."""
    text = (SYSTEMD / "pyflannel.env").read_text()
    assert text == render(), (
        "systemd/pyflannel.env is stale: python3 -c 'from pyflannel.app.env_doc import render; "
        'print(render(), end="")\' > systemd/pyflannel.env'
    )
    for name, _, _ in FLAGS:
        assert text.count(f"\n#{env_name(name)}=") == 1, name


def test_the_environment_file_uncommented_gives_pyflannel_runs_defaults():
    env = {}
    for line in (SYSTEMD / "pyflannel.env").read_text().splitlines():
        if line.startswith("#FLANNELD_"):
            key, _, value = line[1:].partition("=")
            env[key] = value
    options = build_options(make_parser().parse_args(["run"]), env)
    assert dataclasses.replace(options, given=frozenset()) == Options()
    assert len(env) == len(FLAGS)
