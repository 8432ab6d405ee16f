"""When the lease is renewed."""

import pytest

from pyflannel.control.lease_keeper import renewal_delay

DAY, HOUR = 86400, 3600


def test_a_fresh_24h_lease_is_renewed_after_12h_not_23h():
    assert renewal_delay(DAY, HOUR) == DAY / 2


def test_within_twice_the_margin_renewal_happens_at_the_margin():
    assert renewal_delay(1.5 * HOUR, HOUR) == pytest.approx(0.5 * HOUR)


def test_a_ttl_shorter_than_the_margin_is_renewed_every_third():
    assert renewal_delay(9, HOUR) == 3


def test_renewal_never_waits_for_an_expired_lease():
    assert renewal_delay(-5, 60) == 0.5
