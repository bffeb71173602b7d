"""``mini-ipam ls`` names the Docker network of each pool when the engine on ``--docker`` answers.

The engine here is a stand-in for its API (``GET /networks``, ``GET /networks/<id>``) on a
Unix socket, answering with bodies shaped as a real engine's; the swarm tier checks the
names against real engines. Without an engine, ``ls`` lists the same pools with no names.
"""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any

import pytest

from mini_ipam.allocator import Allocator, PoolRequest, Settings
from mini_ipam.network_names import name_of, names_by_pool
from stores import from_url

PARENT = "10.61.0.0/22"


def network(name: str, driver: str, configs: list[dict[str, str]], containers: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """A network as ``GET /networks/<id>`` shows it."""
    return {
        "Name": name,
        "Id": f"id-{name}",
        "IPAM": {"Driver": driver, "Options": {}, "Config": configs},
        "Containers": {f"c{i}": {"Name": f"c{i}", "IPv4Address": a} for i, a in enumerate(containers)},
    }


class StandInEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers the two GETs that ``ls`` makes with ``networks``."""

    daemon_threads = True

    def __init__(self, path: Path, networks: list[dict[str, Any]]) -> None:
        self.networks = {n["Id"]: n for n in networks}
        self.paths: list[str] = []
        super().__init__(str(path), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: StandInEngine

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        self.server.paths.append(self.path)
        if self.path == "/networks":
            body: object = [{"Id": k, "Name": n["Name"], "IPAM": n["IPAM"]} for k, n in self.server.networks.items()]
        elif self.path.removeprefix("/networks/") in self.server.networks:
            body = self.server.networks[self.path.removeprefix("/networks/")]
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # a Unix socket has no client address to log


@pytest.fixture
def engine_at(tmp_path: Path) -> Iterator[Any]:
    started: list[StandInEngine] = []

    def start(networks: list[dict[str, Any]]) -> StandInEngine:
        server = StandInEngine(tmp_path / f"docker{len(started)}.sock", networks)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def state(tmp_path: Path) -> str:
    """A file store holding a /28 with a gateway and a container, a /26 with an ip-range, and a /27."""
    url = f"file://{tmp_path}/state.json"
    store = from_url(url)
    allocator = Allocator(store, Settings(parents4=(IPv4Network(PARENT),), host_id="host-a"))
    first = allocator.request_pool(PoolRequest(space="local", size=28))  # 10.61.0.0/28
    allocator.request_address(first.pool_id, gateway=True)
    allocator.request_address(first.pool_id)
    allocator.request_pool(
        PoolRequest(space="local", subnet=ip_network("10.61.1.0/26"), ip_range=ip_network("10.61.1.32/27"))
    )
    allocator.request_pool(PoolRequest(space="local", size=27))  # 10.61.0.32/27: the engine shows it as 0.0.0.0/27
    store.close()
    return url


def ls(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mini_ipam", "ls", "--store", url, "--pool", PARENT, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


ENGINE_NETWORKS = [
    network("web", "mini", [{"Subnet": "10.61.0.0/28", "Gateway": "10.61.0.1"}], ["10.61.0.2/28"]),
    network("ranged", "mini:latest", [{"Subnet": "10.61.1.0/26", "IPRange": "10.61.1.32/27"}]),
    # compose v2's way to ask for a size: inspect shows the user's text; the endpoint shows the subnet
    network("sized", "mini", [{"Subnet": "0.0.0.0/27"}], ["10.61.0.34/27"]),
    # another driver's network with an overlapping subnet is not ours
    network("other", "default", [{"Subnet": "10.61.0.32/27"}]),
]


def test_ls_names_each_pool_from_the_engine(state: str, engine_at: Any, tmp_path: Path) -> None:
    engine = engine_at(ENGINE_NETWORKS)
    result = ls(state, "--docker", f"unix://{tmp_path}/docker0.sock", "--json")
    assert result.returncode == 0, result.stderr
    names = {p["pool_id"]: p["network"] for p in json.loads(result.stdout)["pools"]}
    assert names == {"local/10.61.0.0/28": "web", "local/10.61.1.0/26/10.61.1.32/27": "ranged",
                     "local/10.61.0.32/27": "sized"}  # fmt: skip
    assert engine.paths[0] == "/networks" and "/networks/id-other" not in engine.paths

    table = ls(state, "--docker", f"unix://{tmp_path}/docker0.sock").stdout
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines() if line.startswith("local/")}
    assert rows == {"local/10.61.0.0/28": "web", "local/10.61.1.0/26/10.61.1.32/27": "ranged",
                    "local/10.61.0.32/27": "sized"}  # fmt: skip
    assert "POOL" in table and " NETWORK " in table


def test_the_driver_name_picks_the_networks(state: str, engine_at: Any, tmp_path: Path) -> None:
    engine_at(ENGINE_NETWORKS)
    result = ls(state, "--docker", f"unix://{tmp_path}/docker0.sock", "--driver", "default", "--json")
    names = {p["pool_id"]: p["network"] for p in json.loads(result.stdout)["pools"]}
    assert names["local/10.61.0.32/27"] == "other" and names["local/10.61.0.0/28"] is None


def test_without_an_engine_ls_shows_no_names_and_does_not_fail(state: str, tmp_path: Path) -> None:
    result = ls(state, "--docker", f"unix://{tmp_path}/no-engine.sock", "--json")
    assert result.returncode == 0, result.stderr
    pools = json.loads(result.stdout)["pools"]
    assert len(pools) == 3 and all(p["network"] is None for p in pools), pools
    table = ls(state, "--docker", f"unix://{tmp_path}/no-engine.sock")
    rows = [line.split()[:2] for line in table.stdout.splitlines() if line.startswith("local/")]
    assert table.returncode == 0 and len(rows) == 3 and all(name == "-" for _, name in rows), table.stdout


def test_an_engine_that_answers_badly_means_no_names(engine_at: Any, tmp_path: Path) -> None:
    engine = engine_at([])
    engine.networks = {}  # /networks answers [], and nothing else exists
    assert names_by_pool(f"unix://{tmp_path}/docker0.sock", "mini") == {}
    assert names_by_pool("tcp://somewhere:2375", "mini") == {}  # not an engine URL ls can read


def test_a_size_only_network_without_endpoints_or_gateway_gets_no_name(engine_at: Any, tmp_path: Path) -> None:
    engine_at([network("empty", "mini", [{"Subnet": "0.0.0.0/27"}]),
               network("gw", "mini", [{"Subnet": "0.0.0.0/28", "Gateway": "10.61.2.17"}])])  # fmt: skip
    names = names_by_pool(f"unix://{tmp_path}/docker0.sock", "mini")
    assert names == {(ip_network("10.61.2.16/28"), None): "gw"}
    assert name_of("local/10.61.2.16/28", names) == "gw" and name_of("global/10.61.2.16/28", names) == "gw"
    assert name_of("local/10.61.2.32/27", names) is None
