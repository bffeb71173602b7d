"""Real Docker engines, mini-ipam driver processes and network namespaces for the e2e tier.

Every engine runs in a network namespace and a mount namespace of its own:

* its bridges and iptables rules never touch the machine's (a user's own engine
  keeps running undisturbed, even one on the default ``docker0``);
* its ``/run/docker/plugins`` is a private bind mount of ``<dir>/plugins``, so the
  driver socket it sees is invisible to every other engine on the machine;
* its sockets, data, pid file and log live in its own directory.

Drivers run in the root namespaces: Unix sockets live in the filesystem, so an
engine in another network namespace reaches them all the same.

Which engine runs is a ``Release``: ``scripts/fetch-engine.py`` fetches it (Debian bookworm's
20.10, or pinned .debs of 26.1.5 and 28.5.2) and its ``bin`` directory goes first on the PATH of
dockerd and of the docker CLI, so that every engine is driven by its own client.

Nothing here kills anything by name: every process is stopped by the pid this
module started it with, and stragglers (containerd, shims) are found by the
engine's own unique directory in their command line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini_ipam.unix_http import UnixHTTPError, request_json
from tests.servers import serve_command, wait_until

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network

IMAGE = "local/busybox:1"
"""The one image every test container runs: a busybox-static rootfs, built locally."""

SLEEPER = "trap 'exit 0' TERM; sleep 3600 & wait"
"""A container's idle command. A plain ``sleep`` as pid 1 ignores SIGTERM, and every engine stop or
restart would then wait out the 10 s stop timeout of each running container."""

# Variables that would point the docker CLI at somebody else's engine, context or TLS setup.
_FOREIGN_DOCKER_ENV = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_API_VERSION")


class EngineUnavailable(RuntimeError):
    """An engine (or what it needs from the machine) could not be started."""


RECOVERING = "is new or being rebuilt after a loss"
"""In the refusal of a new subnet while a shared map is in its recovery window (a new map too)."""

ENGINE_VERSIONS = ("20.10", "26.1.5", "28.5.2")
"""Every engine the real-engine tiers run on, oldest first: Debian bookworm's, trixie's and forky's."""

FETCH_ENGINE = Path(__file__).resolve().parents[2] / "scripts" / "fetch-engine.py"


def engine_versions() -> list[str]:
    """The engines to test: ``MINI_IPAM_ENGINES`` (comma- or space-separated), else all of ENGINE_VERSIONS."""
    chosen = os.environ.get("MINI_IPAM_ENGINES", "").replace(",", " ").split()
    return chosen or list(ENGINE_VERSIONS)


@dataclass(frozen=True)
class Release:
    """A Docker engine version and the directory of its binaries (dockerd, docker, containerd ...)."""

    version: str
    bin_dir: Path

    @property
    def major(self) -> int:
        """The major version (20, 26, 28)."""
        return int(self.version.split(".")[0])

    def path(self) -> str:
        """A PATH with this release's binaries first (runc and the rest come from the machine)."""
        return f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"


