"""``pyflannel install-cni``: put the ``flannel`` plugin where runtimes look for it, and
(optionally) upstream's default network config beside the runtime's others."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

PLUGIN_NAME = "flannel"
CONFLIST_NAME = "10-flannel.conflist"
# Upstream's kube-flannel.yml cni-conf.json: flannel with hairpin mode as the default
# gateway, then portmap for published ports.
DEFAULT_CONFLIST = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def plugin_script(python: str = sys.executable, location: str | None = None) -> str:
    """The executable: this Python running pyflannel's plugin. Isolated (-I: the runtime's
    environment cannot redirect imports) and without ``site`` (-S: its .pth hooks cost ~30 ms
    of every container start); the plugin needs only the standard library and the directory
    pyflannel is installed in (``location``, default this one), which is written in."""
    location = location or str(Path(__file__).resolve().parents[2])
    return (
        f"#!{python} -IS\n"  # one argument: Linux passes the rest of the line as one
        "# The flannel CNI plugin of pyflannel (written by `pyflannel install-cni`).\n"
        "import sys\n"
        f"sys.path.insert(0, {location!r})\n"
        "from pyflannel.cni.plugin import main\n"
        "raise SystemExit(main())\n"
    )


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(bin_dir: str, conf_dir: str | None) -> list[str]:
    """What was written (the plugin always; the conflist only if none of ours is there)."""
    done = []
    plugin = Path(bin_dir) / PLUGIN_NAME
    _write(plugin, plugin_script(), 0o755)
    done.append(f"plugin {plugin}")
    if conf_dir:
        conflist = Path(conf_dir) / CONFLIST_NAME
        if conflist.exists():
            done.append(f"kept the existing {conflist}")
        else:
            _write(conflist, json.dumps(DEFAULT_CONFLIST, indent=2) + "\n", 0o644)
            done.append(f"network config {conflist}")
    return done
