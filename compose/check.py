"""The rig's check: networks created on every engine at once never overlap.

Talks to each engine's API over its Unix socket (standard library only), so it
runs in any image with Python 3.11. For every engine it creates networks of
mixed sizes with ``--ipam-driver mini``, all engines at the same time; then it
checks every subnet is inside the pool and no two overlap, that an engine
refuses a subnet another engine holds (naming that engine), and removes what it
made. Exits 0 when all holds, 1 otherwise.

    python3 check.py [--pool CIDR] [--driver NAME] SOCKET [SOCKET ...]
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

API = "/v1.41"
"""Engine API version: Docker 20.10 and every later engine speak it."""

SIZES = (28, 26, 29, 24, 30, 27)

RECOVERING = "is new or being rebuilt after a loss"
"""In the drivers' refusal of a new subnet while their shared map is new or being rebuilt: retry then."""
RECOVERY_WAIT = 60.0
"""How long a create is retried through that refusal (the window itself lasts seconds)."""


class EngineError(RuntimeError):
    """The engine answered with an error status."""


class Engine:
    """The Docker Engine API on a Unix socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path.rstrip("/").split("/")[-2] if path.count("/") > 1 else path

    def call(self, method: str, url: str, body: Any = None, timeout: float = 60) -> Any:
        """One API call; the decoded JSON answer, or EngineError with the engine's message."""
        connection = http.client.HTTPConnection("localhost", timeout=timeout)
        connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.sock.settimeout(timeout)
        try:
            connection.sock.connect(self.path)
            data = None if body is None else json.dumps(body).encode()
            connection.request(method, API + url, body=data, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        payload = json.loads(text) if is_json and text.strip() else text
        if response.status >= 400:
            message = payload.get("message", text) if isinstance(payload, dict) else text
            raise EngineError(f"{self.name}: {method} {url}: {response.status} {message.strip()}")
        return payload

    def wait(self, timeout: float = 120) -> None:
        """Wait until the engine answers ``/_ping``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", "/_ping", timeout=5)
                return
            except (OSError, EngineError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"FAIL: engine {self.path} did not answer in {timeout}s: {exc}") from None
                time.sleep(0.5)

    def create_network(self, name: str, driver: str, options: dict[str, str], subnet: str | None = None) -> Any:
        """Create a bridge network whose IPAM driver is ``driver``; its inspect data."""
        ipam: dict[str, Any] = {"Driver": driver, "Options": options}
        if subnet:
            ipam["Config"] = [{"Subnet": subnet}]
        created = self.call("POST", "/networks/create", {"Name": name, "CheckDuplicate": True, "IPAM": ipam})
        return self.call("GET", f"/networks/{created['Id']}")

    def remove_network(self, name: str) -> None:
        """Remove a network (it may already be gone)."""
        try:
            self.call("DELETE", f"/networks/{name}")
        except EngineError as exc:
            if " 404 " not in str(exc):
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sockets", nargs="+", metavar="SOCKET", help="engine API sockets")
    parser.add_argument("--pool", default="198.19.0.0/16", help="the drivers' parent range")
    parser.add_argument("--driver", default="mini", help="the IPAM driver's name on the engines")
    args = parser.parse_args(argv)
    pool = ipaddress.ip_network(args.pool)
    engines = [Engine(path) for path in args.sockets]
    for engine in engines:
        engine.wait()
        version = engine.call("GET", "/version")
        print(f"engine {engine.name}: Docker {version['Version']}, API socket {engine.path}", flush=True)

    jobs = [(engine, f"rig-{engine.name}-{i}", size) for engine in engines for i, size in enumerate(SIZES)]
    for engine, name, _ in jobs:  # leftovers of an interrupted run
        engine.remove_network(name)

    def create(job: tuple[Engine, str, int]) -> tuple[str, str, Any]:
        # The drivers may have just started on a new map, which refuses new subnets for a short
        # recovery window and says to retry: do, until the window is over; fail on anything else.
        engine, name, size = job
        deadline = time.monotonic() + RECOVERY_WAIT
        while True:
            try:
                return engine.name, name, engine.create_network(name, args.driver, {"size": str(size)})
            except EngineError as exc:
                if RECOVERING not in str(exc) or time.monotonic() > deadline:
                    return engine.name, name, exc
            time.sleep(0.2)

    failures: list[str] = []
    started = time.monotonic()
    with ThreadPoolExecutor(len(jobs)) as threads:  # every engine at once
        results = list(threads.map(create, jobs))
    elapsed = time.monotonic() - started
    subnets: list[tuple[str, str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for (engine_name, name, result), (_, _, size) in zip(results, jobs, strict=True):
        if isinstance(result, Exception):
            failures.append(f"{name}: {result}")
            continue
        (config,) = result["IPAM"]["Config"]
        subnet = ipaddress.ip_network(config["Subnet"])
        subnets.append((engine_name, name, subnet))
        print(f"  {engine_name:10} {name:18} {subnet!s:18} gateway {config.get('Gateway', '?')}")
        if subnet.prefixlen != size or not subnet.subnet_of(pool):  # type: ignore[arg-type]
            failures.append(f"{name}: got {subnet}, wanted a /{size} inside {pool}")
    print(f"{len(subnets)} networks created on {len(engines)} engines at once in {elapsed:.1f}s")
    for i, (engine_a, name_a, a) in enumerate(subnets):
        for engine_b, name_b, b in subnets[i + 1 :]:
            if a.overlaps(b):
                failures.append(f"OVERLAP: {name_a} ({engine_a}) {a} and {name_b} ({engine_b}) {b}")

    if len(engines) > 1 and subnets:
        holder, _, held = subnets[0]
        other = next(engine for engine in engines if engine.name != holder)
        try:
            other.create_network("rig-steal", args.driver, {}, subnet=str(held))
            failures.append(f"{other.name} was given {held}, which {holder} holds")
            other.remove_network("rig-steal")
        except EngineError as exc:
            print(f"{other.name} asking for {held} (held by {holder}) is refused: {exc}")
            if "overlaps" not in str(exc) or holder not in str(exc):
                failures.append(f"the refusal should say the subnet overlaps one held by {holder}: {exc}")

    for engine, name, _ in jobs:
        engine.remove_network(name)
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    print(f"OK: {len(subnets)} networks on {len(engines)} engines, no two overlap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
