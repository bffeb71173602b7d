"""What every deployment shares: a short temporary directory, its nodes, and stopping them all."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.redis_deployments.node import Node
from tests.servers import ServerFamily


class Deployment:
    """A set of nodes of one server family under one short temporary directory (Unix socket paths stay short).

    Use it as a context manager, or call ``start`` and ``close``; ``close``
    stops every node it started (by pid) and removes the directory.
    """

    def __init__(self, family: ServerFamily) -> None:
        self.family = family
        self.root = Path(tempfile.mkdtemp(prefix=f"mi-{family.name[0]}-"))
        self.nodes: list[Node] = []

    def add_node(
        self,
        name: str,
        *,
        sentinel: bool = False,
        settings: Sequence[str] = (),
        unix_socket: bool = False,
        extra_ports: Sequence[str] = (),
        password: str | None = None,
    ) -> Node:
        """A new node in ``root / name`` (not started); see ``Node`` for the options."""
        node = Node(
            self.family,
            self.root / name,
            sentinel=sentinel,
            settings=settings,
            unix_socket=unix_socket,
            extra_ports=extra_ports,
            password=password,
        )
        self.nodes.append(node)
        return node

    def start(self) -> None:
        """Start the deployment and wait until it is ready (each kind says what ready means)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop every node, then remove the directory."""
        try:
            for node in self.nodes:
                node.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def node_at(self, address: tuple[str, int] | str) -> Node:
        """The node listening at ``(host, port)`` or ``"host:port"``."""
        name = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node of this deployment listens at {name}")

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
