"""A real ``mini-ipam serve`` process on a real Unix socket: lifecycle, socket safety, crash safety."""

from __future__ import annotations

import grp
import http.client
import ipaddress
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mini_ipam import protocol
from stores.file import FileStore
from tests.driver_process import DriverProcess, call
from tests.helpers import addresses_of
from tests.servers import wait_until


def serve(tmp_path: Path, *flags: str) -> DriverProcess:
    return DriverProcess(tmp_path / "mini.sock", "--store", f"file://{tmp_path}/state.json", *flags).start()


def test_a_network_lifecycle_over_the_socket(tmp_path: Path) -> None:
    driver = serve(tmp_path, "--pool", "10.66.0.0/16", "--host-id", "h1")
    try:
        mode = stat.S_IMODE(os.stat(driver.socket_path).st_mode)
        assert mode == 0o660
        assert call(driver.socket_path, "IpamDriver.GetCapabilities")[1]["RequiresRequestReplay"] is False
        body = protocol.request_pool(options={"size": "29"})
        status, pool = call(driver.socket_path, "IpamDriver.RequestPool", body)
        assert (status, pool["Pool"]) == (200, "10.66.0.0/29")
        gateway = {
            "PoolID": pool["PoolID"],
            "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"},
        }
        assert call(driver.socket_path, "IpamDriver.RequestAddress", gateway)[1]["Address"] == "10.66.0.1/29"
        # The engine retries a dropped call with an empty body: that must be a clean refusal.
        status, reply = call(driver.socket_path, "IpamDriver.RequestPool")
        assert (status, reply) == (400, {"Err": "AddressSpace is required"})
    finally:
        assert driver.signal(signal.SIGTERM) == 0
    assert not driver.socket_path.exists()
    assert "RequestPool pool=local/10.66.0.0/29 ok" in driver.log.read_text()


def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    driver = serve(tmp_path)
    assert driver.signal(signal.SIGINT) == 0
    assert not driver.socket_path.exists()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "mini.sock"))
    stale.close()  # the file stays behind, as after a crash
    driver = serve(tmp_path)
    assert call(driver.socket_path, "Plugin.Activate")[0] == 200
    driver.stop()


