"""The README's ``mini-ipam`` commands are ones the command line takes.

Every ``mini-ipam ...`` command in the README, in a code block (with or without a ``$`` or ``#``
prompt, with ``VAR=value`` assignments before it) or in inline code, is parsed by the real parser
(``flags.build_parser``) and its settings read and checked by the real path (``flags.resolve``) in an
environment holding only the command's own assignments: a renamed flag, a removed one, or a value the
checks refuse fails here. Synopses (``mini-ipam plan --size N [--count K]``) name placeholders, not
values: only their flags are checked. Nothing is run, so no store or engine is needed.

The README's claims about the environment are checked too: every ``MINI_IPAM_*`` variable it names
is a real one, and the switches it says have no variable have none.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mini_ipam import protocol
from mini_ipam.commands.flags import COMMANDS, SettingError, build_parser, resolve

README = Path(__file__).resolve().parent.parent / "README.md"

# Variables that are not settings of a command: those of scripts/install.sh.
INSTALL_VARIABLES = {"MINI_IPAM_PREFIX", "MINI_IPAM_BIN_DIR", "MINI_IPAM_REINSTALL"}
# Where a shell command stops being mini-ipam's: a pipe, a list, a redirection.
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1", "<"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Example:
    """One ``mini-ipam`` command of the README."""

    line: int
    text: str
    synopsis: bool  # it names placeholders ([--count K]): check its flags only

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def _code_lines(text: str) -> list[tuple[int, str]]:
    """The lines inside fenced code blocks, numbered, with ``\\`` continuations joined."""
    found: list[tuple[int, str]] = []
    inside = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        found.append((number, line))
    return found


def _inline_spans(text: str) -> list[tuple[int, str]]:
    """The inline code spans outside fenced blocks, numbered by the line they start on."""
    found: list[tuple[int, str]] = []
    outside: list[tuple[int, str]] = []
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
        elif not inside:
            outside.append((number, line))
    # Spans may wrap onto the next line of a paragraph: join the lines, keeping where each starts.
    joined = ""
    starts: list[tuple[int, int]] = []
    for number, line in outside:
        starts.append((len(joined), number))
        joined += line + "\n"
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        line_no = max(n for offset, n in starts if offset <= match.start())
        found.append((line_no, " ".join(match.group(1).split())))
    return found


def examples() -> list[Example]:
    """Every ``mini-ipam`` command of the README."""
    text = README.read_text(encoding="utf-8")
    found: list[Example] = []
    for number, line in _code_lines(text):
        # `bash scripts/install.sh && mini-ipam serve`: each command of a list counts.
        for part in re.split(r"\s(?:&&|\|\||;)\s", line):
            command = part.strip()
            for prompt in ("$ ", "# "):
                if command.startswith(prompt + "mini-ipam ") or command.startswith(prompt + "MINI_IPAM_"):
                    command = command[len(prompt) :]
            words = command.split()
            while words and ASSIGNMENT.match(words[0]):
                words.pop(0)
            if words[:1] == ["mini-ipam"] and len(words) > 1:
                found.append(Example(number, command, synopsis=False))
    for number, span in _inline_spans(text):
        if span.startswith("mini-ipam ") and not span.startswith("mini-ipam <"):
            found.append(Example(number, span, synopsis="[" in span))
    return found


def _words(example: Example) -> tuple[dict[str, str], list[str]]:
    """The environment assignments before the command, and its arguments up to the first shell operator."""
    words = shlex.split(example.text, comments=True)
    environ: dict[str, str] = {}
    while words and ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        environ[name] = value
    assert words[0] == "mini-ipam", example
    args: list[str] = []
    for word in words[1:]:
        if word in SHELL_OPERATORS:
            break
        args.append(word)
    return environ, args


def _parse(example: Example, args: list[str]) -> argparse.Namespace | None:
    """The parsed arguments; None for ``--help`` and ``--version``, which end there (status 0)."""
    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:  # argparse's usage error (status 2), or --help / --version (status 0)
        if exc.code == 0 and {"--help", "--version"} & set(args):
            return None
        pytest.fail(f"{example}: the command line refused it (exit status {exc.code})")


EXAMPLES = examples()


def test_the_readme_has_commands_of_every_kind() -> None:
    """The extraction works: the README's commands are found, for every subcommand."""
    assert len(EXAMPLES) >= 20, [str(e) for e in EXAMPLES]
    named = {_words(example)[1][0] for example in EXAMPLES}
    assert named >= set(COMMANDS), named


def _known_flags(command: str) -> set[str]:
    """The flags ``command`` has, spelled out (argparse would also take an abbreviation: not here)."""
    if command.startswith("-"):
        return {"--help", "--version"}
    found = COMMANDS[command]
    return {s.option for s in found.settings} | {f"--{s.flag}" for s in found.switches} | {"--help", "--version"}