def fetch_release(version: str) -> Release:
    """Fetch ``version`` with scripts/fetch-engine.py (cached); EngineUnavailable when it cannot."""
    result = subprocess.run(
        [sys.executable, str(FETCH_ENGINE), version], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise EngineUnavailable(f"cannot fetch Docker engine {version}: {result.stderr.strip()}")
    return Release(version, Path(result.stdout.strip()))


class DriverFailed(RuntimeError):
    """A mini-ipam driver process exited or never answered on its socket."""


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its text output; ``check`` raises with stderr in the message."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stderr or result.stdout}")
    return result


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def pids_mentioning(text: str) -> list[int]:
    """Pids of processes whose command line contains ``text`` (a directory only we use)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process exited while we looked
        if text in cmdline:
            found.append(int(entry.name))
    return found


def pids_in_netns(namespace: Path) -> list[int]:
    """Pids of processes in the network namespace mounted at ``namespace`` (as ``ip netns pids``).

    Every process there is ours: an engine's dockerd, containerd and shims, and its managed
    plugins (they run with the host network, i.e. the engine's). A plugin's command line names
    nothing of ours and its root is a pivot_root'ed directory, so this is how it is found.
    """
    try:
        target = os.stat(namespace)
    except FileNotFoundError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ns = os.stat(entry / "ns" / "net")
        except OSError:
            continue  # exited, or a kernel thread
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry.name))
    return found


def with_descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every process below them, found before anything is killed.

    Killing a shim first would leave its container or plugin process running, re-parented
    to init and no longer findable.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may contain spaces
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = list(dict.fromkeys(roots))
    while pending:
        pid = pending.pop()
        if pid in found or pid == os.getpid():
            continue
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


# -- parsing what the tools print -------------------------------------------------


def parse_ip_addr(text: str, *, scope: str | None = None) -> list[Interface]:
    """Addresses in ``ip addr`` output (plain or ``-o``), optionally only those of one scope."""
    found: list[Interface] = []
    for match in re.finditer(r"\binet6? (\S+)(?: brd \S+)? scope (\w+)", text):
        if scope is None or match.group(2) == scope:
            found.append(ipaddress.ip_interface(match.group(1)))
    return found


def ping_succeeded(output: str) -> bool:
    """Whether busybox ``ping -c1`` output shows the one reply it waited for."""
    return re.search(r"\b1 packets received\b", output) is not None and " 0% packet loss" in output


class NetworkInfo:
    """The IPAM part of ``docker network inspect``, parsed."""

    def __init__(self, inspect: dict[str, Any]) -> None:
        self.raw = inspect
        self.name: str = inspect["Name"]
        self.id: str = inspect["Id"]
        self.driver: str = inspect["IPAM"]["Driver"]
        self.configs: list[dict[str, Any]] = inspect["IPAM"]["Config"] or []

    def subnets(self, version: int | None = None) -> list[Subnet]:
        """The network's subnets, of one IP version or all."""
        subnets = [ipaddress.ip_network(config["Subnet"]) for config in self.configs]
        return [s for s in subnets if version is None or s.version == version]

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """The one IPv4 subnet of the network (fails when there is not exactly one)."""
        (subnet,) = self.subnets(4)
        assert isinstance(subnet, ipaddress.IPv4Network)
        return subnet

    def gateway(self, subnet: Subnet) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The gateway of ``subnet`` as inspect shows it (IPv6 ones with a prefix, which is dropped).

        The engine shows it only when it chose the subnet itself or the user gave
        ``--gateway``; ``Engine.gateway`` also finds the others.
        """
        for config in self.configs:
            if ipaddress.ip_network(config["Subnet"]) == subnet:
                return ipaddress.ip_address(config["Gateway"].split("/")[0])
        raise KeyError(subnet)

    @property
    def bridge(self) -> str:
        """The Linux bridge the engine made for the network (``br-`` and 12 digits of its id)."""
        return self.raw["Options"].get("com.docker.network.bridge.name") or f"br-{self.id[:12]}"


def assert_disjoint(subnets: Sequence[Subnet]) -> None:
    """Fail, naming the pair, when any two subnets overlap."""
    for i, first in enumerate(subnets):
        for second in subnets[i + 1 :]:
            assert not first.overlaps(second), f"{first} overlaps {second}"


# -- namespaces -------------------------------------------------------------------


class Namespace:
    """A named network namespace (``ip netns``), deleted with everything in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name

    def create(self) -> None:
        """Create the namespace with its loopback up."""
        run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip`` inside the namespace."""
        return run(["ip", "-n", self.name, *args], check=check)

    def delete(self) -> None:
        """Delete the namespace; its interfaces (and their veth peers) go with it."""
        if self.path.exists():
            run(["ip", "netns", "delete", self.name], check=False)


class Lab:
    """A switch namespace with one bridge: the "LAN" between several host namespaces.

    Everything lives inside namespaces made here, so the root namespace gets no
    interface; addresses come from 198.18.0.0/24 (benchmarking range, RFC 2544),
    which exists nowhere but on this machine.
    """

    SUBNET = ipaddress.IPv4Network("198.18.0.0/24")

    def __init__(self, name: str) -> None:
        self.switch = Namespace(name)
        self.ports = 0

    def create(self) -> None:
        """Create the switch namespace and its bridge."""
        self.switch.create()
        self.switch.ip("link", "add", "lan", "type", "bridge")
        self.switch.ip("link", "set", "lan", "up")

    def attach(self, host: Namespace) -> ipaddress.IPv4Interface:
        """Connect ``host`` to the switch by a veth pair; its end is ``lan0`` with the next address."""
        self.ports += 1
        address = ipaddress.IPv4Interface(f"{self.SUBNET[self.ports]}/{self.SUBNET.prefixlen}")
        port = f"p{self.ports}"
        self.switch.ip("link", "add", port, "type", "veth", "peer", "name", "lan0", "netns", host.name)
        self.switch.ip("link", "set", port, "master", "lan", "up")
        host.ip("addr", "add", str(address), "dev", "lan0")
        host.ip("link", "set", "lan0", "up")
        return address

    def delete(self) -> None:
        """Delete the switch; the veth pairs go with it."""
        self.switch.delete()


# -- a tier's scratch space -----------------------------------------------------------


@contextlib.contextmanager
def scratch_directory(prefix: str, tier: str) -> Iterator[Path]:
    """A short temp directory under /tmp for a tier of engines (Unix socket paths stay under ~107 characters).

    ``MINI_E2E_KEEP=1`` keeps it (engine and driver logs) for a post-mortem; the
    processes and namespaces are removed all the same.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    # pytest tears fixtures down on KeyboardInterrupt, not on SIGTERM (CI timeouts, `kill`):
    # turn one into the other so that engines and namespaces are still removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield directory
    finally:
        signal.signal(signal.SIGTERM, previous)
        if os.environ.get("MINI_E2E_KEEP"):
            print(f"\n{tier}: logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- the driver -------------------------------------------------------------------


def plugin_activates(path: Path) -> bool:
    """Whether a plugin answers ``Plugin.Activate`` on ``path`` as an IpamDriver."""
    try:
        status, reply = request_json(str(path), "POST", "/Plugin.Activate", timeout=1.0)
    except UnixHTTPError:
        return False
    return status == 200 and isinstance(reply, dict) and "IpamDriver" in reply.get("Implements", [])


class Driver:
    """One ``mini-ipam serve`` process, with the flags it was started with kept for restarts."""

    def __init__(self, socket_path: Path, store: str, *, args: Sequence[str] = (), log: Path) -> None:
        self.socket = socket_path
        self.store = store
        self.args = list(args)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        """The name engines know the driver by: its socket's file stem."""
        return self.socket.stem

    @property
    def command(self) -> list[str]:
        """The driver's command line."""
        return serve_command(self.socket, "--store", self.store, *self.args)

    def start(self, timeout: float = 15) -> None:
        """Start the process and wait until it answers on its socket."""
        with self.log.open("ab") as log:
            log.write(f"--- {shlex.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._answers, timeout=timeout, interval=0.05, what=f"mini-ipam to answer on {self.socket}")
        except AssertionError as exc:
            self.kill()
            raise DriverFailed(f"{exc}:\n{self.log_tail()}") from None

    def _answers(self) -> bool:
        if plugin_activates(self.socket):
            return True
        assert self.process is not None
        if self.process.poll() is not None:
            raise DriverFailed(f"mini-ipam exited with {self.process.returncode}:\n{self.log_tail()}")
        return False

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (a crash, by default) and wait for the process to end."""
        if self.process is not None and self.process.poll() is None:
            kill_pid(self.process.pid, sig)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM removes the socket), or kill after a grace period."""
        if self.process is None:
            return
        try:
            self.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None
        # A killed driver leaves its socket behind; nothing else may use this path.
        with contextlib.suppress(FileNotFoundError):
            if self.socket.is_socket():
                self.socket.unlink()

    def restart(self, sig: int = signal.SIGKILL) -> None:
        """Kill with ``sig`` and start again with the same socket, store and flags."""
        self.kill(sig)
        self.start()

    def log_text(self) -> str:
        """Everything the process (and its earlier runs) printed."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])


# -- the engine -------------------------------------------------------------------


class Engine:
    """A dockerd of our own, in its own network and mount namespace.

    ``directory`` holds everything: ``docker.sock``, ``root`` (data root; vfs unless told otherwise),
    ``exec`` (exec root, containerd), ``plugins`` (its /run/docker/plugins),
    ``dockerd.pid`` and ``dockerd.log``.
    """

    def __init__(
        self,
        name: str,
        directory: Path,
        namespace: Namespace,
        *,
        daemon_config: Mapping[str, Any] | None = None,
        daemon_env: Mapping[str, str] | None = None,
        storage_driver: str = "vfs",
        release: Release | None = None,
    ) -> None:
        """``daemon_config`` adds keys to the engine's daemon.json, ``daemon_env`` to dockerd's environment.

        ``release``: the engine version to run (its binaries first on PATH); None runs whatever
        dockerd and docker the PATH has.

        ``storage_driver``: vfs works on any file system; overlay2 builds images much faster where
        the kernel and the file system allow it.
        """
        self.name = name
        self.storage_driver = storage_driver
        self.directory = directory
        self.namespace = namespace
        self.plugins = directory / "plugins"
        self.socket = directory / "docker.sock"
        self.log = directory / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        for sub in ("plugins", "root", "exec", "cg", "cli"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        # Our own daemon.json: a user's /etc/docker/daemon.json must not configure our engine, and
        # dockerd 20.10 would otherwise create its trust key in the shared /etc/docker/key.json.
        config = {"deprecated-key-path": str(directory / "key.json"), **(daemon_config or {})}
        (directory / "daemon.json").write_text(json.dumps(config))
        self.release = release
        self.daemon_env = dict(daemon_env or {})
        self.env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_DOCKER_ENV}
        if release is not None:
            # dockerd finds containerd, its shim and docker-proxy on PATH too; runc is the machine's.
            self.daemon_env["PATH"] = self.env["PATH"] = release.path()
        self.env["DOCKER_CONFIG"] = str(directory / "cli")  # nor may ~/.docker (contexts, auth)

    @property
    def dockerd_command(self) -> str:
        """The shell script run inside the new mount namespace."""
        d = shlex.quote(str(self.directory))
        return "\n".join(
            [
                "set -e",
                f"hostname {shlex.quote(self.name)}",
                # dockerd needs the cgroup hierarchy, and a sysfs of this network namespace on /sys.
                f"mount --rbind /sys/fs/cgroup {d}/cg",
                "mount -t sysfs sysfs /sys",
                f"mount --move {d}/cg /sys/fs/cgroup",
                # The private plugin directory: only this engine sees our driver's socket.
                "mkdir -p /run/docker/plugins",
                f"mount --bind {d}/plugins /run/docker/plugins",
                "exec dockerd"
                f" -H unix://{d}/docker.sock --config-file={d}/daemon.json --pidfile={d}/dockerd.pid"
                f" --data-root={d}/root --exec-root={d}/exec"
                # vfs works on any file system; no default bridge (tests name their networks);
                # a short shutdown so that restarts with running containers take ~1 s, not 10.
                f" --storage-driver={self.storage_driver} --bridge=none --shutdown-timeout=1",
            ]
        )

    def start(self) -> None:
        """Start dockerd; call ``wait_ready`` before using it."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "nsenter",
                    f"--net={self.namespace.path}",
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    self.dockerd_command,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.daemon_env},
            )

    def answers(self) -> bool:
        """Whether the engine's API answers (a socket that accepts but does not answer yet: no)."""
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the API answers; EngineUnavailable (with the log) when it exits or times out."""
        try:
            wait_until(self._answers_or_exited, timeout=timeout, interval=0.05, what=f"dockerd {self.name} to answer")
        except AssertionError as exc:
            raise EngineUnavailable(f"{exc}:\n{self.log_tail()}") from None

    def _answers_or_exited(self) -> bool:
        if self.answers():
            return True
        if self.process is None or self.process.poll() is not None:
            raise EngineUnavailable(f"dockerd {self.name} exited:\n{self.log_tail()}")
        return False

    def docker(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine (and only this one)."""
        return run(["docker", "-H", f"unix://{self.socket}", *args], check=check, timeout=timeout, env=self.env)

    def run_json(self, *args: str) -> Any:
        """Run a docker command that prints JSON (``inspect``, ``--format '{{json .}}'``) and parse it."""
        return json.loads(self.docker(*args, check=True).stdout)

    def network(self, name: str) -> NetworkInfo:
        """``docker network inspect name``, parsed."""
        (inspect,) = self.run_json("network", "inspect", name)
        return NetworkInfo(inspect)

    def gateway(
        self, network: NetworkInfo, subnet: Subnet | None = None
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The gateway of a bridge network's subnet (its IPv4 one by default): the bridge's address in it.

        Read from the bridge itself, because inspect leaves it out for a user's
        ``--subnet`` without ``--gateway``; and it proves the address is really there.
        """
        subnet = subnet or network.subnet
        shown = self.namespace.ip(f"-{subnet.version}", "addr", "show", "dev", network.bridge).stdout
        (gateway,) = [address.ip for address in parse_ip_addr(shown) if address.network == subnet]
        return gateway

    def networks(self) -> list[NetworkInfo]:
        """Every network with an IPAM subnet: ours, and any the engine made itself."""
        ids = self.docker("network", "ls", "-q", check=True).stdout.split()
        return [NetworkInfo(inspect) for inspect in self.run_json("network", "inspect", *ids)] if ids else []

    def addresses(
        self, container: str, *, version: int = 4, scope: str = "global", device: str | None = "eth0"
    ) -> list[Interface]:
        """The addresses of a running container's ``device`` (None: of all its interfaces), as ``ip addr`` says."""
        where = ["dev", device] if device else []
        output = self.docker("exec", container, "ip", f"-{version}", "addr", "show", *where, check=True).stdout
        return parse_ip_addr(output, scope=scope)

    def address(self, container: str) -> ipaddress.IPv4Interface:
        """The one IPv4 address of a running container's eth0."""
        (address,) = self.addresses(container)
        assert isinstance(address, ipaddress.IPv4Interface)
        return address

    def ping(self, container: str, address: object) -> bool:
        """Whether ``container`` gets a reply from ``address`` (one ping, two seconds)."""
        result = self.docker("exec", container, "ping", "-c1", "-W2", str(address))
        return ping_succeeded(result.stdout)

    def wipe(self) -> None:
        """Remove every container and every user-defined network of the engine."""
        containers = self.docker("ps", "-aq", check=True).stdout.split()
        if containers:
            self.docker("rm", "-f", *containers, check=True)
        networks = self.docker("network", "ls", "-q", "--filter", "type=custom", check=True).stdout.split()
        if networks:
            self.docker("network", "rm", *networks, check=True)

    def log_offset(self) -> int:
        """The log's current size: pass it to ``log_since`` to read what comes after."""
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        """What dockerd logged after ``offset``."""
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the engine's log, for error messages."""
        return "\n".join(self.log_since(0).splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM dockerd and wait; running containers get ``--shutdown-timeout`` (1 s) to stop."""
        if self.process is None:
            return
        kill_pid(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_pid(self.process.pid)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Stop the engine (containers too) and start it again on the same data."""
        self.stop()
        self.start()
        self.wait_ready()

    def destroy(self) -> None:
        """Stop for good: remove containers and networks, stop dockerd, kill any process left behind."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):  # a broken engine must not keep the rest from cleaning up
                self.wipe()
        self.stop()
        # containerd and shims of a killed dockerd (found by our unique directory), whatever else is
        # left in the engine's network namespace (managed plugins), and all their children: by pid.
        leftovers = [*pids_mentioning(str(self.directory)), *pids_in_netns(self.namespace.path)]
        for pid in with_descendants(leftovers):
            kill_pid(pid)


class BusyboxImage:
    """``local/busybox:1``, made once per session from the machine's static busybox.

    The first engine imports a rootfs tarball; it is then saved once and loaded by
    the others, as images travel between real hosts.
    """

    APPLETS = ("sh", "ip", "ping", "sleep", "cat", "ifconfig", "true", "hostname")

    def __init__(self, busybox: str, directory: Path) -> None:
        self.busybox = busybox
        self.directory = directory
        self.saved = directory / "busybox-image.tar"

    def _rootfs_tar(self) -> Path:
        rootfs = self.directory / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        target = rootfs / "bin" / "busybox"
        target.write_bytes(Path(self.busybox).read_bytes())
        target.chmod(0o755)
        for applet in self.APPLETS:
            link = rootfs / "bin" / applet
            if not link.is_symlink():
                link.symlink_to("busybox")
        tarball = self.directory / "rootfs.tar"
        run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."])
        return tarball

    def install(self, engine: Engine) -> None:
        """Make the image available on ``engine``."""
        if not self.saved.exists():
            engine.docker("import", str(self._rootfs_tar()), IMAGE, check=True)
            engine.docker("save", "-o", str(self.saved), IMAGE, check=True)
        else:
            engine.docker("load", "-i", str(self.saved), check=True)


class Host:
    """A simulated machine: a network namespace, an engine in it, and that engine's own driver.

    Every host's driver socket has the same name (``<prefix>.sock``) in its own
    private plugin directory, as on real machines that all run ``mini``.
    """

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        prefix: str,
        store: str,
        driver_args: Sequence[str],
        release: Release | None = None,
    ) -> None:
        self.name = name
        self.namespace = Namespace(f"{prefix}-{name}")
        self.engine = Engine(name, directory, self.namespace, release=release)
        self.driver = Driver(
            self.engine.plugins / f"{prefix}.sock", store, args=driver_args, log=directory / "driver.log"
        )
        self.address: ipaddress.IPv4Interface | None = None
        """The host's address on the lab LAN, when it is on one."""

    def start(self, lab: Lab | None = None) -> None:
        """Create the namespace, plug it into ``lab``, and start the engine (without waiting for it)."""
        self.namespace.create()
        if lab is not None:
            self.address = lab.attach(self.namespace)
        self.engine.start()

    def create_network(self, name: str, *args: str) -> NetworkInfo:
        """``docker network create`` with this host's driver; fails the test when refused."""
        self.engine.docker("network", "create", "--ipam-driver", self.driver.name, *args, name, check=True)
        return self.engine.network(name)

    def try_network(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``docker network create`` with this host's driver, whatever the outcome."""
        return self.engine.docker("network", "create", "--ipam-driver", self.driver.name, *args, name)

    def wait_map_settled(self, timeout: float = 30) -> None:
        """Wait until the shared map hands out new subnets: create (and remove) a network until it may.

        A map that is new, or rebuilt after a loss, refuses new subnets for a short recovery window
        (until every host that held claims re-asserted them); only that refusal is waited out, any
        other failure fails at once.
        """
        last: list[str] = []

        def created() -> bool:
            result = self.try_network("map-settled", "--ipam-opt", "size=30")
            if result.returncode == 0:
                self.engine.docker("network", "rm", "map-settled", check=True)
                return True
            assert RECOVERING in result.stderr, f"{self.name}: a first network was refused: {result.stderr}"
            last[:] = [result.stderr]
            return False

        try:
            wait_until(created, timeout=timeout, interval=0.2, what=f"the map to settle on {self.name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the last refusal: {last[-1] if last else '-'}") from None

    def start_container(self, name: str, network: str, *args: str) -> str:
        """A detached container that sleeps on ``network``; ``args`` go to ``docker run``. Fails when refused."""
        result = self.try_container(name, network, *args)
        assert result.returncode == 0, f"docker run {name} on {network} failed: {result.stderr}"
        return name

    def start_containers(self, *specs: Sequence[str]) -> list[str]:
        """Several containers at once, each ``(name, network, *docker_run_args)``.

        The engine then sends the driver concurrent RequestAddress calls, as a busy host does.
        """
        with ThreadPoolExecutor(len(specs)) as pool:
            return list(pool.map(lambda spec: self.start_container(*spec), specs))

    def try_container(self, name: str, network: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``docker run -d`` of a sleeping container on ``network``, whatever the outcome."""
        return self.engine.docker("run", "-d", "--name", name, "--network", network, *args, IMAGE, "sh", "-c", SLEEPER)

    def destroy(self) -> None:
        """Remove everything the host made: containers, networks, processes, the namespace."""
        if self.driver.process is not None and not self.driver.running:
            # A test killed the driver and failed before restarting it. Removing containers and
            # networks calls the driver (ReleaseAddress, ReleasePool): the engine would stall,
            # retrying, on a plugin that is gone.
            with contextlib.suppress(DriverFailed):
                self.driver.start()
        try:
            self.engine.destroy()
        finally:
            self.driver.stop()
            self.namespace.delete()
