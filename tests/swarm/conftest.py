"""Fixtures of the swarm tier: the plugin built once, swarms of our own engines, their stores.

* ``base_tarball``: Debian bookworm + Python by debootstrap, cached in
  ``/var/tmp/mini-ipam-swarm`` (``MINI_IPAM_SWARM_CACHE``) under a key made of the recipe
  only; ``MINI_IPAM_DEBIAN_MIRROR`` picks the mirror. ~90 s the first time, then free.
* ``plugin_build``: ``scripts/build-plugin.sh`` once per session on a builder engine.
* ``plugin_registry``: ``scripts/build-plugin.sh --push`` once per engine version to Debian's
  ``docker-registry`` (tag ``1``, and a tag ``2`` with one file more for the upgrade test);
  every swarm below runs a registry on its own lab LAN over that storage, and each node gets
  the plugin with ``docker plugin install`` (``tests.swarm.registry``).
* ``two_node_swarm`` (a manager and a worker), ``three_manager_swarm`` and
  ``file_swarm`` (one node, ``file://`` store): per module, torn down after it. The
  function-scoped ``two_nodes``, ``three_managers`` and ``one_node`` empty the swarm
  after each test and fail it when any claim is left in the store.

Every test runs on the oldest and the newest engine of ``MINI_IPAM_ENGINES`` (by default 20.10
and 28.5.2, not 26.1.5): each engine costs this tier ~6 minutes on a 2-core machine, and all
three would take ``.ci/run`` past its 40 minutes. ``MINI_IPAM_SWARM_ENGINES`` (comma- or
space-separated) names the engines of this tier instead, e.g. all three. ``engine_release`` is
a session-scoped parameter, so one pytest session runs the whole matrix, one engine version
after the other. Each version builds its plugin on a builder engine of the
same version, and gets swarms (namespaces, directories, Redis) of its own.

Every engine is ours (own namespaces, socket, data root; see ``tests.e2e.engines``), every
address is in 198.18.0.0/15, and everything is removed at the end, failed tests or not.
Outside CI a machine that cannot do this (not root, a missing binary, no Debian mirror, an
engine that will not start) skips the tier; with ``CI=true`` that is a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

import stores
from stores.file import FileStore
from tests.e2e.engines import (
    RECOVERING,
    BusyboxImage,
    Engine,
    EngineUnavailable,
    Lab,
    Namespace,
    Release,
    engine_versions,
    fetch_release,
    scratch_directory,
)
from tests.servers import RedisServer, require_binary, unavailable, wait_until
from tests.swarm import registry as plugin_registry_
from tests.swarm.cluster import (
    BASE_IMAGE,
    DEFAULT_MIRROR,
    PARENT,
    PLUGIN,
    STATE_MOUNT,
    AddressMap,
    Cluster,
    Node,
    PluginBuild,
    debootstrap_base,
    settle,
)
from tests.swarm.registry import Registry

PREFIX = f"mini-swarm-{os.getpid()}"
"""Names this run's namespaces: ``mini-swarm-<pid>-<cluster>-<node>``."""

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MINI_IPAM_SWARM_CACHE", "/var/tmp/mini-ipam-swarm"))
MIRROR = os.environ.get("MINI_IPAM_DEBIAN_MIRROR", DEFAULT_MIRROR)

TIMINGS: dict[str, float] = {}
"""Seconds per set-up step, printed at the end of the run."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how long the swarm tier's set-up steps took."""
    if TIMINGS:
        terminalreporter.section("swarm tier set-up times")
        for step, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {step}")


class timed:
    """``with timed("step"):`` records the step's wall time in TIMINGS."""

    def __init__(self, step: str) -> None:
        self.step = step

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        TIMINGS[self.step] = time.monotonic() - self.started


# -- the machine and the plugin ---------------------------------------------------------------


@pytest.fixture(scope="session")
def swarm_machine() -> dict[str, str]:
    """The tools the tier needs, by name; skipped (failed in CI) when one is missing."""
    if os.geteuid() != 0:
        unavailable("the swarm tier starts Docker engines in namespaces: it must run as root")
    tools = ("dockerd", "docker", "ip", "nsenter", "unshare", "busybox", "debootstrap", "redis-server", "tar")
    return {name: require_binary(name) for name in tools}


