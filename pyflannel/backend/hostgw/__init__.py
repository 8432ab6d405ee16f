"""The host-gw backend: plain routes via the peers' public IPs, no encapsulation."""
