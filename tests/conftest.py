"""Fixtures shared by every test module.

``store`` runs a test over every Store: memory, file, fakeredis and a real
redis-server. The real server is started once per session, only when a test
that needs it runs; every test gets a fresh key prefix on it.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stores import Store
from tests.servers import RedisServer

STORE_KINDS = ["memory", "file", "fakeredis", "redis"]
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session (skipped locally, failed in CI, when absent)."""
    with tempfile.TemporaryDirectory(prefix="mini-ipam-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


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
    """Run every test that asks for a store over every kind (``store_kinds`` marker narrows it)."""
    if "store_factory" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("store_kinds")
        kinds = list(marker.args) if marker else STORE_KINDS
        params = [pytest.param(kind, marks=[pytest.mark.redis] if kind == "redis" else [], id=kind) for kind in kinds]
        metafunc.parametrize("store_factory", params, indirect=True)
