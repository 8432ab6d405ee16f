"""Keeping the rules in place on notice (traffic/repair.py, kernel/nft_watch.py): which
announcements are ours, the repair budget, and the loop against a fake watch and fake rules
(end to end with iptables-nft and nft: tests/e2e/test_rules_repair.py)."""

import asyncio
import os
import struct

import pytest

from pyflannel.kernel.nft_watch import NftChange, changes
from pyflannel.traffic import repair
from pyflannel.traffic.repair import RepairBudget, RuleRepair


def notification(kind: int, family: int, table: bytes | None, subsys: int = 10) -> bytes:
    attrs = b""
    if table is not None:
        value = table + b"\0"
        attrs = struct.pack("=HH", 4 + len(value), 1) + value
        attrs += b"\0" * (-len(attrs) % 4)
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (subsys << 8) | kind, 0, 1, 0) + body


def test_a_datagram_names_the_tables_it_changed():
    data = (
        notification(8, 2, b"filter")  # DELRULE in ip filter (iptables -F)
        + notification(2, 1, b"host-firewall")  # DELTABLE inet (nft flush ruleset)
        + notification(15, 0, None)  # NEWGEN: the end of the transaction
        + notification(6, 2, b"nat", subsys=12)  # not nf_tables
    )
    assert changes(data) == [NftChange(2, "filter", 8), NftChange(1, "host-firewall", 2)]


def test_junk_is_no_change():
    assert changes(b"\x05\x00\x00") == [] and changes(b"") == []


def test_the_budget_stands_back_after_most_repairs_in_a_window_and_returns_after_quiet():
    budget = RepairBudget(most=3, window=10)
    assert budget.allows(0) and not budget.repaired(0) and not budget.repaired(1)
    assert budget.repaired(2)  # the third: said once
    assert not budget.allows(5) and budget.quiet_at() == 12
    assert not budget.allows(11.9) and budget.allows(12.1)


def test_repairs_spread_out_never_use_up_the_budget():
    budget = RepairBudget(most=3, window=10)
    for t in range(0, 100, 6):
        assert budget.allows(t) and not budget.repaired(t)


class FakeWatch:
    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        self.pending: list[NftChange] = []

    def announce(self, *changed: NftChange) -> None:
        self.pending += changed
        os.write(self.write_fd, b"x")

    def fileno(self) -> int:
        return self.read_fd

    def get(self) -> list[NftChange]:
        os.read(self.read_fd, 100)
        changed, self.pending = self.pending, []
        return changed

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class FakeManager:
    mode = "iptables"
    last_problem = ""

    def __init__(self):
        self.intact, self.checks, self.restores = True, 0, 0

    async def check(self) -> list[str]:
        self.checks += 1
        if self.intact:
            return []
        self.intact, self.restores = True, self.restores + 1
        return ["missing"]


class FakeRules:
    mode = "iptables"

    def __init__(self):
        self.managers = [FakeManager()]

    def tables(self):
        return {(2, "filter")}


async def settle():
    await asyncio.sleep(repair.DEBOUNCE * 5)


async def test_a_change_to_our_table_is_checked_and_others_are_not():
    watch, rules = FakeWatch(), FakeRules()
    keeper = RuleRepair(rules, interval=3600, open_watch=lambda: watch)
    task = asyncio.create_task(keeper.run())
    try:
        await settle()
        watch.announce(NftChange(1, "kube-proxy", 6))
        await settle()
        assert rules.managers[0].checks == 0
        rules.managers[0].intact = False
        watch.announce(NftChange(2, "filter", 8))
        await settle()
        assert rules.managers[0].restores == 1 and keeper.repairs_on_notice == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_fight_is_said_once_and_checked_again_once_quiet(caplog):
    watch, rules = FakeWatch(), FakeRules()
    keeper = RuleRepair(rules, interval=3600, open_watch=lambda: watch)
    keeper.budget = RepairBudget(most=3, window=0.5)
    task = asyncio.create_task(keeper.run())
    manager = rules.managers[0]
    try:
        await settle()
        for _ in range(8):
            manager.intact = False
            watch.announce(NftChange(2, "filter", 8))
            await settle()
        assert manager.restores == 3 and not manager.intact  # stood back after three
        assert caplog.text.count("by something else") == 1
        await asyncio.sleep(0.6)  # quiet: checked at once, not at the hour's resync
        assert manager.intact and manager.restores == 4
        assert "nothing removed them" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_notifications_the_resync_period_still_repairs(caplog):
    def refused():
        raise PermissionError(1, "Operation not permitted")

    rules = FakeRules()
    rules.managers[0].intact = False
    keeper = RuleRepair(rules, interval=0.05, open_watch=refused)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(0.2)
        assert rules.managers[0].restores == 1
        assert "no nf_tables notifications" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    import logging

    caplog.set_level(logging.INFO)
