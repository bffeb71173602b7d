"""The ``mini-ipam`` command line: every setting of every command, in one table, and the one way they are read.

A setting is a flag and, unless it only says what one run should do, a
``MINI_IPAM_<FLAG>`` environment variable. ``build_parser`` gives argparse the flags
as plain text, so ``--help`` and ``--version`` never read the environment. Then
``resolve`` takes each setting's text from the flag if it was given, else from its
variable (an empty one counts as unset), else its default, and parses it with the
setting's parser (``mini_ipam.commands.values``); the settings that depend on each
other are checked last. Any bad value is a ``SettingError``: one sentence naming the
setting, where the value came from and what is allowed, and exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mini_ipam import __version__, allocator
from mini_ipam.commands import values
from mini_ipam.commands.common import CommandError
from mini_ipam.pool_id import SMALLEST

DEFAULT_SOCKET = "/run/docker/plugins/mini.sock"
DEFAULT_STORE = "file:///var/lib/mini-ipam/state.json"
DEFAULT_RECORD = "/var/lib/mini-ipam/record.json"
ULA_PREFIXLEN = 48
"""The IPv6 parent made on first start when no --pool6 is given is a /48."""


class SettingError(CommandError):
    """A setting's value cannot be used: exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


@dataclass(frozen=True)
class Setting:
    """One setting: its flag, its environment variable (unless ``env`` is False) and how its text is read.

    ``default`` is text too, read by ``parse`` like any other text. A setting with ``many`` is a
    repeatable flag, and a comma-separated list in its variable.
    """

    flag: str
    parse: values.Parser
    default: str
    help: str
    metavar: str
    many: bool = False
    env: bool = True
    required: bool = False

    @property
    def option(self) -> str:
        """``--flag``."""
        return f"--{self.flag}"

    @property
    def variable(self) -> str:
        """``MINI_IPAM_FLAG``."""
        return "MINI_IPAM_" + self.flag.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments."""
        return self.flag.replace("-", "_")

    def help_text(self) -> str:
        """The ``--help`` line: what it is, its default, its variable."""
        text = self.help + (f" (default: {self.default})" if self.default and "default:" not in self.help else "")
        if self.env:
            text += f" [{self.variable}{', comma-separated' if self.many else ''}]"
        return text.replace("%", "%%")


@dataclass(frozen=True)
class Switch:
    """A flag without a value, that says what this one run does: never taken from the environment."""

    flag: str
    help: str


LOG_LEVELS = ("debug", "info", "warning", "error")

SOCKET = Setting(
    "socket", values.socket_path, DEFAULT_SOCKET, "the plugin socket; its file name is the driver name", "PATH"
)
SOCKET_GROUP = Setting(
    "socket-group",
    values.group,
    "",
    "group of the socket, which has mode 0660 (default: the driver's own group)",
    "GROUP",
)
STORE = Setting(
    "store",
    values.store_url,
    DEFAULT_STORE,
    "where claims are kept: memory://, file:///path.json, redis://host:port/db, rediss://..., "
    "unix:///path/redis.sock, redis+sentinel://host1:26379,host2:26379/SERVICE, "
    "redis+cluster://host1:port,host2:port (default: the file store at /var/lib/mini-ipam/state.json)",
    "URL",
)
STORE_TIMEOUT = Setting(
    "store-timeout",
    values.duration(0.0, 30.0, least_included=False),
    "5s",
    "how long one store round trip may take before the request fails",
    "DURATION",
)
HOST_ID = Setting(
    "host-id",
    values.host_id,
    socket.gethostname(),
    "this host's name in the store, recorded as the owner of its claims; empty: the hostname",
    "NAME",
)
POOL = Setting(
    "pool",
    values.subnet(4, SMALLEST[4]),
    str(allocator.DEFAULT_PARENT4),
    "IPv4 parent range to carve subnets from; repeat for more, searched in order; parents must not overlap",
    "CIDR",
    many=True,
)
POOL6 = Setting(
    "pool6",
    values.subnet(6, SMALLEST[6]),
    "",
    "IPv6 parent range; repeatable (default and empty: a random unique-local /48 made on first start "
    "and kept in the store)",
    "CIDR",
    many=True,
)
DEFAULT_SIZE = Setting(
    "default-size",
    values.prefix_length(SMALLEST[4]),
    str(allocator.DEFAULT_SIZE4),
    "prefix length of IPv4 subnets when a network asks for no size",
    "N",
)
DEFAULT_SIZE6 = Setting(
    "default-size6",
    values.prefix_length(SMALLEST[6]),
    str(allocator.DEFAULT_SIZE6),
    "prefix length of IPv6 subnets when a network asks for no size6",
    "N",
)
HOST_TTL = Setting(
    "host-ttl",
    values.duration(0.1, 86400.0),
    "30s",
    "on a shared store, how long a silent driver's heartbeat lasts; two live drivers with one host "
    "id are reported within about this time",
    "DURATION",
)
LOCAL_RECORD = Setting(
    "local-record",
    values.file_path,
    DEFAULT_RECORD,
    "on a shared store, the file where this driver keeps its own claims, to re-assert them into the map if "
    "the map is ever lost (empty: none; the map's loss is then still found and reported)",
    "FILE",
)
RECOVERY_WINDOW = Setting(
    "recovery-window",
    values.duration(0.0, 3600.0),
    "",
    "on a shared store, how long a new or rebuilt map hands out no new subnet unless every host has "
    "re-asserted its claims first, and how long after its server changed this driver claims none "
    "(default: a little over one look at the map by every driver's heartbeat, host-ttl / 15 + 2s: 4s)",
    "DURATION",
)
THREADS = Setting(
    "threads", values.whole_number(1, 256, "a whole number of request threads"), "8", "request threads", "N"
)
METRICS_ADDRESS = Setting(
    "metrics-address",
    values.listen,
    "",
    "also serve GET /metrics, /healthz and /inventory (never the plugin protocol) over TCP on "
    "this address, e.g. 127.0.0.1:19464 or [::1]:19464 (default and empty: no TCP listener)",
    "HOST:PORT",
)
LOG_LEVEL = Setting("log-level", values.choice(LOG_LEVELS), "info", "debug, info, warning or error", "LEVEL")
LOG_FORMAT = Setting(
    "log-format", values.choice(("text", "json")), "text", "text, or json (one object a line)", "FORMAT"
)
LOG_STREAM = Setting(
    "log-stream",
    values.choice(("stderr", "stdout")),
    "stderr",
    "stderr or stdout; a managed plugin logs to stdout, which the engine logs at level info",
    "STREAM",
)
DOCKER = Setting("docker", values.engine_url, "unix:///var/run/docker.sock", "the engine API", "URL")
DRIVER = Setting(
    "driver",
    values.name("a driver name"),
    "",
    "the driver name the engine knows (default and empty: the socket's file name)",
    "NAME",
)
GRACE = Setting("grace", values.duration(0.0, 365 * 86400.0), "10m", "leave claims younger than this alone", "DURATION")
SIZE = Setting(
    "size", values.prefix_length(SMALLEST[6]), "", "the prefix length (IPv4: up to 30)", "N", env=False, required=True
)
COUNT = Setting(
    "count", values.whole_number(0, None, "a whole number of subnets"), "", "exit 1 unless K more fit", "K", env=False
)

PARENT = Setting("parent", values.any_subnet, "", "list only the pools inside this subnet", "CIDR", env=False)
OWNER = Setting("owner", values.host_id, "", "list only the pools of this host id", "NAME", env=False)
LIMIT = Setting(
    "limit",
    values.whole_number(1, None, "a whole number of pools from 1"),
    "",
    "list at most N pools",
    "N",
    env=False,
)

JSON = Switch("json", "print JSON instead of tables")
SUMMARY = Switch("summary", "show the usage per parent only: on Redis one round trip, however big the map")
APPLY = Switch("apply", "fix what can be fixed")
V6 = Switch("v6", "plan IPv6 subnets (default: IPv4)")

STORE_SETTINGS = (STORE, STORE_TIMEOUT, HOST_ID)
PARENTS = (POOL, POOL6)
LOGGING = (LOG_LEVEL, LOG_FORMAT, LOG_STREAM)

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
  mini-ipam ls --summary            usage per parent only (cheap on any map)
  mini-ipam ls --owner host-a --parent 10.10.0.0/16 --limit 50
  mini-ipam ls --json | jq '.pools[] | select(.owner == "host-a")'
  mini-ipam ls --store redis://redis.example:6379/0 --pool 10.10.0.0/16
  mini-ipam ls --docker unix:///var/run/docker.sock   the network names from that engine

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


@dataclass(frozen=True)
class Command:
    """A command's help, and its settings and switches in the order ``--help`` lists them."""

    help: str
    description: str
    examples: str
    settings: tuple[Setting, ...]
    switches: tuple[Switch, ...] = field(default=())

    def environment_note(self) -> str:
        """What the epilog says about the environment, true of this command's own flags."""
        only_flags = [s.option for s in self.settings if not s.env] + [f"--{s.flag}" for s in self.switches]
        note = (
            "Each setting can also be given in the environment, as the variable in brackets after it\n"
            "(MINI_IPAM_<FLAG>; a repeatable flag's variable takes a comma-separated list). A flag on\n"
            "the command line wins over its variable; an empty variable counts as unset.\n"
        )
        if only_flags:
            note += f"Only on the command line: {', '.join(only_flags)}.\n"
        return note


