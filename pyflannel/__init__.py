"""pyflannel: a pure-Python, flannel-compatible overlay network daemon."""

__version__ = "0.1.0"
