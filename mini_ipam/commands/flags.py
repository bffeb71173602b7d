"""The ``mini-ipam`` command line: every command's flags, each with a MINI_IPAM_* environment fallback.

This module only builds the parser; ``mini_ipam.commands`` runs what it parsed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

from mini_ipam import __version__
from mini_ipam.allocator import DEFAULT_PARENT4, DEFAULT_SIZE4, DEFAULT_SIZE6
from mini_ipam.listen_address import listen_address
from mini_ipam.pool_id import SMALLEST

DEFAULT_SOCKET = "/run/docker/plugins/mini.sock"
DEFAULT_STORE = "file:///var/lib/mini-ipam/state.json"
DEFAULT_RECORD = "/var/lib/mini-ipam/record.json"

ENV_NOTE = """\
Every flag can also be set in the environment: --default-size is
MINI_IPAM_DEFAULT_SIZE, --pool is MINI_IPAM_POOL (comma-separated), and so on.
"""

SERVE_EXAMPLES = """\
examples:
  mini-ipam serve
      serve /run/docker/plugins/mini.sock, carve /28s from 172.16.0.0/16, keep
      state in /var/lib/mini-ipam/state.json; then, in another shell:
      docker network create --ipam-driver mini --ipam-opt size=28 net1
  mini-ipam serve --pool 10.10.0.0/16 --pool 10.20.0.0/16 --default-size 26
  mini-ipam serve --store redis://redis.example:6379/0 --host-id "$(hostname)"
  MINI_IPAM_STORE=memory:// mini-ipam serve --socket /tmp/mini.sock
  mini-ipam serve --metrics-address 0.0.0.0:19464
      also let Prometheus scrape http://HOST:19464/metrics (nothing else is served on TCP)

"""

LS_EXAMPLES = """\
examples:
  mini-ipam ls                      usage per parent, then every pool
  mini-ipam ls --json | jq '.pools[] | select(.owner == "host-a")'
  mini-ipam ls --store redis://redis.example:6379/0 --pool 10.10.0.0/16

"""

PLAN_EXAMPLES = """\
examples:
  mini-ipam plan --size 24               how many more /24s fit
  mini-ipam plan --size 26 --count 40    do 40 more /26s fit? (exit 1 if not)

"""

RECONCILE_EXAMPLES = """\
examples:
  mini-ipam reconcile                    list leaks both ways, change nothing
  mini-ipam reconcile --apply            release leaked claims older than 10 minutes,
                                         re-claim what the engine uses but the store lost
  mini-ipam reconcile --apply --grace 1h --docker unix:///var/run/docker.sock

"""


def _env_name(flag: str) -> str:
    return "MINI_IPAM_" + flag.upper().replace("-", "_")


def network_parser(version: int) -> Callable[[str], Any]:
    """An argparse type for an IPv``version`` subnet."""

    def parse(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            network = ipaddress.ip_network(text.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a subnet in CIDR form: {exc}") from None
        if network.version != version:
            raise argparse.ArgumentTypeError(f"{text!r} is not an IPv{version} subnet")
        return network

    return parse


def prefix_parser(version: int) -> Callable[[str], int]:
    """An argparse type for a prefix length."""
    longest = SMALLEST[version]

    def parse(text: str) -> int:
        value = text.strip().removeprefix("/")
        if not value.isdigit() or not 1 <= int(value) <= longest:
            raise argparse.ArgumentTypeError(f"{text!r} is not a prefix length from 1 to {longest}")
        return int(value)

    return parse


def duration(text: str) -> float:
    """An argparse type for a duration: seconds, or a number with s, m, h or d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    factor = units.get(value[-1:], None)
    number = value[:-1] if factor else value
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 10m or 1h") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return seconds


