"""The flannel CNI plugin's process: environment and stdin in, a result or a CNI error out.

ADD reads subnet.env, builds the delegate config (netconf.py), stores it under
``dataDir/<container id>`` (written, then renamed: never half-written) and becomes the
delegate found on CNI_PATH (exec, the config on its stdin): its result and exit status are
the runtime's, and no second process waits for it. DEL reads the stored config back,
delegates and removes it; nothing stored is success. CHECK compares the stored config with
this node's subnet. VERSION lists the versions.

A runtime starts this once per container, so it imports only what the work needs:
netconf.py and what that uses, and ``posix`` (loaded with the interpreter), not ``os``, whose
import builds the collection ABCs (~0.9 ms of every ADD; bench/README, "CNI plugin").
"""

from __future__ import annotations

import _signal
import posix
import sys

from pyflannel.cni import lean_json
from pyflannel.cni.netconf import (
    DECODE_FAILURE,
    INVALID_ENVIRONMENT,
    INVALID_NETCONF,
    IO_FAILURE,
    SUPPORTED_VERSIONS,
    UNKNOWN_CONTAINER,
    CniError,
    NetConf,
    check_container_id,
    delegate_config,
    parse_netconf,
    parse_subnet_env,
)

TYPE_CHECKING = False  # not even ``typing`` at run time (mypy takes any TYPE_CHECKING as true)
if TYPE_CHECKING:
    from typing import Any

SPEC_VERSION = "1.0.0"


