"""Swarm nodes running mini-ipam as a managed (v2) plugin, and what the tests read back from them.

* ``debootstrap_base``: the Debian + Python root filesystem the plugin image builds ``FROM``,
  made once with debootstrap and cached as a tarball (there is no registry to pull from).
* ``PluginBuild``: ``scripts/build-plugin.sh`` run once, on a throw-away builder engine; the
  plugin it created is then copied into every node's data root before that node first starts
  (see ``PluginBuild.install`` for why, and what it costs compared to ``docker plugin create``).
* ``Node``: a network namespace, a dockerd in it and the plugin's settings; ``Cluster``: the
  nodes of one swarm, with the swarm operations the tests need (init, join, services, tasks).
* ``AddressMap``: a snapshot of the driver's store (Redis or a state file), read with the
  ``stores`` package itself, so the tests check claims exactly as the driver keeps them.
* ``Request``: one line of the plugin's request log, as it appears in its engine's log.

Every address is inside 198.18.0.0/15 (RFC 2544, benchmarking), which exists nowhere but in
this machine's namespaces: the lab LAN, Docker's own pools (``docker_gwbridge``, swarm's
ingress network) and the driver's parent are all carved from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stores import Address, Block, Network, Store, UnknownPool
from tests.e2e.engines import IMAGE, SLEEPER, Engine, Lab, Namespace, NetworkInfo, Release, run
from tests.servers import wait_until

PLUGIN = "mini"
"""The plugin's name in every engine; swarm networks use it as ``--ipam-driver mini:latest``."""
DRIVER = f"{PLUGIN}:latest"

PARENT = ipaddress.IPv4Network("198.19.0.0/17")
"""The driver's parent range on every node (MINI_IPAM_POOL)."""

BASE_IMAGE = "local/bookworm-python:1"
"""The image ``packaging/plugin/Dockerfile`` builds FROM: debootstrap's Debian with Python."""

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

DAEMON_CONFIG: dict[str, Any] = {"default-address-pools": [{"base": "198.18.64.0/18", "size": 24}]}
"""Docker's own local pools (``docker_gwbridge``) inside 198.18.0.0/15 too."""

DAEMON_ENV = {"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
"""Swarm tasks use the image the node has: no engine ever tries to reach a registry."""

SWARM_ADDR_POOL = ("198.18.128.0/18", "24")
"""``swarm init --default-addr-pool``: the ingress network and default-IPAM overlays."""

STATE_MOUNT = Path("/var/lib/mini-ipam")
"""Where the plugin's ``state`` mount appears inside the plugin (config.json)."""

_REQUEST = re.compile(
    r'msg="\S+ \S+ (?P<level>[A-Z]+) mini_ipam\.requests: (?P<method>\w+) pool=(?P<pool>\S+) (?P<outcome>.*?)'
    r'(?: \[asked (?P<asked>[^\]]*)\])? [\d.]+ms" plugin=(?P<plugin>[0-9a-f]{64})$'
)
_PLUGIN_PROBLEM = re.compile(r'msg="\S+ \S+ (WARNING|ERROR|CRITICAL) .*" plugin=[0-9a-f]{64}$')
_ENGINE_PROBLEM = re.compile(r"\blevel=(error|warning|fatal)\b")


# -- the plugin's root filesystem and the plugin ------------------------------------------


def debootstrap_base(cache: Path, mirror: str = DEFAULT_MIRROR) -> Path:
    """The Debian + Python rootfs tarball, made by debootstrap on first use and kept in ``cache``.

    The cache key is the debootstrap recipe (suite, variant, packages, mirror), nothing else.
    Concurrent test runs wait for each other on a lock; the tarball appears atomically.
    Raises ``subprocess.CalledProcessError`` (with debootstrap's output) when it cannot be made.
    """
    recipe = f"{DEBIAN_SUITE} minbase {','.join(DEBIAN_PACKAGES)} {mirror} trimmed-1"
    tarball = cache / f"{DEBIAN_SUITE}-python-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.tar"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(dir=cache, prefix="debootstrap-") as scratch:
            rootfs = Path(scratch) / "rootfs"
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                 DEBIAN_SUITE, str(rootfs), mirror],
                check=True, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            # What a plugin never needs: downloaded packages, package lists, docs (halves the size).
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                         "usr/share/locale"):  # fmt: skip
                for entry in (rootfs / junk).glob("*"):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            partial = Path(scratch) / "rootfs.tar"
            run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=300)
            os.replace(partial, tarball)
    return tarball