class Flags:
    """Adds flags to a parser; each takes its default from MINI_IPAM_<FLAG> when that is set."""

    def __init__(self, parser: argparse.ArgumentParser, root: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.root = root

    def add(self, flag: str, default: Any, help: str, parse: Callable[[str], Any] = str, **kw: Any) -> None:
        env = os.environ.get(_env_name(flag))
        if env is not None:
            try:
                default = [parse(i) for i in env.split(",") if i.strip()] if kw.get("action") else parse(env)
            except argparse.ArgumentTypeError as exc:
                self.root.error(f"{_env_name(flag)}: {exc}")
        self.parser.add_argument(f"--{flag}", default=default, type=parse, help=help, **kw)

    def socket(self) -> None:
        self.add("socket", DEFAULT_SOCKET, "plugin socket; its file name is the driver name (default: %(default)s)",
                 metavar="PATH")  # fmt: skip

    def store(self) -> None:
        self.add(
            "store",
            DEFAULT_STORE,
            "where claims are kept: memory://, file:///path.json, redis://host:port/db, rediss://..., "
            "unix:///path/redis.sock (default: the file store at /var/lib/mini-ipam/state.json)",
            metavar="URL",
        )
        self.add("store-timeout", 5.0, "seconds a store round trip may take (default: %(default)s)", float,
                 metavar="SECONDS")  # fmt: skip
        self.add(
            "host-id",
            socket.gethostname(),
            "this host's name in the store, recorded as the owner of its claims (default: the hostname, %(default)s)",
            metavar="NAME",
        )

    def parents(self) -> None:
        self.add(
            "pool",
            None,
            f"IPv4 parent range to carve subnets from; repeat for more, searched in order (default: {DEFAULT_PARENT4})",
            network_parser(4),
            action="append",
            metavar="CIDR",
        )
        self.add(
            "pool6",
            None,
            "IPv6 parent range; repeatable (default: a random ULA /48 made on first start and kept in the store)",
            network_parser(6),
            action="append",
            metavar="CIDR",
        )

    def logging(self) -> None:
        self.add("log-level", "info", "debug, info, warning or error (default: %(default)s)",
                 choices=["debug", "info", "warning", "error"])  # fmt: skip
        self.add("log-format", "text", "text or json, one object a line (default: %(default)s)",
                 choices=["text", "json"])  # fmt: skip
        self.add("log-stream", "stderr", "stderr or stdout; a managed plugin logs to stdout, which the engine "
                 "logs at level info (default: %(default)s)", choices=["stderr", "stdout"])  # fmt: skip


def _command(
    commands: Any, root: argparse.ArgumentParser, name: str, help: str, description: str, examples: str
) -> Flags:
    parser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=examples + ENV_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return Flags(parser, root)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line interface."""
    root = argparse.ArgumentParser(
        prog="mini-ipam",
        description="A Docker IPAM driver that hands out free subnets of a requested size.",
        epilog=SERVE_EXAMPLES + ENV_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"mini-ipam {__version__}")
    commands = root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = _command(commands, root, "serve", "run the driver on the plugin socket",
                     "Run the IPAM driver. Docker finds it by its socket: mini.sock is --ipam-driver mini.",
                     SERVE_EXAMPLES)  # fmt: skip
    serve.socket()
    serve.add("socket-group", None, "group of the socket (mode 0660) (default: the driver's own group)",
              metavar="GROUP")  # fmt: skip
    serve.store()
    serve.parents()
    serve.add("default-size", DEFAULT_SIZE4,
              "prefix length of IPv4 subnets when no size is asked for (default: %(default)s)",
              prefix_parser(4), metavar="N")  # fmt: skip
    serve.add("default-size6", DEFAULT_SIZE6,
              "prefix length of IPv6 subnets when no size6 is asked for (default: %(default)s)",
              prefix_parser(6), metavar="N")  # fmt: skip
    serve.add(
        "host-ttl",
        30.0,
        "on a shared store, seconds after which a silent driver's heartbeat lapses; two live drivers with one "
        "host id are reported within about this time (default: %(default)s)",
        float,
        metavar="SECONDS",
    )
    serve.add(
        "local-record",
        DEFAULT_RECORD,
        "on a shared store, the file where this driver keeps its own claims, to re-assert them into the map "
        "if the map is ever lost; empty for none (default: %(default)s)",
        metavar="FILE",
    )
    serve.add(
        "recovery-window",
        None,
        "on a shared store, how long a rebuilt (or new) map hands out no new subnet unless every host has "
        "re-asserted its claims first, and how long after a server change this driver claims none "
        "(default: a little over one look at the map by every driver's heartbeat, host-ttl / 15 + 2s: 4s)",
        duration,
        metavar="DURATION",
    )
    serve.add("threads", 8, "request threads (default: %(default)s)", int, metavar="N")
    serve.add("metrics-address", None, "also serve GET /metrics, /healthz and /inventory (never the plugin protocol) "
              "over TCP on this address, e.g. 127.0.0.1:19464 or [::1]:19464 (default and empty: no TCP listener)",
              listen_address, metavar="HOST:PORT")  # fmt: skip
    serve.logging()

    ls = _command(commands, root, "ls", "show usage per parent and every pool",
                  "Show used and free addresses per parent, and every pool with its owner, age, gateway and "
                  "addresses. Reads Redis and file:// stores directly (also while a driver runs); for memory:// "
                  "it asks the running driver on --socket.", LS_EXAMPLES)  # fmt: skip
    ls.socket()
    ls.store()
    ls.parents()
    ls.parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ls.logging()

    plan = _command(commands, root, "plan", "how many more subnets of a size fit",
                    "Count how many more aligned /N subnets fit in the parents, and show the free blocks per "
                    "prefix length, so fragmentation is visible.", PLAN_EXAMPLES)  # fmt: skip
    plan.socket()
    plan.store()
    plan.parents()
    plan.parser.add_argument("--size", type=prefix_parser(6), required=True, metavar="N", help="the prefix length")
    plan.parser.add_argument("--v6", action="store_true", help="plan IPv6 subnets (default: IPv4)")
    plan.parser.add_argument("--count", type=int, metavar="K", help="exit 1 unless K more fit")
    plan.parser.add_argument("--json", action="store_true", help="print JSON")
    plan.logging()

    reconcile = _command(commands, root, "reconcile", "compare this host's claims with the local engine",
                         "Compare this host's claims with what the local Docker engine uses (networks of this "
                         "driver, their subnets, gateways and endpoint addresses) and list leaks both ways. "
                         "With --apply, release leaked claims older than --grace that the engine still does not "
                         "use when re-checked, and re-claim what the engine uses but the store lacks.",
                         RECONCILE_EXAMPLES)  # fmt: skip
    reconcile.socket()
    reconcile.store()
    reconcile.parents()
    reconcile.add("docker", "unix:///var/run/docker.sock", "the engine API (default: %(default)s)", metavar="URL")
    reconcile.add("driver", None, "the driver name the engine knows (default: the socket's file name)",
                  metavar="NAME")  # fmt: skip
    reconcile.add("grace", 600.0, "leave claims younger than this alone (default: 10m)", duration,
                  metavar="DURATION")  # fmt: skip
    reconcile.parser.add_argument("--apply", action="store_true", help="fix what can be fixed")
    reconcile.parser.add_argument("--json", action="store_true", help="print JSON")
    reconcile.logging()
    return root
