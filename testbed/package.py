"""The Debian package for the bed: built by scripts/build-deb exactly as an operator builds it,
and its next release for upgrade tests."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_deb(out: Path) -> Path:
    """scripts/build-deb, as an operator runs it; the .deb it wrote."""
    cmd = [str(ROOT / "scripts/build-deb"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"build-deb failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def newer_package(deb: Path, version: str, out: Path) -> Path:
    """``deb`` as the next release, ``version``: the same files, that version in its control
    data and in pyflannel itself (what an upgrade sees of a new release; a second build by
    scripts/build-deb would cost ~30 s more, mostly xz)."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    init = "usr/lib/pyflannel/pyflannel/__init__.py"
    text = (tree / init).read_text()
    (tree / init).write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{version}"', text))
    md5sums = tree / "DEBIAN/md5sums"
    digest = hashlib.md5((tree / init).read_bytes()).hexdigest()
    md5sums.write_text(
        re.sub(rf"(?m)^[0-9a-f]+(  {re.escape(init)})$", rf"{digest}\1", md5sums.read_text())
    )
    newer = out / deb.name.replace(f"_{field(deb, 'Version')}_", f"_{version}_")
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "-b", str(tree), str(newer)], check=True, capture_output=True
    )
    shutil.rmtree(tree)
    return newer


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()
