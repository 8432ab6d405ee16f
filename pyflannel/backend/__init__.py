"""Data-plane backends. Each turns the lease table into kernel state on this node."""
