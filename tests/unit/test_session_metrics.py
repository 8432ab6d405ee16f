"""WireGuard sessions in /metrics (ops/metrics.py ``session_metrics``), pure: a peer sent to
an endpoint learned from its packets, and the age of its last handshake. End to end:
tests/e2e/test_wireguard_nat.py."""

from pyflannel.backend.base import PeerEndpoint
from pyflannel.ops.metrics import MESH_LABEL_LIMIT, session_metrics


def samples(families) -> dict[tuple[str, str], float]:
    return {(f.name, s.labels["peer"]): s.value for f in families for s in f.samples}


def test_a_learned_endpoint_and_the_handshake_age_per_peer():
    now = 1_800_000_000.0
    got = samples(
        session_metrics(
            {
                "10.1.2.0/24": PeerEndpoint(
                    "203.0.113.7:40001", "192.168.2.2:51820", int(now) - 20
                ),
                "10.1.3.0/24": PeerEndpoint("198.51.100.3:51820", "198.51.100.3:51820"),
            },
            now,
        )
    )
    assert got == {
        ("pyflannel_peer_endpoint_learned", "10.1.2.0/24"): 1,
        ("pyflannel_peer_endpoint_learned", "10.1.3.0/24"): 0,
        ("pyflannel_peer_handshake_age_seconds", "10.1.2.0/24"): 20.0,  # none yet: no sample
    }


def test_no_series_without_sessions_or_beyond_the_label_limit():
    assert list(session_metrics({}, 0.0)) == []
    many = {
        f"10.{i // 256}.{i % 256}.0/24": PeerEndpoint("a:1", "a:1")
        for i in range(MESH_LABEL_LIMIT + 1)
    }
    assert list(session_metrics(many, 0.0)) == []
