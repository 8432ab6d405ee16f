"""The tree's layering, as the README's layout promises it, read from the source itself (every
import, also those inside functions): no import circle; the control loops and the application
know the subnet manager's interface, not etcd; nothing below the application imports it;
no generic module names a backend (a backend is its folder and one registry line)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pyflannel"
BACKEND_FOLDERS = ("vxlan", "udp", "hostgw", "wireguard")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every pyflannel module ``path`` imports (``from a import b`` counts as a.b if that is
    a module, else as a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pyflannel")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyflannel"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
    return found


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports_of(p) & MODULES for p in PACKAGE.rglob("*.py")}


def importers_of(prefix: str, among: str) -> dict[str, set[str]]:
    """Modules under ``among`` that import something under ``prefix``."""
    return {
        m: {d for d in deps if d == prefix or d.startswith(prefix + ".")}
        for m, deps in GRAPH.items()
        if m.startswith(among) and any(d == prefix or d.startswith(prefix + ".") for d in deps)
    }


def test_there_is_no_import_circle():
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v] - {v}:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("layer", ["pyflannel.control", "pyflannel.app"])
def test_the_control_loops_and_the_application_know_no_etcd(layer):
    assert importers_of("pyflannel.etcd", layer) == {}


def test_nothing_below_the_application_imports_it():
    below = {
        m: deps
        for m, deps in GRAPH.items()
        if not m.startswith("pyflannel.app")
        and m != "pyflannel.__main__"  # ``python -m pyflannel``: the entry, above everything
        and any(d.startswith("pyflannel.app") for d in deps)
    }
    assert below == {}


@pytest.mark.parametrize(
    "generic",
    [
        "pyflannel.app",
        "pyflannel.control",
        "pyflannel.ops",
        "pyflannel.backend.plan",
        "pyflannel.backend.kernel",
        "pyflannel.backend.reconciler",
        "pyflannel.backend.base",
        "pyflannel.backend.registry",
        "pyflannel.backend.offline",
    ],
)
def test_generic_modules_name_no_backend(generic):
    named = {}
    for folder in BACKEND_FOLDERS:
        named |= importers_of(f"pyflannel.backend.{folder}", generic)
    # ops/doctor asks whether wireguard-go is installed, as a fact about the machine.
    named.pop("pyflannel.ops.doctor.probes", None)
    assert named == {}


def test_a_backend_folder_imports_no_other_backend_but_the_udp_path_it_falls_back_to():
    for folder in BACKEND_FOLDERS:
        others = {
            d
            for m, deps in GRAPH.items()
            if m.startswith(f"pyflannel.backend.{folder}")
            for d in deps
            for other in BACKEND_FOLDERS
            if other != folder and d.startswith(f"pyflannel.backend.{other}")
        }
        allowed = {d for d in others if folder == "vxlan" and d.startswith("pyflannel.backend.udp")}
        assert others == allowed, folder


def readme_folder_order() -> list[str]:
    """The layer folders in the order the README's layout lists them (top to bottom)."""
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## How the code is laid out") :]
    block = layout[layout.index("```") + 3 : layout.index("```", layout.index("```") + 3)]
    return [
        line.split("/")[0].strip()
        for line in block.splitlines()
        if line[:2] == "  " and line[2:3] != " " and "/" in line.split()[0]
    ]


def test_the_readme_lists_every_layer_folder():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert sorted(readme_folder_order()) == sorted(folders)


def test_each_folder_imports_only_the_folders_below_it():
    """Layers by folder, not only by module: a folder may use the ones the README lists below
    it (and the package's top-level modules), never one above (a circle between folders that
    the module-level check cannot see)."""
    order = readme_folder_order()
    upward = {
        (m, d)
        for m, deps in GRAPH.items()
        for d in deps
        if m.count(".") >= 2
        and d.count(".") >= 1
        and m.split(".")[1] in order
        and d.split(".")[1] in order
        and order.index(d.split(".")[1]) < order.index(m.split(".")[1])
    }
    assert upward == set()


def test_the_readme_layout_names_every_module():
    """A newcomer finds each module in the README's layout (generated code aside)."""
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## How the code is laid out") :]
    block = layout[layout.index("```") + 3 : layout.index("```", layout.index("```") + 3)]
    named = set(re.findall(r"[\w]+\.py", block))
    missing = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "proto" not in p.parts and p.name not in named
    )
    assert missing == []
