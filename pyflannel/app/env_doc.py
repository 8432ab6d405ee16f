"""``/etc/default/pyflannel``: every ``FLANNELD_*`` variable `pyflannel run` reads, each with
its flag's help and its default, commented out. Rendered from the flags themselves, so a new
flag is documented there as soon as it exists (systemd/pyflannel.env is this text; a test
keeps it so)."""

from __future__ import annotations

import textwrap

from pyflannel.app.options import FLAGS, CommaList, Options, _attr, env_name

HEADER = """\
# /etc/default/pyflannel: the options of pyflannel.service, as FLANNELD_* variables (upstream
# flannel's names: an environment file written for flanneld works here too). pyflannel.service
# reads this file at every start: after editing it, `systemctl restart pyflannel` (the data
# plane stays up across the restart).
#
# Every variable pyflannel understands is below, commented out, set to its default. A flag on
# the command line would win over a variable. Booleans are true or false; lists are
# comma-separated; a repeatable flag (--iface, --iface-regex) takes one value here.
#
# Most nodes need only FLANNELD_ETCD_ENDPOINTS (and the TLS or auth variables their etcd
# needs); the network itself (subnet range, backend) is the JSON at <prefix>/config in etcd.
"""


def _default(kind: type, value: object) -> str:
    if kind is bool:
        return "true" if value else "false"
    if kind in (CommaList, list):
        return ",".join(value)  # type: ignore[arg-type]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render() -> str:
    defaults = Options()
    blocks = [HEADER]
    for name, kind, help_text in FLAGS:
        default = _default(kind, getattr(defaults, _attr(name)))
        text = help_text.replace("%(default)s", default or '""')
        lines = textwrap.wrap(f"--{name}: {text}", width=94)
        blocks.append("\n".join(f"# {line}" for line in lines) + f"\n#{env_name(name)}={default}\n")
    return "\n".join(blocks)
