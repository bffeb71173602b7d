"""--metrics-address: the operator's GET endpoints over TCP, never the plugin protocol, and off unless asked."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mini_ipam.unix_http import get_json
from tests.driver_process import DriverProcess, call
from tests.hardening.test_socket_safety import check_no_listener, inet_sockets
from tests.monitoring.prometheus import free_port
from tests.servers import unavailable

POOL_REQUEST = {"AddressSpace": "local", "Pool": "", "SubPool": "", "Options": {"size": "28"}, "V6": False}


@pytest.fixture
def running() -> Iterator[list[DriverProcess]]:
    drivers: list[DriverProcess] = []
    yield drivers
    for driver in drivers:
        driver.stop()


def start(running: list[DriverProcess], path: Path, *flags: str, env: dict[str, str] | None = None) -> DriverProcess:
    driver = DriverProcess(path, "--store", "memory://", "--pool", "10.97.0.0/24", *flags, env=env)
    running.append(driver)
    return driver.start()


def tcp_request(host: str, port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """One request over TCP: status, content type, body."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def tcp_listeners(driver: DriverProcess) -> list[str]:
    """The local addresses (hex, as in /proc/net/tcp*) the driver listens on over TCP."""
    assert driver.process is not None
    found = inet_sockets(driver.process.pid)
    return [line.split()[1] for table in ("tcp", "tcp6") for line in found.get(table, []) if line.split()[3] == "0A"]