class PluginBuild:
    """mini-ipam as a managed plugin, built once per session and installed on every node.

    ``build`` runs ``scripts/build-plugin.sh`` (wheels on the host, the rootfs from the
    Dockerfile on ``BASE_IMAGE``, ``docker plugin create``) against a builder engine, then
    keeps that engine's plugin store (``<data-root>/plugins``: the plugin's config and
    unpacked rootfs, and its blobs).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.plugins = directory / "plugins"
        self.timings: dict[str, float] = {}
        """Seconds per step, for the report."""

    def build(self, builder: Engine, base_tarball: Path, script: Path) -> None:
        """Build the plugin on ``builder`` (a started engine of ours), keep its store, stop the builder."""
        started = time.monotonic()
        builder.docker("import", str(base_tarball), BASE_IMAGE, check=True, timeout=300)
        self.timings["import base image"] = time.monotonic() - started

        started = time.monotonic()
        # The interpreter running the tests first on PATH: its pip builds the wheels (Debian's
        # python3 may have no pip at all); then the builder's own engine binaries (its docker CLI).
        path = f"{Path(sys.executable).parent}:{builder.env.get('PATH', '/usr/bin:/bin')}"
        result = subprocess.run(
            ["bash", str(script), PLUGIN],
            env={**builder.env, "PATH": path, "BASE": BASE_IMAGE, "ENABLE": "0",
                 "DOCKER": f"docker -H unix://{builder.socket}"},
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert result.returncode == 0, f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        self.timings["build-plugin.sh"] = time.monotonic() - started

        plugin_id = builder.docker("plugin", "inspect", "--format", "{{.Id}}", PLUGIN, check=True).stdout.strip()
        store = builder.directory / "root" / "plugins"
        assert (store / plugin_id / "config.json").is_file() and (store / plugin_id / "rootfs").is_dir(), (
            f"plugin {plugin_id} is not where dockerd keeps plugins ({store})"
        )
        builder.stop()  # the store must be at rest while it is copied
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", str(store), str(self.plugins)], timeout=300)
        self.timings["keep the plugin store"] = time.monotonic() - started

    def install(self, engine: Engine) -> None:
        """Put the plugin into ``engine``'s data root; call before the engine's first start.

        A copy of the builder's plugin store takes ~1.5 s here, against ~13 s for
        ``docker plugin create`` from the same directory (which tars the 170 MB rootfs,
        sends it to the engine, digests and unpacks it) and ~40 s for build-plugin.sh per
        node. The engine loads it as a disabled plugin named ``mini:latest``, the same as
        the one ``docker plugin create`` would make.
        """
        target = engine.directory / "root" / "plugins"
        assert not target.exists(), f"{engine.name} already has a plugin store"
        target.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--reflink=auto", str(self.plugins), str(target)], timeout=300)


# -- what the plugin logged -----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request the plugin answered, from its ``mini_ipam.requests`` log line."""

    method: str
    pool: str
    """The PoolID (``global/198.19.0.0/28``), or the requested Pool when a RequestPool was refused."""
    outcome: str
    """``ok``, or the status and the error."""

    @property
    def ok(self) -> bool:
        """Whether the driver granted it."""
        return self.outcome == "ok"

    def __str__(self) -> str:
        return f"{self.method} pool={self.pool} {self.outcome}"


def granted(requests: Iterable[Request], method: str, pool: str) -> bool:
    """Whether the plugin granted ``method`` on ``pool`` (a PoolID) among ``requests``."""
    return any(r.method == method and r.pool == pool and r.ok for r in requests)


