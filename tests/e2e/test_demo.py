"""The README's demo commands, run as typed (`sudo ./demo.sh --sites`): it must end with every
pair of pods answering, each pair's path shown, and nothing left behind."""

import subprocess
from pathlib import Path

from testbed import netns

from .conftest import require_testbed

ROOT = Path(__file__).resolve().parents[2]


def test_the_sites_demo_runs_as_the_readme_says():
    require_testbed()
    before = set(netns.list_namespaces())
    proc = subprocess.run(
        ["./demo.sh", "--sites"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    pairs = [line for line in out.splitlines() if line.startswith(("ok  ", "FAIL"))]
    assert len(pairs) == 20 and all(line.startswith("ok  ") for line in pairs), pairs
    assert any("at its inside address" in line for line in pairs)  # within a site
    assert any("relayed via" in line for line in pairs)  # home <-> oslo
    assert sum("encrypted to" in line for line in pairs) == 16  # every pair across sites
    assert "all namespaces, daemons and etcd removed" in out
    assert set(netns.list_namespaces()) <= before
