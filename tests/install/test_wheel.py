"""What `pip install .` gives an operator (not the editable install the suite runs on): the
package's own file list equals the source tree's, every module imports from the installed
copy, and the `pyflannel` command starts."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Never copied into the build: stale build/ output could hide a module the wheel lacks.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "bench", "tests", ".*_cache"
)


def source_modules() -> list[str]:
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "pyflannel").rglob("*.py")
        if "__pycache__" not in p.parts
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv (seeing the system's site-packages for the dependencies) into which the tree
    is installed exactly as the README says: `pip install .`, from a clean copy."""
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "src"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    proc = subprocess.run(
        [
            str(venv / "bin/python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            ".",
        ],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def run_in(venv: Path, *args: str) -> subprocess.CompletedProcess:
    # From / so that neither the checkout nor its copy is on sys.path.
    return subprocess.run(
        [*args],
        cwd="/",
        capture_output=True,
        text=True,
        env={"PATH": f"{venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONNOUSERSITE": "1"},
    )


def installed_files(venv: Path) -> list[str]:
    proc = run_in(
        venv,
        str(venv / "bin/python"),
        "-c",
        "import importlib.metadata as m\nfor f in m.files('pyflannel'): print(f.as_posix())",
    )
    assert proc.returncode == 0, proc.stderr
    return sorted(
        f for f in proc.stdout.split() if f.startswith("pyflannel/") and f.endswith(".py")
    )


def test_the_installed_package_holds_every_module_of_the_source_tree(installed):
    assert installed_files(installed) == source_modules()


def test_every_module_imports_from_the_installed_copy_not_the_checkout(installed):
    modules = [
        m[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for m in source_modules()
        if not m.endswith("__main__.py")
    ]
    code = (
        "import importlib, pyflannel, sys\n"
        f"assert pyflannel.__file__.startswith({str(installed)!r}), pyflannel.__file__\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(len(sys.modules))"
    )
    proc = run_in(installed, str(installed / "bin/python"), "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_installed_command_starts_and_parses_its_flags(installed):
    version = run_in(installed, str(installed / "bin/pyflannel"), "--version")
    assert version.returncode == 0 and version.stdout.strip().endswith(_source_version()), (
        version.stderr
    )
    run = run_in(installed, str(installed / "bin/pyflannel"), "run", "--help")
    assert run.returncode == 0 and "--etcd-endpoints" in run.stdout, run.stderr


def _source_version() -> str:
    ns: dict = {}
    exec((ROOT / "pyflannel/__init__.py").read_text(), ns)
    return ns["__version__"]
