"""Engine fixtures for the e2e tier: our own dockerds, our own drivers, our own image.

Nothing here touches an engine or a driver that a user runs on the machine:

* every engine is a dockerd of ours in a network + mount namespace of its own
  (``engines.Engine``), with its own socket, data root, exec root and pid file in
  a temp directory, and ``--storage-driver=vfs``;
* every driver socket is ``/run/docker/plugins/mini-e2e-<pid>.sock`` as its engine
  sees it, in that engine's private plugin directory, so ``--ipam-driver
  mini-e2e-<pid>`` is unique to this test run;
* at session end everything is removed (containers, networks, processes by pid,
  namespaces and the veths in them, sockets, directories), failed tests or not.

Every test runs on every engine of ``MINI_IPAM_ENGINES`` (default: 20.10, 26.1.5 and
28.5.2, see ``engines.ENGINE_VERSIONS``): ``engine_release`` is a session-scoped parameter,
so one pytest session runs the whole matrix, one engine version after the other, and each
version gets hosts (and a Redis) of its own. ``scripts/fetch-engine.py`` fetches the newer
engines (cached).

Outside CI a machine that cannot run engines (no dockerd, not root, an engine that cannot
be fetched) skips the tier; with ``CI=true`` that is a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.engines import (
    BusyboxImage,
    Engine,
    EngineUnavailable,
    Host,
    Lab,
    Release,
    engine_versions,
    fetch_release,
    scratch_directory,
)
from tests.servers import RedisServer, require_binary, unavailable

PREFIX = f"mini-e2e-{os.getpid()}"
"""Names everything of this run: driver ``mini-e2e-<pid>``, namespaces ``mini-e2e-<pid>-<host>``."""

PARENT = ipaddress.IPv4Network("198.19.0.0/17")
"""The drivers' parent range. 198.18.0.0/15 is reserved for benchmarking (RFC 2544):
no route of this machine points there, and no address outside its namespaces can be hit."""

CLUSTER_HOSTS = ("a", "b", "c")


@pytest.fixture(scope="session")
def machine() -> dict[str, str]:
    """The tools the tier needs, by name; skipped (failed in CI) when one is missing."""
    if os.geteuid() != 0:
        unavailable("the e2e tier starts Docker engines in namespaces: it must run as root")
    return {name: require_binary(name) for name in ("dockerd", "docker", "ip", "nsenter", "unshare", "busybox")}


@pytest.fixture(scope="session", params=engine_versions())
def engine_release(request: pytest.FixtureRequest, machine: dict[str, str]) -> Release:
    """The engine version under test (one session runs them all); fails in CI when it cannot be fetched."""
    try:
        return fetch_release(request.param)
    except EngineUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def e2e_dir(machine: dict[str, str]) -> Iterator[Path]:
    """A short temp directory (Unix socket paths must stay under ~107 characters).

    ``MINI_E2E_KEEP=1`` keeps it (engine and driver logs) for a post-mortem; the
    processes and namespaces are removed all the same.
    """
    with scratch_directory(PREFIX, "mini-ipam e2e") as directory:
        yield directory


@pytest.fixture(scope="session")
def busybox_image(machine: dict[str, str], e2e_dir: Path) -> BusyboxImage:
    """The test image, built once per session and carried to every engine."""
    return BusyboxImage(machine["busybox"], e2e_dir / "image")


def _start_hosts(hosts: list[Host], image: BusyboxImage, lab: Lab | None = None) -> None:
    """Start the engines together, then their drivers, then carry the image to each.

    Only an engine that cannot start skips (fails in CI); a driver that cannot
    start is the driver's failure and errors the tests.
    """
    try:
        for one in hosts:
            one.start(lab)
        for one in hosts:
            one.engine.wait_ready()
    except (EngineUnavailable, OSError, AssertionError) as exc:
        unavailable(f"cannot start a Docker engine here: {exc}")
    for one in hosts:
        release = one.engine.release
        running = one.engine.docker("version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
        assert release is None or running.startswith(release.version), f"wanted engine {release}, got {running}"
    for one in hosts:
        one.driver.start()
    # Images travel like between real hosts: one import, then save | load.
    image.install(hosts[0].engine)
    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(image.install, [one.engine for one in hosts[1:]]))


@pytest.fixture(scope="session")
def host(e2e_dir: Path, busybox_image: BusyboxImage, engine_release: Release) -> Iterator[Host]:
    """One engine with the driver as a legacy plugin, on a file:// store (it survives driver restarts)."""
    directory = e2e_dir / engine_release.version / "h1"
    directory.mkdir(parents=True)
    single = Host(
        "h1",
        directory,
        prefix=PREFIX,
        store=f"file://{directory}/state.json",
        driver_args=["--pool", str(PARENT), "--host-id", "h1"],
        release=engine_release,
    )
    try:
        _start_hosts([single], busybox_image)
        yield single
    finally:
        single.destroy()


@pytest.fixture
def engine(host: Host) -> Iterator[Engine]:
    """The single engine, emptied after the test; fails the test if the driver leaked anything.

    The leak check asks for both whole parents (IPv4 and the IPv6 ULA /48) as one
    network: that succeeds only when every subnet handed out during the test was
    released again.
    """
    yield host.engine
    if not host.driver.running:  # a restart test that failed half-way
        host.driver.start()
    host.engine.wipe()
    whole = host.try_network("leak-check", "--ipv6", "--ipam-opt", f"size={PARENT.prefixlen}", "--ipam-opt", "size6=48")
    assert whole.returncode == 0, f"the driver still holds part of a parent after the test: {whole.stderr}"
    host.engine.docker("network", "rm", "leak-check", check=True)


@pytest.fixture(scope="session")
def redis(e2e_dir: Path, engine_release: Release) -> Iterator[RedisServer]:
    """One real redis-server on a Unix socket, shared by every host of the cluster (a new one per engine)."""
    directory = e2e_dir / engine_release.version / "redis"
    directory.mkdir(parents=True)
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(
    e2e_dir: Path, busybox_image: BusyboxImage, redis: RedisServer, engine_release: Release
) -> Iterator[list[Host]]:
    """Three hosts on one LAN (a switch namespace), each with its own driver, all on one Redis.

    Ready once the new map is past its recovery window (it refuses new subnets for a moment).
    """
    lab = Lab(f"{PREFIX}-lan")
    hosts = []
    for name in CLUSTER_HOSTS:
        directory = e2e_dir / engine_release.version / name
        directory.mkdir(parents=True)
        hosts.append(
            Host(
                name,
                directory,
                prefix=PREFIX,
                store=redis.url,
                driver_args=["--pool", str(PARENT), "--host-id", name],
                release=engine_release,
            )
        )
    try:
        lab.create()
        _start_hosts(hosts, busybox_image, lab)
        for one in hosts:
            one.wait_map_settled()
        yield hosts
    finally:
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(Host.destroy, hosts))
        lab.delete()


@pytest.fixture(scope="session")
def parent() -> ipaddress.IPv4Network:
    """The parent range every driver of the tier carves from."""
    return PARENT
