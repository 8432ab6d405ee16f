"""Mesh health: this node probes its path to every peer through the overlay, MTU included."""
