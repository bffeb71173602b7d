"""``mini-ipam ls``, ``plan`` and ``reconcile``, and the heartbeat's twin detection, through the Sentinel and
Cluster URL forms, on real deployments (Sentinel on redis-server, Cluster on valkey-server).

``reconcile`` reads a stand-in engine: the Docker API's two GET routes it uses, served
on a Unix socket (the real engine's side is ``tests/e2e/test_reconcile.py``'s).
"""

from __future__ import annotations

import ipaddress
import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import redis

from mini_ipam.allocator import Allocator, PoolRequest, Settings
from mini_ipam.presence import HostPresence
from stores import from_url
from stores.redis import RedisStore
from tests.redis_deployments import SERVICE, ClusterSetup, Node, SentinelSetup
from tests.servers import REDIS, VALKEY

pytestmark = [pytest.mark.slow]

PARENT = "10.60.0.0/22"
net = ipaddress.ip_network


def mini_ipam(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mini_ipam", *args], capture_output=True, text=True, timeout=60)


class Deployed:
    """A store URL of one form, and the node that holds the map (to look at it behind the store's back)."""

    def __init__(self, url: str, holder: Node, prefix: str) -> None:
        self.url = url
        self.holder = holder
        self.prefix = prefix

    def map_keys(self) -> dict[str, Any]:
        """Every key of the map with its value as DUMP gives it: any write shows."""
        host, port = self.holder.address
        client = redis.Redis(host=host, port=port, socket_timeout=5)
        try:
            keys = sorted(client.keys(f"{{{self.prefix}}}:*"))
            return {key: client.dump(key) for key in keys if b":probe" not in key}
        finally:
            client.close()


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def deployed(request: pytest.FixtureRequest) -> Iterator[Deployed]:
    prefix = f"cmd-{request.param}"
    if request.param == "sentinel":
        REDIS.require(REDIS.sentinel)
        with SentinelSetup(REDIS) as setup:
            hosts = ",".join(f"{host}:{port}" for host, port in setup.sentinel_addresses)
            yield Deployed(f"redis+sentinel://{hosts}/{SERVICE}?prefix={prefix}", setup.primary, prefix)
    else:
        VALKEY.require(VALKEY.cli)
        with ClusterSetup(VALKEY) as cluster:
            owner = cluster.owner_of(cluster.slot_of(f"{{{prefix}}}:settings"))
            seed = next(node for node in cluster.cluster_nodes if node is not owner)
            yield Deployed(f"redis+cluster://{seed.name}?prefix={prefix}", owner, prefix)


@pytest.fixture(scope="module")
def populated(deployed: Deployed) -> Deployed:
    """Two /28s and a /26 in PARENT, by host-a; the first /28 has its gateway and one container."""
    store = from_url(deployed.url, member="host-a")
    allocator = Allocator(store, Settings(parents4=(net(PARENT),), parents6=(net("fd60::/48"),), host_id="host-a"))
    first = allocator.request_pool(PoolRequest(space="local", size=28))
    allocator.request_pool(PoolRequest(space="local", size=26))
    allocator.request_pool(PoolRequest(space="local", size=28))
    allocator.request_address(first.pool_id, gateway=True)
    allocator.request_address(first.pool_id)
    store.close()
    return deployed


def test_ls_and_plan_read_the_map_and_write_nothing(populated: Deployed) -> None:
    before = populated.map_keys()
    listed = mini_ipam("ls", "--store", populated.url, "--pool", PARENT, "--pool6", "fd60::/48", "--json")
    assert listed.returncode == 0, listed.stderr
    inventory = json.loads(listed.stdout)
    pools = {pool["pool_id"]: pool for pool in inventory["pools"]}
    assert set(pools) == {"local/10.60.0.0/28", "local/10.60.0.64/26", "local/10.60.0.16/28"}
    assert pools["local/10.60.0.0/28"]["addresses"] == ["10.60.0.1", "10.60.0.2"]
    planned = mini_ipam("plan", "--store", populated.url, "--pool", PARENT, "--size", "25", "--json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["fit"] == 7
    assert populated.map_keys() == before


def test_ls_names_the_deployment_without_its_password_when_it_is_away() -> None:
    result = mini_ipam("ls", "--store", "redis+sentinel://:s3cret@127.0.0.1:1/svc", "--store-timeout", "0.5")
    assert result.returncode != 0
    assert "redis+sentinel://127.0.0.1:1/svc" in result.stderr and "s3cret" not in result.stderr


class StandInEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The Docker API's ``GET /networks`` and ``GET /networks/<id>``, for one network of driver ``mini``."""

    daemon_threads = True

    def __init__(self, path: Path, network: dict[str, Any]) -> None:
        self.network = network
        super().__init__(str(path), _EngineHandler)


class _EngineHandler(BaseHTTPRequestHandler):
    server: StandInEngine

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        network = self.server.network
        if self.path == "/networks":
            body: Any = [{"Id": network["Id"], "Name": network["Name"], "IPAM": {"Driver": "mini"}}]
        elif self.path == f"/networks/{network['Id']}":
            body = network
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "engine"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Path]:
    network = {
        "Id": "n1",
        "Name": "net1",
        "IPAM": {"Driver": "mini", "Config": [{"Subnet": "10.60.0.0/28", "Gateway": "10.60.0.1"}]},
        "Containers": {"c1": {"IPv4Address": "10.60.0.2/28"}},
    }
    path = tmp_path / "docker.sock"
    server = StandInEngine(path, network)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_reconcile_finds_and_releases_what_the_engine_does_not_use(populated: Deployed, engine: Path) -> None:
    common = ["--store", populated.url, "--pool", PARENT, "--pool6", "fd60::/48", "--host-id", "host-a",
              "--docker", f"unix://{engine}", "--driver", "mini", "--grace", "0s", "--json"]  # fmt: skip
    found = mini_ipam("reconcile", *common)
    assert found.returncode == 1, found.stderr
    leaks = {(f["kind"], f["pool_id"]) for f in json.loads(found.stdout)}
    assert leaks == {("leaked pool", "local/10.60.0.64/26"), ("leaked pool", "local/10.60.0.16/28")}
    fixed = mini_ipam("reconcile", *common, "--apply")
    assert fixed.returncode == 0, fixed.stderr
    assert {f["action"] for f in json.loads(fixed.stdout)} == {"released"}
    store = from_url(populated.url, read_only=True)
    try:
        assert [str(pool.subnet) for pool in store.pools()] == ["10.60.0.0/28"]
    finally:
        store.close()


def test_two_live_drivers_with_one_host_id_are_told_through_the_url(deployed: Deployed) -> None:
    stores_opened = [RedisStore.from_url(deployed.url, timeout=2.0) for _ in range(2)]
    try:
        first, second = (HostPresence(store, "clone", ttl=10) for store in stores_opened)
        assert first.beat() is None and second.beat() is None
        assert first.beat() is None
        twin = second.beat()
        assert twin is not None and twin.instance == first.instance
        other = HostPresence(stores_opened[0], "someone-else", ttl=10)
        assert other.beat() is None and other.beat() is None
    finally:
        for store in stores_opened:
            store.close()
