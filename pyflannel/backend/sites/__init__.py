"""Sites: how a node reaches each peer by where the peer is (see placement.py and link.py)."""
