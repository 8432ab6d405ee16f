"""The type hints of the package are checked, not only written (mypy, setup.cfg [mypy])."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_finds_no_type_errors_in_the_package():
    try:
        import mypy  # noqa: F401
    except ImportError:
        require(False, "mypy (pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MYPY_CACHE_DIR": str(ROOT / ".mypy_cache")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
