"""This node's subnet lease as a state machine: acquire, keep (renew), lose, re-acquire.

Differences from upstream (local_manager.go), all deliberate:
- every write is conditional, and a lost creation race is retried with another subnet
  (upstream exits 1 on a collision);
- renewal keeps the lease alive (etcd: a keepalive of its etcd lease) instead of re-putting
  the key, so peers see no event; it happens at half the TTL at the latest, and retries with
  backoff through outages of the store;
- a lost lease (expired while partitioned, deleted or taken over) is re-acquired — the same
  subnet if it is still free — instead of the daemon exiting; the caller then moves the data
  plane and rewrites subnet.env;
- a reservation (a lease without expiry) stays a reservation (upstream issue #1329).

It talks to the store through the subnet manager's interface only (subnet/manager.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from pyflannel.backoff import Backoff, Outage, retry
from pyflannel.errors import FlannelError, OutOfSubnets, StoreError, StoreUnavailable
from pyflannel.subnet.allocate import choose_subnet
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.event import EventKind, LeaseEvent
from pyflannel.subnet.keeping import (
    STATE_FOR,
    Action,
    State,
    Wake,
    after_reacquire,
    allowed,
    decide,
)
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.manager import LeaseSnapshot, SubnetManager
from pyflannel.subnet.owner import LeaseConflict, NodeIdentity, conflict_message, is_own_lease

log = logging.getLogger(__name__)

# Anything the store can throw at us: keep retrying with backoff and say why; never give up
# the node.
StoreTrouble = (StoreUnavailable, StoreError)

RACE_ATTEMPTS = 20  # per acquisition; each lost race excludes the subnet it lost
OUT_OF_SUBNETS_RETRY = 10.0  # seconds


def renewal_delay(remaining: float, margin: float) -> float:
    """Seconds until the next renewal, given the seconds left on the lease.

    Upstream renews ``margin`` before expiry (23 h into a 24 h lease). We renew then or at
    half the remaining time, whichever is sooner, so a long store outage at the wrong moment
    still leaves hours of retries; with a TTL shorter than the margin, every third of it.
    """
    if remaining > margin:
        return max(min(remaining - margin, remaining / 2), 1.0)
    return max(remaining / 3, 0.5)


class LeaseKeeper:
    def __init__(
        self,
        store: SubnetManager,
        *,
        public_ip: IPv4Address,
        ttl: int,
        renew_margin: float,
        load_config: Callable[[], Awaitable[NetworkConfig]],
        on_change: Callable[[Lease | None, Lease], Awaitable[None]],
        identity: NodeIdentity | None = None,
    ):
        self.store = store
        self.identity = identity  # None: upstream's rule (any lease of our public IP is ours)
        self.public_ip = public_ip
        self.ttl = ttl
        self.renew_margin = renew_margin
        self.load_config = load_config
        self.on_change = on_change
        self.lease: Lease | None = None
        self.attrs: LeaseAttrs | None = None
        # The listing the last acquisition decided on: the peer watch can start from it
        # instead of listing every lease again.
        self.last_listing: LeaseSnapshot | None = None
        self.expires_at = 0.0  # monotonic; meaningless for reservations
        self.last_renewal: float | None = None  # wall clock, for status
        self.last_renewal_took: float | None = None  # seconds, from the first try to the answer
        self.renewals = 0
        self.losses = 0
        self.state = State.ACQUIRING
        self.renew_at = float("inf")  # monotonic; the one timer
        self._pending: dict[Wake, str] = {}  # wake-up -> detail; a set, so none is lost
        self._alarm = asyncio.Event()
        self._new_attrs: LeaseAttrs | None = None

    # -- acquisition -----------------------------------------------------------------------

    async def acquire(
        self,
        attrs: LeaseAttrs,
        previous: IPv4Network | None = None,
        previous6: IPv6Network | None = None,
    ) -> Lease:
        """Get a lease, retrying through store trouble and full networks until it succeeds."""
        self.attrs = attrs
        outage = Outage(log, f"{self.store.name} unreachable while acquiring a subnet lease")
        # nodes that boot together fail together (a leader lost): spread their retries wide
        backoff = Backoff(first=0.5, cap=10.0, spread=0.5)
        while True:
            try:
                cfg = await self.load_config()
                lease = await self._try_acquire(cfg, attrs, previous, previous6)
            except StoreTrouble as e:
                outage.failed(e)
                await asyncio.sleep(backoff.next())
                continue
            except OutOfSubnets as e:
                log.error("%s; retrying in %.0f s", e, OUT_OF_SUBNETS_RETRY)
                await asyncio.sleep(OUT_OF_SUBNETS_RETRY)
                continue
            outage.ok()
            self._hold(lease)
            return lease

    async def _try_acquire(
        self,
        cfg: NetworkConfig,
        attrs: LeaseAttrs,
        previous: IPv4Network | None,
        previous6: IPv6Network | None = None,
    ) -> Lease:
        lost: set[IPv4Network] = set()
        grantor = self.identity.fingerprint if self.identity else None
        snapshot: LeaseSnapshot | None = None
        for _ in range(RACE_ATTEMPTS):
            # A lost creation race excludes its subnet and draws again from the same listing
            # (the draw is uniform over the whole range: a stale listing rarely matters); a
            # lost takeover, or a second loss (the listing is stale), lists again.
            if snapshot is None:
                snapshot = await self.store.leases()
                self.last_listing = snapshot
            identity = replace(self.identity, previous=previous) if self.identity else None
            claim = choose_subnet(
                cfg,
                snapshot.leases,
                self.public_ip,
                previous,
                exclude=lost,
                identity=identity,
                previous6=previous6,
            )
            if claim.reason == "conflict" and claim.existing is not None:
                raise LeaseConflict(self._conflict(claim.existing))
            for stale in claim.stale:
                log.warning(
                    "deleting this node's lease %s: it no longer fits the network config",
                    stale.subnet,
                )
                await self.store.delete_lease(stale)
            if claim.existing is not None:
                lease = await self.store.replace_lease(claim.existing, attrs, self.ttl, grantor)
            else:
                lease = await self.store.create_lease(
                    claim.subnet, attrs, self.ttl, claim.ipv6_subnet, grantor
                )
                if lease is not None and not await self._halves_unique(lease):
                    previous, previous6 = None, None  # someone else's now: choose others
                    lost.add(claim.subnet)
                    snapshot = None
                    continue
            if lease is not None:
                subnets = _subnets_text(lease)
                if claim.reason == "reuse":
                    log.info("Found lease %s for current IP (%s), reusing", subnets, self.public_ip)
                elif claim.reason == "previous":
                    log.info("Reusing previously leased subnet %s from the subnet file", subnets)
                else:
                    log.info("Allocated lease %s to current node (%s)", subnets, self.public_ip)
                return lease
            log.info("subnet %s was taken by another node meanwhile; choosing again", claim.subnet)
            lost.add(claim.subnet)
            if claim.existing is not None or len(lost) > 1:
                snapshot = None
        raise StoreUnavailable(
            f"lost {RACE_ATTEMPTS} races for a subnet in a row (heavy contention)"
        )

    async def _halves_unique(self, lease: Lease) -> bool:
        """A dual-stack key names both subnets, so the conditional create makes only the pair
        unique: two nodes choosing at once may share one half (the same IPv4 subnet with
        different IPv6 ones, or the reverse), and both writes succeed. Read after writing:
        the node whose key was created later gives way (deletes it) and chooses again; the
        earlier one, reading after its own write, may or may not see the later key, and
        keeps its own either way. (Upstream has no such check: both nodes keep the half.)"""
        if lease.ipv6_subnet is None:
            return True  # the key is the IPv4 subnet: the create made it unique
        snapshot = await self.store.leases()
        earlier = [
            other
            for other in snapshot.leases
            if other.key != lease.key
            and (
                other.subnet.overlaps(lease.subnet)
                or (other.ipv6_subnet is not None and other.ipv6_subnet.overlaps(lease.ipv6_subnet))
            )
            and self.store.created_before(other, lease)
        ]
        if not earlier:
            return True
        log.info(
            "lease %s shares a subnet with %s, created before it: giving way, choosing again",
            _subnets_text(lease),
            earlier[0].key,
        )
        await self.store.delete_lease(lease)
        await self.store.release_lease(lease)
        return False

    @property
    def held(self) -> Lease:
        """The lease held (after ``acquire``)."""
        assert self.lease is not None, "acquire() first"
        return self.lease

    def _hold(self, lease: Lease) -> None:
        self.lease = lease
        self.expires_at = time.monotonic() + lease.ttl
        self.last_renewal = time.time()
        self._set_timer()

    def _set_timer(self) -> None:
        now = time.monotonic()
        self.renew_at = (
            float("inf")
            if self.held.reservation
            else now + renewal_delay(self.expires_at - now, self.renew_margin)
        )

    # -- events from the peer watch --------------------------------------------------------

    def notice(self, event: LeaseEvent) -> None:
        """A store event on our own lease: a deletion or someone else's write means we lost it;
        a write by another node with our public IP is a conflict."""
        lease = self.held
        if lease is None or event.key != self.store.lease_location(lease) or event.superseded:
            return
        if event.kind == EventKind.DELETE:
            self._wake(
                Wake.LOST,
                f"lease deleted from {self.store.name} (expired, or removed by an operator)",
            )
        elif event.lease is None:  # an undecodable value over our key: nobody's claim
            self._wake(Wake.REPAIR)
        else:
            self._judge(event.lease)

    def _judge(self, current: Lease) -> None:
        """Is ``current`` (our lease, as the store has it now) still ours? If not, act."""
        if current.attrs.public_ip != self.public_ip:
            self._wake(Wake.LOST, f"lease now held by {current.attrs.public_ip}")
        elif self.identity is not None and not is_own_lease(
            current, replace(self.identity, previous=None)
        ):
            self._wake(Wake.CONFLICT, self._conflict(current, taken_from_us=True))
        else:
            self.lease = current  # rewritten for us, e.g. turned into a reservation
            self._set_timer()  # a reservation is never renewed

    def _conflict(self, other: Lease, taken_from_us: bool = False) -> str:
        return conflict_message(
            other,
            self.store.removal_hint(other),
            self.store.holder_detail(other),
            taken_from_us=taken_from_us,
        )

    def change_attrs(self, attrs: LeaseAttrs) -> None:
        """Advertise new attributes (a new public IP after the underlay changed), keeping
        the subnet. Done by the run loop, so it never races a renewal."""
        self._new_attrs = attrs
        self._wake(Wake.ATTRS)

    def verify(self) -> None:
        """Check our lease in the store (after a re-list, when events may have been missed)."""
        self._wake(Wake.VERIFY)

    def _wake(self, wake: Wake, detail: str = "") -> None:
        self._pending[wake] = detail
        self._alarm.set()

    def _enter(self, state: State) -> None:
        if state is not self.state:
            assert allowed(self.state, state), f"lease keeper: {self.state} -> {state}"
            log.debug("lease keeper: %s -> %s", self.state.value, state.value)
            self.state = state

    # -- keeping it ------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew forever; act on wake-ups; on loss, re-acquire and report the change; on a
        conflict, stop with it (raises LeaseConflict)."""
        assert self.lease is not None, "acquire() first"
        self._enter(State.HOLDING)
        while True:
            action, wake = decide(self._pending, time.monotonic() >= self.renew_at)
            if action is Action.WAIT:
                left = self.renew_at - time.monotonic()
                try:  # not wait_for: 3.11's can lose a cancellation (reconciling.py)
                    async with asyncio.timeout(None if math.isinf(left) else max(left, 0)):
                        await self._alarm.wait()
                except TimeoutError:
                    pass
                self._alarm.clear()
                continue
            detail = self._pending.pop(wake, "") if wake else ""
            self._enter(STATE_FOR[action])
            if action is Action.STOP:
                log.error("%s", detail)
                raise LeaseConflict(detail)
            lost = detail if action is Action.REACQUIRE else await self._act(action)
            if lost:
                self._enter(State.REACQUIRING)
                await self._reacquire(lost)
                self._pending = after_reacquire(self._pending)
            self._enter(State.HOLDING)

    async def _act(self, action: Action) -> str:
        """Do one thing; why the lease is lost, or "" if it is still held."""
        if action is Action.REPAIR:
            return await self._restore()
        if action is Action.READVERTISE:
            return await self._readvertise()
        if action is Action.CHECK:
            return await self._check()
        return await self._renew()

    async def _check(self) -> str:
        lease = self.held
        current = await retry(
            lambda: self.store.get_lease(lease.subnet, lease.ipv6_subnet),
            retry_on=StoreTrouble,
            backoff=Backoff(first=0.5, cap=10.0),
            outage=Outage(log, f"{self.store.name} unreachable while checking this node's lease"),
        )
        if current is None:
            return f"lease no longer in {self.store.name}"
        self._judge(current)  # not ours any more: the wake-up it sets acts next
        return ""

    async def _readvertise(self) -> str:
        """Re-put our lease with new attributes, conditionally, keeping the subnet."""
        attrs, old_ip = self._new_attrs, self.public_ip
        assert attrs is not None, "change_attrs() first"
        self.attrs, self.public_ip = attrs, attrs.public_ip
        backoff = Backoff(first=0.5, cap=5.0)
        while True:
            try:
                current = await self.store.get_lease(self.held.subnet, self.held.ipv6_subnet)
                if current is None or current.attrs.public_ip not in (old_ip, attrs.public_ip):
                    return "lease gone or taken while the underlay changed"
                grantor = self.identity.fingerprint if self.identity else None
                lease = await self.store.replace_lease(current, attrs, self.ttl, grantor)
            except StoreTrouble as e:
                log.warning("could not update the lease after the underlay change: %s; retrying", e)
                await asyncio.sleep(backoff.next())
                continue
            if lease is not None:
                self._hold(lease)
                log.warning("lease %s now advertises public IP %s", lease.subnet, attrs.public_ip)
                return ""

    async def _restore(self) -> str:
        """Put our lease back over a junk value written to our key (only over that junk)."""
        lease = self.held
        log.warning(
            "an undecodable value was written over this node's lease %s; restoring it", lease.subnet
        )
        try:
            restored = await self.store.restore_lease(lease)
        except StoreTrouble as e:
            return f"could not restore the lease over junk: {e}"
        if restored is None:
            return await self._check()  # changed again meanwhile: look at what is there now
        self.lease = restored
        log.info("lease %s restored", lease.subnet)
        return ""

    async def _renew(self) -> str:
        lease = self.held
        outage = Outage(log, f"{self.store.name} unreachable while renewing lease {lease.subnet}")
        # One stuck member must not eat the lease: each try gets at most a fifth of the time
        # left (within 1..5 s) before the client moves to the next member.

        def left() -> float:
            return self.expires_at - time.monotonic()

        started = time.monotonic()
        ttl = await retry(
            lambda: self.store.renew_lease(lease, timeout=min(5.0, max(1.0, left() / 5))),
            retry_on=StoreTrouble,
            backoff=Backoff(first=0.5, cap=min(30.0, max(1.0, self.ttl / 8))),
            outage=outage,
            action=lambda: f"retrying; the lease has {max(left(), 0):.0f} s left",
        )
        if ttl <= 0:
            return f"{self.store.name} lease expired"
        now = time.monotonic()
        self.expires_at = now + ttl
        self.last_renewal = time.time()
        self.last_renewal_took = now - started  # retries through trouble included
        self.renewals += 1
        self._set_timer()
        log.info("renewed lease %s for %d s", lease.subnet, ttl)
        return ""

    async def _reacquire(self, reason: str) -> None:
        old = self.held
        self.losses += 1
        log.error("LEASE LOST: %s: %s; re-acquiring", old.subnet, reason)
        try:
            assert self.attrs is not None
            new = await self.acquire(self.attrs, previous=old.subnet, previous6=old.ipv6_subnet)
        except FlannelError as e:  # pragma: no cover - acquire retries internally
            log.error("could not re-acquire a lease: %s", e)
            raise
        if new.key != old.key:
            log.error(
                "SUBNET CHANGED: %s -> %s. Pods on the old subnet lose connectivity until "
                "they are recreated with addresses from the new one.",
                _subnets_text(old),
                _subnets_text(new),
            )
        else:
            log.warning("lease %s re-acquired", new.subnet)
        await self.on_change(old, new)


def _subnets_text(lease: Lease) -> str:
    """``10.1.5.0/24``, or ``10.1.5.0/24 and fd10:0:0:5::/64`` on a dual-stack network."""
    if lease.ipv6_subnet is None:
        return str(lease.subnet)
    return f"{lease.subnet} and {lease.ipv6_subnet}"
