"""Benchmark 5, end to end: ``docker network create`` + ``docker network rm`` through mini-ipam vs the
engine's built-in default IPAM, on one engine, interleaved in one run.

The engine is a dockerd of our own (``--storage-driver=vfs``, data root, exec root, pid file and socket
in a temp directory), with ``--bridge=none --iptables=false`` so as not to disturb another engine in
the root namespaces.
The driver is ``mini-ipam serve`` with a file store (the default kind) on
``/run/docker/plugins/mini-bench-<pid>.sock`` as the engine sees it.

Variants, each one network created and removed:

* ``cli/mini``     ``docker network create --ipam-driver mini-bench-<pid> NET`` then ``docker network rm NET``
* ``cli/default``  ``docker network create NET`` then ``docker network rm NET`` (default IPAM, default pools)
* ``api/mini``, ``api/default``  the same two requests straight to the Engine API over its socket
  (``POST /networks/create``, ``DELETE /networks/ID``), without the CLI's process start-up.

Target: cli/mini / cli/default <= 1.10 (the API ratio is the stricter view of the same thing).
Everything made is removed at the end: networks, the engine and its children (by pid), the driver,
the socket, the namespace.

    python bench/end_to_end.py [--rounds 15] [--per-round 3]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from support.client import UnixClient
from support.processes import driver_process, temp_directory
from support.report import Report
from support.stats import describe, flatten, interleave, median

from mini_ipam.testing import stop_process, wait_until

TARGET = 1.10
PARENT = "10.123.0.0/16"


class Rig:
    """One engine and the driver it sees, however they were started."""

    def __init__(self, docker_socket: Path, driver_name: str, env: dict[str, str], how: str) -> None:
        self.docker_socket = docker_socket
        self.driver_name = driver_name
        self.env = env
        self.how = how

    def docker(self, *args: str) -> str:
        """Run the docker CLI against this engine only; its stdout."""
        result = subprocess.run(
            ["docker", "-H", f"unix://{self.docker_socket}", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout


@contextlib.contextmanager
def engine_with_driver(directory: Path) -> Iterator[Rig]:
    """An engine of our own and the driver as its legacy plugin; both removed afterwards."""
    prefix = f"mini-bench-{os.getpid()}"
    store = f"file://{directory}/state.json"
    args = ["--pool", PARENT, "--host-id", "bench", "--log-level", "warning"]
    socket_path = directory / "docker.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(directory / "cli")
    (directory / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(directory / "key.json")}))
    plugin = Path("/run/docker/plugins") / f"{prefix}.sock"
    driver = driver_process(plugin, store, *args, log=directory / "driver.log")
    with (directory / "dockerd.log").open("ab") as log:
        dockerd = subprocess.Popen(
            [
                "dockerd",
                f"--config-file={directory}/daemon.json",
                "--storage-driver=vfs",
                f"--data-root={directory}/root",
                f"--exec-root={directory}/exec",
                f"--pidfile={directory}/dockerd.pid",
                "-H",
                f"unix://{socket_path}",
                # Neither docker0 nor iptables: another engine in these namespaces may own them.
                "--bridge=none",
                "--iptables=false",
                "--shutdown-timeout=1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    rig = Rig(socket_path, prefix, env, "plain dockerd (root namespaces, --bridge=none --iptables=false)")
    try:
        wait_until(lambda: _answers(rig), timeout=60, what="dockerd", interval=0.1)
        driver.start()
        yield rig
    finally:
        with contextlib.suppress(Exception):
            networks = rig.docker("network", "ls", "-q", "--filter", "type=custom").split()
            if networks:
                rig.docker("network", "rm", *networks)
        stop_process(dockerd, timeout=30)
        driver.stop()


def _answers(rig: Rig) -> bool:
    try:
        rig.docker("version", "--format", "{{.Server.Version}}")
        return True
    except RuntimeError:
        return False


def cli_batch(rig: Rig, mini: bool, per_round: int, names: Iterator[int]) -> Callable[[], list[float]]:
    """Create and remove ``per_round`` networks with the CLI; seconds per create + rm."""
    ipam = ["--ipam-driver", rig.driver_name] if mini else []

    def run() -> list[float]:
        samples = []
        for _ in range(per_round):
            name = f"bench{next(names)}"
            started = time.perf_counter()
            rig.docker("network", "create", *ipam, name)
            rig.docker("network", "rm", name)
            samples.append(time.perf_counter() - started)
        return samples

    return run


def api_batch(rig: Rig, mini: bool, per_round: int, names: Iterator[int]) -> Callable[[], list[float]]:
    """Create and remove ``per_round`` networks through the Engine API; seconds per create + delete."""
    api = UnixClient(rig.docker_socket, timeout=120)

    def run() -> list[float]:
        samples = []
        for _ in range(per_round):
            body: dict[str, Any] = {"Name": f"bench{next(names)}", "CheckDuplicate": True}
            if mini:
                body["IPAM"] = {"Driver": rig.driver_name}
            started = time.perf_counter()
            status, reply = api.request("POST", "/networks/create", body)
            if status != 201:
                raise RuntimeError(f"network create: {status} {reply}")
            status, reply = api.request("DELETE", f"/networks/{reply['Id']}")
            if status != 204:
                raise RuntimeError(f"network rm: {status} {reply}")
            samples.append(time.perf_counter() - started)
        return samples

    return run


def main() -> None:
    """Run the benchmark and write bench/results/end_to_end.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=3)
    args = parser.parse_args()
    for tool in ("dockerd", "docker"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install docker.io)")
    report = Report("end_to_end", "docker network create + rm: mini-ipam vs the engine's default IPAM")
    names = itertools.count()
    with temp_directory("e2e") as directory, engine_with_driver(directory) as rig:
        print(f"engine: {rig.how}; driver {rig.driver_name}", flush=True)
        rig.docker("network", "create", "--ipam-driver", rig.driver_name, "probe-mini")
        rig.docker("network", "create", "probe-default")
        subnets = {
            name: json.loads(rig.docker("network", "inspect", name))[0]["IPAM"]["Config"][0]["Subnet"]
            for name in ("probe-mini", "probe-default")
        }
        rig.docker("network", "rm", "probe-mini", "probe-default")
        print(f"subnets: mini-ipam {subnets['probe-mini']}, default IPAM {subnets['probe-default']}", flush=True)
        variants = {
            "cli/mini": cli_batch(rig, True, args.per_round, names),
            "cli/default": cli_batch(rig, False, args.per_round, names),
            "api/mini": api_batch(rig, True, args.per_round, names),
            "api/default": api_batch(rig, False, args.per_round, names),
        }
        for run in variants.values():
            run()  # warm up
        samples = interleave(variants, args.rounds)
        leftovers = rig.docker("network", "ls", "-q", "--filter", "type=custom").split()

    print(f"per network create + rm, {args.rounds} interleaved rounds of {args.per_round}:")
    for name, rounds in samples.items():
        print(f"  {name:<12} {median(flatten(rounds)) * 1e3:8.1f} ms")
    for way, label in (("cli", "docker CLI"), ("api", "Engine API")):
        name = f"end to end, {label}: mini-ipam / default IPAM"
        report.ratio(name, samples[f"{way}/mini"], samples[f"{way}/default"], TARGET)
    report.details = {
        "engine": rig.how,
        "driver": rig.driver_name,
        "store": "file:// (temp directory)",
        "subnets_seen": subnets,
        "networks_left_behind_before_cleanup": len(leftovers),
        "rounds": args.rounds,
        "per_round": args.per_round,
        "per_create_and_rm": {name: describe(flatten(rounds)) for name, rounds in samples.items()},
    }
    report.save()


if __name__ == "__main__":
    main()
