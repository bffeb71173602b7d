"""Fixtures shared by every test module.

``store`` runs a test over every Store: memory, file, fakeredis and a real
server of each family (redis-server 7.0 and valkey-server 8.0: ids
``redis-7.0``, ``valkey-8.0``). Every test marked ``redis`` runs once per
family, with ``redis_family`` set to it: ``redis_server`` is then that family's
server, and a ``RedisServer`` the test starts itself is of that family too. A
family that is not installed skips its runs locally and fails them in CI. Each
family's shared server is started once per session, only when a test that
needs it runs; every test gets a fresh key prefix on it.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stores import Store
from tests.servers import (
    REDIS,
    RedisServer,
    ServerFamily,
    SessionServers,
    family_params,
    family_variants,
    testing_family,
)

STORE_KINDS = ["memory", "file", "fakeredis", "redis"]
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[SessionServers]:
    """The session's shared servers, one per family, each started when first needed."""
    with tempfile.TemporaryDirectory(prefix="mini-ipam-redis-") as directory:
        servers = SessionServers(Path(directory))
        try:
            yield servers
        finally:
            servers.stop()


@pytest.fixture(autouse=True)
def redis_family(request: pytest.FixtureRequest) -> Iterator[ServerFamily]:
    """The server family this test runs against: each family in turn in the Redis tier, Redis elsewhere.

    Parametrized (by ``pytest_generate_tests`` or ``tests.servers.over_families``)
    for the tests that need a real server; a missing family skips them locally
    and fails them in CI.
    """
    family: ServerFamily | None = getattr(request, "param", None)
    if family is not None:
        family.require()
    with testing_family(family or REDIS):
        yield family or REDIS


@pytest.fixture
def redis_server(redis_servers: SessionServers, redis_family: ServerFamily) -> RedisServer:
    """The session's shared server of the family under test (skipped locally, failed in CI, when absent)."""
    return redis_servers.get(redis_family)


@pytest.fixture
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Builds stores of the kind named by the test's ``store_kind`` parameter.

    Every store a factory builds shares one state (the same file, the same
    fakeredis server, the same Redis prefix), like processes sharing a store.
    """
    kind: str = request.param
    made: list[Store] = []

    if kind == "memory":
        from stores.memory import MemoryStore

        shared = MemoryStore()

        def build() -> Store:
            return shared
    elif kind == "file":
        from stores.file import FileStore

        path = tmp_path / "state.json"
        handles: list[FileStore] = []

        def build() -> Store:
            # One process owns a state file: share the open handle, reopen once it was closed.
            if not handles or not handles[-1].is_open:
                handles.append(FileStore(path))
            return handles[-1]
    elif kind == "fakeredis":
        import fakeredis

        from stores.redis import RedisStore

        server = fakeredis.FakeServer()

        def build() -> Store:
            return RedisStore(fakeredis.FakeRedis(server=server), prefix="test")
    elif kind == "redis":
        server_real: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"test{next(_prefixes)}"

        def build() -> Store:
            from stores import from_url

            return from_url(f"{server_real.url}?prefix={prefix}")
    else:  # pragma: no cover - a typo in a parametrization
        raise ValueError(kind)

    def tracked() -> Store:
        store = build()
        made.append(store)
        return store

    yield tracked
    for store in made:
        store.close()


@pytest.fixture
def store(store_factory: Callable[[], Store]) -> Store:
    """One store of the parametrized kind."""
    return store_factory()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every store test over every kind, and every test marked ``redis`` over every server family.

    A test that asks for a store runs once per kind (the ``store_kinds`` marker
    narrows them), the real server's kind once per family.
    """
    if "store_factory" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("store_kinds")
        kinds = list(marker.args) if marker else STORE_KINDS
        metafunc.parametrize(("store_factory", "redis_family"), family_variants(kinds), indirect=True)
    elif metafunc.definition.get_closest_marker("redis") and not _parametrizes_family(metafunc):
        metafunc.parametrize("redis_family", family_params(), indirect=True)


def _parametrizes_family(metafunc: pytest.Metafunc) -> bool:
    """Whether the test parametrizes ``redis_family`` itself (``over_families``)."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "redis_family" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return True
    return False
