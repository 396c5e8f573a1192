"""Network namespaces, links and processes from ``ip`` commands, always torn down.

``Lab`` is a context manager that owns everything it creates: namespaces named
``<prefix><pid>-<counter>-<role>`` (unique per process and per lab), the links inside them
(every link lives in a namespace of the lab, so deleting the namespaces deletes them) and the
processes it spawned there. Leaving the ``with`` block, normally, by an exception, by Ctrl-C or
by SIGTERM/SIGHUP (turned into ``SystemExit`` while the lab is open), stops the processes by
PID and deletes the namespaces. ``cleanup_stale()`` removes what a crashed run (SIGKILL) left:
namespaces with the prefix whose owning PID is gone, and the processes still inside them.

Sockets can be opened inside a namespace without a child process: ``Namespace.run(function)``
calls ``function`` in a new thread that first ``setns()`` into the namespace; a socket created
there stays in that namespace and can be used from any thread afterwards.

Linux only, needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..errors import QuicVoiceError

#: The default name prefix of every namespace a lab creates.
PREFIX = "qvnl-"
NETNS_DIR = "/run/netns"
#: ``<sched.h>``: the namespace type of ``setns``.
CLONE_NEWNET = 0x40000000
#: How long a spawned process gets after SIGTERM before SIGKILL, seconds.
STOP_GRACE = 3.0
#: Each `ip` command may take this long, seconds.
IP_TIMEOUT = 10.0

T = TypeVar("T")
_labs = itertools.count(1)


class NetlabError(QuicVoiceError):
    """A lab could not be built or checked: not root, no iproute2, or an ``ip`` command failed."""


def require_root() -> None:
    """Fail fast, with a message naming what is missing, unless namespaces can be made here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NetlabError("network namespaces need root (run as root, e.g. with sudo)")
    if shutil.which("ip") is None:
        raise NetlabError("iproute2's `ip` command is not installed")
    if not os.path.exists("/dev/net/tun"):
        raise NetlabError("/dev/net/tun is missing: the delay line needs TUN devices")


def ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n namespace] args...`` and return its stdout; raise NetlabError on failure."""
    argv = ["ip", *(("-n", namespace) if namespace else ()), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and result.returncode != 0:
        raise NetlabError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def list_namespaces() -> list[str]:
    """Names of every named network namespace (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(fd)


def run_in_namespace(name: str, function: Callable[[], T]) -> T:
    """Call ``function`` in a new thread that has joined the network namespace ``name``.

    Only that thread moves (``setns`` is per thread), and it ends afterwards, so the caller's
    namespace never changes. Sockets made in ``function`` belong to ``name`` for good.
    """
    outcome: list[Any] = []

    def target() -> None:
        try:
            _setns(os.path.join(NETNS_DIR, name))
            outcome.append((True, function()))
        except BaseException as error:  # handed to the caller's thread
            outcome.append((False, error))

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class Namespace:
    """A named network namespace; methods run ``ip -n NAME ...`` in it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def ip(self, *args: str, check: bool = True) -> str:
        return ip(*args, namespace=self.name, check=check)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the namespace (``ip netns exec`` execs, same PID)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def sysctl(self, settings: dict[str, str | int]) -> None:
        """Set ``net.*`` sysctls of this namespace (``/proc/sys/net`` follows the thread's
        namespace, so no ``sysctl`` binary is needed)."""
        for key in settings:
            if not key.startswith("net.") or "/" in key or ".." in key:
                raise ValueError(f"not a per-namespace sysctl: {key!r}")

        def write() -> None:
            for key, value in settings.items():
                with open("/proc/sys/" + key.replace(".", "/"), "w") as knob:
                    knob.write(str(value))

        try:
            self.run(write)
        except OSError as error:
            raise NetlabError(f"sysctl in {self.name}: {error}") from error

    def set_up(self, device: str) -> None:
        self.ip("link", "set", device, "up")

    def add_address(self, device: str, cidr: str) -> None:
        """Assign ``cidr`` (e.g. ``"198.18.1.2/24"``) to ``device``."""
        self.ip("address", "add", cidr, "dev", device)

    def add_route(
        self,
        destination: str,
        *,
        via: str | None = None,
        device: str | None = None,
        table: int | None = None,
        metric: int | None = None,
        source: str | None = None,
    ) -> None:
        """``ip route add``: ``destination`` is a prefix or ``"default"``."""
        args = ["route", "add", destination]
        for key, value in (
            ("via", via),
            ("dev", device),
            ("table", table),
            ("metric", metric),
            ("src", source),
        ):
            if value is not None:
                args += [key, str(value)]
        self.ip(*args)

    def add_rule(
        self,
        *,
        table: int,
        priority: int,
        source: str | None = None,
        destination: str | None = None,
        input_device: str | None = None,
    ) -> None:
        """A policy-routing rule: packets matching every given selector use ``table``."""
        args = ["rule", "add", "priority", str(priority)]
        for key, value in (("from", source), ("to", destination), ("iif", input_device)):
            if value is not None:
                args += [key, value]
        self.ip(*args, "lookup", str(table))

    def delete_link(self, device: str, *, missing_ok: bool = False) -> bool:
        """Delete ``device`` (both ends, for a veth); False if it was already gone."""
        if missing_ok and device not in self.links():
            return False
        self.ip("link", "del", device)
        return True

    def links(self) -> list[str]:
        """Names of this namespace's interfaces."""
        return [link["ifname"] for link in json.loads(self.ip("-j", "link", "show") or "[]")]

    def route_device(self, destination: str, source: str | None = None) -> str:
        """The interface the kernel would send ``destination`` out of (``ip route get``)."""
        args = ["-j", "route", "get", destination]
        if source is not None:
            args += ["from", source]
        routes = json.loads(self.ip(*args))
        return str(routes[0]["dev"])

    def run(self, function: Callable[[], T]) -> T:
        """Call ``function`` in a thread inside this namespace (see ``run_in_namespace``)."""
        return run_in_namespace(self.name, function)

    def open_socket(
        self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM
    ) -> socket.socket:
        """A new socket that lives in this namespace."""
        return self.run(lambda: socket.socket(family, kind))

    def pids(self) -> list[int]:
        """PIDs of the processes whose network namespace is this one."""
        return [int(pid) for pid in ip("netns", "pids", self.name, check=False).split()]


class Lab:
    """Namespaces, links and processes that exist only inside ``with Lab() as lab:``."""

    def __init__(self, prefix: str = PREFIX, *, disable_ipv6: bool = True) -> None:
        if not prefix or "/" in prefix or len(prefix) > 20:
            raise ValueError(f"bad namespace prefix {prefix!r}")
        self.prefix = prefix
        self.run_id = f"{prefix}{os.getpid()}-{next(_labs)}"
        self.disable_ipv6 = disable_ipv6
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self._closed = False
        self._previous_handlers: dict[int, Any] = {}

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        require_root()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(signum) is signal.SIG_DFL:
                    self._previous_handlers[signum] = signal.signal(signum, _exit_on_signal)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        try:
            self.close()
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self._previous_handlers.clear()

    def close(self) -> None:
        """Stop every process and delete every namespace; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        stop_processes(self.processes)
        self.processes.clear()
        for namespace in reversed(self.namespaces):
            try:
                _delete_namespace(namespace.name)
            except (NetlabError, OSError, subprocess.SubprocessError) as error:
                errors.append(str(error))
        self.namespaces.clear()
        if errors:
            raise NetlabError("teardown incomplete: " + "; ".join(errors))

    # -- building ----------------------------------------------------------------------------

    def namespace(self, role: str) -> Namespace:
        """A new namespace ``<run_id>-<role>`` with loopback up (and IPv6 off by default)."""
        if self._closed:
            raise NetlabError("the lab is closed")
        namespace = Namespace(f"{self.run_id}-{role}")
        self.namespaces.append(namespace)  # before creating: a half-made one is deleted too
        ip("netns", "add", namespace.name)
        namespace.set_up("lo")
        settings: dict[str, str | int] = {
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
        }
        if self.disable_ipv6:
            settings["net.ipv6.conf.all.disable_ipv6"] = 1
            settings["net.ipv6.conf.default.disable_ipv6"] = 1
        namespace.sysctl(settings)
        return namespace

    def veth(self, a: Namespace, a_name: str, b: Namespace, b_name: str) -> None:
        """A veth pair with one end in each namespace, both up (created there directly)."""
        ip("link", "add", a_name, "netns", a.name, "type", "veth", "peer", "name", b_name,
           "netns", b.name)  # fmt: skip
        a.set_up(a_name)
        b.set_up(b_name)

    def tun(self, namespace: Namespace, name: str) -> None:
        """A persistent TUN device (no packet info), up; a delay line attaches to it later."""
        namespace.ip("tuntap", "add", "dev", name, "mode", "tun")
        namespace.set_up(name)

    def spawn(
        self, namespace: Namespace, argv: Sequence[str], **popen: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``namespace``; the lab stops it (by PID) on close."""
        if self._closed:
            raise NetlabError("the lab is closed")
        process = subprocess.Popen(namespace.exec_argv(argv), **popen)
        self.processes.append(process)
        return process


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_processes(processes: Iterable[subprocess.Popen[Any]], grace: float = STOP_GRACE) -> None:
    """SIGTERM each live process, wait up to ``grace`` seconds in all, then SIGKILL; reap all."""
    live = [process for process in processes if process.poll() is None]
    for process in live:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for process in live:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _delete_namespace(name: str) -> None:
    """Kill (by PID) whatever still runs inside ``name``, then delete it."""
    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        return
    for _ in range(3):
        pids = [pid for pid in Namespace(name).pids() if pid != os.getpid()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    ip("netns", "delete", name)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named ``<prefix><pid>-...`` whose ``pid`` no longer runs.

    Processes left inside them (a delay line, a forwarder of a crashed run) are killed by PID
    first. Namespaces of live runs, this process's included, are left alone. Returns the names
    deleted.
    """
    removed = []
    for name in list_namespaces():
        if not name.startswith(prefix):
            continue
        owner, _, _ = name[len(prefix) :].partition("-")
        if not owner.isdigit() or _owner_alive(int(owner)):
            continue
        _delete_namespace(name)
        removed.append(name)
    return removed
