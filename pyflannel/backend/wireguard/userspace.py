"""Userspace WireGuard: Debian's ``wireguard-go``, started and supervised by pyflannel and
configured over its UAPI socket (``/var/run/wireguard/<device>.sock``). Blocking calls: run
them on a thread.

A wireguard-go that is already serving the device (one pyflannel started before a restart, or
an operator's) is adopted and left running at the end; one pyflannel started is restarted if
it dies (its TUN device vanishes with it: the kernel watch notices) and stopped with the
daemon.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pyflannel.backend.wireguard.uapi import (
    GET_REQUEST,
    Change,
    DeviceState,
    UapiError,
    parse_get,
    parse_response,
    set_request,
)
from pyflannel.errors import BackendError

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 5.0  # seconds for wireguard-go to open its socket
PACKAGE_HINT = "install Debian's wireguard-go package (apt install wireguard-go)"


BINARY_ENV = "PYFLANNEL_WIREGUARD_GO"  # the binary to run instead of wireguard-go on PATH


def find_binary() -> str | None:
    chosen = os.environ.get(BINARY_ENV)
    if chosen is not None:
        return chosen if os.access(chosen, os.X_OK) else None
    return shutil.which("wireguard-go")


class WireguardGo:
    kind = "userspace"

    def __init__(self, device: str):
        binary = find_binary()
        if binary is None:
            raise BackendError(
                "wireguard-go not found: this kernel has no WireGuard module, so the "
                f"wireguard backend needs userspace WireGuard: {PACKAGE_HINT}"
            )
        self.binary = binary
        self.device = device
        self.socket_path = SOCKET_DIR / f"{device}.sock"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self._problem = ""

    def describe(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return f"userspace (wireguard-go, pid {self.proc.pid}, started by pyflannel)"
        return "userspace (wireguard-go, adopted)"

    def problem(self) -> str | None:
        return self._problem or None

    # -- the process -----------------------------------------------------------------------

    def ensure(self) -> list[str]:
        """wireguard-go serving the device: adopted, started, or restarted; what was done."""
        if self._answers():
            return []
        if self.proc is not None and self.proc.poll() is None:
            if self._wait_for_socket():
                return []
            self.proc.kill()
            self.proc.wait()
        done = []
        if self.proc is not None:
            self.last_exit = self.proc.returncode
            self.restarts += 1
            log.error(
                "wireguard-go for %s exited (status %s); restarting it", self.device, self.last_exit
            )
            done.append(f"wireguard-go had exited ({self.last_exit}); restarted")
        pid = self._start()
        return done or [f"started wireguard-go for {self.device} (pid {pid})"]

    def _start(self) -> int:
        env = {
            **os.environ,
            "WG_PROCESS_FOREGROUND": "1",  # a child we supervise, not a daemon
            # wireguard-go refuses to run where the kernel could have the module (>= 5.6).
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
            "LOG_LEVEL": os.environ.get("PYFLANNEL_WIREGUARD_GO_LOG", "error"),
        }
        try:
            SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.proc = subprocess.Popen(
                [self.binary, self.device],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to the daemon's terminal is ours to pass on
            )
        except OSError as e:
            raise BackendError(f"cannot start {self.binary}: {e}") from e
        if not self._wait_for_socket():
            code = self.proc.poll()
            self._problem = f"wireguard-go did not open {self.socket_path} (exit {code})"
            raise BackendError(
                f"wireguard-go for {self.device} did not start: "
                + (f"it exited with status {code}" if code is not None else "no socket")
                + " (is /dev/net/tun available? pyflannel doctor says)"
            )
        self._problem = ""
        log.info("started wireguard-go for %s (pid %d)", self.device, self.proc.pid)
        return self.proc.pid

    def _wait_for_socket(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._answers():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def _answers(self) -> bool:
        try:
            self.get()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Stop wireguard-go if pyflannel started it (an adopted one keeps running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- the UAPI socket -------------------------------------------------------------------

    def _request(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(text.encode())
            chunks: list[bytes] = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"".join(chunks[-2:]).endswith(b"\n\n"):
                    break
        return b"".join(chunks).decode(errors="replace")

    def get(self) -> DeviceState:
        return parse_get(self._request(GET_REQUEST))

    def set(self, change: Change) -> None:
        if change:
            parse_response(self._request(set_request(change)))


__all__ = ["UapiError", "WireguardGo"]