def parse_requests(log: str) -> list[Request]:
    """The plugin's requests in a dockerd log (the plugin logs to stdout; the engine tags it)."""
    found = []
    for line in log.splitlines():
        match = _REQUEST.search(line)
        if match and match["method"] not in ("GetCapabilities", "GetDefaultAddressSpaces"):
            found.append(Request(match["method"], match["pool"], match["outcome"]))
    return found


def ipam_problems(log: str) -> list[str]:
    """Lines of a dockerd log that show an IPAM problem.

    The engine's own errors and warnings that mention IPAM (``IpamDriver.RequestPool: ...``,
    ``failed to allocate ... ipam``), the plugin's warnings and errors, and every request
    the plugin refused.
    """
    problems = []
    for line in log.splitlines():
        request = _REQUEST.search(line)
        if request is not None:
            if request["outcome"] != "ok":
                problems.append(line)
        elif _PLUGIN_PROBLEM.search(line) or (_ENGINE_PROBLEM.search(line) and "ipam" in line.lower()):
            problems.append(line)
    return problems


# -- the address map ------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressMap:
    """A snapshot of the driver's store: claimed subnets, pools and their addresses."""

    blocks: tuple[Block, ...]
    pools: dict[tuple[Network, str], frozenset[Address]]
    """(subnet, scope) → claimed addresses; scope is ``global`` or ``local@<host-id>``."""

    @classmethod
    def read(cls, store: Store, attempts: int = 20) -> AddressMap:
        """Read ``store`` now.

        Pools and their addresses are read one after the other: a pool closed in between
        (UnknownPool) means the map changed under the reader, and the whole read starts again.
        """
        for _ in range(attempts):
            pools = {}
            try:
                for pool in store.pools():
                    pools[(pool.subnet, pool.scope)] = frozenset(
                        claim.address for claim in store.address_claims(pool.subnet, pool.scope)
                    )
            except UnknownPool:
                continue
            return cls(tuple(store.blocks()), pools)
        raise AssertionError(f"the map kept changing while it was read ({attempts} attempts)")

    def overlapping(self, subnet: Network) -> list[Block]:
        """Every claimed subnet that overlaps ``subnet``."""
        return [block for block in self.blocks if block.subnet.overlaps(subnet)]

    def scopes(self, subnet: Network) -> set[str]:
        """The scopes that hold a pool of exactly ``subnet``."""
        return {scope for pool_subnet, scope in self.pools if pool_subnet == subnet}

    def held(self, subnet: Network, scope: str) -> frozenset[Address]:
        """The addresses claimed in one pool (empty when there is no such pool)."""
        return self.pools.get((subnet, scope), frozenset())

    def __str__(self) -> str:
        lines = [f"block {b.subnet} label={b.label} owner={b.owner}" for b in self.blocks]
        for (subnet, scope), addresses in sorted(self.pools.items(), key=lambda item: (str(item[0][0]), item[0][1])):
            lines.append(f"pool {subnet} {scope}: {' '.join(sorted(str(a) for a in addresses)) or '-'}")
        return "\n".join(lines) or "(empty)"


