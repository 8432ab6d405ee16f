"""Traffic rules (upstream's trafficmngr): what iptables rules a network wants, and keeping them."""