@pytest.mark.parametrize("kind", ["file", "symlink", "live socket"])
def test_refuses_to_replace_what_is_not_a_stale_socket(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "mini.sock"
    keep: list[DriverProcess] = []
    if kind == "file":
        path.write_text("precious")
    elif kind == "symlink":
        (tmp_path / "target").write_text("precious")
        path.symlink_to(tmp_path / "target")
    else:
        keep.append(DriverProcess(path, "--store", "memory://").start())
    result = subprocess.run(
        [sys.executable, "-m", "mini_ipam", "serve", "--socket", str(path), "--store", "memory://"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    expected = {"file": "is not a socket", "symlink": "is a symbolic link", "live socket": "in use by a running"}
    assert expected[kind] in result.stderr
    assert "Traceback" not in result.stderr
    if kind != "live socket":
        assert (tmp_path / ("mini.sock" if kind == "file" else "target")).read_text() == "precious"
    for driver in keep:
        assert call(driver.socket_path, "Plugin.Activate")[0] == 200
        driver.stop()


def test_a_corrupt_state_file_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{broken")
    result = subprocess.run(
        [sys.executable, "-m", "mini_ipam", "serve", "--socket", str(tmp_path / "mini.sock"),
         "--store", f"file://{tmp_path}/state.json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert " ERROR mini_ipam: mini-ipam serve: " in line
    assert f"state file {tmp_path}/state.json is not valid JSON at line 1 column 2" in line
    assert f"move {tmp_path}/state.json and its journals ({tmp_path}/state.json.*.log) aside" in line
    assert "run `mini-ipam reconcile --apply`" in line
    assert (tmp_path / "state.json").read_text() == "{broken"
    assert not (tmp_path / "mini.sock").exists()


def test_flags_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "MINI_IPAM_STORE": "memory://",
        "MINI_IPAM_POOL": "10.71.0.0/24,10.72.0.0/24",
        "MINI_IPAM_DEFAULT_SIZE": "26",
    }
    driver = DriverProcess(tmp_path / "env.sock", env=env).start()
    try:
        body = protocol.request_pool()
        pools = [call(driver.socket_path, "IpamDriver.RequestPool", body)[1]["Pool"] for _ in range(5)]
        assert pools == ["10.71.0.0/26", "10.71.0.64/26", "10.71.0.128/26", "10.71.0.192/26", "10.72.0.0/26"]
    finally:
        driver.stop()


def test_help_and_version() -> None:
    help_text = subprocess.run([sys.executable, "-m", "mini_ipam", "serve", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0
    for flag in ("--socket", "--store", "--pool", "--default-size", "--pool6", "--default-size6", "--host-id"):
        assert flag in help_text.stdout
    assert "docker network create --ipam-driver mini --ipam-opt size=28" in help_text.stdout
    for args in (["--version"], ["serve", "--version"]):
        version = subprocess.run([sys.executable, "-m", "mini_ipam", *args], capture_output=True, text=True)
        assert version.returncode == 0 and version.stdout.startswith("mini-ipam "), version.stderr


@dataclass
class Ledger:
    """What clients were told: acknowledged pools and addresses, and calls cut off by the kill."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pools: dict[str, set[str]] = field(default_factory=dict)  # PoolID -> acknowledged addresses
    cut_off: int = 0  # pool requests and releases that got no answer: they may or may not have landed
    answered: int = 0


def client_loop(socket_path: Path, ledger: Ledger, seed: int) -> None:
    """Allocate and release at random until the driver disappears."""
    rng = random.Random(seed)
    mine: list[str] = []
    while True:
        try:
            if mine and rng.random() < 0.3:
                pool_id = mine.pop(rng.randrange(len(mine)))
                with ledger.lock:
                    # Forget it before asking: once released, another client may get it at once.
                    del ledger.pools[pool_id]
                    ledger.cut_off += 1
                status, _ = call(socket_path, "IpamDriver.ReleasePool", protocol.release_pool(pool_id), timeout=5)
                assert status == 200
                with ledger.lock:
                    ledger.cut_off -= 1
            elif mine and rng.random() < 0.5:
                pool_id = rng.choice(mine)
                status, reply = call(socket_path, "IpamDriver.RequestAddress", protocol.request_address(pool_id, ""), 5)
                if status == 200:
                    with ledger.lock:
                        ledger.pools[pool_id].add(reply["Address"].split("/")[0])
            else:
                body = protocol.request_pool(options={"size": str(rng.randint(26, 30))})
                with ledger.lock:
                    ledger.cut_off += 1
                status, reply = call(socket_path, "IpamDriver.RequestPool", body, timeout=5)
                assert status == 200, reply
                with ledger.lock:
                    ledger.cut_off -= 1
                    assert reply["PoolID"] not in ledger.pools, f"{reply['PoolID']} handed out twice"
                    ledger.pools[reply["PoolID"]] = set()
                mine.append(reply["PoolID"])
            with ledger.lock:
                ledger.answered += 1
        except (OSError, http.client.HTTPException, ValueError):
            return  # the driver was killed mid-call


@pytest.mark.slow
def test_sigkill_mid_traffic_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    flags = ("--store", f"file://{state}", "--pool", "10.80.0.0/16", "--host-id", "h", "--log-level", "warning")
    ledger = Ledger()
    for round_number in range(5):
        driver = DriverProcess(tmp_path / "mini.sock", *flags).start()
        clients = [
            threading.Thread(target=client_loop, args=(driver.socket_path, ledger, round_number * 10 + i))
            for i in range(4)
        ]
        target = ledger.answered + 150
        for thread in clients:
            thread.start()
        wait_until(lambda: ledger.answered >= target, timeout=60, what="client traffic")  # noqa: B023
        driver.kill()
        for thread in clients:
            thread.join(timeout=30)

    store = FileStore(state)
    try:
        held = {f"local/{pool.subnet}": pool for pool in store.pools()}
        for pool_id, addresses in ledger.pools.items():
            assert pool_id in held, f"acknowledged pool {pool_id} was lost"
            stored = {str(a) for a in addresses_of(store, held[pool_id].subnet, held[pool_id].scope)}
            assert addresses <= stored, f"acknowledged addresses of {pool_id} were lost"
        extra = set(held) - set(ledger.pools)
        assert len(extra) <= ledger.cut_off
        subnets = sorted(pool.subnet for pool in store.pools())
        for a, b in zip(subnets, subnets[1:], strict=False):
            assert not a.overlaps(b)
        assert len(ledger.pools) > 10
    finally:
        store.close()
    # And a restarted driver never hands out anything that is held.
    driver = DriverProcess(tmp_path / "mini.sock", *flags).start()
    try:
        body = protocol.request_pool(options={"size": "26"})
        fresh = ipaddress.ip_network(call(driver.socket_path, "IpamDriver.RequestPool", body)[1]["Pool"])
        assert not any(fresh.overlaps(s) for s in subnets)
    finally:
        driver.stop()


def test_the_socket_group_is_configurable(tmp_path: Path) -> None:
    driver = serve(tmp_path, "--socket-group", "daemon")
    try:
        info = os.stat(driver.socket_path)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == grp.getgrnam("daemon").gr_gid
    finally:
        driver.stop()
