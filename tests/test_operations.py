"""Operating the driver: ls, plan, /healthz, /metrics, /inventory, logs, and the command line itself."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mini_ipam import protocol
from mini_ipam.allocator import Allocator, PoolRequest, Settings
from mini_ipam.unix_http import get_json
from stores import Store, from_url
from tests.driver_process import DriverProcess, call
from tests.servers import RedisServer, family_params

PARENT = "10.60.0.0/22"
net = ipaddress.ip_network


def mini_ipam(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mini_ipam", *args], capture_output=True, text=True, timeout=60)


def populate(store: Store, host: str = "host-a") -> None:
    """Two /28s and a /26 in PARENT; the first /28 has its gateway and one container."""
    allocator = Allocator(store, Settings(parents4=(net(PARENT),), parents6=(net("fd60::/48"),), host_id=host))
    first = allocator.request_pool(PoolRequest(space="local", size=28))
    allocator.request_pool(PoolRequest(space="local", size=26))
    allocator.request_pool(PoolRequest(space="local", size=28))
    allocator.request_address(first.pool_id, gateway=True)
    allocator.request_address(first.pool_id)


def check_inventory(inventory: dict[str, Any]) -> None:
    parent = next(p for p in inventory["parents"] if p["parent"] == PARENT)
    assert parent["used_addresses"] == 16 + 64 + 16
    assert parent["free_addresses"] == 1024 - 96
    assert parent["largest_free"] == "/23"
    assert parent["blocks_by_size"] == {"/26": 1, "/28": 2}
    pools = {p["pool_id"]: p for p in inventory["pools"]}
    assert set(pools) == {"local/10.60.0.0/28", "local/10.60.0.64/26", "local/10.60.0.16/28"}
    first = pools["local/10.60.0.0/28"]
    assert (first["gateway"], first["addresses"], first["owner"]) == ("10.60.0.1", ["10.60.0.1", "10.60.0.2"], "host-a")
    assert first["space"] == "local" and first["age_seconds"] >= 0


@pytest.fixture(params=["file", *family_params()])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/state.json"
    server: RedisServer = request.getfixturevalue("redis_servers").get(request.param)
    return f"{server.url}?prefix=ops{abs(hash(str(tmp_path)))}"


def test_ls_reads_the_store_directly(store_url: str) -> None:
    store = from_url(store_url)
    populate(store)
    store.close()
    result = mini_ipam("ls", "--store", store_url, "--pool", PARENT, "--pool6", "fd60::/48", "--json")
    assert result.returncode == 0, result.stderr
    check_inventory(json.loads(result.stdout))
    table = mini_ipam("ls", "--store", store_url, "--pool", PARENT).stdout
    assert "local/10.60.0.0/28" in table and "10.60.0.1" in table and "LARGEST FREE" in table


def test_ls_summary_and_filters(store_url: str) -> None:
    store = from_url(store_url)
    populate(store)
    populate(store, host="host-b")
    store.close()
    common = ("--store", store_url, "--pool", PARENT, "--pool6", "fd60::/48", "--json")
    summary = json.loads(mini_ipam("ls", *common, "--summary").stdout)
    assert summary["pools"] == []
    parent = next(p for p in summary["parents"] if p["parent"] == PARENT)
    assert parent["blocks_by_size"] == {"/26": 2, "/28": 4} and parent["addresses_by_size"] == {"/28": 4}
    assert parent["used_addresses"] == 2 * 96 and parent["largest_free"] == "/23"
    mine = json.loads(mini_ipam("ls", *common, "--owner", "host-b").stdout)["pools"]
    assert {p["owner"] for p in mine} == {"host-b"} and len(mine) == 3
    inside = json.loads(mini_ipam("ls", *common, "--parent", "10.60.0.0/26").stdout)["pools"]
    assert [p["subnet"] for p in inside] == ["10.60.0.0/28", "10.60.0.16/28", "10.60.0.32/28", "10.60.0.48/28"]
    first = json.loads(mini_ipam("ls", *common, "--limit", "2").stdout)["pools"]
    assert [p["subnet"] for p in first] == ["10.60.0.0/28", "10.60.0.16/28"]
    table = mini_ipam("ls", "--store", store_url, "--pool", PARENT, "--summary").stdout
    assert "LARGEST FREE" in table and "POOL" not in table


def test_ls_reads_a_file_store_while_its_driver_runs(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/state.json"
    driver = DriverProcess(tmp_path / "mini.sock", "--store", url, "--pool", PARENT).start()
    try:
        body = protocol.request_pool(options={"size": "27"})
        assert call(driver.socket_path, "IpamDriver.RequestPool", body)[0] == 200
        result = mini_ipam("ls", "--store", url, "--pool", PARENT, "--json")
        assert result.returncode == 0, result.stderr
        assert [p["subnet"] for p in json.loads(result.stdout)["pools"]] == ["10.60.0.0/27"]
        # The driver still owns its file and keeps working.
        assert call(driver.socket_path, "IpamDriver.RequestPool", body)[1]["Pool"] == "10.60.0.32/27"
    finally:
        driver.stop()


def test_ls_asks_the_driver_for_a_memory_store(tmp_path: Path) -> None:
    driver = DriverProcess(tmp_path / "mini.sock", "--store", "memory://", "--pool", PARENT).start()
    try:
        call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(pool="10.60.1.0/24"))
        result = mini_ipam("ls", "--store", "memory://", "--socket", str(driver.socket_path), "--json")
        assert result.returncode == 0, result.stderr
        assert [p["pool_id"] for p in json.loads(result.stdout)["pools"]] == ["local/10.60.1.0/24"]
    finally:
        driver.stop()
    result = mini_ipam("ls", "--store", "memory://", "--socket", str(driver.socket_path))
    assert result.returncode == 1
    assert result.stderr.strip().endswith("is not running (no socket there)")


def test_plan_counts_what_fits_and_shows_free_blocks(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/state.json"
    store = from_url(url)
    populate(store)
    store.close()
    result = mini_ipam("plan", "--store", url, "--pool", PARENT, "--size", "25", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    # free: 10.60.0.32/27, 10.60.0.128/25, 10.60.1.0/24, 10.60.2.0/23 -> 0 + 1 + 2 + 4 /25s
    assert plan["fit"] == 7
    assert plan["parents"][0]["free_blocks"] == "1x /23, 1x /24, 1x /25, 1x /27"
    assert mini_ipam("plan", "--store", url, "--pool", PARENT, "--size", "25", "--count", "7").returncode == 0
    too_many = mini_ipam("plan", "--store", url, "--pool", PARENT, "--size", "25", "--count", "8")
    assert too_many.returncode == 1
    assert "7 more /25 fit: 8 do NOT fit" in too_many.stdout


def test_healthz_inventory_and_metrics(tmp_path: Path) -> None:
    driver = DriverProcess(tmp_path / "mini.sock", "--store", "memory://", "--pool", PARENT).start()
    sock = str(driver.socket_path)
    try:
        status, health = get_json(sock, "/healthz")
        assert status == 200 and health["status"] == "ok" and health["store"] == "reachable"
        assert health["store_round_trip_ms"] >= 0
        pool = call(sock, "IpamDriver.RequestPool", protocol.request_pool(options={"size": "28"}))
        gateway = {"RequestAddressType": "com.docker.network.gateway"}
        call(sock, "IpamDriver.RequestAddress", protocol.request_address(pool[1]["PoolID"], "", gateway))
        assert call(sock, "IpamDriver.RequestPool", protocol.request_pool(pool="10.60.0.0/24"))[0] == 409
        assert call(sock, "IpamDriver.RequestPool", {"AddressSpace": "nowhere"})[0] == 400
        text = metrics_text(sock)
        assert 'mini_ipam_requests_total{method="RequestPool",result="ok"} 1.0' in text
        assert 'mini_ipam_requests_total{method="RequestPool",result="error"} 2.0' in text
        assert 'mini_ipam_errors_total{kind="Conflict"} 1.0' in text
        assert 'mini_ipam_errors_total{kind="InvalidRequest"} 1.0' in text
        assert 'mini_ipam_request_seconds_count{method="RequestAddress"} 1.0' in text
        assert 'mini_ipam_store_seconds_count{operation="open_pool"} 2.0' in text
        assert f'mini_ipam_pools{{parent="{PARENT}",prefixlen="28"}} 1.0' in text
        assert f'mini_ipam_addresses{{parent="{PARENT}",prefixlen="28"}} 1.0' in text
        assert f'mini_ipam_free_addresses{{parent="{PARENT}"}} 1008.0' in text
        assert f'mini_ipam_largest_free_prefixlen{{parent="{PARENT}"}} 23.0' in text
        status, inventory = get_json(sock, "/inventory")
        assert status == 200 and inventory["pools"][0]["gateway"] == "10.60.0.1"
        status, summary = get_json(sock, "/inventory?pools=0")
        assert status == 200 and summary["pools"] == [] and summary["parents"][0]["addresses_by_size"] == {"/28": 1}
        status, none = get_json(sock, "/inventory?parent=10.60.2.0/24")
        assert status == 200 and none["pools"] == []
        for bad in ("limit=0", "pools=yes", "parent=10.60.0.1/24", "colour=red"):
            status, refused = get_json(sock, f"/inventory?{bad}")
            assert status == 400 and "bad query" in refused["Err"], bad
    finally:
        driver.stop()


def metrics_text(sock: str) -> str:
    from mini_ipam.unix_http import UnixHTTPConnection

    connection = UnixHTTPConnection(sock)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        return response.read().decode()
    finally:
        connection.close()


@pytest.mark.redis
def test_healthz_is_503_while_the_store_is_away(tmp_path: Path) -> None:
    # A server that keeps every acknowledged write (else /healthz warns), and no recovery window to wait out.
    server = RedisServer(tmp_path, options=("--appendonly", "yes", "--appendfsync", "always"))
    driver = DriverProcess(
        tmp_path / "mini.sock", "--store", server.url, "--store-timeout", "1", "--recovery-window", "0"
    ).start()
    try:
        status, health = get_json(str(driver.socket_path), "/healthz")
        assert status == 503 and health["store"] == "unreachable" and "redis" in health["error"]
        server.start()
        status, health = get_json(str(driver.socket_path), "/healthz")
        assert status == 200 and health["status"] == "ok"
    finally:
        driver.stop()
        server.stop()


def test_json_logs_have_one_object_per_request(tmp_path: Path) -> None:
    driver = DriverProcess(tmp_path / "mini.sock", "--store", "memory://", "--log-format", "json").start()
    try:
        call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(pool="10.9.0.0/24"))
        call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(pool="10.9.0.0/25"))
    finally:
        driver.stop()
    entries = [json.loads(line) for line in driver.log.read_text().splitlines()]
    requests = [e for e in entries if e.get("method") == "RequestPool"]
    assert [(e["pool"], e["status"]) for e in requests] == [("local/10.9.0.0/24", 200), ("10.9.0.0/25", 409)]
    assert "overlaps 10.9.0.0/24" in requests[1]["error"]
    assert all(e["duration_ms"] >= 0 and e["level"] == "info" for e in requests)


def test_text_logs_have_one_line_per_request(tmp_path: Path) -> None:
    driver = DriverProcess(tmp_path / "mini.sock", "--store", "memory://").start()
    try:
        call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(pool="10.9.0.0/24"))
    finally:
        driver.stop()
    lines = [line for line in driver.log.read_text().splitlines() if "RequestPool" in line]
    assert len(lines) == 1
    assert "RequestPool pool=local/10.9.0.0/24 ok" in lines[0] and lines[0].endswith("ms")


@pytest.mark.parametrize("level", ["info", "debug"])
def test_granted_address_requests_are_logged_at_debug_only(tmp_path: Path, level: str) -> None:
    """Level info keeps a line per network change and per refusal, not one per container."""
    driver = DriverProcess(tmp_path / "mini.sock", "--store", "memory://", "--log-level", level).start()
    try:
        pool = call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(pool="10.9.0.0/24"))
        pool_id = pool[1]["PoolID"]
        assert call(driver.socket_path, "IpamDriver.RequestAddress", protocol.request_address(pool_id, ""))[0] == 200
        refused = protocol.request_address("local/10.8.0.0/24")
        assert call(driver.socket_path, "IpamDriver.RequestAddress", refused)[0] == 400  # PoolNotFound
    finally:
        driver.stop()
    lines = driver.log.read_text().splitlines()
    granted = [line for line in lines if f"RequestAddress pool={pool_id} ok" in line]
    assert len(granted) == (1 if level == "debug" else 0), lines
    assert all(" DEBUG " in line for line in granted)
    assert sum(f"RequestPool pool={pool_id} ok" in line and " INFO " in line for line in lines) == 1, lines
    assert sum("RequestAddress pool=local/10.8.0.0/24 400" in line and " INFO " in line for line in lines) == 1, lines


@pytest.mark.parametrize("command", ["serve", "ls", "plan", "reconcile"])
def test_every_command_has_help_with_examples(command: str) -> None:
    result = mini_ipam(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and f"mini-ipam {command}" in result.stdout
    assert "MINI_IPAM_" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ls", "--store", "file:///nonexistent-dir/x.json?bad=1"], "flag --store: 'file:///nonexistent-dir/x.json"),
        (["ls", "--store", "file:///nonexistent-dir/x.json"], "there is no state at /nonexistent-dir/x.json"),
        (["plan", "--size", "31", "--store", "memory://", "--socket", "/nonexistent.sock"], "/31 is smaller"),
        (
            ["reconcile", "--store", "memory://", "--socket", "/nonexistent.sock", "--docker", "unix:///nonexistent"],
            "/nonexistent",
        ),
        (["reconcile", "--docker", "tcp://1.2.3.4:2375", "--store", "file:///tmp/x.json"], "must be unix:///"),
        (["ls", "--store", "redis://user:s3cret@127.0.0.1:1/0", "--store-timeout", "0.5"], "cannot read the store"),
    ],
)
def test_command_line_errors_are_one_sentence(args: list[str], message: str) -> None:
    result = mini_ipam(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "s3cret" not in result.stderr


def test_a_listing_that_fails_midway_ends_in_an_error_not_a_short_list() -> None:
    from mini_ipam.inventory import PoolView, inventory_json
    from stores import StoreUnavailable

    def pools() -> Any:
        yield PoolView("local/10.60.0.0/28", "10.60.0.0/28", "local", "host-a", 0.0, None, ())
        raise StoreUnavailable("redis at unix:///x did not answer within 1s")

    body = json.loads("".join(inventory_json([], pools(), 0.0)))
    assert [p["subnet"] for p in body["pools"]] == ["10.60.0.0/28"]
    assert body["error"] == "the listing stopped early: redis at unix:///x did not answer within 1s"


def test_ls_and_plan_read_the_running_drivers_map_and_say_when_the_shell_differs(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/state.json"
    driver = DriverProcess(tmp_path / "mini.sock", "--store", url, "--pool", PARENT).start()
    sock = str(driver.socket_path)
    try:
        assert call(sock, "IpamDriver.RequestPool", protocol.request_pool(options={"size": "26"}))[0] == 200
        status, settings = get_json(sock, "/settings")
        assert status == 200 and settings["store"] == url and settings["pool"] == [PARENT]
        # The shell names neither store nor parents (as an admin's shell under systemd): the driver's are used.
        followed = mini_ipam("ls", "--socket", sock, "--json")
        assert followed.returncode == 0, followed.stderr
        assert [p["subnet"] for p in json.loads(followed.stdout)["pools"]] == ["10.60.0.0/26"]
        assert f"using the driver on {sock}'s store {url}" in followed.stderr
        assert f"using the driver on {sock}'s --pool {PARENT}" in followed.stderr
        plan = mini_ipam("plan", "--socket", sock, "--size", "26", "--json")
        assert json.loads(plan.stdout)["fit"] == 15, plan.stderr
        # An explicit setting wins, and the note says that the driver's differs.
        other = mini_ipam("ls", "--socket", sock, "--pool", "10.61.0.0/24", "--json")
        assert other.returncode == 0, other.stderr
        assert f"the driver on {sock} uses --pool {PARENT}; this uses 10.61.0.0/24 (flag --pool)" in other.stderr
        assert [p["parent"] for p in json.loads(other.stdout)["parents"]][0] == "10.61.0.0/24"
    finally:
        driver.stop()
    alone = mini_ipam("ls", "--socket", sock, "--store", url, "--pool", PARENT, "--json")
    assert alone.returncode == 0 and "note:" not in alone.stderr  # no driver there: nothing to follow
