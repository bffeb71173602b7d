"""Every setting of every command, from its flag and from its environment variable, read by one path.

The table below holds, for each setting, values that must be refused and a phrase
of what the refusal must say is allowed. Each row runs for every command that has
the setting, once from the flag and once from the variable (for the settings that
have one): ``main`` must exit 2 with one line on stderr that names the setting and
where its value came from. The commands run in-process (the table has hundreds of
rows); each row also points the command at a socket that cannot exist and a memory
store, so a bad value that got through would end in a different failure (exit 1),
never in a running driver. The real process is checked at the end: the same
refusals, no traceback, and ``--help``/``--version`` untouched by a bad environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mini_ipam.commands import main
from mini_ipam.commands.flags import COMMANDS, SettingError, build_parser, resolve

LONG_SOCKET = "/tmp/" + "s" * 120 + ".sock"

BAD_VALUES: dict[str, list[tuple[str, str]]] = {
    "socket": [("{tmp}/dir/", "is not a socket path"), (LONG_SOCKET, "at most 107 bytes")],
    "socket-group": [("no-such-group-here", "is not a group of this host")],
    "store": [
        ("ftp://x", "use memory://, file://"),
        ("file://relative/x.json", "file:///absolute/path.json"),
        ("memory://x", "memory:// takes no path"),
        ("redis://h:6379/0?bogus=1", "unknown option 'bogus'"),
        ("redis://user:s3cret@h:notaport/0", "malformed store URL"),
    ],
    "store-timeout": [
        ("0", "more than 0 and at most 30s"),
        ("5x", "such as 500ms or 5s"),
        ("-1", "a bare number is seconds"),
        ("31s", "at most 30s"),
        ("nan", "more than 0"),
    ],
    "host-id": [("two words", "without spaces"), ("h" * 254, "at most 253")],
    "pool": [
        ("10.0.0.0/33", "is not an IPv4 subnet in CIDR form"),
        ("fd00::/48", "is not an IPv4 subnet"),
        ("10.0.0.1/24", "has host bits set"),
        ("10.0.0.0/31", "at most a /30"),
        ("bad", "is not an IPv4 subnet"),
    ],
    "pool6": [("10.0.0.0/8", "is not an IPv6 subnet"), ("fd00::/127", "at most a /126"), ("fd00::x/64", "CIDR")],
    "default-size": [("0", "from 1 to 30"), ("31", "from 1 to 30"), ("abc", "such as 28 or /28")],
    "default-size6": [("0", "from 1 to 126"), ("127", "from 1 to 126")],
    "host-ttl": [("0", "from 100ms to 1d"), ("10ms", "from 100ms"), ("2d", "to 1d"), ("soon", "such as 500ms")],
    "local-record": [("record.json", "an absolute file path")],
    "recovery-window": [("-1", "from 0 to 1h"), ("2h", "to 1h"), ("soon", "such as 500ms")],
    "threads": [("0", "from 1 to 256"), ("-3", "from 1 to 256"), ("257", "from 1 to 256"), ("abc", "whole")],
    "metrics-address": [
        ("localhost:19464", "is not an IP address"),
        ("127.0.0.1:0", "from 1 to 65535"),
        ("127.0.0.1", "is not HOST:PORT"),
        ("::1:80", "in brackets"),
    ],
    "log-level": [("verbose", "debug, info, warning or error"), ("", "debug, info, warning or error")],
    "log-format": [("xml", "text or json")],
    "log-stream": [("file", "stderr or stdout")],
    "docker": [("tcp://1.2.3.4:2375", "unix:///path/docker.sock"), ("unix://", "unix:///path/docker.sock")],
    "driver": [("two words", "without spaces")],
    "grace": [("-1", "from 0 to 365d"), ("10x", "such as 500ms"), ("400d", "to 365d")],
    "size": [("0", "from 1 to 126"), ("127", "from 1 to 126"), ("abc", "prefix length")],
    "count": [("-1", "from 0 up"), ("1.5", "from 0 up"), ("many", "a whole number of subnets")],
    "parent": [("10.0.0.0/33", "is not a subnet in CIDR form"), ("10.0.0.1/24", "has host bits set")],
    "owner": [("two words", "without spaces")],
    "limit": [("0", "from 1"), ("ten", "a whole number of pools")],
}
"""Setting -> (a value that must be refused, a phrase the refusal must contain)."""

TOGETHER: list[tuple[str, list[str], dict[str, str], str]] = [
    # command, flags, environment, what the refusal says
    ("serve", ["--pool", "10.0.0.0/16", "--pool", "10.0.0.0/16"], {}, "flag --pool: 10.0.0.0/16 is given twice"),
    ("ls", [], {"MINI_IPAM_POOL": "10.0.0.0/16,10.0.0.0/16"}, "environment variable MINI_IPAM_POOL (--pool): "
     "10.0.0.0/16 is given twice"),
    ("serve", ["--pool", "10.0.0.0/8", "--pool", "10.1.0.0/16"], {},
     "flag --pool: parents 10.0.0.0/8 and 10.1.0.0/16 overlap, and parents must not"),
    ("plan", ["--size", "24"], {"MINI_IPAM_POOL": "10.1.0.0/16,10.0.0.0/8"},
     "environment variable MINI_IPAM_POOL (--pool): parents 10.1.0.0/16 and 10.0.0.0/8 overlap"),
    ("reconcile", ["--pool6", "fd00::/48", "--pool6", "fd00:0:0:1::/64"], {},
     "flag --pool6: parents fd00::/48 and fd00:0:0:1::/64 overlap"),
    ("serve", ["--pool", "10.0.0.0/24", "--default-size", "20"], {},
     "flag --default-size: /20 does not fit in parent 10.0.0.0/24 (flag --pool): the default size must be a "
     "prefix length from 24 to 30"),
    ("serve", ["--default-size", "12"], {},
     "flag --default-size: /12 does not fit in parent 172.16.0.0/16 (the default --pool)"),
    ("serve", [], {"MINI_IPAM_DEFAULT_SIZE6": "40"},
     "environment variable MINI_IPAM_DEFAULT_SIZE6 (--default-size6): /40 does not fit in the IPv6 parent, a /48 "
     "made on first start (no --pool6 given)"),
    ("serve", ["--pool6", "fd00::/56", "--default-size6", "50"], {},
     "flag --default-size6: /50 does not fit in parent fd00::/56 (flag --pool6)"),
    ("plan", ["--size", "31"], {}, "flag --size: /31 is smaller than IPv4 subnets go: an IPv4 size is from 1 to 30"),
]  # fmt: skip


def command_line(command: str, setting: str, tmp_path: Path) -> list[str]:
    """A command line for ``command`` that cannot start anything: no socket can exist under a regular file."""
    blocker = tmp_path / "not-a-directory"
    blocker.touch()
    guards = {"socket": str(blocker / "mini.sock"), "store": "memory://", "docker": f"unix://{blocker}/docker.sock"}
    if command == "plan":
        guards["size"] = "24"
    names = {s.flag for s in COMMANDS[command].settings}
    args = [command]
    for flag, value in guards.items():
        if flag in names and flag != setting:
            args += [f"--{flag}", value]
    return args


def rows() -> list[object]:
    found = []
    for command, spec in COMMANDS.items():
        for setting in spec.settings:
            for value, allowed in BAD_VALUES[setting.flag]:
                sources = ["flag", "variable"] if setting.env else ["flag"]
                for source in sources:
                    if source == "variable" and not value:
                        continue  # an empty variable counts as unset
                    found.append(pytest.param(command, setting.flag, value, allowed, source,
                                              id=f"{command}-{source}-{setting.flag}={value[:20]}"))  # fmt: skip
    return found


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MINI_IPAM_"):
            monkeypatch.delenv(name)


def test_every_setting_has_bad_values_in_the_table() -> None:
    defined = {setting.flag for command in COMMANDS.values() for setting in command.settings}
    assert defined == set(BAD_VALUES)


@pytest.mark.parametrize(("command", "flag", "value", "allowed", "source"), rows())
def test_a_bad_value_is_one_sentence_and_exit_2(
    command: str,
    flag: str,
    value: str,
    allowed: str,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    value = value.replace("{tmp}", str(tmp_path))
    argv = command_line(command, flag, tmp_path)
    variable = "MINI_IPAM_" + flag.upper().replace("-", "_")
    if source == "flag":
        argv.append(f"--{flag}={value}")
        named = f"mini-ipam {command}: flag --{flag}: "
    else:
        monkeypatch.setenv(variable, value)
        named = f"mini-ipam {command}: environment variable {variable} (--{flag}): "
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(named), err
    assert allowed in err
    assert "s3cret" not in err


@pytest.mark.parametrize(("command", "flags", "environment", "message"), TOGETHER)
def test_settings_checked_together(
    command: str,
    flags: list[str],
    environment: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(command_line(command, "", tmp_path) + flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mini-ipam {command}: {message}"), err


def resolved(argv: list[str]) -> object:
    args = build_parser().parse_args(argv)
    resolve(args, os.environ)
    return args


def test_the_environment_is_read_with_the_same_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINI_IPAM_STORE_TIMEOUT", "500ms")
    monkeypatch.setenv("MINI_IPAM_HOST_TTL", "2m")
    monkeypatch.setenv("MINI_IPAM_THREADS", " 4 ")
    monkeypatch.setenv("MINI_IPAM_POOL", "10.1.0.0/16, 10.2.0.0/16,")
    monkeypatch.setenv("MINI_IPAM_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MINI_IPAM_POOL6", "")  # empty counts as unset, as a managed plugin's settings list it
    monkeypatch.setenv("MINI_IPAM_HOST_ID", "")
    args = resolved(["serve"])
    assert (args.store_timeout, args.host_ttl, args.threads, args.log_level) == (0.5, 120.0, 4, "warning")  # type: ignore[attr-defined]
    assert [str(p) for p in args.pool] == ["10.1.0.0/16", "10.2.0.0/16"]  # type: ignore[attr-defined]
    assert args.pool6 == [] and args.host_id  # type: ignore[attr-defined]
    grace = resolved(["reconcile", "--grace", "1h"])
    assert grace.grace == 3600.0  # type: ignore[attr-defined]
    assert resolved(["reconcile", "--grace", "90"]).grace == 90.0  # type: ignore[attr-defined]


def test_an_explicit_flag_wins_before_the_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in ("pool", "threads", "store-timeout", "log-level", "store", "default-size"):
        monkeypatch.setenv("MINI_IPAM_" + flag.upper().replace("-", "_"), "not a value of anything")
    args = resolved(["serve", "--pool", "10.9.0.0/16", "--threads", "2", "--store-timeout", "1s",
                     "--log-level", "debug", "--store", "memory://", "--default-size", "24"])  # fmt: skip
    assert ([str(p) for p in args.pool], args.threads, args.store_timeout) == (["10.9.0.0/16"], 2, 1.0)  # type: ignore[attr-defined]
    assert (args.log_level, args.store, args.default_size) == ("debug", "memory://", 24)  # type: ignore[attr-defined]
    # Without its flag, the same variable is read, and refused.
    with pytest.raises(SettingError, match=r"^environment variable MINI_IPAM_THREADS \(--threads\): 'not a value"):
        resolved(
            ["serve", "--pool", "10.9.0.0/16", "--store-timeout", "1s", "--store", "memory://", "--default-size", "24"]
        )


def test_flags_without_a_variable_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINI_IPAM_SIZE", "abc")
    monkeypatch.setenv("MINI_IPAM_COUNT", "abc")
    monkeypatch.setenv("MINI_IPAM_APPLY", "1")
    monkeypatch.setenv("MINI_IPAM_JSON", "1")
    plan = resolved(["plan", "--size", "24"])
    assert (plan.size, plan.count, plan.json) == (24, None, False)  # type: ignore[attr-defined]
    assert resolved(["reconcile"]).apply is False  # type: ignore[attr-defined]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MINI_IPAM_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "mini_ipam", *args], capture_output=True, text=True, timeout=30,
                          env=environment)  # fmt: skip


BAD_ENVIRONMENT = {
    "MINI_IPAM_" + s.flag.upper().replace("-", "_"): BAD_VALUES[s.flag][0][0].replace("{tmp}", "/tmp")
    for command in COMMANDS.values()
    for s in command.settings
    if s.env
}


@pytest.mark.parametrize("args", [["--help"], ["--version"], *([c, "--help"] for c in COMMANDS),
                                  *([c, "--version"] for c in COMMANDS)], ids=" ".join)  # fmt: skip
def test_a_bad_environment_never_breaks_help_or_version(args: list[str]) -> None:
    result = run(*args, env=BAD_ENVIRONMENT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    if "--version" in args:
        assert result.stdout.startswith("mini-ipam 0.")
    else:
        assert "usage: mini-ipam" in result.stdout and "MINI_IPAM_" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["serve", "--threads", "0"], {}, "mini-ipam serve: flag --threads: '0' is not a whole number of request "
         "threads from 1 to 256"),
        (["serve"], {"MINI_IPAM_THREADS": "abc"}, "mini-ipam serve: environment variable MINI_IPAM_THREADS "
         "(--threads): 'abc' is not a whole number of request threads from 1 to 256"),
        (["serve"], {"MINI_IPAM_STORE_TIMEOUT": "5x"}, "mini-ipam serve: environment variable MINI_IPAM_STORE_TIMEOUT "
         "(--store-timeout): '5x' is not a duration such as 500ms or 5s, more than 0 and at most 30s (a bare number "
         "is seconds)"),
        (["ls"], {"MINI_IPAM_LOG_LEVEL": "verbose"}, "mini-ipam ls: environment variable MINI_IPAM_LOG_LEVEL "
         "(--log-level): 'verbose' is not one of debug, info, warning or error"),
        (["plan", "--size", "24"], {"MINI_IPAM_POOL": "bad"}, "mini-ipam plan: environment variable MINI_IPAM_POOL "
         "(--pool): 'bad' is not an IPv4 subnet in CIDR form ('bad' does not appear to be an IPv4 or IPv6 network)"),
        (["reconcile", "--grace=-5m"], {}, "mini-ipam reconcile: flag --grace: '-5m' is not a duration such as "
         "500ms or 5s or 10m, from 0 to 365d (a bare number is seconds)"),
    ],
    ids=["threads 0", "THREADS=abc", "STORE_TIMEOUT=5x", "LOG_LEVEL=verbose", "POOL=bad", "grace -5m"],
)  # fmt: skip
def test_the_real_process_refuses_with_one_line(args: list[str], env: dict[str, str], line: str) -> None:
    result = run(*args, "--socket", "/nonexistent/dir/mini.sock", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n")


def test_a_store_timeout_with_units_is_used(tmp_path: Path) -> None:
    """``MINI_IPAM_STORE_TIMEOUT=5s`` ended in a traceback; now it reaches the store (a Redis that is not there)."""
    result = run("ls", "--store", "redis://127.0.0.1:1/0", env={"MINI_IPAM_STORE_TIMEOUT": "500ms"})
    assert result.returncode == 1
    assert result.stderr.startswith("mini-ipam ls: cannot read the store: ") and "Traceback" not in result.stderr
