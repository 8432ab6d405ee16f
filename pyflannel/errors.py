"""The daemon's error hierarchy.

Every error carries a message an operator can act on. ``retryable`` says whether the daemon
should wait and try again (etcd unreachable, config not there yet) or give up (bad flags).
"""


class FlannelError(Exception):
    """Base class for errors pyflannel expects and reports without a traceback."""

    retryable = False


class ConfigError(FlannelError):
    """The network configuration in etcd is missing or invalid (the operator can fix it live)."""

    retryable = True


class ConfigNotFound(ConfigError):
    pass


class UnsupportedConfig(ConfigError):
    """A valid network configuration this daemon does not serve (waiting cannot fix it)."""

    retryable = False


class OptionsError(FlannelError):
    """A command-line flag or FLANNELD_* variable is invalid."""


class InterfaceError(FlannelError):
    """No usable external interface / public IP could be determined."""


class StoreUnavailable(FlannelError):
    """The subnet store (etcd) could not be reached, or timed out; retry with backoff."""

    retryable = True


class StoreError(FlannelError):
    """The subnet store answered but refused (permission, authentication, a server error)."""


class OutOfSubnets(FlannelError):
    """Every subnet of the network is leased."""

    retryable = True


class BackendError(FlannelError):
    """The data plane could not be set up (device creation failed, ...)."""
