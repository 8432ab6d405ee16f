"""A change under ``<prefix>/subnets/``, as the schema's own type (pure: no etcd client here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Network

from pyflannel.subnet.lease import Lease


class EventKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class LeaseEvent:
    """One change under ``<prefix>/subnets/``. ``lease`` is None for a deletion, and also for a
    put whose value could not be decoded (then ``problem`` says why)."""

    kind: EventKind
    key: str
    subnet: IPv4Network | None
    revision: int
    lease: Lease | None = None
    problem: str = ""
