"""Kernel I/O below the backends: the netlink thread and codec, notifications, interfaces."""
