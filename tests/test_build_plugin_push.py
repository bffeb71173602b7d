"""``scripts/build-plugin.sh --push``: what it refuses before it builds anything.

The push itself runs in the swarm tier, against Debian's docker-registry (``tests/swarm``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-plugin.sh"


def build_plugin(*args: str) -> subprocess.CompletedProcess[str]:
    # No engine is needed: these are refused before the script looks for one.
    env = {"PATH": "/usr/bin:/bin", "DOCKER": "/nonexistent/docker"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--push"], "usage: build-plugin.sh --push REGISTRY/mini-ipam:TAG"),
        (["--push", "mini"], "--push needs REGISTRY/NAME:TAG (a registry host such as registry.example:5000 first), "
                             "not 'mini'"),
        (["--push", "someone/mini-ipam:1"], "not 'someone/mini-ipam:1'"),  # a Docker Hub name: never pushed there
        (["--push", "registry.example:5000/mini-ipam:1", "registry.example:5000/mini-ipam:latest"],
         "one name per build"),
        (["mini", "other"], "one name per build"),
    ],
)  # fmt: skip
def test_push_refuses_names_it_cannot_push(args: list[str], message: str) -> None:
    result = build_plugin(*args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("name", ["registry.example:5000/mini-ipam:1", "localhost/mini-ipam:2", "10.0.0.5/mini:3"])
def test_a_registry_name_gets_as_far_as_the_engine(name: str) -> None:
    result = build_plugin("--push", name)
    assert result.returncode == 1
    assert "needs the docker command" in result.stderr, result.stderr
