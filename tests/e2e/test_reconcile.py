"""``mini-ipam reconcile`` against a real engine: a planted leak is found and fixed, live networks untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.driver_process import call
from tests.e2e.engines import Engine, Host

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def reconcile(host: Host, *flags: str) -> tuple[int, list[dict[str, Any]]]:
    command = [
        sys.executable, "-m", "mini_ipam", "reconcile", "--json",
        "--store", host.driver.store, "--socket", str(host.driver.socket), "--host-id", "h1",
        "--docker", f"unix://{host.engine.directory}/docker.sock", *flags,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_reconcile_finds_and_fixes_a_planted_leak(host: Host, engine: Engine) -> None:
    live = host.create_network("live", "--ipam-opt", "size=28")
    pool_id = f"local/{live.subnet}"
    host.start_containers(("r1", "live"), ("r2", "live"))
    r1, r2 = engine.address("r1").ip, engine.address("r2").ip
    sock = host.driver.socket
    # Plant the leaks the engine cannot see: a pool of a network that is gone, an address nobody uses,
    # and a lost claim (the store forgot r1's address while r1 still runs).
    orphan = call(sock, "IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "", "Options": {"size": "29"}})[1]
    stray = str(max(r1, r2) + 3)
    assert call(sock, "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": stray, "Options": None})[0] == 200
    assert call(sock, "IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": str(r1)})[0] == 200

    code, findings = reconcile(host)
    assert code == 1
    assert sorted((f["kind"], f["pool_id"], f["address"], f["action"]) for f in findings) == [
        ("leaked address", pool_id, stray, "none"),
        ("leaked pool", orphan["PoolID"], None, "none"),
        ("missing address", pool_id, str(r1), "none"),
    ]

    # What the engine uses is claimed again at once; fresh leaks wait for the grace period (10 minutes).
    code, findings = reconcile(host, "--apply")
    assert code == 1
    assert sorted((f["kind"], f["action"]) for f in findings) == [
        ("leaked address", "kept (younger than the grace period)"),
        ("leaked pool", "kept (younger than the grace period)"),
        ("missing address", "claimed"),
    ]

    code, findings = reconcile(host, "--apply", "--grace", "0s")
    assert code == 0
    assert sorted((f["kind"], f["action"]) for f in findings) == [
        ("leaked address", "released"),
        ("leaked pool", "released"),
    ]
    assert reconcile(host) == (0, [])

    # The live network never noticed, and its addresses stay taken.
    assert engine.ping("r1", r2) and engine.ping("r2", r1)
    r3 = engine.address(host.start_container("r3", "live")).ip
    assert r3 not in (r1, r2)
    assert engine.network("live").subnet == live.subnet
