"""The ``mini-ipam`` command: flags (each with a MINI_IPAM_* environment fallback) to settings."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stores
from mini_ipam import __version__

if TYPE_CHECKING:
    from stores.presence import HostPresence

DEFAULT_SOCKET = "/run/docker/plugins/mini.sock"
DEFAULT_STORE = "file:///var/lib/mini-ipam/state.json"

EXAMPLES = """\
examples:
  mini-ipam serve
      serve /run/docker/plugins/mini.sock, carve /28s from 172.16.0.0/16, keep
      state in /var/lib/mini-ipam/state.json; then, in another shell:
      docker network create --ipam-driver mini --ipam-opt size=28 net1
  mini-ipam serve --pool 10.10.0.0/16 --pool 10.20.0.0/16 --default-size 26
  mini-ipam serve --store redis://redis.example:6379/0 --host-id "$(hostname)"
  MINI_IPAM_STORE=memory:// mini-ipam serve --socket /tmp/mini.sock

Every flag can also be set in the environment: --default-size is
MINI_IPAM_DEFAULT_SIZE, --pool is MINI_IPAM_POOL (comma-separated), and so on.
"""


def _env(flag: str) -> str | None:
    return os.environ.get("MINI_IPAM_" + flag.upper().replace("-", "_"))


def _network_parser(version: int) -> Callable[[str], Any]:
    def parse(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            network = ipaddress.ip_network(text.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a subnet in CIDR form: {exc}") from None
        if network.version != version:
            raise argparse.ArgumentTypeError(f"{text!r} is not an IPv{version} subnet")
        return network

    return parse


def _prefix_parser(version: int) -> Callable[[str], int]:
    longest = 30 if version == 4 else 126

    def parse(text: str) -> int:
        value = text.strip().removeprefix("/")
        if not value.isdigit() or not 1 <= int(value) <= longest:
            raise argparse.ArgumentTypeError(f"{text!r} is not a prefix length from 1 to {longest}")
        return int(value)

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The full command-line interface."""
    parser = argparse.ArgumentParser(
        prog="mini-ipam",
        description="A Docker IPAM driver that hands out free subnets of a requested size.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mini-ipam {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the driver on the plugin socket",
        description="Run the IPAM driver. Docker finds it by its socket: mini.sock is --ipam-driver mini.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def add(flag: str, default: Any, help: str, parse: Callable[[str], Any] = str, **kw: Any) -> None:
        env = _env(flag)
        if env is not None:
            try:
                default = [parse(item) for item in env.split(",") if item.strip()] if kw.get("action") else parse(env)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"MINI_IPAM_{flag.upper().replace('-', '_')}: {exc}")
        serve.add_argument(f"--{flag}", default=default, type=parse, help=help, **kw)

    add(
        "socket",
        DEFAULT_SOCKET,
        "plugin socket; its file name is the driver name (default: %(default)s)",
        metavar="PATH",
    )
    add(
        "socket-group",
        None,
        "group of the socket (mode 0660), for a non-root engine or tools (default: the driver's own group)",
        metavar="GROUP",
    )
    add(
        "store",
        DEFAULT_STORE,
        "where claims are kept: memory://, file:///path.json, redis://host:port/db, "
        "rediss://..., unix:///path/redis.sock (default: the file store at /var/lib/mini-ipam/state.json)",
        metavar="URL",
    )
    add(
        "pool",
        None,
        "IPv4 parent range to carve subnets from; repeat for more, searched in order (default: 172.16.0.0/16)",
        _network_parser(4),
        action="append",
        metavar="CIDR",
    )
    add(
        "default-size",
        28,
        "prefix length of IPv4 subnets when no size is asked for (default: %(default)s)",
        _prefix_parser(4),
        metavar="N",
    )
    add(
        "pool6",
        None,
        "IPv6 parent range; repeatable (default: a random ULA /48 made on first start and kept in the store)",
        _network_parser(6),
        action="append",
        metavar="CIDR",
    )
    add(
        "default-size6",
        64,
        "prefix length of IPv6 subnets when no size6 is asked for (default: %(default)s)",
        _prefix_parser(6),
        metavar="N",
    )
    add(
        "host-id",
        socket.gethostname(),
        "this host's name in the store, recorded as the owner of its claims (default: the hostname, %(default)s)",
        metavar="NAME",
    )
    add(
        "store-timeout",
        5.0,
        "seconds a store round trip may take before the request fails (default: %(default)s)",
        float,
        metavar="SECONDS",
    )
    add(
        "host-ttl",
        30.0,
        "on a shared store, seconds after which a silent driver's heartbeat lapses; two live drivers with one "
        "host id are reported within about this time (default: %(default)s)",
        float,
        metavar="SECONDS",
    )
    add("threads", 8, "request threads (default: %(default)s)", int, metavar="N")
    add(
        "log-level",
        "info",
        "debug, info, warning or error (default: %(default)s)",
        choices=["debug", "info", "warning", "error"],
    )
    return parser


def serve(args: argparse.Namespace) -> int:
    """Open the store and serve until stopped."""
    from mini_ipam.allocator import Allocator, Settings
    from mini_ipam.app import create_app
    from mini_ipam.driver import Driver
    from mini_ipam.errors import IpamError
    from mini_ipam.server import SocketInUse
    from mini_ipam.server import serve as run_server

    log = logging.getLogger("mini_ipam")
    parents4 = tuple(args.pool or (ipaddress.IPv4Network("172.16.0.0/16"),))
    for size, parents in ((args.default_size, parents4), (args.default_size6, args.pool6 or ())):
        too_wide = [str(p) for p in parents if p.prefixlen > size]
        if too_wide:
            log.error("default size /%d does not fit in parent %s", size, ", ".join(too_wide))
            return 2
    try:
        store = stores.from_url(args.store, timeout=args.store_timeout)
    except (stores.StoreError, stores.ConfigurationError, OSError) as exc:
        log.error("cannot open the store %s: %s", stores.redact_url(args.store), exc)
        return 1
    settings = Settings(
        parents4=parents4,
        parents6=tuple(args.pool6 or ()),
        default_size4=args.default_size,
        default_size6=args.default_size6,
        host_id=args.host_id,
    )
    allocator = Allocator(store, settings)
    try:
        log.info("IPv6 parents: %s", ", ".join(map(str, allocator.parents6)))
    except IpamError as exc:
        # An unreachable store must not keep the socket from opening: the engine may be booting.
        log.warning("IPv6 parents not known yet: %s", exc)
    app = create_app(Driver(allocator))
    log.info(
        "mini-ipam %s: store %s, parents %s, host id %s",
        __version__,
        stores.redact_url(args.store),
        ", ".join(map(str, parents4)),
        args.host_id,
    )
    presence = _watch_for_twins(store, args.host_id, args.host_ttl)
    try:
        run_server(app, Path(args.socket), threads=args.threads, group=args.socket_group)
    except (SocketInUse, OSError) as exc:
        log.error("cannot serve on %s: %s", args.socket, exc)
        return 1
    finally:
        if presence is not None:
            presence.stop()
        store.close()
    return 0


def _watch_for_twins(store: stores.Store, host_id: str, ttl: float) -> HostPresence | None:
    """On a shared store, keep a heartbeat so two live drivers with one host id are noticed."""
    from stores.redis import RedisStore

    if not isinstance(store, RedisStore):
        return None
    from stores.presence import HostPresence

    presence = HostPresence(store.client, store.prefix, host_id, ttl=ttl)
    presence.start()
    return presence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mini-ipam`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        return serve(args)
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