COMMANDS: dict[str, Command] = {
    "serve": Command(
        "run the driver on the plugin socket",
        "Run the IPAM driver. Docker finds it by its socket: mini.sock is --ipam-driver mini.",
        SERVE_EXAMPLES,
        (
            SOCKET,
            SOCKET_GROUP,
            *STORE_SETTINGS,
            *PARENTS,
            DEFAULT_SIZE,
            DEFAULT_SIZE6,
            HOST_TTL,
            LOCAL_RECORD,
            RECOVERY_WINDOW,
            THREADS,
            METRICS_ADDRESS,
            *LOGGING,
        ),
    ),  # fmt: skip
    "ls": Command(
        "show usage per parent and every pool",
        "Show used and free addresses per parent, and every pool with its owner, age, gateway and addresses. "
        "Reads Redis and file:// stores directly (also while a driver runs); for memory:// it asks the running "
        "driver on --socket. Each pool shows the name of the Docker network it serves when the engine on --docker "
        "can be asked (without one, no names).",
        LS_EXAMPLES,
        (SOCKET, *STORE_SETTINGS, *PARENTS, PARENT, OWNER, LIMIT, DOCKER, DRIVER, *LOGGING),
        (SUMMARY, JSON),
    ),
    "plan": Command(
        "how many more subnets of a size fit",
        "Count how many more aligned /N subnets fit in the parents, and show the free blocks per prefix length, "
        "so fragmentation is visible.",
        PLAN_EXAMPLES,
        (SOCKET, *STORE_SETTINGS, *PARENTS, SIZE, COUNT, *LOGGING),
        (V6, JSON),
    ),
    "reconcile": Command(
        "compare this host's claims with the local engine",
        "Compare this host's claims with what the local Docker engine uses (networks of this driver, their "
        "subnets, gateways and endpoint addresses) and list leaks both ways. With --apply, release leaked claims "
        "older than --grace that the engine still does not use when re-checked, and re-claim what the engine uses "
        "but the store lacks.",
        RECONCILE_EXAMPLES,
        (SOCKET, *STORE_SETTINGS, *PARENTS, DOCKER, DRIVER, GRACE, *LOGGING),
        (APPLY, JSON),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The full command-line interface. Flags are kept as text: ``resolve`` reads them."""
    root = argparse.ArgumentParser(
        prog="mini-ipam",
        description="A Docker IPAM driver that hands out free subnets of a requested size.",
        epilog=SERVE_EXAMPLES + COMMANDS["serve"].environment_note(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    version = f"mini-ipam {__version__}"
    root.add_argument("--version", action="version", version=version)
    subparsers = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        parser = subparsers.add_parser(
            name,
            help=command.help,
            description=command.description,
            epilog=command.examples + command.environment_note(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--version", action="version", version=version)
        for setting in command.settings:
            parser.add_argument(
                setting.option,
                dest=setting.dest,
                default=None,
                action="append" if setting.many else "store",
                required=setting.required,
                metavar=setting.metavar,
                help=setting.help_text(),
            )
        for switch in command.switches:
            parser.add_argument(f"--{switch.flag}", action="store_true", help=switch.help)
    return root


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from, as a message names it."""

    setting: Setting
    kind: str  # "flag", "variable" or "default"

    def __str__(self) -> str:
        if self.kind == "flag":
            return f"flag {self.setting.option}"
        if self.kind == "variable":
            return f"environment variable {self.setting.variable} ({self.setting.option})"
        return f"the default {self.setting.option}"


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Source]:
    """Replace the text of every setting of ``args.command`` in ``args`` by its value; where each came from.

    Raises SettingError for the first value that cannot be used.
    """
    command = COMMANDS[args.command]
    sources: dict[str, Source] = {}
    for setting in command.settings:
        given = getattr(args, setting.dest)
        variable = environ.get(setting.variable, "") if setting.env else ""
        if given is not None:
            source, texts = Source(setting, "flag"), given if setting.many else [given]
        elif variable.strip():
            source = Source(setting, "variable")
            texts = [item for item in variable.split(",") if item.strip()] if setting.many else [variable]
        else:
            source = Source(setting, "default")
            texts = setting.default.split(",") if setting.many else [setting.default]
        sources[setting.dest] = source
        if source.kind == "default" and not setting.default:
            setattr(args, setting.dest, [] if setting.many else None)  # no value: what that means is the command's
            continue
        try:
            parsed = [setting.parse(text) for text in texts]
        except values.Invalid as exc:
            raise SettingError(f"{source}: {exc}") from None
        setattr(args, setting.dest, parsed if setting.many else parsed[0])
    _check_together(args, sources)
    return sources


def _check_together(args: argparse.Namespace, sources: dict[str, Source]) -> None:
    """The checks that need more than one setting."""
    for setting in PARENTS:
        if setting.dest in sources:
            _check_parents(getattr(args, setting.dest), sources[setting.dest])
    if "default_size" in sources:
        _check_fits(args.default_size, args.pool, sources["default_size"], sources["pool"], 4)
    if "default_size6" in sources:
        _check_fits(args.default_size6, args.pool6, sources["default_size6"], sources["pool6"], 6)
    if "size" in sources and not args.v6 and args.size > SMALLEST[4]:
        raise SettingError(
            f"{sources['size']}: /{args.size} is smaller than IPv4 subnets go: an IPv4 size is from 1 to "
            f"{SMALLEST[4]} (add --v6 to plan IPv6 subnets)"
        )


def _check_parents(parents: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], source: Source) -> None:
    for index, parent in enumerate(parents):
        for earlier in parents[:index]:
            if parent == earlier:
                raise SettingError(f"{source}: {parent} is given twice: list each parent once")
            if parent.overlaps(earlier):
                larger, smaller = (earlier, parent) if earlier.prefixlen <= parent.prefixlen else (parent, earlier)
                raise SettingError(
                    f"{source}: parents {earlier} and {parent} overlap, and parents must not: "
                    f"{smaller} lies inside {larger}, so give only {larger}, or parents beside it"
                )


def _check_fits(
    size: int,
    parents: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
    size_source: Source,
    parents_source: Source,
    version: int,
) -> None:
    if parents:
        narrowest = max(parents, key=lambda parent: parent.prefixlen)
        longest_parent, where = narrowest.prefixlen, f"parent {narrowest} ({parents_source})"
    else:  # IPv6 without --pool6: the /48 made on first start
        longest_parent = ULA_PREFIXLEN
        where = f"the IPv6 parent, a /{ULA_PREFIXLEN} made on first start (no {parents_source.setting.option} given)"
    if size < longest_parent:
        raise SettingError(
            f"{size_source}: /{size} does not fit in {where}: the default size must be a prefix length from "
            f"{longest_parent} to {SMALLEST[version]}"
        )
