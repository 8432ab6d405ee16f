"""The store settings of a running daemon, for the tools typed beside it (``pyflannel trace``
and ``doctor`` given no store flags): the daemon's status document says how it reaches etcd
(endpoints, TLS files, user) and where its password is, never the password itself; the tool
reads that from the daemon's own command line or environment on this node (root only). Several
networks on one host: the daemon of the network asked for (``--etcd-prefix``) or of the
addresses traced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network
from pathlib import Path

from pyflannel.errors import FlannelError
from pyflannel.ops.instance import instances_beside
from pyflannel.ops.snapshot import StoreAccess
from pyflannel.ops.status.client import StatusEndpoint, daemon_document
from pyflannel.ops.status.document import StatusDoc
from pyflannel.subnet.stores import StoreOptions

PASSWORD_FLAGS = ("--etcd-password", "-etcd-password")
PASSWORD_VARIABLE = "FLANNELD_ETCD_PASSWORD"


class DaemonSettingsError(FlannelError):
    """The daemon's settings cannot be taken (its password cannot be read here)."""


@dataclass(frozen=True)
class DaemonSettings:
    store: StoreOptions
    endpoint: StatusEndpoint  # where the daemon answers (its subnet file)
    pid: int

    def describe(self) -> str:
        return f"the settings of the running daemon (pid {self.pid}, network {self.store.prefix})"


def running_documents(endpoint: StatusEndpoint, timeout: float = 2.0) -> list[StatusDoc]:
    """Status documents of the daemons this host runs that can be found: the one ``status``
    finds first, then those whose instance records lie beside its subnet file."""
    found: dict[int, StatusDoc] = {}
    places = [endpoint] + [
        StatusEndpoint(subnet_file=record.subnet_file)
        for record in instances_beside(endpoint.subnet_file)
        if record.healthz
    ]
    for place in places:
        doc, _ = daemon_document(place, timeout)
        if doc is not None and doc.daemon.pid is not None and _access(doc) is not None:
            found.setdefault(doc.daemon.pid, doc)
    return list(found.values())


def _access(doc: StatusDoc) -> StoreAccess | None:
    return doc.instance.access if doc.instance is not None else None


def choose(
    docs: Sequence[StatusDoc], prefix: str | None, addresses: Sequence[IPv4Address] = ()
) -> StatusDoc | None:
    """The daemon of network ``prefix``, else the one whose network holds one of
    ``addresses``, else the first found (the one ``pyflannel status`` shows)."""
    if prefix is not None:
        docs = [d for d in docs if d.instance is not None and d.instance.etcd_prefix == prefix]
    for address in addresses:
        for doc in docs:
            if doc.network and address in ip_network(doc.network):
                return doc
    return docs[0] if docs else None


def settings_of(doc: StatusDoc, proc: Path = Path("/proc")) -> DaemonSettings:
    instance, pid, access = doc.instance, doc.daemon.pid, _access(doc)
    assert instance is not None and access is not None and pid is not None, "running_documents"
    password = read_password(pid, access.password_in, proc) if access.password_in else ""
    store = StoreOptions(
        endpoints=access.endpoints,
        prefix=instance.etcd_prefix,
        cafile=access.cafile,
        certfile=access.certfile,
        keyfile=access.keyfile,
        username=access.username,
        password=password,
    )
    return DaemonSettings(store, StatusEndpoint(subnet_file=instance.subnet_file), pid)


def read_password(pid: int, where: str, proc: Path = Path("/proc")) -> str:
    """The daemon's etcd password, from where it says it is."""
    try:
        if where == PASSWORD_VARIABLE:
            found = password_in_environment((proc / str(pid) / "environ").read_bytes())
        else:
            found = password_on_command_line((proc / str(pid) / "cmdline").read_bytes())
    except OSError as e:
        raise DaemonSettingsError(
            f"the running daemon's etcd password is in its {_place(where)} (pid {pid}), which "
            f"this user cannot read ({e.strerror}): run as root, or give --etcd-password"
        ) from None
    if found is None:
        raise DaemonSettingsError(f"no etcd password in the {_place(where)} of pid {pid}")
    return found


def _place(where: str) -> str:
    return "environment" if where == PASSWORD_VARIABLE else "command line"


def password_on_command_line(cmdline: bytes) -> str | None:
    """``--etcd-password=X``, ``--etcd-password X`` or Go's ``-etcd-password`` (the last one
    given wins, as in the daemon's own parsing)."""
    args = [a.decode(errors="surrogateescape") for a in cmdline.split(b"\0")[:-1]]
    found = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in PASSWORD_FLAGS:
            found = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def password_in_environment(environ: bytes) -> str | None:
    for entry in environ.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and name.decode(errors="replace") == PASSWORD_VARIABLE:
            return value.decode(errors="surrogateescape")
    return None


def daemon_settings(
    endpoint: StatusEndpoint, prefix: str | None, addresses: Sequence[IPv4Address] = ()
) -> DaemonSettings | None:
    """The settings of the running daemon these tools are typed beside, if one answers."""
    doc = choose(running_documents(endpoint), prefix, addresses)
    return settings_of(doc) if doc is not None else None
