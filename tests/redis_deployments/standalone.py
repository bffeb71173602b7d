"""A standalone server, the way most people run one: a TCP port and a Unix socket, with or without persistence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tests.redis_deployments.base import Deployment
from tests.redis_deployments.node import Node
from tests.servers import ServerFamily


@dataclass(frozen=True)
class Persistence:
    """How a server keeps its data across a restart.

    ``none``: nothing (a restart comes back empty). ``rdb``: snapshots, taken at
    the ``save`` points (``""``: only when asked, see ``Standalone.snapshot``),
    so a kill -9 comes back with the last snapshot. ``aof``: an append-only file
    synced ``always`` (a kill -9 loses no acknowledged write) or ``everysec``
    (it may lose about the last second).
    """

    kind: Literal["none", "rdb", "aof"] = "none"
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    save: str = ""

    def settings(self) -> list[str]:
        """The config-file lines."""
        save = f'save "{self.save}"' if self.kind == "rdb" else 'save ""'
        if self.kind == "aof":
            return [save, "appendonly yes", f"appendfsync {self.appendfsync}"]
        return [save, "appendonly no"]


NO_PERSISTENCE = Persistence()
RDB_ON_REQUEST = Persistence("rdb")
AOF_ALWAYS = Persistence("aof", "always")
AOF_EVERYSEC = Persistence("aof", "everysec")


class Standalone(Deployment):
    """One server listening on a TCP port of 127.0.0.1 and on a Unix socket.

    ``settings`` are further config-file lines (``maxmemory-policy allkeys-lru``,
    ``user ...``). The faults: ``kill`` (kill -9), ``stop`` (a clean shutdown),
    ``restart`` (the same directory, so the same data files), ``flushall``,
    ``pause``/``resume`` (SIGSTOP/SIGCONT).
    """

    def __init__(
        self, family: ServerFamily, persistence: Persistence = NO_PERSISTENCE, settings: tuple[str, ...] = ()
    ) -> None:
        super().__init__(family)
        self.persistence = persistence
        self.server: Node = self.add_node("n", unix_socket=True, settings=[*persistence.settings(), *settings])

    def start(self) -> None:
        self.server.start()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.server.url

    @property
    def unix_url(self) -> str:
        """``unix:///.../s.sock``."""
        return self.server.unix_url

    def kill(self) -> None:
        """kill -9 the server: nothing is saved on the way out."""
        self.server.kill()

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM: it saves an RDB snapshot only if it has save points)."""
        self.server.stop()

    def restart(self) -> None:
        """Start the server again on its directory, port and socket; returns once its data is loaded."""
        self.server.restart()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def flushall(self) -> None:
        """FLUSHALL, as an operator (or another program sharing the server) might."""
        self.server.call("FLUSHALL")

    def snapshot(self) -> None:
        """Write an RDB snapshot now (SAVE): what a restart from RDB will come back with."""
        self.server.call("SAVE", timeout=30)