def swarm_engine_versions() -> list[str]:
    """``MINI_IPAM_SWARM_ENGINES``, else the oldest and the newest of ``MINI_IPAM_ENGINES`` (see above)."""
    chosen = os.environ.get("MINI_IPAM_SWARM_ENGINES", "").replace(",", " ").split()
    if chosen:
        return chosen
    versions = sorted(engine_versions(), key=lambda version: tuple(int(part) for part in version.split(".")))
    return versions if len(versions) <= 2 else [versions[0], versions[-1]]


@pytest.fixture(scope="session", params=swarm_engine_versions())
def engine_release(request: pytest.FixtureRequest, swarm_machine: dict[str, str]) -> Release:
    """The engine version under test (one session runs them all); fails in CI when it cannot be fetched."""
    try:
        return fetch_release(request.param)
    except EngineUnavailable as exc:
        unavailable(str(exc))


def _tag(release: Release) -> str:
    """A short name part for one engine version's namespaces (``20``, ``26``, ``28``)."""
    return str(release.major)


@pytest.fixture(scope="session")
def swarm_dir(swarm_machine: dict[str, str]) -> Iterator[Path]:
    """A short temp directory for the whole tier (``MINI_E2E_KEEP=1`` keeps it for a post-mortem)."""
    with scratch_directory(PREFIX, "mini-ipam swarm tier") as directory:
        yield directory


@pytest.fixture(scope="session")
def base_tarball(swarm_machine: dict[str, str]) -> Path:
    """The plugin image's base (Debian + Python), from the cache or debootstrap."""
    with timed("debootstrap base image (cached after the first run)"):
        try:
            return debootstrap_base(CACHE, MIRROR)
        except subprocess.CalledProcessError as exc:
            unavailable(f"debootstrap from {MIRROR} failed, no base image for the plugin:\n{exc.stderr[-3000:]}")


@pytest.fixture(scope="session")
def plugin_build(swarm_dir: Path, base_tarball: Path, engine_release: Release) -> PluginBuild:
    """The managed plugin, built once per engine version with scripts/build-plugin.sh on a throw-away engine.

    On an engine of the version under test: each version keeps its plugin store in its own way.
    """
    version = engine_release.version
    build = PluginBuild(swarm_dir / version / "plugin")
    namespace = Namespace(f"{PREFIX}-{_tag(engine_release)}-builder")
    # overlay2 where the kernel has it: the image build copies the 130 MB base per layer on vfs.
    overlay = "overlay" in Path("/proc/filesystems").read_text().split()
    builder = Engine(
        "builder",
        swarm_dir / version / "builder",
        namespace,
        storage_driver="overlay2" if overlay else "vfs",
        release=engine_release,
    )
    try:
        try:
            namespace.create()
            builder.start()
            builder.wait_ready()
        except (EngineUnavailable, OSError, AssertionError) as exc:
            unavailable(f"cannot start a Docker engine here: {exc}")
        with timed(f"{version}: build the plugin (import base, build-plugin.sh, keep its store)"):
            build.build(builder, base_tarball, ROOT / "scripts" / "build-plugin.sh")
    finally:
        builder.destroy()
        namespace.delete()
        shutil.rmtree(swarm_dir / version / "builder", ignore_errors=True)
    for step, seconds in build.timings.items():
        TIMINGS[f"  {version}: {step}"] = seconds
    return build