def _flags_named(args: list[str]) -> set[str]:
    return {word.strip("[]").split("=", 1)[0] for word in args if word.strip("[]").startswith("--")}


@pytest.mark.parametrize("example", [e for e in EXAMPLES if not e.synopsis], ids=str)
def test_every_readme_command_parses_and_its_settings_check(example: Example) -> None:
    environ, args = _words(example)
    unknown = _flags_named(args) - _known_flags(args[0])
    assert not unknown, f"{example}: no such flag {sorted(unknown)}"
    parsed = _parse(example, args)
    if parsed is None:
        return
    try:
        resolve(parsed, environ)
    except SettingError as exc:
        pytest.fail(f"{example}: {exc}")


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.synopsis], ids=str)
def test_every_readme_synopsis_names_real_flags(example: Example) -> None:
    _, args = _words(example)
    named = _flags_named(args[1:])
    assert named, example
    assert named <= _known_flags(args[0]), (str(example), sorted(named - _known_flags(args[0])))


def test_serve_version_works_as_the_readme_says() -> None:
    for args in (["--version"], ["serve", "--version"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(args)
        assert exit_info.value.code == 0, args


def test_the_flags_the_readme_says_have_a_variable_have_one() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    match = re.search(r"Every flag of `serve`, and ([^.]*) of the other commands, can also be given", text)
    assert match, "the README's sentence about flags with a variable is gone"
    listed = set(re.findall(r"`(--[a-z0-9-]+)`", match.group(1)))
    serve = {s.option for s in COMMANDS["serve"].settings}
    others = {s.option for name, c in COMMANDS.items() if name != "serve" for s in c.settings if s.env} - serve
    assert all(s.env for s in COMMANDS["serve"].settings) and not COMMANDS["serve"].switches
    assert listed == others, (sorted(listed), sorted(others))


def test_every_variable_the_readme_names_exists() -> None:
    text = README.read_text(encoding="utf-8")
    variables = {s.variable for command in COMMANDS.values() for s in command.settings if s.env}
    named = set(re.findall(r"MINI_IPAM_[A-Z0-9_]*[A-Z0-9]", text))
    assert named, "the README names no variable"
    assert named <= variables | INSTALL_VARIABLES, sorted(named - variables - INSTALL_VARIABLES)


def test_the_flags_the_readme_says_have_no_variable_have_none() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    match = re.search(r"The other commands' own flags \(([^)]*)\) have no variable", text)
    assert match, "the README's sentence about flags without a variable is gone"
    listed = set(re.findall(r"`(--[a-z0-9-]+)`", match.group(1)))
    with_variable = {s.option for command in COMMANDS.values() for s in command.settings if s.env}
    without = {f"--{s.flag}" for command in COMMANDS.values() for s in command.switches} | {
        s.option for command in COMMANDS.values() for s in command.settings if not s.env
    }
    assert listed and not listed & with_variable, sorted(listed & with_variable)
    assert without <= listed, sorted(without - listed)


def test_a_renamed_flag_would_fail() -> None:
    """The checks above can fail: an unknown flag is refused by the parser, and an abbreviation
    (which argparse would take) is not a flag the command has."""
    example = Example(0, "mini-ipam ls --no-such-flag", synopsis=False)
    with pytest.raises(pytest.fail.Exception):
        _parse(example, _words(example)[1])
    assert _flags_named(["ls", "--summ"]) - _known_flags("ls") == {"--summ"}


def test_the_compose_example_asks_for_sizes_the_way_every_compose_version_passes_on() -> None:
    """The README's compose file: every mini network asks for a size with an "any" subnet (0.0.0.0/N, ::/N),
    never with ``ipam.options``, which compose v2 drops."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(services:.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "the README's compose example is gone"
    project = yaml.safe_load(blocks[0])
    networks = project["networks"]
    assert networks, project
    for name, network in networks.items():
        ipam = network["ipam"]
        assert ipam["driver"] == "mini" and "options" not in ipam, (name, ipam)
        subnets = [ipaddress.ip_network(item["subnet"]) for item in ipam["config"]]
        assert subnets and all(int(subnet.network_address) == 0 for subnet in subnets), (name, subnets)
        assert network.get("enable_ipv6", False) == any(subnet.version == 6 for subnet in subnets), name


def test_every_ipam_option_the_readme_names_is_one_the_driver_reads() -> None:
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"--ipam-opt ([a-z0-9._]+)=", text))
    assert {"size"} <= named, named
    assert named <= {*protocol.SIZE_OPTIONS, protocol.SIZE6_OPTION}, sorted(named)