def main(environ: dict[str, str] | None = None, stdin: bytes | None = None) -> int:
    env = _environment() if environ is None else dict(environ)
    data = sys.stdin.buffer.read() if stdin is None else stdin
    command = env.get("CNI_COMMAND", "")
    version = SPEC_VERSION
    try:
        if command == "VERSION":
            _print({"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)})
            return 0
        conf = parse_netconf(data)
        version = conf.cni_version or SPEC_VERSION
        if command == "ADD":
            return add(conf, env)
        if command == "DEL":
            return delete(conf, env)
        if command == "CHECK":
            return check(conf, env)
        raise CniError(
            INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not ADD, DEL, CHECK or VERSION"
        )
    except CniError as e:
        _print(e.document(version))
        return 1


def add(conf: NetConf, env: dict[str, str]) -> int:
    cid = check_container_id(env.get("CNI_CONTAINERID", ""))
    try:
        text = _read(conf.subnet_file).decode()
    except OSError as e:
        raise CniError(
            IO_FAILURE,
            f"cannot read {conf.subnet_file}: {e.strerror}",
            "is pyflannel running on this node? `systemctl status pyflannel` or "
            "`pyflannel status` says; it writes this file once it holds a lease",
        ) from None
    delegate = delegate_config(conf, parse_subnet_env(text, conf.subnet_file))
    body = lean_json.dumps(delegate).encode()
    _store(conf.data_dir, cid, body)  # first: DEL can clean up whatever happens next
    return _become_delegate(delegate["type"], body, env)


def delete(conf: NetConf, env: dict[str, str]) -> int:
    cid = check_container_id(env.get("CNI_CONTAINERID", ""))
    path = f"{conf.data_dir}/{cid}"
    try:
        body = _read(path)
    except FileNotFoundError:
        return 0  # per the spec: nothing there is success
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot read {path}: {e.strerror}") from None
    try:
        kind = lean_json.loads(body)["type"]
    except (ValueError, KeyError, TypeError):
        print(f"flannel: {path} is not a delegate config; removed", file=sys.stderr)
        _remove(path)
        return 0
    code = _delegate(kind, body, env)
    if code == 0:
        _remove(path)
    return code


def check(conf: NetConf, env: dict[str, str]) -> int:
    """The container's network is still what ADD made: its stored config is there and its
    range is still this node's subnet (subnet.env). Not delegated: the bridge plugin's own
    CHECK (containernetworking-plugins 1.1.1) rejects the routes it set via its gateway, so it
    would fail every healthy container; upstream's plugin returns success unconditionally."""
    cid = check_container_id(env.get("CNI_CONTAINERID", ""))
    path = f"{conf.data_dir}/{cid}"
    try:
        stored = lean_json.loads(_read(path))
        ranges = [r[0]["subnet"] for r in stored["ipam"]["ranges"]]
    except FileNotFoundError:
        raise CniError(UNKNOWN_CONTAINER, f"no flannel network state for container {cid}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CniError(DECODE_FAILURE, f"cannot read {path}: {e}") from None
    try:
        text = _read(conf.subnet_file).decode()
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot read {conf.subnet_file}: {e.strerror}") from None
    fenv = parse_subnet_env(text, conf.subnet_file)
    now = [s for s in (fenv.subnet, fenv.ipv6_subnet) if s]
    if ranges != now:
        raise CniError(
            INVALID_NETCONF,
            f"container {cid} has addresses from {', '.join(ranges)}, but this node's subnet "
            f"is now {', '.join(now)}: recreate the container",
        )
    return 0


def _environment() -> dict[str, str]:
    """``os.environ``, as os decodes it."""
    return {
        k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape")
        for k, v in posix.environ.items()
    }


def _make_dirs(path: str, mode: int = 0o700) -> None:
    """``os.makedirs(path, 0o700, exist_ok=True)``: the directory itself private, any parent
    it needs made with mkdir's default mode (0o777 less the umask), as os.makedirs does."""
    try:
        posix.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = path.rstrip("/").rpartition("/")[0]
        if not parent:
            raise
        _make_dirs(parent, 0o777)
        posix.mkdir(path, mode)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _remove(path: str) -> None:
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass


def _store(data_dir: str, cid: str, body: bytes) -> None:
    """Write, then rename: a reader sees the whole config or none. Not fsync'ed, as neither
    upstream's plugin nor host-local's IPAM store does: after a crash of the machine the
    container is gone too, and the rename leaves the old file or the new one."""
    tmp = f"{data_dir}/.{cid}.{posix.getpid()}"
    try:
        _make_dirs(data_dir)
        fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL, 0o600)
        try:
            posix.write(fd, body)
        finally:
            posix.close(fd)
        posix.replace(tmp, f"{data_dir}/{cid}")
    except OSError as e:
        _remove(tmp)
        raise CniError(IO_FAILURE, f"cannot store the delegate config in {data_dir}: {e}") from None


# Python ignores these; a child gets them back at their default (subprocess's restore_signals)
DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)

# A pipe holds at least one page before a write blocks, whatever the system's pipe limits:
# a delegate config up to this size goes to an exec'ed delegate through a pipe written ahead.
PIPE_AHEAD = 4096


def _become_delegate(kind: str, body: bytes, env: dict[str, str]) -> int:
    """Exec the delegate plugin with the same environment and ``body`` on its stdin."""
    plugin = _find_plugin(kind, env)
    if len(body) > PIPE_AHEAD:
        return _run(plugin, body, env)
    read_end, write_end = posix.pipe()
    posix.write(write_end, body)
    posix.close(write_end)
    posix.dup2(read_end, 0)
    posix.close(read_end)
    sys.stdout.flush()
    for number in DEFAULT_SIGNALS:  # as subprocess restores them for its children
        _signal.signal(number, _signal.SIG_DFL)
    try:
        posix.execve(plugin, [plugin], env)
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot run {plugin}: {e.strerror}") from None
    raise AssertionError("unreachable: execve returns only by raising")


def _delegate(kind: str, body: bytes, env: dict[str, str]) -> int:
    """Run the delegate plugin with the same environment (spawned: DEL removes the stored
    config only after it succeeded); its stdout and stderr are the runtime's."""
    return _run(_find_plugin(kind, env), body, env)


def _find_plugin(kind: str, env: dict[str, str]) -> str:
    if "/" in kind or not kind:
        raise CniError(IO_FAILURE, f"delegate type {kind!r} is not a plugin name")
    dirs = [d for d in env.get("CNI_PATH", "").split(":") if d]
    plugin = next((f"{d}/{kind}" for d in dirs if posix.access(f"{d}/{kind}", posix.X_OK)), None)
    if plugin is None:
        raise CniError(
            IO_FAILURE,
            f'failed to find plugin "{kind}" in path {dirs}',
            "install it (Debian: apt install containernetworking-plugins) or fix CNI_PATH",
        )
    return plugin


def _run(plugin: str, body: bytes, env: dict[str, str]) -> int:
    """Run the delegate with ``body`` on its stdin, its stdout and stderr ours (what it
    prints is the runtime's); its exit status. Spawned, not through ``subprocess``, whose
    import costs ~15 ms of every DEL (bench/README, "CNI plugin")."""
    read_end, write_end = posix.pipe()  # (both close on exec: dup2 below clears it on 0)
    sys.stdout.flush()
    try:
        pid = posix.posix_spawn(
            plugin,
            [plugin],
            env,
            file_actions=[(posix.POSIX_SPAWN_DUP2, read_end, 0)],
            setsigdef=DEFAULT_SIGNALS,
        )
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot run {plugin}: {e.strerror}") from None
    finally:
        posix.close(read_end)
    try:
        left = memoryview(body)
        while left:
            left = left[posix.write(write_end, left) :]
    except BrokenPipeError:
        pass  # it stopped reading: its exit status says why
    finally:
        posix.close(write_end)
    return posix.waitstatus_to_exitcode(posix.waitpid(pid, 0)[1])


def _print(doc: dict[str, Any]) -> None:
    sys.stdout.write(lean_json.dumps(doc) + "\n")
    sys.stdout.flush()