@pytest.fixture(scope="session")
def plugin_registry(
    swarm_machine: dict[str, str], swarm_dir: Path, base_tarball: Path, engine_release: Release
) -> Path:
    """The plugin built once per engine version and pushed to a local registry, under every tag of ``registry.TAGS``.

    Returns the registry's storage: each swarm serves it on its own LAN (``_lab_registry``).
    The builder is an engine of the version under test, on a LAN of its own with the registry.
    """
    binary = require_binary("docker-registry")
    version = engine_release.version
    directory = swarm_dir / version / "registry"
    storage = directory / "storage"
    tag = f"{PREFIX}-{_tag(engine_release)}"
    lab = Lab(f"{tag}-push-lan")
    registry = Registry(binary, directory / "push", storage, Namespace(f"{tag}-push-reg"))
    namespace = Namespace(f"{tag}-pusher")
    overlay = "overlay" in Path("/proc/filesystems").read_text().split()
    builder = Engine(
        "pusher",
        directory / "pusher",
        namespace,
        storage_driver="overlay2" if overlay else "vfs",
        release=engine_release,
    )
    plugin_registry_.trust(builder)
    timings: dict[str, float] = {}
    try:
        try:
            lab.create()
            registry.start(lab)
            namespace.create()
            lab.attach(namespace)
            builder.start()
            builder.wait_ready()
        except (EngineUnavailable, OSError, AssertionError) as exc:
            unavailable(f"cannot start a Docker engine and a registry here: {exc}")
        with timed(f"{version}: push the plugin to a local registry (import base, build-plugin.sh --push)"):
            builder.docker("import", str(base_tarball), BASE_IMAGE, check=True, timeout=300)
            timings = plugin_registry_.push_plugin(builder, BASE_IMAGE, ROOT / "scripts" / "build-plugin.sh")
        with timed(f"{version}: push a second release of it (one file more)"):
            first, second = plugin_registry_.TAGS
            plugin_registry_.push_changed_tag(
                builder, plugin_registry_.reference(first), second, ROOT / "packaging" / "plugin" / "config.json",
                directory / "pusher" / "second",
            )  # fmt: skip
    finally:
        try:
            builder.destroy()
            namespace.delete()
            registry.stop()
        finally:
            lab.delete()
            shutil.rmtree(directory / "pusher", ignore_errors=True)
    for step, seconds in timings.items():
        TIMINGS[f"  {version}: {step}"] = seconds
    return storage


def _lab_registry(storage: Path, directory: Path, prefix: str) -> Registry:
    """A registry for one swarm's LAN, serving what ``plugin_registry`` pushed."""
    binary = shutil.which("docker-registry") or "docker-registry"  # plugin_registry required it already
    return Registry(binary, directory, storage, Namespace(f"{prefix}-reg"))


def _install_from_registry(node: Node, *, store: str, state: Path) -> None:
    """``docker plugin install`` the first tag, its settings on the line (as ``Node.enable_plugin`` sets them)."""
    settings = {
        "state.source": str(state), "MINI_IPAM_STORE": store, "MINI_IPAM_HOST_ID": node.name,
        "MINI_IPAM_POOL": str(PARENT), "MINI_IPAM_LOG_LEVEL": "debug",
    }  # fmt: skip
    plugin_registry_.install(node.engine, PLUGIN, plugin_registry_.reference(plugin_registry_.TAGS[0]), settings)


def _enable(node: Node) -> None:
    node.docker("plugin", "enable", PLUGIN, check=True, timeout=120)


@pytest.fixture(scope="session")
def swarm_image(swarm_machine: dict[str, str], swarm_dir: Path) -> BusyboxImage:
    """The tasks' image (busybox), made once and loaded on every node."""
    return BusyboxImage(swarm_machine["busybox"], swarm_dir / "image")


# -- swarms -----------------------------------------------------------------------------------


def _bring_up(
    cluster: Cluster, registry: Registry, image: BusyboxImage, *, store: str, state: Callable[[Node], Path]
) -> None:
    """Start the LAN's registry and the engines, install the plugin from the registry on each, load the image.

    Only an engine (or the registry) that cannot start skips (fails in CI); everything after
    that is the plugin's or the swarm's business and errors the tests.
    """
    assert cluster.lab is not None
    try:
        cluster.lab.create()
        registry.start(cluster.lab)  # first on the LAN: it is registry.HOST on every swarm's LAN
        for node in cluster.nodes:
            plugin_registry_.trust(node.engine)
            node.start(cluster.lab)
        for node in cluster.nodes:
            node.engine.wait_ready()
    except (EngineUnavailable, OSError, AssertionError) as exc:
        unavailable(f"cannot start a Docker engine and a registry here: {exc}")
    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        list(pool.map(lambda node: _install_from_registry(node, store=store, state=state(node)), cluster.nodes))
    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        list(pool.map(_enable, cluster.nodes))
    image.install(cluster.nodes[0].engine)
    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        list(pool.map(image.install, [node.engine for node in cluster.nodes[1:]]))


