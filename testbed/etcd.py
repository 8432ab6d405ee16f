"""A throwaway etcd server (Debian's etcd-server) with faults on demand: stop, continue,
kill, restart on the same data directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from testbed.netns import CommandError, run

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        netns: str | None = None,
        data_dir: str | None = None,
        name: str = "pyflannel-test",
        certs=None,
        initial_cluster: str | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.host = host
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.netns = netns
        self.name = name
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="pf-etcd-"))
        self.log_path = self.data_dir.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.certs = certs  # a testbed.certs.CertSet: serve TLS and require client certificates
        self.initial_cluster = initial_cluster  # "name=peerURL,..." for a member of a cluster
        self.root_password = ""
        self.extra_args = extra_args  # more etcd flags, e.g. to provoke its warnings

    def enable_auth(self, root_password: str) -> None:
        """Create the root user and turn authentication on."""
        self.ctl("user", "add", f"root:{root_password}")
        self.ctl("auth", "enable")
        self.root_password = root_password

    @property
    def url(self) -> str:
        return f"{'https' if self.certs else 'http'}://{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={peer}'}",
            "--initial-cluster-token=pyflannel-test",
            "--log-level=error",
            "--logger=zap",
            *self.extra_args,
        ]
        if self.certs:
            cmd += [
                f"--cert-file={self.certs.server_cert}",
                f"--key-file={self.certs.server_key}",
                f"--trusted-ca-file={self.certs.ca}",
                "--client-cert-auth",
            ]
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self, timeout: float = 15.0, wait: bool = True) -> EtcdServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log)
        log.close()
        if wait:
            try:
                self.wait_healthy(timeout)
            except BaseException:
                self.kill()  # never leave a half-started server behind
                raise
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.ctl("endpoint", "health", check=False, timeout=5).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass  # still starting up
            time.sleep(0.1)
        raise RuntimeError(f"etcd at {self.url} not healthy after {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ctl(self, *args: str, check: bool = True, timeout: float = 20, input: str | None = None):
        """Run etcdctl (v3 API) against this server (as root once auth is enabled)."""
        cmd = [ETCDCTL, f"--endpoints={self.url}", "--dial-timeout=2s", "--command-timeout=5s"]
        cmd += self.tls_flags()
        if self.root_password:
            cmd.append(f"--user=root:{self.root_password}")
        cmd += args
        env = dict(os.environ, ETCDCTL_API="3")
        return run(cmd, ns=self.netns, check=check, timeout=timeout, env=env, input=input)

    def tls_flags(self) -> list[str]:
        """etcdctl's TLS flags for this server (none without TLS)."""
        if not self.certs:
            return []
        return [
            f"--cacert={self.certs.ca}",
            f"--cert={self.certs.client_cert}",
            f"--key={self.certs.client_key}",
        ]

    def put(self, key: str, value: str) -> None:
        # Through stdin, so values starting with "-" or holding newlines arrive intact.
        self.ctl("put", key, input=value)

    def get(self, key: str) -> str | None:
        out = self.ctl("get", key, "--print-value-only").stdout
        return out[:-1] if out.endswith("\n") else (out or None)

    def signal(self, sig: int) -> None:
        # Under `ip netns exec` the etcd process replaces ip (exec), so the PID is etcd's.
        os.kill(self.proc.pid, sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, timeout: float = 15.0) -> None:
        """Kill (if running) and start again on the same data directory."""
        self.kill()
        self.start(timeout)

    def stop_keeping_data(self) -> None:
        """Stop gracefully (SIGTERM) but keep the data directory for a restart."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ fails
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class EtcdCluster:
    """A Raft cluster of members, one per namespace; ``ctl``/``put``/``get`` go to all of them."""

    def __init__(self, members: list[EtcdServer]):
        self.members = members
        cluster = ",".join(f"{m.name}=http://{m.host}:{m.peer_port}" for m in members)
        for m in members:
            m.initial_cluster = cluster

    @property
    def url(self) -> str:
        return ",".join(m.url for m in self.members)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for m in self.members:  # all at once: each waits for a quorum
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def ctl(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 20,
        input: str | None = None,
        members: list[EtcdServer] | None = None,
    ):
        """etcdctl against the live members (or those of ``members``: a member cut off from
        its peers still runs, but a write through it never commits). A request that lands in
        a leader election times out without a retry in etcdctl: try again (all our uses are
        idempotent)."""
        for _ in range(4):
            live = [m for m in members or self.members if m.running] or self.members
            cmd = [
                ETCDCTL,
                f"--endpoints={','.join(m.url for m in live)}",
                "--dial-timeout=2s",
                "--command-timeout=5s",
                *live[0].tls_flags(),
                *args,
            ]
            proc = run(
                cmd,
                ns=live[0].netns,
                check=False,
                timeout=timeout,
                env=dict(os.environ, ETCDCTL_API="3"),
                input=input,
            )
            if proc.returncode == 0 or not check:
                return proc
            time.sleep(0.5)
        raise CommandError(f"etcdctl {' '.join(args)} failed 4 times: {proc.stderr.strip()[-300:]}")

    def put(self, key: str, value: str, members: list[EtcdServer] | None = None) -> None:
        self.ctl("put", key, input=value, members=members)

    def get(self, key: str) -> str | None:
        out = self.ctl("get", key, "--print-value-only").stdout
        return out[:-1] if out.endswith("\n") else (out or None)

    def leader(self) -> EtcdServer:
        """The member that is the Raft leader now (asked of the live members)."""
        import json

        out = self.ctl("endpoint", "status", "-w", "json").stdout
        statuses = json.loads(out)
        leader_id = statuses[0]["Status"]["leader"]
        for s in statuses:
            if s["Status"]["header"]["member_id"] == leader_id:
                return next(m for m in self.members if m.url == s["Endpoint"])
        raise RuntimeError(f"no leader among {out}")

    def move_leader(self) -> EtcdServer:
        """Hand the leadership over to another live member (etcdctl move-leader, a real Raft
        leader transfer); the new leader."""
        import json

        leader = self.leader()
        statuses = json.loads(self.ctl("endpoint", "status", "-w", "json").stdout)
        target = next(s for s in statuses if s["Endpoint"] != leader.url)
        member_id = f"{target['Status']['header']['member_id']:x}"
        self.ctl("move-leader", member_id, members=[leader])
        return self.member_for(target["Endpoint"])

    def member_for(self, url: str) -> EtcdServer:
        return next(m for m in self.members if m.url == url)