def settle(check: Callable[[], str | None], *, timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll ``check`` (None: good; otherwise what is still wrong) until it passes; fail with its last answer."""
    last: list[str | None] = [None]

    def passed() -> bool:
        last[0] = check()
        return last[0] is None

    try:
        wait_until(passed, timeout=timeout, interval=interval, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{last[0]}") from None


# -- nodes and swarms -----------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A swarm task as a manager sees it, with its addresses on one network."""

    id: str
    node: str
    """The node's hostname (our node name)."""
    state: str
    container: str
    addresses: tuple[ipaddress.IPv4Interface, ...]


class Node:
    """A simulated machine: a network namespace on the lab LAN, a dockerd in it, the plugin in that."""

    def __init__(self, name: str, directory: Path, *, prefix: str, release: Release | None = None) -> None:
        self.name = name
        self.namespace = Namespace(f"{prefix}-{name}")
        self.engine = Engine(
            name, directory, self.namespace, daemon_config=DAEMON_CONFIG, daemon_env=DAEMON_ENV, release=release
        )
        self.address: ipaddress.IPv4Interface | None = None
        """The node's address on the lab LAN."""

    def __repr__(self) -> str:
        return f"Node({self.name})"

    @property
    def ip(self) -> str:
        """The node's LAN address, as swarm's --advertise-addr."""
        assert self.address is not None, f"{self.name} is not on a LAN"
        return str(self.address.ip)

    def start(self, lab: Lab) -> None:
        """Create the namespace, plug it into ``lab`` and start the engine (without waiting)."""
        self.namespace.create()
        self.address = lab.attach(self.namespace)
        self.engine.start()

    def docker(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this node's engine."""
        return self.engine.docker(*args, check=check, timeout=timeout)

    def json(self, *args: str) -> Any:
        """A docker command's JSON output, or None when the command fails (e.g. no leader yet)."""
        result = self.docker(*args)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def enable_plugin(self, *, store: str, state: Path, host_id: str | None = None) -> None:
        """Configure the plugin (store URL, host id, parent, the ``state`` mount) and enable it.

        At log level debug, so that the engine's log holds every request, address requests included.
        """
        self.docker(
            "plugin", "set", PLUGIN, f"state.source={state}", f"MINI_IPAM_STORE={store}",
            f"MINI_IPAM_HOST_ID={host_id or self.name}", f"MINI_IPAM_POOL={PARENT}", "MINI_IPAM_LOG_LEVEL=debug",
            check=True,
        )  # fmt: skip
        self.docker("plugin", "enable", PLUGIN, check=True, timeout=120)

    def requests(self, offset: int = 0) -> list[Request]:
        """The plugin's requests logged after ``offset`` of the engine log."""
        return parse_requests(self.engine.log_since(offset))

    def ipam_problems(self, offset: int = 0) -> list[str]:
        """IPAM problems the engine logged after ``offset``."""
        return ipam_problems(self.engine.log_since(offset))

    def network(self, name: str) -> NetworkInfo | None:
        """``docker network inspect`` on this node, or None when the node does not know it."""
        found = self.json("network", "inspect", name)
        return NetworkInfo(found[0]) if found else None

    def endpoints(self, network: str) -> dict[str, ipaddress.IPv4Interface]:
        """The node's endpoints on ``network`` (task and attached containers, the ``lb-`` endpoint)."""
        found = self.json("network", "inspect", network)
        if not found:
            return {}
        return {
            f"{self.name}/{endpoint['Name']}": ipaddress.IPv4Interface(endpoint["IPv4Address"])
            for endpoint in (found[0].get("Containers") or {}).values()
            if endpoint.get("IPv4Address")
        }

    def container_addresses(self, container: str, subnet: Network) -> list[ipaddress.IPv4Interface]:
        """The addresses a running container really has in ``subnet`` (from ``ip addr`` inside it)."""
        found = self.engine.addresses(container, device=None)
        return [a for a in found if isinstance(a, ipaddress.IPv4Interface) and a.network == subnet]

    def try_bridge(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``docker network create -d bridge`` with the plugin, whatever the outcome."""
        return self.docker("network", "create", "-d", "bridge", "--ipam-driver", DRIVER, *args, name)

    def create_bridge(self, name: str, *args: str) -> ipaddress.IPv4Network:
        """A bridge network with the plugin (fails the test when refused); its subnet."""
        result = self.try_bridge(name, *args)
        assert result.returncode == 0, f"bridge {name} on {self.name}: {result.stderr}"
        network = self.network(name)
        assert network is not None
        return network.subnet

    def run_container(self, name: str, network: str) -> str:
        """A detached sleeping container attached to ``network`` (an attachable overlay or a bridge)."""
        self.docker("run", "-d", "--name", name, "--network", network, IMAGE, "sh", "-c", SLEEPER, check=True)
        return name

    def reaches(self, container: str, address: object, timeout: float = 30) -> bool:
        """Whether ``container`` on this node gets a ping reply from ``address`` within ``timeout``.

        Overlay peers learn each other's endpoints by gossip, which takes a moment after
        an engine (re)starts; a first lost ping proves nothing, no reply for ``timeout`` does.
        """
        try:
            wait_until(lambda: self.engine.ping(container, address), timeout=timeout, interval=0.5, what="a reply")
        except AssertionError:
            return False
        return True

    def destroy(self) -> None:
        """Leave the swarm, stop the engine (its plugin too), kill leftovers, delete the namespace.

        Leaving first keeps the stop quick: a manager stopping while its peers stop waits for
        a quorum that is gone, and its API stalls meanwhile, so ``Engine.wipe`` is skipped.
        """
        try:
            if self.engine.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.docker("swarm", "leave", "--force", timeout=30)
                self.engine.stop()
            self.engine.destroy()
        finally:
            self.namespace.delete()


@dataclass
class Cluster:
    """The nodes of one swarm and the store their plugins share."""

    nodes: list[Node]
    read_map: Callable[[], AddressMap]
    """A fresh snapshot of the shared store."""
    lab: Lab | None = None

    def __getitem__(self, name: str) -> Node:
        (node,) = [node for node in self.nodes if node.name == name]
        return node

    # -- forming the swarm --

    def init(self, first: Node) -> None:
        """``swarm init`` on ``first``, advertising its LAN address."""
        first.docker(
            "swarm", "init", "--advertise-addr", first.ip, "--listen-addr", f"{first.ip}:2377",
            "--default-addr-pool", SWARM_ADDR_POOL[0], "--default-addr-pool-mask-length", SWARM_ADDR_POOL[1],
            check=True,
        )  # fmt: skip

    def join(self, node: Node, via: Node, *, manager: bool = False) -> None:
        """``swarm join`` ``node`` through the manager ``via``, as a worker or a manager."""
        token = via.docker("swarm", "join-token", "-q", "manager" if manager else "worker", check=True).stdout.strip()
        node.docker(
            "swarm", "join", "--advertise-addr", node.ip, "--listen-addr", f"{node.ip}:2377",
            "--token", token, f"{via.ip}:2377",
            check=True, timeout=120,
        )  # fmt: skip

    def node_table(self, via: Node) -> dict[str, dict[str, str]] | None:
        """``docker node ls`` on ``via``: hostname → its row; None when ``via`` cannot answer.

        While the managers elect a leader, ``node ls`` may hang until it is over: that is
        "cannot answer (yet)" too, so that callers keep polling.
        """
        try:
            result = via.docker("node", "ls", "--format", "{{json .}}", timeout=20)
        except subprocess.TimeoutExpired:
            return None
        if result.returncode != 0:
            return None
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return {row["Hostname"]: row for row in rows}

    def leader(self, among: Iterable[Node] | None = None) -> Node | None:
        """The current leader, as told by the first reachable manager ``among`` (default: all nodes)."""
        for node in among if among is not None else self.nodes:
            table = self.node_table(node)
            if table is None:
                continue
            for hostname, row in table.items():
                if row.get("ManagerStatus") == "Leader" and row.get("Status") == "Ready":
                    return self[hostname]
        return None

    def wait_ready(self, via: Node, names: Sequence[str], timeout: float = 60) -> None:
        """Wait until ``via`` sees every node of ``names`` Ready."""

        def check() -> str | None:
            table = self.node_table(via)
            if table is None:
                return f"{via.name} cannot list nodes"
            missing = [name for name in names if table.get(name, {}).get("Status") != "Ready"]
            return f"not ready: {missing} in {table}" if missing else None

        settle(check, timeout=timeout, what=f"nodes {list(names)} to be Ready")

    # -- networks and services --

    def create_overlay(self, via: Node, name: str, *args: str) -> NetworkInfo:
        """An attachable overlay with the plugin; waits until the manager allocated its subnet."""
        via.docker(
            "network", "create", "-d", "overlay", "--attachable", "--ipam-driver", DRIVER, *args, name, check=True
        )

        def allocated() -> str | None:
            network = via.network(name)
            return None if network is not None and network.configs else f"{name}: {network and network.raw['IPAM']}"

        settle(allocated, timeout=30, what=f"the swarm to allocate overlay {name}")
        network = via.network(name)
        assert network is not None
        return network

    def overlay_served_everywhere(self, via: Node, network: str, service: str, size: int) -> NetworkInfo:
        """An overlay of a ``/size`` with a global-mode ``service`` on it, once a task runs on every node."""
        info = self.create_overlay(via, network, "--ipam-opt", f"size={size}")
        self.create_service(via, service, network, "--mode", "global")
        self.wait_tasks(via, service, network, nodes=[node.name for node in self.nodes])
        return info

    def create_service(self, via: Node, name: str, network: str, *args: str) -> None:
        """A service of sleeping busybox tasks on ``network`` (``args``: ``--mode global``, ``--replicas N``)."""
        via.docker(
            "service", "create", "--detach", "--no-resolve-image", "--name", name, "--network", network,
            "--stop-grace-period", "1s", *args, IMAGE, "sh", "-c", SLEEPER,
            check=True,
        )  # fmt: skip

    def tasks(self, via: Node, service: str, network: str) -> list[Task] | None:
        """The service's tasks meant to run, with their addresses on ``network``; None if ``via`` cannot say."""
        listed = via.docker("service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running", service)
        if listed.returncode != 0:
            return None
        ids = listed.stdout.split()
        if not ids:
            return []
        inspected = via.json("inspect", "--type", "task", *ids)
        table = self.node_table(via)
        if inspected is None or table is None:
            return None
        hostnames = {row["ID"]: hostname for hostname, row in table.items()}
        tasks = []
        for info in inspected:
            addresses = tuple(
                ipaddress.IPv4Interface(address)
                for attachment in info.get("NetworksAttachments") or []
                if attachment["Network"]["Spec"]["Name"] == network
                for address in attachment.get("Addresses") or []
            )
            tasks.append(
                Task(
                    id=info["ID"],
                    node=hostnames.get(info.get("NodeID", ""), info.get("NodeID", "?")),
                    state=info["Status"]["State"],
                    container=(info["Status"].get("ContainerStatus") or {}).get("ContainerID", ""),
                    addresses=addresses,
                )
            )
        return tasks

    def wait_tasks(
        self, via: Node, service: str, network: str, *, nodes: Sequence[str] | None = None, count: int | None = None,
        timeout: float = 90,
    ) -> list[Task]:  # fmt: skip
        """Wait until the service runs one task on each of ``nodes``, or ``count`` tasks; return them.

        A task counts once it is running, has its address and its container answers on its node.
        """
        found: list[list[Task]] = [[]]

        def check() -> str | None:
            tasks = self.tasks(via, service, network)
            if tasks is None:
                return f"{via.name} cannot list the tasks of {service}"
            running = [t for t in tasks if t.state == "running" and t.addresses and t.container]
            if nodes is not None and sorted(t.node for t in running) != sorted(nodes):
                return f"running on {sorted(t.node for t in running)}, want {sorted(nodes)}: {tasks}"
            if count is not None and len(running) != count:
                return f"{len(running)} running, want {count}: {tasks}"
            for task in running:
                if self[task.node].docker("exec", task.container, "true", timeout=20).returncode != 0:
                    return f"task {task.id} has no live container on {task.node} yet"
            found[0] = running
            return None

        settle(check, timeout=timeout, what=f"the tasks of {service}")
        return found[0]

    def service_vips(self, via: Node, service: str, network: NetworkInfo) -> list[ipaddress.IPv4Interface]:
        """The service's virtual IPs on ``network``."""
        found = via.json("service", "inspect", service)
        assert found, f"{via.name} does not know service {service}"
        return [
            ipaddress.IPv4Interface(vip["Addr"])
            for vip in found[0]["Endpoint"].get("VirtualIPs") or []
            if vip.get("NetworkID") == network.id
        ]

    def endpoints(self, network: str, nodes: Iterable[Node] | None = None) -> dict[str, ipaddress.IPv4Interface]:
        """Every node's endpoints on ``network``: ``node/endpoint`` → address."""
        found: dict[str, ipaddress.IPv4Interface] = {}
        for node in nodes if nodes is not None else self.nodes:
            found.update(node.endpoints(network))
        return found

    def claims_mismatch(self, via: Node, network: NetworkInfo, services: Sequence[str]) -> str | None:
        """How the store disagrees with the swarm about overlay ``network`` (None: it agrees).

        With every node up, the store must hold exactly one claimed subnet overlapping
        the network's, in the global space; the global pool exactly the gateway, the
        services' virtual IPs and every endpoint on every node; one node-local copy per
        node that has endpoints, holding exactly the gateway and that node's endpoints;
        and no two endpoints may share an address.
        """
        subnet = network.subnet
        gateway = network.gateway(subnet)
        snapshot = self.read_map()
        problems = []
        blocks = snapshot.overlapping(subnet)
        if [(block.subnet, block.label) for block in blocks] != [(subnet, "global")]:
            problems.append(f"claimed subnets overlapping {subnet}: {blocks}")
        per_node = {node.name: node.endpoints(network.name) for node in self.nodes if node.engine.process is not None}
        endpoints = [address.ip for found in per_node.values() for address in found.values()]
        if len(set(endpoints)) != len(endpoints):
            problems.append(f"endpoints share an address: {per_node}")
        vips = {vip.ip for service in services for vip in self.service_vips(via, service, network)}
        expected = {gateway, *vips, *endpoints}
        held = snapshot.held(subnet, "global")
        if held != expected:
            problems.append(f"global pool holds {_sorted(held)}, want {_sorted(expected)}")
        copies = {f"local@{name}" for name, found in per_node.items() if found}
        if snapshot.scopes(subnet) != {"global", *copies}:
            problems.append(f"pools of {subnet}: {sorted(snapshot.scopes(subnet))}, want global and {sorted(copies)}")
        for name, found in per_node.items():
            local = {gateway, *(address.ip for address in found.values())}
            copy = snapshot.held(subnet, f"local@{name}")
            if found and copy != local:
                problems.append(f"{name}'s copy holds {_sorted(copy)}, want {_sorted(local)}")
        if not problems:
            return None
        return "\n".join([*problems, f"endpoints: {per_node}", f"virtual IPs: {_sorted(vips)}", str(snapshot)])

    # -- emptying --

    def remove_network(self, via: Node, name: str, timeout: float = 60) -> None:
        """``docker network rm`` on ``via``, again until swarm lets go (its tasks take a moment to end)."""

        def removed() -> str | None:
            result = via.docker("network", "rm", name)
            return None if result.returncode == 0 or "not found" in result.stderr else result.stderr

        settle(removed, timeout=timeout, what=f"network rm {name} on {via.name}")

    def clear(self, via: Node) -> None:
        """Remove every service, container and network the tests made, on every running node."""
        services = via.docker("service", "ls", "-q").stdout.split()
        if services:
            via.docker("service", "rm", *services, check=True)
        live = [node for node in self.nodes if node.engine.process is not None]
        for node in live:
            containers = node.docker("ps", "-aq", "--filter", "is-task=false").stdout.split()
            if containers:
                node.docker("rm", "-f", *containers, check=True)
        for name in via.docker("network", "ls", "--filter", "scope=swarm", "--format", "{{.Name}}").stdout.split():
            if name != "ingress":
                self.remove_network(via, name)
        for node in live:
            names = node.docker("network", "ls", "--filter", "scope=local", "--format", "{{.Name}}").stdout.split()
            for name in names:
                if name not in ("bridge", "host", "none", "docker_gwbridge"):
                    self.remove_network(node, name)

    def destroy(self) -> None:
        """Stop every node (all at once: an engine with tasks takes seconds to stop), then remove the LAN."""
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                stopped = [pool.submit(node.destroy) for node in self.nodes]
            for future in stopped:
                future.result()
        finally:
            if self.lab is not None:
                self.lab.delete()


def _sorted(addresses: Iterable[Address]) -> str:
    return " ".join(str(address) for address in sorted(addresses, key=int)) or "-"