def _empty_after_test(cluster: Cluster) -> None:
    """Remove what the test made; fail when the store still holds any claim afterwards.

    A node a failed test left stopped is started again first: its node-local copies are
    released only by its own engine.
    """
    stopped = [node for node in cluster.nodes if node.engine.process is None]
    for node in stopped:
        node.engine.start()
    for node in stopped:
        node.engine.wait_ready()
    leader = cluster.leader()
    assert leader is not None, "the swarm has no leader after the test"
    cluster.clear(leader)

    def empty() -> str | None:
        snapshot = cluster.read_map()
        return None if not snapshot.blocks and not snapshot.pools else str(snapshot)

    settle(empty, timeout=60, what="the store to hold no claim once everything is removed")


def _wait_map_settled(node: Node, timeout: float = 30) -> None:
    """Wait until the new shared map hands out subnets: a bridge of the plugin's is created (and removed).

    A new map refuses new subnets for a short recovery window; swarm's allocator would retry a
    refused overlay only much later, so the tests start once the window is over. Any other
    refusal fails at once.
    """
    last: list[str] = []

    def created() -> bool:
        result = node.try_bridge("map-settled", "--ipam-opt", "size=30")
        if result.returncode == 0:
            node.docker("network", "rm", "map-settled", check=True)
            return True
        assert RECOVERING in result.stderr, f"{node.name}: a first bridge was refused: {result.stderr}"
        last[:] = [result.stderr]
        return False

    try:
        wait_until(created, timeout=timeout, interval=0.2, what=f"the map to settle on {node.name}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last refusal: {last[-1] if last else '-'}") from None


_pairs = itertools.count(1)

REDIS_STORE = f"unix://{STATE_MOUNT}/redis.sock"
"""The plugins' store: the Redis socket, linked into the directory each mounts as ``state``."""


@contextmanager
def _redis_cluster(
    directory: Path, names: Sequence[str], tag: str, plugin: Path, image: BusyboxImage, release: Release
) -> Iterator[Cluster]:
    """Nodes on one LAN whose plugins share one real Redis, up and ready for ``swarm init``.

    Each plugin's ``state`` mount is a directory of its node's own: the plugin keeps its local
    record (``/var/lib/mini-ipam/record.json``) there, and two plugins cannot share one (the
    second would not start). The Redis socket is hard-linked into each: a Unix socket is
    reached by its inode, so every link leads to the one server.
    """
    (directory / "redis").mkdir(parents=True)
    # Durable as the driver asks (else every plugin start logs a warning, which the tests count as
    # a problem): an append-only file, fsynced before each acknowledgement.
    redis = RedisServer(directory / "redis", options=("--appendonly", "yes", "--appendfsync", "always"))
    redis.start()
    for name in names:
        (directory / f"state-{name}").mkdir()
        os.link(redis.socket, directory / f"state-{name}" / REDIS_STORE.rsplit("/", 1)[1])
    store = stores.from_url(redis.url)
    cluster = Cluster(
        [Node(name, directory / name, prefix=f"{PREFIX}-{tag}", release=release) for name in names],
        read_map=lambda: AddressMap.read(store),
        lab=Lab(f"{PREFIX}-{tag}-lan"),
    )
    registry = _lab_registry(plugin, directory / "registry", f"{PREFIX}-{tag}")
    try:
        _bring_up(cluster, registry, image, store=REDIS_STORE, state=lambda node: directory / f"state-{node.name}")
        _wait_map_settled(cluster.nodes[0])
        yield cluster
    finally:
        try:
            cluster.destroy()
        finally:
            registry.stop()
            store.close()
            redis.stop()


