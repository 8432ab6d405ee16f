"""Backends register by type name; each entry is a module with an async start(ctx)."""

import asyncio
import importlib
import inspect

import pytest

from pyflannel.backend.registry import BACKENDS, BackendContext, start_backend
from pyflannel.errors import BackendError
from pyflannel.subnet.config import parse_network_config


def test_every_registered_backend_module_has_an_async_start():
    assert set(BACKENDS) == {"vxlan", "udp", "host-gw", "wireguard", "alloc", "extension"}
    for module in BACKENDS.values():
        start = importlib.import_module(module).start
        assert inspect.iscoroutinefunction(start)


def test_an_unknown_type_names_the_supported_ones():
    cfg = parse_network_config(b'{"Network": "10.1.0.0/16", "Backend": {"Type": "ipip"}}')
    ctx = BackendContext(netlink=None, network=cfg, ext=None)
    with pytest.raises(
        BackendError,
        match=r"'ipip' is not supported .*\(supported: vxlan, udp, host-gw, wireguard, alloc, extension\)",
    ):
        asyncio.run(start_backend(ctx))