def test_the_operator_endpoints_answer_over_tcp(tmp_path: Path, running: list[DriverProcess]) -> None:
    port = free_port()
    driver = start(running, tmp_path / "mini.sock", "--metrics-address", f"127.0.0.1:{port}")
    assert call(driver.socket_path, "IpamDriver.RequestPool", POOL_REQUEST)[0] == 200

    status, content_type, body = tcp_request("127.0.0.1", port, "GET", "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["store"] == "reachable"
    status, content_type, body = tcp_request("127.0.0.1", port, "GET", "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'mini_ipam_requests_total{method="RequestPool",result="ok"} 1.0' in text  # the plugin socket's traffic
    assert "mini_ipam_store_up 1.0" in text and "mini_ipam_twin_host 0.0" in text
    assert 'mini_ipam_parent_addresses{parent="10.97.0.0/24"} 256.0' in text
    status, _, body = tcp_request("127.0.0.1", port, "GET", "/inventory")
    assert status == 200 and [p["subnet"] for p in json.loads(body)["pools"]] == ["10.97.0.0/28"]
    # Only the exact listener asked for: one TCP socket, on 127.0.0.1:port.
    assert tcp_listeners(driver) == [f"0100007F:{port:04X}"]


PROTOCOL_CALLS: list[tuple[str, Any]] = [
    ("Plugin.Activate", None),
    ("IpamDriver.GetCapabilities", None),
    ("IpamDriver.GetDefaultAddressSpaces", None),
    ("IpamDriver.RequestPool", POOL_REQUEST),
    ("IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "10.97.0.0/25"}),
    ("IpamDriver.RequestAddress", {"PoolID": "local/10.97.0.0/28", "Address": ""}),
    ("IpamDriver.ReleaseAddress", {"PoolID": "local/10.97.0.0/28", "Address": "10.97.0.1"}),
    ("IpamDriver.ReleasePool", {"PoolID": "local/10.97.0.0/28"}),
    ("IpamDriver.NoSuchMethod", {}),
]


def test_no_plugin_route_exists_over_tcp_and_a_call_changes_nothing(
    tmp_path: Path, running: list[DriverProcess]
) -> None:
    port = free_port()
    driver = start(running, tmp_path / "mini.sock", "--metrics-address", f"127.0.0.1:{port}")
    # One pool, made the legitimate way, that the TCP calls below would release if they got through.
    assert call(driver.socket_path, "IpamDriver.RequestPool", POOL_REQUEST)[1]["PoolID"] == "local/10.97.0.0/28"
    assert (
        call(driver.socket_path, "IpamDriver.RequestAddress", {"PoolID": "local/10.97.0.0/28", "Address": ""})[0] == 200
    )
    _, before = get_json(str(driver.socket_path), "/inventory")
    metrics_before = tcp_request("127.0.0.1", port, "GET", "/metrics")[2].decode()

    for method, request in PROTOCOL_CALLS:
        for verb in ("POST", "GET"):
            status, content_type, body = tcp_request(
                "127.0.0.1", port, verb, f"/{method}", json.dumps(request).encode()
            )
            assert (status, content_type) == (404, "application/json"), (verb, method, status, body)
            assert "the plugin protocol is served on the plugin socket" in json.loads(body)["Err"]
    for path in ("/metrics", "/healthz", "/inventory"):
        assert tcp_request("127.0.0.1", port, "POST", path, b"{}")[0] == 405

    _, after = get_json(str(driver.socket_path), "/inventory")
    assert [(p["pool_id"], p["addresses"]) for p in after["pools"]] == [("local/10.97.0.0/28", ["10.97.0.1"])]
    timeless = [{k: v for k, v in pool.items() if k != "age_seconds"} for pool in before["pools"]]
    assert [{k: v for k, v in pool.items() if k != "age_seconds"} for pool in after["pools"]] == timeless
    requests = [line for line in tcp_request("127.0.0.1", port, "GET", "/metrics")[2].decode().splitlines()
                if line.startswith("mini_ipam_requests_total")]  # fmt: skip
    assert requests == [line for line in metrics_before.splitlines() if line.startswith("mini_ipam_requests_total")]
    log = driver.log.read_text()
    assert "NoSuchMethod" not in log and "Release" not in log and log.count("RequestPool pool=") == 1, log


def test_ipv6_loopback(tmp_path: Path, running: list[DriverProcess]) -> None:
    try:
        port = free_port("::1")
    except OSError as exc:
        unavailable(f"IPv6 loopback is not usable here: {exc}")
    driver = start(running, tmp_path / "mini.sock", "--metrics-address", f"[::1]:{port}")
    status, _, body = tcp_request("::1", port, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert tcp_listeners(driver) == [f"{'0' * 24}01000000:{port:04X}"]
    assert f"serving GET /metrics, /healthz and /inventory on http://[::1]:{port}" in driver.log.read_text()


def test_the_address_comes_from_the_environment_and_empty_means_off(
    tmp_path: Path, running: list[DriverProcess]
) -> None:
    port = free_port()
    driver = start(running, tmp_path / "env.sock", env={"MINI_IPAM_METRICS_ADDRESS": f"127.0.0.1:{port}"})
    assert tcp_request("127.0.0.1", port, "GET", "/healthz")[0] == 200
    off = start(running, tmp_path / "off.sock", env={"MINI_IPAM_METRICS_ADDRESS": ""})
    check_no_listener(off)
    default = start(running, tmp_path / "default.sock")
    check_no_listener(default)
    assert driver.process is not None and driver.process.poll() is None


def serve_refused(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mini_ipam", "serve", "--socket", str(tmp_path / "mini.sock"), "--store", "memory://",
         *flags],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_taken_port_is_one_sentence_and_leaves_no_socket(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_refused(tmp_path, "--metrics-address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert f" ERROR mini_ipam: mini-ipam serve: cannot listen on 127.0.0.1:{port}: the port is already in use" in line
    assert line.endswith(
        f"choose another --metrics-address, or stop what listens there (`ss -ltnp 'sport = :{port}'` shows it)"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mini.sock").exists()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "is not HOST:PORT"),
        (":19464", "is not HOST:PORT"),
        ("localhost:19464", "'localhost' is not an IP address"),
        ("::1:19464", "write an IPv6 address in brackets, as in [::1]:19464"),
        ("127.0.0.1:0", "'0' is not a TCP port from 1 to 65535"),
        ("127.0.0.1:65536", "is not a TCP port"),
        ("[::1]:http", "is not a TCP port"),
        ("192.0.2.1:19464", "cannot listen on 192.0.2.1:19464: that address is not one of this host's"),
    ],
)
def test_bad_addresses_are_one_clear_sentence(tmp_path: Path, address: str, message: str) -> None:
    for result in (
        serve_refused(tmp_path, "--metrics-address", address),
        serve_refused(tmp_path, env={"MINI_IPAM_METRICS_ADDRESS": address}),
    ):
        assert result.returncode in (1, 2)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "mini.sock").exists()


def test_sigterm_stops_both_listeners(tmp_path: Path) -> None:
    port = free_port()
    driver = DriverProcess(tmp_path / "mini.sock", "--store", "memory://", "--metrics-address", f"127.0.0.1:{port}")
    driver.start()
    assert tcp_request("127.0.0.1", port, "GET", "/healthz")[0] == 200
    # A scraper that keeps its connection open must not hold the driver up.
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        assert driver.signal(signal.SIGTERM) == 0
    finally:
        idle.close()
    assert not driver.socket_path.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert "stopping on SIGTERM" in driver.log.read_text()


def test_connections_held_open_on_tcp_do_not_lock_the_engine_out(tmp_path: Path, running: list[DriverProcess]) -> None:
    """More idle connections than the TCP listener accepts: the plugin socket answers as ever."""
    port = free_port()
    driver = start(running, tmp_path / "mini.sock", "--metrics-address", f"127.0.0.1:{port}")
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(48)]
    try:
        for connection in held:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        replies = [call(driver.socket_path, "IpamDriver.RequestPool", POOL_REQUEST, timeout=10) for _ in range(10)]
        assert [status for status, _ in replies] == [200] * 10
        assert len({reply["Pool"] for _, reply in replies}) == 10
        status, health = get_json(str(driver.socket_path), "/healthz")
        assert status == 200 and health["status"] == "ok"
    finally:
        for connection in held:
            connection.close()


def test_help_names_the_flag_and_its_variable() -> None:
    result = subprocess.run([sys.executable, "-m", "mini_ipam", "serve", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--metrics-address HOST:PORT" in text and "(never the plugin protocol)" in text
    assert "default and empty: no TCP listener" in text and "mini-ipam serve --metrics-address 0.0.0.0:19464" in text