@pytest.fixture(scope="module")
def two_node_swarm(
    request: pytest.FixtureRequest,
    swarm_dir: Path,
    plugin_registry: Path,
    swarm_image: BusyboxImage,
    engine_release: Release,
) -> Iterator[Cluster]:
    """A manager (``m1``) and a worker (``w1``), their plugins on one real Redis; a new pair per module."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    version = engine_release.version
    tag = f"{_tag(engine_release)}-p{next(_pairs)}"
    started = time.monotonic()
    directory = swarm_dir / version / f"pair-{module}"
    with _redis_cluster(directory, ("m1", "w1"), tag, plugin_registry, swarm_image, engine_release) as cluster:
        manager, worker = cluster.nodes
        cluster.init(manager)
        cluster.join(worker, manager)
        cluster.wait_ready(manager, ["m1", "w1"])
        TIMINGS[f"{version}: two-node swarm for {module}: engines, plugin, image, swarm"] = time.monotonic() - started
        yield cluster


@pytest.fixture
def two_nodes(two_node_swarm: Cluster) -> Iterator[Cluster]:
    """The two-node swarm, emptied after the test; fails the test if a claim is left behind."""
    yield two_node_swarm
    _empty_after_test(two_node_swarm)


@pytest.fixture(scope="module")
def three_manager_swarm(
    swarm_dir: Path, plugin_registry: Path, swarm_image: BusyboxImage, engine_release: Release
) -> Iterator[Cluster]:
    """Three managers (``m1`` leads first), their plugins on one real Redis."""
    started = time.monotonic()
    version = engine_release.version
    tag = f"{_tag(engine_release)}-t"
    with _redis_cluster(
        swarm_dir / version / "trio", ("m1", "m2", "m3"), tag, plugin_registry, swarm_image, engine_release
    ) as cluster:
        first, *others = cluster.nodes
        cluster.init(first)
        for node in others:
            cluster.join(node, first, manager=True)
        cluster.wait_ready(first, ["m1", "m2", "m3"])
        TIMINGS[f"{version}: three-manager swarm: engines, plugin, image, swarm"] = time.monotonic() - started
        yield cluster


@pytest.fixture
def three_managers(three_manager_swarm: Cluster) -> Iterator[Cluster]:
    """The three-manager swarm, emptied after the test; fails the test if a claim is left behind."""
    yield three_manager_swarm
    _empty_after_test(three_manager_swarm)


_singles = itertools.count(1)

FILE_STORE = f"file://{STATE_MOUNT}/state.json"
"""The one-node plugin's store: a state file in its ``state`` mount (the config.json default)."""


@pytest.fixture(scope="module")
def file_swarm(
    swarm_dir: Path, plugin_registry: Path, swarm_image: BusyboxImage, engine_release: Release
) -> Iterator[Cluster]:
    """A one-node swarm whose plugin keeps its claims in a state file (``file://``, no Redis); one per module.

    The state file is read with ``FileStore(path, read_only=True)`` while the plugin runs.
    """
    version = engine_release.version
    # One per module, and short: containerd's sockets under it must stay within 104 characters.
    directory = swarm_dir / version / f"single{next(_singles)}"
    state = directory / "state"
    state.mkdir(parents=True)

    def read_map() -> AddressMap:
        store = FileStore(state / "state.json", read_only=True)
        try:
            return AddressMap.read(store)
        finally:
            store.close()

    tag = f"{PREFIX}-{_tag(engine_release)}-f"
    node = Node("s1", directory / "s1", prefix=tag, release=engine_release)
    cluster = Cluster([node], read_map=read_map, lab=Lab(f"{tag}-lan"))
    registry = _lab_registry(plugin_registry, directory / "registry", tag)
    try:
        with timed(f"{version}: one-node file:// swarm: engine, plugin, image, swarm"):
            _bring_up(cluster, registry, swarm_image, store=FILE_STORE, state=lambda _: state)
            cluster.init(node)
            cluster.wait_ready(node, ["s1"])
        yield cluster
    finally:
        try:
            cluster.destroy()
        finally:
            registry.stop()


@pytest.fixture
def one_node(file_swarm: Cluster) -> Iterator[Cluster]:
    """The one-node swarm, emptied after the test; fails the test if a claim is left in the state file."""
    yield file_swarm
    _empty_after_test(file_swarm)
