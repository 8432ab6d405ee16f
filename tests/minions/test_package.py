"""The Debian package scripts/build-deb writes: what it installs and where, that lintian finds
nothing to object to, and that apt installs it with everything it needs on a stock Debian 12
machine that reaches the Debian archive."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyflannel import __version__
from testbed import rootfs
from testbed.package import field

ROOT = Path(__file__).resolve().parents[2]


def contents(deb: Path) -> dict[str, str]:
    """path -> mode string, as dpkg-deb lists them."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    rows = {}
    for line in out.stdout.splitlines():
        fields = line.split()
        rows[fields[5].removeprefix(".")] = fields[0]
    return rows


def member(deb: Path, path: str, tmp_path: Path) -> str:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    return (tmp_path / path.lstrip("/")).read_text()


def test_it_is_named_and_versioned_as_the_source(deb):
    assert deb.name == f"pyflannel_{__version__}_all.deb"  # pure Python: one package for all
    assert field(deb, "Architecture") == "all"
    assert field(deb, "Version") == __version__
    changelog = (ROOT / "debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"pyflannel ({__version__}) ")


def test_it_installs_where_debian_puts_each_part(deb):
    files = contents(deb)
    for path, mode in {
        "/usr/bin/pyflannel": "-rwxr-xr-x",
        "/lib/systemd/system/pyflannel.service": "-rw-r--r--",
        "/etc/default/pyflannel": "-rw-r--r--",
        "/usr/lib/systemd/network/90-pyflannel.link": "-rw-r--r--",
        "/usr/lib/cni/flannel": "-rwxr-xr-x",
        "/usr/share/man/man8/pyflannel.8.gz": "-rw-r--r--",
        "/usr/share/doc/pyflannel/copyright": "-rw-r--r--",
        "/usr/share/doc/pyflannel/examples/docker.service.d/10-pyflannel.conf": "-rw-r--r--",
    }.items():
        assert files.get(path) == mode, (path, files.get(path))
    # Every module of the tree, and nothing executable among the modules.
    packaged = sorted(
        p.removeprefix("/usr/lib/pyflannel/")
        for p in files
        if p.startswith("/usr/lib/pyflannel/pyflannel/") and p.endswith(".py")
    )
    tree = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "pyflannel").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    assert packaged == tree
    assert not [
        p
        for p, m in files.items()
        if p.startswith("/usr/lib/pyflannel/") and "x" in m[1:] and not m.startswith("d")
    ]


def test_the_unit_and_the_default_file_are_the_trees_at_debians_paths(deb, tmp_path):
    unit = member(deb, "/lib/systemd/system/pyflannel.service", tmp_path)
    tree_unit = (ROOT / "systemd/pyflannel.service").read_text()
    assert unit == tree_unit.replace("/usr/local/bin/pyflannel", "/usr/bin/pyflannel")
    assert "ExecStart=/usr/bin/pyflannel run" in unit
    assert (tmp_path / "etc/default/pyflannel").read_text() == (
        ROOT / "systemd/pyflannel.env"
    ).read_text()
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert conffiles == ["/etc/default/pyflannel"]
    plugin = (tmp_path / "usr/lib/cni/flannel").read_text()
    assert plugin.startswith("#!/usr/bin/python3 -IS\n") and "'/usr/lib/pyflannel'" in plugin


def test_its_dependencies_are_debians_and_the_bundled_ones_are_listed(deb):
    depends = field(deb, "Depends")
    for name in (
        "python3-numpy",
        "python3-cryptography",
        "python3-prometheus-client",
        "python3-h2",
        "python3-protobuf",
        "iptables",
    ):
        assert name in depends
    assert "python3-pyroute2" not in depends
    files = contents(deb)
    bundled = [
        line.split("==")
        for line in (ROOT / "debian/bundled-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for name, version in bundled:
        dist = f"/usr/lib/pyflannel/{name.replace('-', '_')}-{version}.dist-info/METADATA"
        assert dist in files, dist


def test_lintian_finds_no_error_and_no_unanswered_warning(deb):
    proc = subprocess.run(["lintian", str(deb)], capture_output=True, text=True)
    tags = [ln for ln in proc.stdout.splitlines() if re.match(r"^[EW]: ", ln)]
    assert proc.returncode == 0 and tags == [], proc.stdout + proc.stderr


@pytest.fixture
def stock_tree(tmp_path):
    yield rootfs.stock()
    shutil.rmtree(tmp_path / "layer", ignore_errors=True)


def test_apt_installs_it_with_its_dependencies_on_a_stock_debian_12(deb, stock_tree, tmp_path):
    upper = tmp_path / "layer"
    (upper / "root").mkdir(parents=True)
    shutil.copy(deb, upper / "root" / deb.name)
    proc = rootfs.run_in_tree(
        [stock_tree],
        upper,
        f"apt-get update -qq && apt-get install -y --no-install-recommends ./root/{deb.name} "
        "&& pyflannel --version && dpkg-query -W -f='${Status} ${Package}\\n' python3-numpy "
        "python3-prometheus-client pyflannel",
        network=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"\n{__version__}\n" in out
    assert out.count("install ok installed") == 3, out[-2000:]
    # Enabled as the package says (no systemd runs in this tree: enabled, nothing started).
    assert (upper / "etc/systemd/system/multi-user.target.wants/pyflannel.service").is_symlink()
    sizes = re.search(r"Need to get (.+?) of archives\.\nAfter this operation, (.+?) of", out)
    print(f"apt: download {sizes and sizes.group(1)}, installed {sizes and sizes.group(2)}")
