"""A change to the leases of a network, as the schema's own type (pure: no store here)."""

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
    put whose value could not be decoded (then ``problem`` says why). ``superseded``: this
    node has written that subnet's lease since (the event is history to its lease keeper)."""

    kind: EventKind
    key: str
    subnet: IPv4Network | None
    lease: Lease | None = None
    problem: str = ""
    superseded: bool = False
